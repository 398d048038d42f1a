"""The command line's arguments: one sub-command each, every value checked where it is
parsed (a bad one is one line and exit 2), the profile resolved once into a config.Profile."""

from __future__ import annotations

import argparse

from study import config
from study.errors import ConfigError

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


def _minutes(text: str) -> float | None:
    """A time budget in minutes (a positive number), or none/-/empty for no budget."""
    if text.strip().lower() in ("none", "-", ""):
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(
            f"budget_minutes must be a positive number of minutes (or none), got {text!r}")
    return value


def _cluster(text: str):
    """local:N, a Dask scheduler address, or none (study.cluster.parse, which imports no Dask)."""
    from study import cluster

    try:
        return cluster.parse(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _yes_no(what: str):
    """true/false (MLproject passes the word); the flag alone means true."""
    def parse(text: str) -> bool:
        value = {"true": True, "yes": True, "1": True, "false": False, "no": False,
                 "0": False}.get(text.strip().lower())
        if value is None:
            raise argparse.ArgumentTypeError(f"{what} must be true or false, got {text!r}")
        return value
    return parse


def _profile(text: str) -> config.Profile:
    """The profile, resolved here once; the layers below get the Profile, not its name."""
    try:
        return config.profile(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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


def optional(text: str) -> str | None:
    """MLproject cannot pass an empty value, so '-' and 'auto' mean 'not given'."""
    return None if text in ("", "-", "auto", "local", "default") else text


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, like every other user error
        self.exit(2, f"error: {message} (see `study {self.prog.split()[-1]} --help`)\n")


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The `study` command's parser; every sub-command takes -v/-q (one logging set-up)."""
    parser = _Parser(prog="study", description=description)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    common = argparse.ArgumentParser(add_help=False)  # what every command takes
    common.add_argument("-v", "--verbose", action="count", default=0,
                        help="more detail (-v: debug messages)")
    common.add_argument("-q", "--quiet", action="count", default=0,
                        help=f"only warnings and errors (default: progress too; or set "
                             f"{config.LOG_LEVEL_ENV}=WARNING)")

    _add_compare(sub, common)
    _add_tune(sub, common)
    _add_report(sub, common)
    _add_predict(sub, common)
    _add_ablation(sub, common)
    _add_repeats(sub, common)
    _add_data_commands(sub, common)
    return parser


def _add_compare(sub, common) -> None:
    """compare: tune, train, test and rank the pipelines."""
    cmp = sub.add_parser("compare", parents=[common],
                        help="tune, train, test and rank the pipelines")
    cmp.add_argument("--profile", type=_profile, default=config.DEFAULT_PROFILE,
                     help=f"one of {', '.join(config.PROFILES)} (default {config.DEFAULT_PROFILE})")
    cmp.add_argument("--pipelines", default="all", help="comma list of pipelines, or 'all'")
    cmp.add_argument("--seed", type=_seed, default=config.SEED, help="seed of models and samplers")
    cmp.add_argument("--data-dir", type=optional, default=None,
                     help=f"folder with the four .gz files (else ${config.DATA_DIR_ENV}, the Debian "
                          "package, the Keras cache, then a download)")
    cmp.add_argument("--storage", type=optional, default=None,
                     help="Optuna storage: 'local' journal file, a journal path, or an RDB URL "
                          "without a password (@run: the `mlflow run` run's storage parameter)")
    cmp.add_argument("--workers", type=_positive("workers"), default=1,
                     help="processes that share each pipeline's tuning study (default 1)")
    cmp.add_argument("--parallel", type=_positive("parallel"), default=1,
                     help="pipelines run side by side in worker processes, each with its share "
                          "of the cores (default 1; 2 pays off for single-threaded models)")
    cmp.add_argument("--budget-minutes", type=_minutes, default=None,
                     help="end the whole compare, data to report, within this many minutes "
                          "(+5%%): pipelines share what is left, those that cannot fit are "
                          "skipped (default none: the profile's budgets as they are)")
    cmp.add_argument("--cluster", type=_cluster, default=None,
                     help="each pipeline as a task on a Dask cluster: local:N (N worker "
                          "processes here) or a scheduler address such as tls://HOST:8786, "
                          "whose workers share a tracking server and a PostgreSQL storage "
                          "(default none)")
    cmp.add_argument("--plan-only", type=_yes_no("plan_only"), nargs="?", const=True,
                     default=False,
                     help="print the plan for these arguments (the budget's, or the profile's "
                          "recipe with its expected minutes on this machine) and exit: nothing "
                          "is trained or written")
    cmp.add_argument("--cluster-insecure", type=_yes_no("cluster_insecure"), nargs="?",
                     const=True, default=False,
                     help="accept a plain tcp:// scheduler on another machine (no TLS: whoever "
                          "reaches it runs code on its workers); only on a network you trust")


def _add_tune(sub, common) -> None:
    """tune: a worker of a pipeline's shared Optuna study."""
    tun = sub.add_parser("tune", parents=[common],
                        help="join a pipeline's shared Optuna study as a worker")
    tun.add_argument("--pipeline", required=True, help="a pipeline name (see `study pipelines`)")
    tun.add_argument("--profile", type=_profile, default=config.DEFAULT_PROFILE)
    tun.add_argument("--seed", type=_seed, default=config.SEED)
    tun.add_argument("--storage", type=optional, default=None,
                     help="the study's storage: 'local' journal, a journal path, or an RDB URL "
                          "without a password (@run: the `mlflow run` run's storage parameter)")
    tun.add_argument("--n-trials", type=_trials, default=None,
                     help="trials to run (default auto: what the profile's budget still misses; "
                          "queued: help drain the queue of a running parallel compare)")
    tun.add_argument("--timeout", type=_seconds, default=None,
                     help="seconds after which no new trial starts (default: the profile's)")
    tun.add_argument("--workers", type=_positive("workers"), default=1,
                     help="processes on this machine popping the trials from the study's queue")
    tun.add_argument("--data-dir", type=optional, default=None)
    # set by a parallel compare for the workers it starts
    tun.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    tun.add_argument("--tuning-run-id", type=optional, default=None, help=argparse.SUPPRESS)


def _add_report(sub, common) -> None:
    """report: rebuild a compare's leaderboard and report."""
    rep = sub.add_parser("report", parents=[common],
                        help="rebuild the leaderboard and report of a compare run")
    rep.add_argument("--run-id", default="latest", help="a compare (parent) run id, or 'latest'")
    rep.add_argument("--out", type=optional, default=None,
                     help="report folder (default reports/<timestamp>-<profile>/)")
    rep.add_argument("--data-dir", type=optional, default=None)


def _add_predict(sub, common) -> None:
    """predict: classify image files with a logged or registered model."""
    pre = sub.add_parser("predict", parents=[common],
                        help="classify image files with the champion (or any model)")
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


def _add_ablation(sub, common) -> None:
    """ablation: the seed report's MLP experiments."""
    abl = sub.add_parser("ablation", parents=[common],
                        help="the seed report's MLP experiments, one run per setting")
    abl.add_argument("--profile", type=_profile, default=config.DEFAULT_PROFILE)
    abl.add_argument("--seed", type=_seed, default=config.SEED)
    abl.add_argument("--data-dir", type=optional, default=None)
    abl.add_argument("--compare-run-id", default="latest",
                     help="the compare whose report shows this ablation: a run id, 'latest' "
                          "(the default: the latest finished compare, if any) or '-' (none)")


def _add_repeats(sub, common) -> None:
    """repeats: refit a compare's top models with more seeds."""
    rpt = sub.add_parser("repeats", parents=[common],
                        help="refit a compare's top models with more seeds: "
                                         "mean +/- std of test accuracy")
    rpt.add_argument("--run-id", default="latest", help="the compare run (default: latest)")
    rpt.add_argument("--seeds", type=_positive("seeds"), default=5, help="seeds per model (>= 2)")
    rpt.add_argument("--top", type=_positive("top"), default=3, help="how many of the best models")
    rpt.add_argument("--data-dir", type=optional, default=None)


def _add_data_commands(sub, common) -> None:
    """data, pipelines, store: set-up and listing commands."""
    dat = sub.add_parser("data", parents=[common],
                        help="find or fetch the dataset and verify it")
    dat.add_argument("--data-dir", type=optional, default=None)
    sub.add_parser("pipelines", parents=[common],
                   help="list the registered pipelines")
    sub.add_parser("store", parents=[common],
                   help="create (or check) the MLflow tracking store, safely when "
                   "several processes start at once")
