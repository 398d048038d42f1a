"""Fixtures on real data: the canonical files, a few hundred real images, a temporary MLflow store."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from study import config, data

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Compares under test (and their subprocesses) neither probe this host's networks for their
# forecasts (seconds each, tens under load: tests/test_probes.py probes real ones itself) nor
# write the user's probe cache.
os.environ.setdefault(config.PROBES_ENV, "0")
os.environ.setdefault(config.PROBE_CACHE_ENV, tempfile.mkdtemp(prefix="study-probes-"))


@pytest.fixture
def sigkill_at():
    """start(command, marker, **popen): run `command` in its own session and SIGKILL its whole
    process group at the first stderr line starting with `marker`, as a crash or `kill -9`
    would; returns the stderr lines seen."""
    def start(command, marker: str, **popen) -> list[str]:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, start_new_session=True, **popen)
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if line.startswith(marker):
                os.killpg(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, "".join(seen)[-3000:]
        return seen

    return start


@pytest.fixture
def render_dom(tmp_path):
    """The DOM headless Chromium renders for an HTML file (skipped without Chromium, failed
    when STUDY_REQUIRE_BROWSER is set, as in CI)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("STUDY_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")

    def render(html_path: Path) -> str:
        proc = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp_path / 'chromium-profile'}",
             "--virtual-time-budget=5000", "--dump-dom", html_path.as_uri()],
            capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0 and "</html>" in proc.stdout, proc.stderr[-2000:]
        return proc.stdout

    return render


@pytest.fixture(scope="session")
def real_dir() -> Path:
    """The verified folder holding the four canonical files (make setup put them there)."""
    return data.locate(download=False)


@pytest.fixture(scope="session")
def fmnist(real_dir) -> data.FashionMNIST:
    return data.load(real_dir, download=False)


@pytest.fixture(scope="session")
def tiny(fmnist) -> data.Splits:
    """A few hundred real images: 300 train, 150 validation, 200 test, class-balanced."""
    train_idx, val_idx = data.split_indices(fmnist.y_train)
    tr = data.stratified_subsample(train_idx, fmnist.y_train, 300)
    va = data.stratified_subsample(val_idx, fmnist.y_train, 150)
    te = data.stratified_subsample(np.arange(len(fmnist.y_test)), fmnist.y_test, 200)
    return data.Splits(fmnist.x_train[tr], fmnist.y_train[tr], fmnist.x_train[va],
                       fmnist.y_train[va], fmnist.x_test[te], fmnist.y_test[te], tr, va)


@pytest.fixture
def copy_of_real(real_dir, tmp_path) -> Path:
    """A writable copy of the four real files, for corrupting."""
    target = tmp_path / "fmnist"
    target.mkdir()
    for spec in data.FILES.values():
        shutil.copy(real_dir / spec.filename, target / spec.filename)
    return target


@pytest.fixture
def tracking_store(tmp_path, monkeypatch) -> str:
    """A fresh SQLite MLflow store and Optuna journal in a temp dir, used as the working dir."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("OPTUNA_JOURNAL", str(tmp_path / "optuna.journal"))
    monkeypatch.setenv(config.REPORTS_ENV, str(tmp_path / "reports"))
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    # mlflow remembers the last active experiment id per process; in a new store it is stale
    mlflow.set_experiment("Default")
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


class Postgres:
    """The test server `.ci/postgres` set up in `folder`: one role per purpose ("optuna",
    "mlflow", "auth"), each owning its one database, and the superuser ("admin"); URLs without
    passwords, and libpq password files per holder (optuna: users and workers; server: the
    tracking server's host; admin: these fixtures)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.urls = dict(line.split("=", 1) for line in
                         (folder / "urls").read_text().splitlines() if "=" in line)

    def passfile(self, holder: str) -> str:
        return str(self.folder / f"{holder}.pgpass")

    def password(self, purpose: str) -> str:
        """A role's password, read from its holder's file (for the tests that search for it)."""
        role, database = self.role(purpose), self.urls[purpose].rsplit("/", 1)[1]
        holder = {"admin": "admin", "optuna": "optuna"}.get(purpose, "server")
        for line in Path(self.passfile(holder)).read_text().splitlines():
            *where, password = line.split(":")
            if where[2:] == [database, role]:
                return password
        raise LookupError(purpose)

    def role(self, purpose: str) -> str:
        return self.urls[purpose].split("//", 1)[1].split("@", 1)[0]

    def admin(self):
        import psycopg

        return psycopg.connect(self.urls["admin"], passfile=self.passfile("admin"),
                               autocommit=True)


@pytest.fixture(scope="session")
def postgres_server() -> Postgres:
    """A real PostgreSQL server on loopback, set up by `.ci/postgres` in STUDY_TEST_POSTGRES's
    folder (`.ci/run` starts it), else started here from Debian's binaries, else skip (fail in
    CI). This process and the commands it starts hold the Optuna role's password only
    (PGPASSFILE), as users and workers do."""
    folder = os.environ.get("STUDY_TEST_POSTGRES")
    if not folder:
        script = config.PROJECT_ROOT / ".ci" / "postgres"
        folder = "/tmp/study-postgres"
        proc = subprocess.run([str(script), folder], capture_output=True, text=True, timeout=120)
        folder = folder if proc.returncode == 0 else ""
    if not folder:
        if os.environ.get("STUDY_REQUIRE_POSTGRES") == "1":
            pytest.fail("no PostgreSQL server: run .ci/postgres (apt-get install postgresql)")
        pytest.skip("no PostgreSQL server (apt-get install postgresql, then .ci/postgres)")
    if not (Path(folder) / "urls").is_file():
        pytest.fail(f"STUDY_TEST_POSTGRES={folder} is not a folder .ci/postgres set up; fix: "
                    "set it to the folder given to .ci/postgres")
    server = Postgres(Path(folder))
    os.environ.setdefault("PGPASSFILE", server.passfile("optuna"))
    return server


@pytest.fixture
def postgres_db(postgres_server):
    """make(purpose): the URL of that purpose's database ("optuna", "mlflow", "auth"), emptied
    first (dropped and created again, owned by its role, CONNECT revoked from PUBLIC)."""
    def make(purpose: str = "optuna") -> str:
        url = postgres_server.urls[purpose]
        database, role = url.rsplit("/", 1)[1], postgres_server.role(purpose)
        with postgres_server.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{database}" OWNER "{role}"')
            conn.execute(f'REVOKE CONNECT, TEMPORARY ON DATABASE "{database}" FROM PUBLIC')
        return url

    return make
