"""Command line: `study compare`, `study data`, `study pipelines`. User errors exit 2 in one line."""

from __future__ import annotations

import os
import sys

from study import config
from study.arguments import QUEUED, build_parser, optional
from study.errors import ConfigError, StudyError
from study.logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter (CPU features, graph attribute notices) hides progress.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = build_parser(__doc__).parse_args(argv)
    try:
        configure_logging(args.verbose - args.quiet)
        if args.command == "data":
            from study import data

            folder = data.ensure(args.data_dir)
            data.load(folder, download=False)
            print(f"Fashion-MNIST verified in {folder}")
            return 0
        if args.command == "store":
            from study import tracking

            print(f"MLflow tracking store ready: {config.redact(tracking.configure())}")
            return 0
        if args.command == "pipelines":
            from study import pipelines

            broken = 0
            for name in pipelines.available():
                try:
                    spec = pipelines.load(name)
                except ConfigError as exc:  # reported on its own row: the others still list
                    broken += 1
                    print(f"{name:14s} ERROR {exc}")
                    continue
                print(f"{name:14s} {spec.family:12s} reducer={spec.reducer:5s} {spec.description}"
                      + (" [optional: not in 'all']" if spec.optional else ""))
            return 2 if broken else 0
        if args.command == "report":
            return _report(args)
        if args.command == "predict":
            return _predict(args)
        if args.command == "ablation":
            return _ablation(args)
        if args.command == "repeats":
            return _repeats(args)
        if args.command == "tune":
            return _tune(args)
        return _compare(args)
    except StudyError as exc:
        print(f"error: {config.redact(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _compare(args) -> int:
    import dataclasses

    from study import compare, leaderboard, tracking

    target = args.cluster and dataclasses.replace(args.cluster, insecure=args.cluster_insecure)
    if args.plan_only:
        print(compare.plan(args.profile, args.pipelines, args.data_dir, args.storage,
                           args.workers, args.parallel, args.budget_minutes, target))
        return 0
    result = compare.compare(args.profile, args.pipelines, args.seed, args.data_dir, args.storage,
                             args.workers, args.parallel, args.budget_minutes, target)
    print()
    print(f"Leaderboard (compare run {result.run_id}, {args.profile.name} profile, "
          f"{result.seconds / 60:.1f} min)")
    print(leaderboard.render_text(result.rows))
    print()
    if result.skipped:
        print(f"{len(result.skipped)} pipeline(s) skipped (the time budget):")
        for name, reason in result.skipped.items():
            print(f"  {name}: skipped: {reason}")
    if result.failures:
        print(f"\n{len(result.failures)} pipeline(s) failed (traceback.txt in their runs):")
        for name, reason in result.failures.items():
            print(f"  {name}: {reason}")
    champion = leaderboard.champion_of(result.rows)
    if champion:
        top = result.rows[0]
        print(f"Champion, chosen on validation accuracy: {champion['pipeline']} (validation "
              f"{champion['val_accuracy']:.4f}, test {champion['test_accuracy']:.4f}; "
              + ("also the test maximum)" if top is champion else
                 f"the test maximum, {top['pipeline']} at {top['test_accuracy']:.4f}, is an "
                 "optimistic figure)"))
    if result.registry:
        reg = result.registry
        print(f"Champion registered: models:/{reg['name']}/{reg['version']} "
              + (f"(alias @champion now points to it: {reg['reason']})" if reg["alias_moved"]
                 else f"(alias @champion stays on version {reg['alias_version']}: "
                      f"{reg['reason']})"))
    if result.report:
        print(f"Report: {result.report}/report.html")
    print(f"Explore the runs: {tracking.ui_command()}")
    print(f"The leaderboard in the MLflow UI: {tracking.compare_leaderboard_url(result.run_id)}")
    return 1 if result.failures else 0


def _tune(args) -> int:
    """A worker: a share of a parallel compare's trials, or a machine joining a study."""
    import zlib

    from study import compare, data, pipelines, tracking, tuning

    (spec,) = pipelines.resolve([args.pipeline])
    if not spec.search:
        raise ConfigError(f"pipeline {spec.name} has no search space, nothing to tune; "
                          "compare fits it with its fixed parameters")
    if args.n_trials == QUEUED and args.workers > 1:
        raise ConfigError("--n-trials queued takes one worker per process; start more "
                          "processes instead of --workers")
    splits = data.make_splits(data.load(args.data_dir), args.profile)
    budget = spec.budget(args.profile)
    storage = compare.resolve_storage(args.storage)
    compare.open_stores(storage)  # unreachable storage or server: one line, nothing written
    worker = args.tuning_run_id is not None
    if not worker:
        tracking.check_can_write()  # a READ-only user stops here, before any trial
    if worker:
        tuning.exit_with_parent()
    name = tuning.study_name(spec, budget.profile, args.seed)
    log = tracking.TuningLog(spec.name, name, budget.profile, run_id=args.tuning_run_id)
    if not worker and os.environ.get("MLFLOW_RUN_ID"):  # under `mlflow run . -e tune`
        tracking.set_tags(os.environ["MLFLOW_RUN_ID"],
                          {tracking.ROLE: "tuning_launcher", "tuning_run_id": log.run_id})
    try:
        if args.workers > 1:
            result = tuning.tune_parallel(spec, budget, args.seed, storage, args.workers,
                                          splits, args.data_dir, log.run_id, log.log_trial,
                                          args.n_trials, args.timeout)
        else:
            index = args.worker_index
            if index is None:  # a machine joining on its own: its own sampler seed
                index = zlib.crc32(tuning.worker_id().encode()) % 100_000
            result = tuning.tune(spec, budget, splits, args.seed, storage,
                                 log_trial=log.log_trial, timeout=args.timeout,
                                 n_trials=None if args.n_trials == QUEUED else args.n_trials,
                                 queued=args.n_trials == QUEUED, worker_index=index,
                                 require_best=False)
    except BaseException:
        if not worker:
            log.finish(None, status="FAILED")
        raise
    if not worker:
        log.finish(result)
        best = (f"best val_accuracy {result.best_value:.4f} with {result.best_params}"
                if result.best_value is not None else "no complete trial yet")
        print(f"{spec.name}: study {name} holds {result.n_trials} finished trials "
              f"({len(result.history)} new); {best}")
    return 0


def _report(args) -> int:
    from pathlib import Path

    from study import leaderboard, report, tracking

    tracking.configure()
    built = report.build(args.run_id, Path(args.out) if args.out else None, args.data_dir)
    if os.environ.get("MLFLOW_RUN_ID"):  # under `mlflow run . -e report`: link the two runs
        tracking.set_tags(os.environ["MLFLOW_RUN_ID"],
                          {tracking.ROLE: "report", "compare_run_id": built.run_id})
    print(leaderboard.render_text(built.rows))
    print(f"\nReport: {built.html}")
    return 0


def _predict(args) -> int:
    from study import predict, tracking

    if not 1 <= args.top <= config.N_CLASSES:
        raise ConfigError(f"--top must be between 1 and {config.N_CLASSES}, got {args.top}")
    tracking.configure()
    uri = optional(args.model_uri) or predict.DEFAULT_MODEL_URI
    if args.print_request:
        print(predict.request_body(args.paths, uri))
        return 0
    results = predict.classify(args.paths, uri, args.top, optional(args.save_preprocessed or ""))
    print(predict.render(results, args.json))
    bad = [r for r in results if r.error]
    for r in bad:  # one line per bad file on stderr too, for scripts that only read stderr
        print(f"error: {r.path}: {r.error}", file=sys.stderr)
    return 1 if bad else 0


def _repeats(args) -> int:
    from study import repeats

    summary = repeats.run(args.run_id, args.seeds, args.top, args.data_dir)
    if os.environ.get("MLFLOW_RUN_ID"):  # under `mlflow run . -e repeats`: link the two runs
        from study import tracking

        tracking.set_tags(os.environ["MLFLOW_RUN_ID"],
                          {tracking.ROLE: "repeats_launcher", "repeats_run_id": summary["run_id"]})
    print(repeats.main_summary(summary))
    print(f"rebuild the compare's report to show them: mlflow run . -e report -P "
          f"run_id={summary['compare_run_id']}")
    return 0


def _ablation(args) -> int:
    from study import ablation

    result = ablation.run(args.profile, args.seed, args.data_dir,
                          None if args.compare_run_id == "-" else args.compare_run_id)
    if os.environ.get("MLFLOW_RUN_ID"):  # under `mlflow run . -e ablation`: link the two runs
        from study import tracking

        tracking.set_tags(os.environ["MLFLOW_RUN_ID"],
                          {tracking.ROLE: "ablation_launcher", "ablation_run_id": result["run_id"]})
    print(ablation.render_markdown(result["rows"]))
    print(f"\nablation run {result['run_id']} ({args.profile.name} profile): "
          f"{result['seconds'] / 60:.1f} min; best setting {result['best']} (run "
          f"{result['best_run_id']}); "
          + (f"shown in the report of compare {result['compare_run_id']} (rebuild it with "
             f"`mlflow run . -e report -P run_id={result['compare_run_id']}`)"
             if result["compare_run_id"] else "no compare to attach it to"))
    return 0
