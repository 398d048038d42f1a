"""Paths, names and defaults of the study, in one place.

Nothing here touches the disk or the network: values are computed from the environment
when a function is called, so importing the package stays cheap and side-effect free.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = PROJECT_ROOT / "study"  # shipped with logged models (code_paths)
PIPELINES_DIR = PROJECT_ROOT / "pipelines"
PIPELINES_ENV = "STUDY_PIPELINES_DIR"  # a folder of your own pipeline YAMLs instead
REPORTS_DIR = PROJECT_ROOT / "reports"

SEED = 2020  # the seed report's split seed; used for every random choice unless overridden
VALIDATION_FRACTION = 0.2

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
N_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE = (28, 28)

# Where the four canonical IDX files are looked for, in order (see study.data.locate).
DATA_DIR_ENV = "FASHION_MNIST_DIR"
DEBIAN_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_PACKAGE = "dataset-fashion-mnist"

EXPERIMENT_NAME = "fashion-mnist"
TUNING_SUFFIX = "-tuning"  # tuning runs live in their own experiment, out of the leaderboard's way
REGISTERED_MODEL = "fashion-mnist-classifier"
CHAMPION_ALIAS = "champion"
REPORTS_ENV = "STUDY_REPORTS_DIR"  # where report folders go (default: reports/ of the project)


def code_digest(package: Path | None = None) -> str:
    """SHA-256 (10 hex digits) of the package's Python sources: a final run records it, and a
    resumed compare reuses a killed compare's model only when the code that made it is the same."""
    import hashlib

    package = package or Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:10]


def keras_cache_dir() -> Path:
    return Path.home() / ".keras" / "datasets" / "fashion-mnist"


def download_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fashion-mnist-study"


def reports_dir() -> Path:
    return Path(os.environ.get(REPORTS_ENV) or REPORTS_DIR)


def pipelines_dir() -> Path:
    return Path(os.environ.get(PIPELINES_ENV) or PIPELINES_DIR)


def numba_cache_dir() -> Path:
    """UMAP's numba kernels compile in about a minute here; a persistent cache pays that once."""
    return Path(os.environ.get("NUMBA_CACHE_DIR") or download_cache_dir() / "numba")


PROBE_CACHE_ENV = "STUDY_PROBE_CACHE"  # a folder for the throughput probes' figures instead


PROBES_ENV = "STUDY_PROBES"  # "0": no throughput probes (YAML costs scaled by the sgemm probe)


def probes_enabled() -> bool:
    return os.environ.get(PROBES_ENV, "1") != "0"


def probe_cache_file() -> Path:
    """study.probes' figures, per host: a plan probes this machine once, then reads them."""
    folder = os.environ.get(PROBE_CACHE_ENV) or download_cache_dir() / "probes"
    return Path(folder) / "probes.json"


def import_umap():
    """`import umap` with the numba cache configured first (it is read at numba import)."""
    import warnings

    os.environ.setdefault("NUMBA_CACHE_DIR", str(numba_cache_dir()))
    # Seeded on purpose (reproducible rankings), so UMAP's "n_jobs overridden" notice is noise.
    warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
    import umap

    return umap


# A query key or key=value word ending in a password, token, secret, key or signature holds a
# secret (sslpassword, access_token, client_secret, api_key, X-Amz-Signature; not `passed=`).
_SECRET_KEY = (r"[\w.-]*(?:pass|passwd|password|passphrase|pwd|token|secret|key|sig|signature"
               r"|credential)s?")
_KEY_VALUE = re.compile(rf"(?i)(?<![\w.-])({_SECRET_KEY}=)[^&;\s'\"]+")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def _password_span(url: str) -> tuple[int, int] | None:
    """Where the password of a URL's user:password@ lies, as the widest reading of urllib
    (the last @ of the authority: `u:p@ss@host`) and SQLAlchemy (a password may hold `/`:
    base64) sees it; None when neither finds one."""
    from urllib.parse import urlsplit

    start = url.index("://") + 3
    ends = []
    try:
        netloc = urlsplit(url).netloc
    except ValueError:  # e.g. an unclosed [ipv6: the SQLAlchemy reading still applies
        netloc = ""
    userinfo = netloc.rpartition("@")[0]
    if ":" in userinfo:
        ends.append(start + len(userinfo))
    try:
        from sqlalchemy.engine import make_url

        password = make_url(url).password
    except Exception:  # not a URL SQLAlchemy reads: urllib's reading stands alone
        password = None
    if password is not None:
        ends.append(url.index("@", url.index(":", start)))
    if not ends:
        return None
    return url.index(":", start) + 1, max(ends)


def _redact_url(url: str) -> str:
    span = _password_span(url)
    if span:
        url = url[:span[0]] + "***" + url[span[1]:]
    return url


def redact(text: str) -> str:
    """A URL, or a message holding some, without its secrets: the password of
    user:password@ (as URL parsers read it) and every value whose key names a password,
    token, secret, key or signature (`?sslpassword=`, `access_token=`, `sig=`, ...)."""
    text = _URL.sub(lambda m: _redact_url(m.group()), str(text))
    return _KEY_VALUE.sub(r"\1***", text)


def carries_secret(url: str) -> bool:
    """True when `redact` would hide something: the two never disagree."""
    return redact(url) != str(url)


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else a SQLite store in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


LOG_LEVEL_ENV = "STUDY_LOG_LEVEL"  # the study's log level (the CLI's -v/-q win over it)
THREADS_ENV = "STUDY_THREADS"  # cores one process may use; compare's workers split the machine


def threads() -> int:
    """Cores this process may use (n_jobs, BLAS, TensorFlow): all of them unless a parallel
    compare gave each worker its share."""
    return max(1, int(os.environ.get(THREADS_ENV) or os.cpu_count() or 1))


def thread_env(n: int) -> dict[str, str]:
    """Environment that holds a child process and its native libraries to n threads."""
    return {THREADS_ENV: str(n), "OMP_NUM_THREADS": str(n), "OPENBLAS_NUM_THREADS": str(n),
            "MKL_NUM_THREADS": str(n), "LOKY_MAX_CPU_COUNT": str(n)}


def worker_env(threads: int) -> dict[str, str]:
    """This process's environment for a worker it starts: its share of the cores, this
    tracking store, this log level, and no MLFLOW_RUN_ID (a worker must not resume the
    project run)."""
    import logging

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    level = logging.getLevelName(logging.getLogger("study").getEffectiveLevel())
    return {**env, **thread_env(threads), "MLFLOW_TRACKING_URI": tracking_uri(),
            LOG_LEVEL_ENV: level}


def default_optuna_journal() -> Path:
    """Journal file storage: safe for several processes on one machine, no server needed."""
    return Path(os.environ.get("OPTUNA_JOURNAL", Path.cwd() / "optuna.journal"))


@dataclass(frozen=True)
class Profile:
    """How much data and compute a compare invocation spends."""

    name: str
    train_subsample: int | None  # rows kept of the 48k training split (None: all)
    val_subsample: int | None  # the 10k test set is always used whole, once per final model


PROFILES = {
    "smoke": Profile("smoke", train_subsample=600, val_subsample=300),
    "quick": Profile("quick", train_subsample=None, val_subsample=None),
    "full": Profile("full", train_subsample=None, val_subsample=None),
}
DEFAULT_PROFILE = "quick"
# timebudget.probe_speed's float32 matrix-multiply rate (GFLOP/s) on the host that measured the
# pipelines' `cost:` in their YAML (the quick compare of 2026-11-29); a faster machine scales
# those costs down.
COST_HOST_GFLOPS = 98.0  # one thread; measured 92-99 (3 probes) on 2026-11-29


def profile(name: str | Profile) -> Profile:
    """The profile called `name`, resolved once where a command starts (a Profile passes
    through); the layers below receive the Profile and each pipeline's Budget, never a name
    to look up. An unknown name is a one-line ConfigError naming the valid ones."""
    if isinstance(name, Profile):
        return name
    if name not in PROFILES:
        from study.errors import ConfigError

        raise ConfigError(f"unknown profile {name!r}; valid: {', '.join(PROFILES)}")
    return PROFILES[name]
