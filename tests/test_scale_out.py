"""Scale-out and resilience on real engines: workers sharing one Optuna study (journal file and
PostgreSQL), a real `mlflow server` backed by PostgreSQL, and a compare killed and resumed."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import optuna
import pytest

from study import config, pipelines, tuning

pytestmark = pytest.mark.slow


def study_env(tmp_path: Path, tracking_uri: str | None = None) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri or f"sqlite:///{tmp_path / 'm.db'}",
           "OPTUNA_JOURNAL": str(tmp_path / "o.journal"), config.REPORTS_ENV: str(tmp_path / "r"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME",
                   "MLFLOW_REGISTRY_URI"):
        env.pop(leaked, None)
    return env


def _unblock_sigint() -> None:
    """SIGINT as a terminal delivers it: unblocked and not ignored. A test run started in the
    background (`pytest &`, a CI runner without job control) passes SIGINT on as ignored, and
    Python then installs no KeyboardInterrupt handler in the child: the compare would never
    see the Ctrl-C this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def study_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "study", *args]


def check_trials(storage: str, expected: int, tracking_uri: str) -> list:
    """Exactly `expected` complete trials, numbered 0.., drawn apart, each logged once."""
    spec = pipelines.load("logreg")
    study = optuna.load_study(study_name=tuning.study_name(spec, "smoke", config.SEED),
                              storage=tuning.open_storage(storage))
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["COMPLETE"] * expected
    assert sorted(t.number for t in trials) == list(range(expected))  # none lost, none twice
    assert len({t.params["C"] for t in trials}) == expected  # workers' samplers are seeded apart

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(config.EXPERIMENT_NAME + config.TUNING_SUFFIX)
    logged = client.search_runs([exp.experiment_id], "tags.role = 'trial'", max_results=1000)
    assert sorted(int(r.data.tags["trial_number"]) for r in logged) == list(range(expected))
    return trials


# The smoke budget's 60 s timeout is a clock: on a busy 2-core machine (test files side by side)
# workers reach it with trials still queued and stop, as they should (test_tuning covers that).
# Here the count is what is tested, so the clock is set out of reach.
NO_CLOCK = ("--timeout", "900")


@pytest.mark.parametrize("backend", ["journal", "postgresql"])
def test_three_workers_run_exactly_the_requested_trials(backend, tmp_path, request):
    storage = (str(tmp_path / "shared.journal") if backend == "journal"
               else request.getfixturevalue("postgres_db")("optuna"))
    env = study_env(tmp_path)
    proc = subprocess.run(study_cmd("tune", "--pipeline", "logreg", "--profile", "smoke",
                                    "--storage", storage, "--n-trials", "7", "--workers", "3",
                                    *NO_CLOCK),
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "7 trials queued for 3 workers" in proc.stderr
    assert "holds 7 finished trials (7 new)" in proc.stdout
    check_trials(storage, 7, env["MLFLOW_TRACKING_URI"])
    if backend == "journal":  # the rest is the same through either storage: PostgreSQL's
        return

    # Three more processes start at once and drain 15 queued trials, as machines joining a
    # parallel compare's queue would (`tune --n-trials queued`).
    spec = pipelines.load("logreg")
    study = optuna.load_study(study_name=tuning.study_name(spec, "smoke", config.SEED),
                              storage=tuning.open_storage(storage))
    tuning.queue_trials(study, 15)
    joins = [subprocess.Popen(study_cmd("tune", "--pipeline", "logreg", "--profile", "smoke",
                                        "--storage", storage, "--n-trials", "queued",
                                        *NO_CLOCK),
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in joins]
    assert [p.returncode for p in joins] == [0, 0, 0], [err[-2000:] for _, err in outs]
    trials = check_trials(storage, 22, env["MLFLOW_TRACKING_URI"])
    assert len({t.user_attrs["worker"] for t in trials[7:]}) >= 2  # they did run side by side

    # optuna-dashboard reads the storage as it is
    port = free_port()
    dash = subprocess.Popen([str(Path(sys.executable).parent / "optuna-dashboard"), storage,
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}/api/studies"
        (summary,) = wait_json(base, dash)["study_summaries"]
        study = wait_json(f"{base}/{summary['study_id']}?after=0", dash)
    finally:
        dash.terminate()
        dash.wait(timeout=30)
    assert study["name"] == tuning.study_name(pipelines.load("logreg"), "smoke", config.SEED)
    assert sorted(t["number"] for t in study["trials"]) == list(range(22))


def wait_json(url: str, proc, seconds: float = 90):
    import json

    deadline = time.time() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.load(response)
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise
            time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, log: Path, seconds: float = 180) -> None:
    """Until the MLflow server at `url` answers /health; its log's tail if it dies first."""
    deadline = time.time() + seconds
    while True:
        try:
            if urllib.request.urlopen(url + "/health", timeout=2).status == 200:
                return
        except OSError:
            pass
        if server.poll() is not None or time.time() > deadline:
            raise AssertionError(log.read_text()[-3000:])
        time.sleep(1)


@pytest.fixture
def mlflow_server(postgres_server, postgres_db, tmp_path):
    """A real `mlflow server` on loopback: runs and registry in PostgreSQL (the MLflow role's
    database, its password held by the server alone), artifacts proxied."""
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--backend-store-uri", postgres_db("mlflow"),
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        env={**os.environ, "PGPASSFILE": postgres_server.passfile("server")},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, server, tmp_path / "server.log")
    yield url
    # the test pointed this process's registry at the server (mlflow exports it to children)
    mlflow.set_registry_uri(None)
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)
    log.close()


def test_sigkilled_compare_resumes_without_retraining(tmp_path, sigkill_at):
    env = study_env(tmp_path)
    command = [shutil.which("mlflow", path=env["PATH"]), "run", str(config.PROJECT_ROOT), "-e",
               "compare", "--env-manager", "local", "--experiment-name", "resume",
               "-P", "profile=smoke", "-P", "pipelines=dummy,logreg,knn,cnn_seed1"]
    # killed as soon as the last pipeline starts: three are finished
    sigkill_at(command, "=== pipeline 4/4", cwd=tmp_path, env=env)

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("resume")
    (killed,) = client.search_runs([exp.experiment_id], "tags.role = 'compare'")
    assert killed.info.status == "RUNNING"  # nobody could mark it: SIGKILL
    before = {r.data.tags["pipeline"]: r.info.run_id for r in client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{killed.info.run_id}' and "
                             "tags.role = 'final' and attributes.status = 'FINISHED'")}
    assert sorted(before) == ["dummy", "knn", "logreg"]

    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=1800)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 interrupted compare run(s) marked KILLED" in again.stderr
    for name, run_id in before.items():
        assert f"{name}: reusing run {run_id}" in again.stderr

    assert client.get_run(killed.info.run_id).info.status == "KILLED"
    runs = client.search_runs([exp.experiment_id], "tags.role = 'compare'")
    resumed = next(r for r in runs if r.info.run_id != killed.info.run_id)
    assert resumed.info.status == "FINISHED"
    finals = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = "
                                f"'{resumed.info.run_id}' and tags.role = 'final'")
    rows = {r.data.tags["pipeline"]: r.info.run_id for r in finals}
    # one row per pipeline, and the ensemble stage's
    assert sorted(rows) == ["cnn_seed1", "dummy", "ensemble", "knn", "logreg"]
    assert {k: rows[k] for k in before} == before  # the same runs: nothing retrained
    assert all(r.data.tags.get("rank") for r in finals)
    # nothing is left RUNNING: not the killed compare's children, not its tuning runs
    everything = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                    "attributes.status = 'RUNNING'")
    assert everything == []
    csv = next((tmp_path / "r").glob("*-smoke/leaderboard.csv")).read_text().splitlines()
    assert len(csv) == 1 + 5
    # the interrupted study holds no trial RUNNING from the dead process
    spec = pipelines.load("cnn_seed1")
    study = optuna.load_study(study_name=tuning.study_name(spec, "smoke", config.SEED),
                              storage=tuning.open_storage(str(tmp_path / "o.journal")))
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    assert len([t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]) == \
        spec.budget("smoke").n_trials


@pytest.mark.parametrize("parallel", [1, 2])
def test_ctrl_c_marks_the_compare_killed_and_the_rerun_reuses_its_work(parallel, tmp_path):
    env = study_env(tmp_path)
    command = study_cmd("compare", "--profile", "smoke", "--pipelines", "dummy,logreg,cnn_seed1",
                        "--parallel", str(parallel))
    # As from a terminal: SIGINT deliverable even if this test process has it blocked (in
    # full-suite runs the compare never saw the signal and ran to its end; a mask left by an
    # earlier in-process test is inherited by children)
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, preexec_fn=_unblock_sigint)
    # interrupt while cnn_seed1 trains and the other two are done
    stop_at = "=== pipeline 3/3" if parallel == 1 else "--- 2/3 done"
    seen = []
    for line in first.stderr:
        seen.append(line)
        if line.startswith(stop_at):
            first.send_signal(signal.SIGINT)
            break
    rest = first.stderr.read()
    assert first.wait(timeout=120) == 130, rest[-2000:]
    assert "interrupted" in rest
    workers = {int(m) for m in re.findall(r" in process (\d+)$", "".join(seen), re.M)}
    assert len(workers) == (0 if parallel == 1 else 2)
    time.sleep(2)  # the compare killed its pipeline workers on the way out
    assert [pid for pid in workers if os.path.exists(f"/proc/{pid}")] == []

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    (stopped,) = client.search_runs([exp.experiment_id], "tags.role = 'compare'")
    assert stopped.info.status == "KILLED"  # said by the process itself, not by a later run
    finals = client.search_runs([exp.experiment_id], "tags.role = 'final'")
    done = {r.data.tags["pipeline"]: r.info.run_id for r in finals}
    assert sorted(done) == ["dummy", "logreg"]

    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "marked KILLED" not in again.stderr  # nothing stale this time
    assert "cnn_seed1 (" in again.stderr and "dummy (" not in again.stderr
    parent = next(r for r in client.search_runs([exp.experiment_id], "tags.role = 'compare'")
                  if r.info.run_id != stopped.info.run_id)
    rows = {r.data.tags["pipeline"]: r.info.run_id for r in client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}
    assert sorted(rows) == ["cnn_seed1", "dummy", "ensemble", "logreg"]
    assert {k: rows[k] for k in done} == done


def _table_text(url: str, passfile: str) -> str:
    """Every row of every table of a PostgreSQL database, as text."""
    import psycopg

    with psycopg.connect(url, passfile=passfile) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")]
        assert tables, url
        return "\n".join(str(row) for t in tables
                         for row in conn.execute(f'SELECT t::text FROM "{t}" t'))


def _files_text(folder: Path) -> str:
    return "\n".join(p.read_bytes().decode("latin-1") for p in folder.rglob("*") if p.is_file())


PURPOSES = ("optuna", "mlflow", "auth")


def test_the_optuna_role_reaches_only_its_own_database(postgres_server, postgres_db):
    """What users and workers hold, the Optuna role's password, opens the Optuna database and
    nothing else: the MLflow store and the basic-auth users' database refuse it (pg_hba, and
    CONNECT revoked behind that), so no worker edits the auth tables or the champion alias
    around the tracking server; nor can it run programs on the server's host."""
    import psycopg

    urls = {purpose: postgres_db(purpose) for purpose in PURPOSES}
    optuna_password = postgres_server.password("optuna")
    # each owner writes a row in its own database, as the server's stores do
    for purpose, url in urls.items():
        with psycopg.connect(url, password=postgres_server.password(purpose)) as conn:
            conn.execute("CREATE TABLE secrets (v text)")
            conn.execute("INSERT INTO secrets VALUES (%s)", (purpose,))
    with psycopg.connect(urls["optuna"], password=optuna_password) as conn:
        assert conn.execute("SELECT v FROM secrets").fetchall() == [("optuna",)]

    role, host = postgres_server.role("optuna"), urls["optuna"].split("@", 1)[1].rsplit("/", 1)[0]
    for purpose in ("mlflow", "auth"):
        database = urls[purpose].rsplit("/", 1)[1]
        # the right password, given directly: the server itself must refuse
        with pytest.raises(psycopg.OperationalError, match="no pg_hba.conf entry|permission "
                           "denied"):
            psycopg.connect(f"postgresql://{role}@{host}/{database}", password=optuna_password)
        with postgres_server.admin() as conn:
            assert conn.execute("SELECT has_database_privilege(%s, %s, 'CONNECT')",
                                (role, database)).fetchone() == (False,)
    with psycopg.connect(urls["optuna"], password=optuna_password, autocommit=True) as conn:
        for statement in ("CREATE DATABASE sneaky", "COPY (SELECT 1) TO PROGRAM 'true'",
                          "CREATE ROLE sneaky"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_an_authenticated_server_on_password_postgres_keeps_every_secret(postgres_server,
                                                                         postgres_db, tmp_path):
    """Production scale-out on loopback: PostgreSQL with scram-sha-256 passwords and one role
    per purpose (MLflow's store and its basic-auth app's users held by the server alone, Optuna
    by the users); MLflow's basic-auth app with the admin password changed at set-up. Logins
    fail in one line, a READ-only user cannot start a compare, a writer's compare succeeds,
    and no password is stored, logged or printed."""
    import secrets

    from mlflow.server import get_app_client

    def secret(what: str) -> str:
        return f"{what}-{secrets.token_hex(10)}"

    admin_first, admin_password = secret("adm0"), secret("adm")
    writer_password, reader_password = secret("wr"), secret("rd")
    url = {purpose: postgres_db(purpose).replace("postgresql://", "postgresql+psycopg://")
           for purpose in PURPOSES}
    host = url["optuna"].split("@", 1)[1].rsplit("/", 1)[0]  # 127.0.0.1:port
    pg_passwords = [postgres_server.password(p) for p in ("admin", *PURPOSES)]

    ini = tmp_path / "basic_auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = READ\n"
                   f"database_uri = {url['auth']}\nadmin_username = admin\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                   # each check hashes the password (PBKDF2, ~0.1-0.5 s here): cache good ones
                   "auth_cache_ttl_seconds = 60\n")
    port = free_port()
    server_url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--app-name", "basic-auth",
         "--host", "127.0.0.1", "--port", str(port), "--allowed-hosts", f"127.0.0.1:{port}",
         "--workers", "1", "--backend-store-uri", url["mlflow"],
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        env={**os.environ, "PGPASSFILE": postgres_server.passfile("server"),
             "MLFLOW_AUTH_CONFIG_PATH": str(ini),
             "MLFLOW_AUTH_ADMIN_PASSWORD": admin_first,
             "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    printed = []

    def run(user: str | None, password: str | None, *args: str) -> subprocess.CompletedProcess:
        env = study_env(tmp_path, tracking_uri=server_url)  # the Optuna role's PGPASSFILE
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(key, None)
        if user:
            env.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password)
        proc = subprocess.run(study_cmd(*args), cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=1800)
        printed.extend([proc.stdout, proc.stderr])
        return proc

    compare = ("compare", "--profile", "smoke", "--pipelines", "dummy,logreg",
               "--storage", url["optuna"])
    try:
        wait_healthy(server_url, server, tmp_path / "server.log")
        # set-up: the admin changes the first password, then creates the users
        os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=admin_first)
        try:
            admin = get_app_client("basic-auth", tracking_uri=server_url)
            admin.update_user_password("admin", admin_password, current_password=admin_first)
            os.environ["MLFLOW_TRACKING_PASSWORD"] = admin_password
            admin.create_user("writer", writer_password)
            admin.create_user("reader", reader_password)
        finally:
            os.environ.pop("MLFLOW_TRACKING_USERNAME")
            os.environ.pop("MLFLOW_TRACKING_PASSWORD")

        for user, password, says in [
                (None, None, "requires a login (HTTP 401); fix: set MLFLOW_TRACKING_USERNAME"),
                ("writer", reader_password, "refused user 'writer' (HTTP 401: unknown user or "
                                            "wrong password)")]:
            proc = run(user, password, *compare)
            assert proc.returncode == 2, proc.stderr[-2000:]
            assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
            assert says in proc.stderr

        proc = run("writer", writer_password, *compare)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Champion registered: models:/fashion-mnist-classifier/1" in proc.stdout

        os.environ.update(MLFLOW_TRACKING_USERNAME="reader", MLFLOW_TRACKING_PASSWORD=reader_password)
        try:  # READ: the reader browses the leaderboard...
            client = mlflow.MlflowClient(server_url)
            exp = client.get_experiment_by_name(config.EXPERIMENT_NAME)
            finals = client.search_runs([exp.experiment_id], "tags.role = 'final'")
            assert sorted(r.data.tags["pipeline"] for r in finals) == ["dummy", "logreg"]
            runs_before = len(client.search_runs([exp.experiment_id], run_view_type=3))
        finally:
            os.environ.pop("MLFLOW_TRACKING_USERNAME")
            os.environ.pop("MLFLOW_TRACKING_PASSWORD")
        # ... but may not start a compare: one line, before any run or trial
        proc = run("reader", reader_password, *compare)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.count("\n") == 1, proc.stderr
        assert ("error: user 'reader' may not write to experiment 'fashion-mnist'" in proc.stderr
                and "needs EDIT permission" in proc.stderr)
        os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=admin_password)
        try:
            assert len(mlflow.MlflowClient(server_url).search_runs(
                [exp.experiment_id], run_view_type=3)) == runs_before
            # README's grant: EDIT lets the reader write where the compare's probe writes
            admin.grant_user_permission("reader", "experiment", exp.experiment_id, "EDIT")
            os.environ.update(MLFLOW_TRACKING_USERNAME="reader",
                              MLFLOW_TRACKING_PASSWORD=reader_password)
            mlflow.MlflowClient(server_url).set_experiment_tag(exp.experiment_id, "by", "reader")
        finally:
            os.environ.pop("MLFLOW_TRACKING_USERNAME")
            os.environ.pop("MLFLOW_TRACKING_PASSWORD")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()

    # no password anywhere: every table of the three databases, the artifact store, the
    # report, the server's log and everything the commands printed
    haystacks = {kind: _table_text(postgres_server.urls[kind], postgres_server.passfile(
        "optuna" if kind == "optuna" else "server")) for kind in PURPOSES}
    haystacks["artifacts"] = _files_text(tmp_path / "server-artifacts")
    haystacks["report"] = _files_text(tmp_path / "r")
    haystacks["server log"] = (tmp_path / "server.log").read_text()
    haystacks["printed"] = "\n".join(printed)
    assert "logreg" in haystacks["report"] and "fashion-mnist" in haystacks["mlflow"]
    # the searches see what they must: the storage URL (its user, no password), the users
    role = postgres_server.role("optuna")
    assert f"{role}@{host}" in haystacks["mlflow"] and "writer" in haystacks["auth"]
    for name, text in haystacks.items():
        for value in (*pg_passwords, admin_first, admin_password, writer_password,
                      reader_password):
            assert value not in text, f"a password in {name}"


@pytest.mark.parametrize("uri, in_clear", [
    ("http://10.0.0.5:5000", True), ("http://mlflow.example.org/", True),
    ("HTTP://[2001:db8::1]:5000", True), ("http://127.0.0.1.example.org", True),
    ("https://mlflow.example.org", False), ("https://10.0.0.5:5000", False),
    ("http://127.0.0.1:5000", False), ("http://127.8.0.1", False),
    ("http://localhost:5000", False), ("http://[::1]:5000", False)])
def test_a_login_sent_in_clear_off_loopback_warns_once(uri, in_clear, monkeypatch):
    """Basic-auth over plain http:// to another host sends the password in clear: one warning
    line, once, naming the fix; none over https or on loopback, none without a login. The
    check is pure: nothing here connects anywhere."""
    import logging

    from study.tracking import store

    monkeypatch.setattr(store, "_warned_plain_http", set())
    for variable in (store.USERNAME_ENV, store.PASSWORD_ENV):
        monkeypatch.delenv(variable, raising=False)
    assert not store.plain_http_login(uri)  # no login, nothing to leak
    monkeypatch.setenv(store.USERNAME_ENV, "alice")
    monkeypatch.setenv(store.PASSWORD_ENV, "pw-8d1f0a")
    # A handler of the module's own logger sees each record once, whatever handlers and
    # propagation earlier tests in this process left on the loggers above it (the suite's
    # pytest-xdist run counted each warning twice through caplog).
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    monkeypatch.setattr(store.logger, "level", logging.WARNING)
    store.logger.addHandler(handler)
    try:
        store.warn_plain_http_login(uri)
        store.warn_plain_http_login(uri)
    finally:
        store.logger.removeHandler(handler)
    said = [r.getMessage() for r in records]
    assert len(said) == (1 if in_clear else 0), said
    if in_clear:
        assert "over plain http" in said[0] and "\n" not in said[0]
        assert "fix: use https://" in said[0] and "loopback address" in said[0]
        assert "pw-8d1f0a" not in said[0]


def _compare_rows(client, experiment: str) -> tuple:
    """The compare run of an experiment and its leaderboard: pipeline -> (rank, test
    accuracy, chosen parameters, final run)."""
    exp = client.get_experiment_by_name(experiment)
    (parent,) = client.search_runs([exp.experiment_id], "tags.role = 'compare'")
    finals = client.search_runs([exp.experiment_id], "tags.role = 'final' and "
                                f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return parent, {r.data.tags["pipeline"]: (
        r.data.tags.get("rank"), r.data.metrics.get("test_accuracy"),
        {k: v for k, v in r.data.params.items() if k.startswith("best.")}, r) for r in finals}


def _check_the_server_holds_it_all(server: str, storage: str, stdout: str, parent,
                                   tmp_path: Path) -> None:
    """A compare against a real `mlflow server` and PostgreSQL: champion, artifacts, report
    and trials went where they should and load back."""
    assert "Champion registered: models:/fashion-mnist-classifier/1" in stdout
    assert f"open {server} in a browser" in stdout
    # logged as given: this server's URL holds no password to hide (test_compare_faults
    # checks that one would be hidden)
    assert parent.data.params["optuna_storage"] == storage and "@" in storage
    mlflow.set_tracking_uri(server)
    mlflow.set_registry_uri(server)
    client = mlflow.MlflowClient(server, registry_uri=server)
    # artifacts went through the server into its artifact root, models load back through it
    champion = client.get_model_version_by_alias(config.REGISTERED_MODEL, config.CHAMPION_ALIAS)
    model = mlflow.pyfunc.load_model(f"models:/{config.REGISTERED_MODEL}@{config.CHAMPION_ALIAS}")
    assert model.metadata.run_id == champion.run_id
    assert any((tmp_path / "server-artifacts").rglob("MLmodel"))
    report = next((tmp_path / "r").glob("*-smoke/report.html"))
    assert "logreg" in report.read_text()
    # the trials are in PostgreSQL, as many as the smoke budget asks
    for name in ("logreg", "knn", "pca_svm"):
        spec = pipelines.load(name)
        study = optuna.load_study(study_name=tuning.study_name(spec, "smoke", config.SEED),
                                  storage=tuning.open_storage(storage))
        assert [t.state.name for t in study.trials] == ["COMPLETE"] * spec.budget("smoke").n_trials


def test_side_by_side_and_on_a_dask_cluster_match_one_at_a_time(mlflow_server, postgres_db,
                                                                 tmp_path):
    """The same compare against a real MLflow server and PostgreSQL, one pipeline at a time,
    side by side (--parallel 2: two worker processes, one core each) and on a Dask cluster
    (--cluster local:2: a LocalCluster of two worker processes; each pipeline a task whose
    worker loads the data itself and logs its run as the compare's child): the models they
    choose and fit, their ranks and the figures are the same."""
    client = mlflow.MlflowClient(mlflow_server)
    modes = {"one": [], "parallel": ["--parallel", "2"], "cluster": ["--cluster", "local:2"]}
    results, logs, workers = {}, {}, {}
    for mode, extra in modes.items():
        storage = postgres_db("optuna")  # each compare tunes from scratch
        env = {**study_env(tmp_path, tracking_uri=mlflow_server),
               "MLFLOW_EXPERIMENT_NAME": f"fm-{mode}"}
        proc = subprocess.run(study_cmd("compare", "--profile", "smoke", "--pipelines",
                                        "dummy,logreg,pca_svm,knn", "--storage", storage, *extra),
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, proc.stderr[-3000:]
        parent, results[mode] = _compare_rows(client, f"fm-{mode}")
        assert parent.info.status == "FINISHED"
        if mode == "one":
            _check_the_server_holds_it_all(mlflow_server, storage, proc.stdout, parent, tmp_path)
        assert parent.data.params["parallel"] == ("2" if mode == "parallel" else "1")
        assert parent.data.params["cluster"] == ("local:2" if mode == "cluster" else "none")
        figures = {f.path for f in client.list_artifacts(parent.info.run_id, "reduction")}
        assert {"reduction/pca_map.png", "reduction/pca_explained_variance.png"} <= figures
        tuning_exp = client.get_experiment_by_name(f"fm-{mode}" + config.TUNING_SUFFIX)
        workers[mode] = {r.data.tags["pid"] for r in client.search_runs(
            [tuning_exp.experiment_id], "tags.role = 'tuning'")} - {parent.data.tags["pid"]}
        logs[mode] = proc.stderr
    assert len(list((tmp_path / "r").glob("*-smoke/leaderboard.csv"))) == 3
    # in-process, then two pipeline worker processes each way
    assert workers["one"] == set() and len(workers["parallel"]) == len(workers["cluster"]) == 2
    assert re.search(r"^Dask cluster local:2: dashboard http://127\.0\.0\.1:\d+/status$",
                     logs["cluster"], re.M)
    assert "Dask" not in logs["one"] + logs["parallel"]
    on = set(re.findall(r" on worker (tls://127\.0\.0\.1:\d+) in process (\d+)",
                        logs["cluster"]))
    assert {pid for _, pid in on} == workers["cluster"]
    tagged = {row[3].data.tags.get("dask_worker") for n, row in results["cluster"].items()
              if n != "ensemble"}
    assert tagged == {address for address, _ in on}  # the MLflow UI says where each ran
    for mode in modes:
        assert sorted(results[mode]) == ["dummy", "ensemble", "knn", "logreg", "pca_svm"]
        for name, (rank, accuracy, best, _) in results["one"].items():
            other = results[mode][name]
            assert other[2] == best, (mode, name)  # the same trials chose the same parameters
            assert other[0] == rank, (mode, name)
            # one thread instead of two may reorder float sums, not change the model
            assert abs(other[1] - accuracy) <= 0.002, (mode, name)


def test_a_killed_dask_worker_loses_only_its_pipeline(tmp_path):
    """SIGKILL to the worker process training one pipeline: the others finish, that one is
    listed as failed with its worker's address (Dask does not retry it), and the rerun
    trains only it, reusing the rest."""
    env = study_env(tmp_path)
    command = study_cmd("compare", "--profile", "smoke", "--pipelines", "dummy,logreg,cnn_seed1",
                        "--cluster", "local:2")
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    killed = None
    for line in first.stderr:
        found = re.search(r": cnn_seed1 \(.* on worker \S+ in process (\d+)", line)
        if found:
            killed = int(found.group(1))
            time.sleep(3)  # into its tuning
            os.kill(killed, signal.SIGKILL)
            break
    out, err = first.communicate(timeout=600)
    assert killed and first.returncode == 1, err[-3000:]
    assert re.search(r"^  cnn_seed1: its Dask worker tls://127\.0\.0\.1:\d+ died \(killed or out "
                     r"of memory\?\); rerun the same command to resume$", out, re.M), out
    assert "pipeline(s) failed" in out and out.count("died") == 1  # only the one it ran

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    parent, rows = _compare_rows(client, config.EXPERIMENT_NAME)
    assert parent.data.tags.get("resumable") == "true"
    finished = {n: row[3].info.run_id for n, row in rows.items()
                if row[3].info.status == "FINISHED" and n != "ensemble"}
    assert sorted(finished) == ["dummy", "logreg"]

    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    for name, run_id in finished.items():
        assert f"{name}: reusing run {run_id}" in again.stderr
    assert re.search(r": cnn_seed1 \(.* on worker ", again.stderr)
    assert not re.search(r": (dummy|logreg) \(.* on worker ", again.stderr)
    exp = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    newest = client.search_runs([exp.experiment_id], "tags.role = 'compare'",
                                order_by=["attributes.start_time DESC"])[0]
    rows = {r.data.tags["pipeline"]: r.info.run_id for r in client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{newest.info.run_id}' and "
                             "tags.role = 'final' and attributes.status = 'FINISHED'")}
    assert sorted(rows) == ["cnn_seed1", "dummy", "ensemble", "logreg"]
    assert {k: rows[k] for k in finished} == finished  # the same runs: nothing retrained
