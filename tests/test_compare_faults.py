"""A pipeline that raises is isolated: marked FAILED with its traceback, the others finish."""

from __future__ import annotations

import os
import shutil

import mlflow
import pytest

from study import cli, config, tracking


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_failing_pipeline_is_isolated(parallel, tmp_path, tracking_store, monkeypatch, capsys):
    folder = tmp_path / "pipelines"
    folder.mkdir()
    shutil.copy(config.PIPELINES_DIR / "logreg.yaml", folder / "logreg.yaml")
    broken = (config.PIPELINES_DIR / "logreg.yaml").read_text().replace("max_iter: 300",
                                                                          "max_iter: -1")
    (folder / "broken.yaml").write_text(broken)
    monkeypatch.setenv(config.PIPELINES_ENV, str(folder))

    # with --parallel 2 the failure happens in a pipeline worker process
    code = cli.main(["compare", "--profile", "smoke", "--parallel", parallel])
    out = capsys.readouterr().out
    assert code == 1  # finished, but not everything succeeded
    assert "1 pipeline(s) failed" in out and "broken:" in out

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    parent = client.search_runs([exp.experiment_id], "tags.role = 'compare'")[0]
    finals = client.search_runs([exp.experiment_id], "tags.role = 'final'")
    failed = client.search_runs([exp.experiment_id], "tags.role = 'failed'")
    assert [r.data.tags["pipeline"] for r in finals] == ["logreg"]
    assert finals[0].info.status == "FINISHED" and finals[0].data.tags["rank"] == "1"
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    trace = mlflow.artifacts.load_text(f"runs:/{failed[0].info.run_id}/traceback.txt")
    assert "max_iter" in trace and "Traceback" in trace
    assert "broken" in mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/failures.txt")
    # the report lists the failure beside the leaderboard
    (report,) = (tmp_path / "reports").glob("*-smoke/report.md")
    assert f"broken (run {failed[0].info.run_id})" in report.read_text()


def test_resume_reuses_a_killed_compares_model_only_with_the_same_code(tracking_store,
                                                                       monkeypatch, capsys):
    """A model of a killed compare is reused when definition, data, profile, seed and the
    code of study/ match; after a code change it is retrained, and the run says why."""
    client = mlflow.MlflowClient()

    def compare_and_kill() -> str:
        assert cli.main(["compare", "--profile", "smoke", "--pipelines", "dummy"]) == 0
        exp = client.get_experiment_by_name(config.EXPERIMENT_NAME)
        newest = client.search_runs([exp.experiment_id], "tags.role = 'compare'",
                                    order_by=["attributes.start_time DESC"])[0]
        client.set_terminated(newest.info.run_id, "KILLED")  # as an interrupt leaves it
        (final,) = client.search_runs([exp.experiment_id], "tags.role = 'final' and "
                                      f"tags.mlflow.parentRunId = '{newest.info.run_id}'")
        assert final.data.tags["code_digest"] == config.code_digest()
        return final.info.run_id

    first = compare_and_kill()
    capsys.readouterr()
    real = config.code_digest()
    monkeypatch.setattr(config, "code_digest", lambda package=None: "0123456789")
    second = compare_and_kill()
    err = capsys.readouterr().err
    assert second != first and f"reusing run {first}" not in err
    assert "not reusing dummy of an earlier compare: the code in study/ changed" in err
    monkeypatch.setattr(config, "code_digest", lambda package=None: real)
    assert cli.main(["compare", "--profile", "smoke", "--pipelines", "dummy"]) == 0
    assert f"dummy: reusing run {first}" in capsys.readouterr().err  # same code as `first`


def test_code_digest_follows_the_sources(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("x = 1\n")
    before = config.code_digest(package)
    assert config.code_digest(package) == before
    (package / "a.py").write_text("x = 2\n")
    assert config.code_digest(package) != before


def test_secrets_are_redacted_from_urls_and_messages():
    assert config.redact("postgresql://study:s3cr3t@db.example:5432/optuna") == \
        "postgresql://study:***@db.example:5432/optuna"
    assert config.redact("postgresql+psycopg://study@127.0.0.1/optuna") == \
        "postgresql+psycopg://study@127.0.0.1/optuna"  # nothing to hide
    assert config.redact("/tmp/optuna.journal") == "/tmp/optuna.journal"
    assert config.redact("mysql://db/optuna?user=u&password=p4ss&ssl=1") == \
        "mysql://db/optuna?user=u&password=***&ssl=1"
    message = "cannot open postgresql://u:pw@h/db (FATAL: token=abc123 refused)"
    assert "pw" not in config.redact(message).replace("postgresql", "") and \
        "abc123" not in config.redact(message)


@pytest.mark.parametrize("command", ["compare", "tune"])
def test_a_storage_url_with_a_password_is_refused_before_anything_runs(
        command, tracking_store, tmp_path, capsys, monkeypatch):
    """`mlflow run` would log the -P value and the study would print it: the password belongs
    in PGPASSWORD or ~/.pgpass. Refused with exit 2, before any run or journal exists."""
    monkeypatch.chdir(tmp_path)
    extra = ["--pipeline", "logreg"] if command == "tune" else ["--pipelines", "logreg"]
    code = cli.main([command, "--profile", "smoke", *extra,
                     "--storage", "postgresql://study:s3cr3t@127.0.0.1:1/optuna"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "carries a password" in err and "PGPASSWORD or ~/.pgpass" in err
    assert "s3cr3t" not in err
    import mlflow

    assert not [r for e in mlflow.MlflowClient().search_experiments()
                for r in mlflow.MlflowClient().search_runs([e.experiment_id])]
    assert not list(tmp_path.glob("*.journal"))


@pytest.mark.slow
def test_two_first_time_compares_on_one_new_sqlite_store_both_finish(tmp_path):
    """Two smoke compares started at once on a store that does not exist yet: without the lock
    beside it, MLflow's schema migrations collide and one dies ("Online migration expected to
    match one row"), blamed on an unreachable store. Both must finish and both be recorded."""
    import subprocess
    import sys

    import mlflow

    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, config.REPORTS_ENV: str(tmp_path / "r")}
    for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(leaked, None)
    procs = [subprocess.Popen([sys.executable, "-m", "study", "compare", "--profile", "smoke",
                               "--pipelines", "dummy,logreg", "--storage",
                               str(tmp_path / f"o{i}.journal")], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    assert all(code == 0 for code, _, _ in results), [err[-1500:] for _, _, err in results]
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    parents = client.search_runs([exp.experiment_id], "tags.role = 'compare'")
    assert sorted(r.info.status for r in parents) == ["FINISHED", "FINISHED"]


@pytest.mark.slow
def test_mlflow_run_neither_prints_nor_keeps_a_password_given_as_a_parameter(tmp_path):
    """`mlflow run` logs every -P value as a run param and prints the command it starts: the
    MLproject passes `--storage @run`, the study reads the URL from the run, refuses it (exit
    2, one line) and overwrites the logged value with its redacted form."""
    import sqlite3
    import subprocess
    import sys
    from pathlib import Path

    db = tmp_path / "m.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(leaked, None)
    proc = subprocess.run(
        [shutil.which("mlflow", path=env["PATH"]), "run", str(config.PROJECT_ROOT), "-e",
         "compare", "--env-manager", "local", "-P", "profile=smoke", "-P", "pipelines=dummy",
         "-P", "storage=postgresql+psycopg://study:Pa55-w0rd-x@127.0.0.1:1/optuna"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "error: the storage URL postgresql+psycopg://study:***@127.0.0.1:1/optuna carries " \
           "a password" in proc.stderr
    assert "Pa55-w0rd-x" not in proc.stdout + proc.stderr
    with sqlite3.connect(db) as conn:
        dump = "\n".join(conn.iterdump())
        (value,) = conn.execute("SELECT value FROM params WHERE key = 'storage'").fetchone()
    assert value == "postgresql+psycopg://study:***@127.0.0.1:1/optuna"
    assert "Pa55-w0rd-x" not in dump


def test_resume_adopts_only_finished_runs_of_the_same_user(tracking_store):
    """An adopted model is unpickled in this compare, `study predict` and serving: a finished
    run another user created (MLflow's run user_id) is never adopted, even when it matches
    every resume tag and is the newest; the same user's matching run is."""
    client = mlflow.MlflowClient()
    exp_id = mlflow.set_experiment(config.EXPERIMENT_NAME).experiment_id
    digests = {"dummy": "d-dummy", "logreg": "d-logreg"}

    def killed_compare(user: str, pipelines: list[str]) -> dict[str, str]:
        """A KILLED compare of `user` with a FINISHED final run matching every resume tag
        per pipeline."""
        parent = client.create_run(exp_id, tags={"role": "compare", "mlflow.user": user})
        finals = {}
        for name in pipelines:
            run = client.create_run(exp_id, tags={
                "role": "final", "pipeline": name, "pipeline_digest": digests[name],
                "data_digest": "data", "profile": "smoke", "code_digest": config.code_digest(),
                "mlflow.parentRunId": parent.info.run_id, "mlflow.user": user})
            client.log_param(run.info.run_id, "seed", 7)
            client.set_terminated(run.info.run_id, "FINISHED")
            finals[name] = run.info.run_id
        client.set_terminated(parent.info.run_id, "KILLED")
        return finals

    with mlflow.start_run(tags={"role": "compare"}) as current:
        me = current.info.user_id  # as MLflow records this process's user by default
        assert me and me != "mallory"
        mine = killed_compare(me, ["dummy"])
        theirs = killed_compare("mallory", ["dummy", "logreg"])  # newer: would be preferred
        assert client.get_run(theirs["dummy"]).info.user_id == "mallory"
        refused: list[str] = []
        adopted = tracking.adopt_finished(current.info.run_id, "smoke", 7, "data", digests,
                                          refused)
    assert adopted == {"dummy": mine["dummy"]} and refused == []
    for run_id in theirs.values():  # left where they were
        assert client.get_run(run_id).data.tags["mlflow.parentRunId"] != current.info.run_id
