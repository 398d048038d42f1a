from study.cli import main

# guarded: the spawn start method imports this module again in every pipeline worker
if __name__ == "__main__":
    raise SystemExit(main())
