"""Command line: `study compare`, `study data`, `study pipelines`. User errors exit 2 in one line."""

from __future__ import annotations

import argparse
import os
import sys

from study import config
from study.errors import ConfigError, StudyError


def _number(text: str) -> float:
    """MLproject passes numbers as text (whole ones as 2.0 too); NaN for anything else,
    infinities included."""
    import math

    try:
        value = float(text)
    except ValueError:
        return float("nan")
    return value if math.isfinite(value) else float("nan")


def _seed(text: str) -> int:
    value = _number(text)
    if value != value:
        raise argparse.ArgumentTypeError(f"seed must be a whole number, got {text!r}")
    if value != int(value) or value < 0:
        raise argparse.ArgumentTypeError(f"seed must be a whole number >= 0, got {text!r}")
    return int(value)


def _positive(what: str, auto: bool = False):
    """A whole number >= 1 (MLproject passes floats such as 2.0); 'auto' -> None if allowed."""

    def parse(text: str) -> int | None:
        if auto and text in ("auto", "-", ""):
            return None
        value = _number(text)
        if not value >= 1 or value != int(value):
            raise argparse.ArgumentTypeError(
                f"{what} must be a whole number >= 1{' or auto' if auto else ''}, got {text!r}")
        return int(value)

    return parse


QUEUED = -1  # `--n-trials queued`: pop the study's queued trials (a parallel compare's queue)


def _trials(text: str) -> int | None:
    return QUEUED if text == "queued" else _positive("n_trials", auto=True)(text)


def _seconds(text: str) -> float | None:
    if text in ("auto", "-", ""):
        return None
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"timeout must be seconds > 0 or auto, got {text!r}")
    return value


def _optional(text: str) -> str | None:
    """MLproject cannot pass an empty value, so '-' and 'auto' mean 'not given'."""
    return None if text in ("", "-", "auto", "local", "default") else text


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, like every other user error
        self.exit(2, f"error: {message} (see `study {self.prog.split()[-1]} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="study", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    cmp = sub.add_parser("compare", help="tune, train, test and rank the pipelines")
    cmp.add_argument("--profile", default=config.DEFAULT_PROFILE,
                     help=f"one of {', '.join(config.PROFILES)} (default {config.DEFAULT_PROFILE})")
    cmp.add_argument("--pipelines", default="all", help="comma list of pipelines, or 'all'")
    cmp.add_argument("--seed", type=_seed, default=config.SEED, help="seed of models and samplers")
    cmp.add_argument("--data-dir", type=_optional, default=None,
                     help=f"folder with the four .gz files (else ${config.DATA_DIR_ENV}, the Debian "
                          "package, the Keras cache, then a download)")
    cmp.add_argument("--storage", type=_optional, default=None,
                     help="Optuna storage: 'local' journal file, a journal path, or an RDB URL "
                          "without a password (@run: the `mlflow run` run's storage parameter)")
    cmp.add_argument("--workers", type=_positive("workers"), default=1,
                     help="processes that share each pipeline's tuning study (default 1)")
    cmp.add_argument("--parallel", type=_positive("parallel"), default=1,
                     help="pipelines run side by side in worker processes, each with its share "
                          "of the cores (default 1; 2 pays off for single-threaded models)")

    tun = sub.add_parser("tune", help="join a pipeline's shared Optuna study as a worker")
    tun.add_argument("--pipeline", required=True, help="a pipeline name (see `study pipelines`)")
    tun.add_argument("--profile", default=config.DEFAULT_PROFILE)
    tun.add_argument("--seed", type=_seed, default=config.SEED)
    tun.add_argument("--storage", type=_optional, default=None,
                     help="the study's storage: 'local' journal, a journal path, or an RDB URL "
                          "without a password (@run: the `mlflow run` run's storage parameter)")
    tun.add_argument("--n-trials", type=_trials, default=None,
                     help="trials to run (default auto: what the profile's budget still misses; "
                          "queued: help drain the queue of a running parallel compare)")
    tun.add_argument("--timeout", type=_seconds, default=None,
                     help="seconds after which no new trial starts (default: the profile's)")
    tun.add_argument("--workers", type=_positive("workers"), default=1,
                     help="processes on this machine popping the trials from the study's queue")
    tun.add_argument("--data-dir", type=_optional, default=None)
    # set by a parallel compare for the workers it starts
    tun.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    tun.add_argument("--tuning-run-id", type=_optional, default=None, help=argparse.SUPPRESS)

    rep = sub.add_parser("report", help="rebuild the leaderboard and report of a compare run")
    rep.add_argument("--run-id", default="latest", help="a compare (parent) run id, or 'latest'")
    rep.add_argument("--out", type=_optional, default=None,
                     help="report folder (default reports/<timestamp>-<profile>/)")
    rep.add_argument("--data-dir", type=_optional, default=None)

    pre = sub.add_parser("predict", help="classify image files with the champion (or any model)")
    pre.add_argument("paths", nargs="+", help="image files, directories or glob patterns")
    pre.add_argument("--model-uri", default=None,
                     help="an MLflow model URI (default models:/fashion-mnist-classifier@champion)")
    pre.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pre.add_argument("--top", type=int, default=3, help="classes shown per image (default 3)")
    pre.add_argument("--save-preprocessed", metavar="DIR", default=None,
                     help="save the 28x28 image the model saw, per file, into DIR")
    pre.add_argument("--print-request", action="store_true",
                     help="print the JSON body `mlflow models serve` takes for these files "
                          "(the files themselves, base64-encoded under \"image\")")

    abl = sub.add_parser("ablation", help="the seed report's MLP experiments, one run per setting")
    abl.add_argument("--profile", default=config.DEFAULT_PROFILE)
    abl.add_argument("--seed", type=_seed, default=config.SEED)
    abl.add_argument("--data-dir", type=_optional, default=None)
    abl.add_argument("--compare-run-id", default="latest",
                     help="the compare whose report shows this ablation: a run id, 'latest' "
                          "(the default: the latest finished compare, if any) or '-' (none)")

    rpt = sub.add_parser("repeats", help="refit a compare's top models with more seeds: "
                                         "mean +/- std of test accuracy")
    rpt.add_argument("--run-id", default="latest", help="the compare run (default: latest)")
    rpt.add_argument("--seeds", type=_positive("seeds"), default=5, help="seeds per model (>= 2)")
    rpt.add_argument("--top", type=_positive("top"), default=3, help="how many of the best models")
    rpt.add_argument("--data-dir", type=_optional, default=None)

    dat = sub.add_parser("data", help="find or fetch the dataset and verify it")
    dat.add_argument("--data-dir", type=_optional, default=None)

    sub.add_parser("pipelines", help="list the registered pipelines")
    sub.add_parser("store", help="create (or check) the MLflow tracking store, safely when "
                   "several processes start at once")
    return parser


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter (CPU features, graph attribute notices) hides progress.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = build_parser().parse_args(argv)
    try:
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

            for name in pipelines.available():
                spec = pipelines.load(name)
                print(f"{name:14s} {spec.family:12s} reducer={spec.reducer:5s} {spec.description}")
            return 0
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
    if args.profile not in config.PROFILES:
        raise ConfigError(f"unknown profile {args.profile!r}; valid: {', '.join(config.PROFILES)}")
    from study import compare, leaderboard, tracking

    result = compare.compare(args.profile, args.pipelines, args.seed, args.data_dir, args.storage,
                             args.workers, args.parallel)
    print()
    print(f"Leaderboard (compare run {result.run_id}, {args.profile} profile, "
          f"{result.seconds / 60:.1f} min)")
    print(leaderboard.render_text(result.rows))
    print()
    if result.failures:
        print(f"\n{len(result.failures)} pipeline(s) failed (traceback.txt in their runs):")
        for name, reason in result.failures.items():
            print(f"  {name}: {reason}")
    if result.registry:
        reg = result.registry
        print(f"Champion registered: models:/{reg['name']}/{reg['version']} "
              + (f"(alias @champion now points to it: {reg['reason']})" if reg["alias_moved"]
                 else f"(alias @champion stays on version {reg['alias_version']}: "
                      f"{reg['reason']})"))
    if result.report:
        print(f"Report: {result.report}/report.html")
    print(f"Explore the runs: {tracking.ui_command()}")
    return 1 if result.failures else 0


def _tune(args) -> int:
    """A worker: a share of a parallel compare's trials, or a machine joining a study."""
    import zlib

    from study import compare, data, pipelines, tracking, tuning

    if args.profile not in config.PROFILES:
        raise ConfigError(f"unknown profile {args.profile!r}; valid: {', '.join(config.PROFILES)}")
    (spec,) = pipelines.resolve([args.pipeline])
    if not spec.search:
        raise ConfigError(f"pipeline {spec.name} has no search space, nothing to tune; "
                          "compare fits it with its fixed parameters")
    if args.n_trials == QUEUED and args.workers > 1:
        raise ConfigError("--n-trials queued takes one worker per process; start more "
                          "processes instead of --workers")
    splits = data.make_splits(data.load(args.data_dir), config.PROFILES[args.profile])
    storage = compare.resolve_storage(args.storage)
    compare.open_stores(storage)  # unreachable storage or server: one line, nothing written
    worker = args.tuning_run_id is not None
    if not worker:
        tracking.check_can_write()  # a READ-only user stops here, before any trial
    if worker:
        tuning.exit_with_parent()
    name = tuning.study_name(spec, args.profile, args.seed)
    log = tracking.TuningLog(spec.name, name, args.profile, run_id=args.tuning_run_id)
    if not worker and os.environ.get("MLFLOW_RUN_ID"):  # under `mlflow run . -e tune`
        tracking.set_tags(os.environ["MLFLOW_RUN_ID"],
                          {tracking.ROLE: "tuning_launcher", "tuning_run_id": log.run_id})
    try:
        if args.workers > 1:
            result = tuning.tune_parallel(spec, args.profile, args.seed, storage, args.workers,
                                          splits, args.data_dir, log.run_id, log.log_trial,
                                          args.n_trials, args.timeout)
        else:
            index = args.worker_index
            if index is None:  # a machine joining on its own: its own sampler seed
                index = zlib.crc32(tuning.worker_id().encode()) % 100_000
            result = tuning.tune(spec, args.profile, splits, args.seed, storage,
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
    uri = _optional(args.model_uri) or predict.DEFAULT_MODEL_URI
    if args.print_request:
        print(predict.request_body(args.paths, uri))
        return 0
    results = predict.classify(args.paths, uri, args.top, _optional(args.save_preprocessed or ""))
    print(predict.render(results, args.json))
    bad = [r for r in results if r.error]
    for r in bad:  # one line per bad file on stderr too, for scripts that only read stderr
        print(f"error: {r.path}: {r.error}", file=sys.stderr)
    return 1 if bad else 0


def _repeats(args) -> int:
    from study import repeats

    summary = repeats.run(args.run_id, args.seeds, args.top, args.data_dir,
                          log=lambda m: print(m, file=sys.stderr, flush=True))
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
    print(f"\nablation run {result['run_id']} ({args.profile} profile): "
          f"{result['seconds'] / 60:.1f} min; best setting {result['best']} (run "
          f"{result['best_run_id']}); "
          + (f"shown in the report of compare {result['compare_run_id']} (rebuild it with "
             f"`mlflow run . -e report -P run_id={result['compare_run_id']}`)"
             if result["compare_run_id"] else "no compare to attach it to"))
    return 0
