"""Issue 41: secrets never shown, files never half-written or over-shared, process names unique."""

from __future__ import annotations

import os

import pytest

from study import config

# (what the study may be given, what it may show): every form a parser reads as a secret
REDACTED = [
    ("postgresql://study:s3cr3t@db.example:5432/optuna",
     "postgresql://study:***@db.example:5432/optuna"),
    ("postgresql://study:c2Vj/cmV0+Lw==@db/optuna", "postgresql://study:***@db/optuna"),  # base64
    ("postgresql://:s3cr3t@db/optuna", "postgresql://:***@db/optuna"),  # empty user
    ("mysql+pymysql://u:p@ss@db:3306/optuna", "mysql+pymysql://u:***@db:3306/optuna"),
    ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("postgresql://study@db/optuna?sslmode=require&sslpassword=k3y",
     "postgresql://study@db/optuna?sslmode=require&sslpassword=***"),
    ("mysql://db/optuna?user=u&password=p4ss&ssl=1", "mysql://db/optuna?user=u&password=***&ssl=1"),
    ("https://mlflow.example/api?access_token=t0k3n&x=1", "https://mlflow.example/api?access_token=***&x=1"),
    ("https://h/x?client_secret=cs&api_key=ak&sig=5ig",
     "https://h/x?client_secret=***&api_key=***&sig=***"),
    ("https://acct.blob.core.windows.net/c?sv=2020&Sig=abc%2Bdef",
     "https://acct.blob.core.windows.net/c?sv=2020&Sig=***"),
    ("cannot open postgresql://u:pa/ss@h/db (FATAL: token=abc123 refused)",
     "cannot open postgresql://u:***@h/db (FATAL: token=*** refused)"),  # inside a message
    ("https://b.s3.amazonaws.com/o?X-Amz-Credential=AKIA%2F&X-Amz-Signature=ab12&x=1",
     "https://b.s3.amazonaws.com/o?X-Amz-Credential=***&X-Amz-Signature=***&x=1"),
    ("host=db user=study password=s3cr3t dbname=optuna",
     "host=db user=study password=*** dbname=optuna"),  # a libpq connection string
]
UNCHANGED = [
    "postgresql+psycopg://study@127.0.0.1/optuna?sslmode=require",
    "/tmp/optuna.journal",
    "http://127.0.0.1:5000",
    "sqlite:////tmp/study/mlflow.db",
    "https://mlflow.example/#/experiments/1?searchFilter=x",
    "cannot reach http://127.0.0.1:5000 (connection refused)",
    "https://h/search?passed=3&token_type=bearer&keyfile=/etc/k",  # keys that hold no secret
]


@pytest.mark.parametrize("given, shown", REDACTED)
def test_redact_hides_every_secret_a_url_parser_would_read(given, shown):
    assert config.redact(given) == shown
    assert config.carries_secret(given)


@pytest.mark.parametrize("given", UNCHANGED)
def test_redact_leaves_urls_paths_and_messages_without_secrets_alone(given):
    assert config.redact(given) == given
    assert not config.carries_secret(given)



@pytest.mark.parametrize("storage", [
    "postgresql://study:c2Vj/cmV0@127.0.0.1:1/optuna",
    "postgresql://study@127.0.0.1:1/optuna?sslpassword=s3cr3t",
])
def test_compare_refuses_every_storage_url_form_with_a_secret(storage, tracking_store, capsys):
    """The refusal that keeps a password off child command lines, Dask tasks and params
    follows carries_secret: each form stops the compare with one line that hides it."""
    from study import cli

    code = cli.main(["compare", "--profile", "smoke", "--pipelines", "logreg",
                     "--storage", storage])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "carries a password" in err, err
    assert "s3c" not in err and "cmV0" not in err


def test_a_replaced_file_is_whole_or_untouched(tmp_path):
    """files.replacing: a unique temporary name in the same folder per writer; the target
    changes only when the writer finishes, and nothing is left behind either way."""
    from study import files

    target = files.write_text(tmp_path / "leaderboard.csv", "old\n")
    with files.replacing(target) as first, files.replacing(target) as second:
        assert first != second and first.parent == second.parent == tmp_path
        assert first.suffix == ".csv"  # writers that pick a format by extension still can
        first.write_text("first\n")
        second.write_text("second\n")
        assert target.read_text() == "old\n"  # nobody sees a file still being written
    assert target.read_text() == "first\n"  # the last writer to finish wins, whole
    with pytest.raises(OSError):
        with files.replacing(target) as third:
            third.write_text("ha")
            raise OSError("disk full")
    assert target.read_text() == "first\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leaderboard.csv"]


@pytest.mark.slow
def test_report_out_uploads_only_the_files_it_wrote(tracking_store, tmp_path):
    """`study report --out DIR` into a folder that already holds other files (`--out ~`):
    only the report's own files reach the tracking store, and no temporary stays behind."""
    import mlflow

    from study import cli

    assert cli.main(["compare", "--profile", "smoke", "--pipelines", "dummy"]) == 0
    out = tmp_path / "home"
    (out / ".ssh").mkdir(parents=True)
    (out / ".ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    (out / ".pgpass").write_text("db:5432:*:study:s3cr3t\n")
    (out / "notes.txt").write_text("mine\n")
    assert cli.main(["report", "--out", str(out)]) == 0

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    (compare,) = client.search_runs([exp.experiment_id], "tags.role = 'compare'")
    logged = {a.path for a in client.list_artifacts(compare.info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/leaderboard.csv",
            "report/leaderboard.md", "report/leaderboard.txt"} <= logged
    assert not logged & {"report/.pgpass", "report/.ssh", "report/notes.txt"}
    # every other upload is a figure the report shows
    shown = (out / "report.md").read_text()
    assert all(p.endswith(".png") and p.split("/")[-1] in shown
               for p in logged - {"report/report.md", "report/report.html",
                                  "report/leaderboard.csv", "report/leaderboard.md",
                                  "report/leaderboard.txt"})
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child.kill()
    child.wait()
    return child.pid


def test_a_process_name_is_unique_per_pid_namespace_not_per_host_name():
    """A container sharing this host name (here: a process in a new pid namespace, as a
    container has) names its processes differently, so none of its pids is judged by this
    one's process table; a name of the old host:pid form is never judged dead either."""
    import shutil
    import socket
    import subprocess
    import sys

    from study import processes

    if not shutil.which("unshare"):
        pytest.skip("util-linux's unshare is not installed")
    inside = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c",
         "from study import processes; print(processes.this_process())"],
        capture_output=True, text=True, timeout=60, env={**os.environ,
                                                          "PYTHONPATH": str(config.PROJECT_ROOT)})
    if inside.returncode != 0:
        pytest.skip(f"no new pid namespace here ({inside.stderr.strip()[-200:]})")
    host, _, pid = inside.stdout.strip().rpartition(":")
    assert pid == "1" and host.startswith(socket.gethostname() + "@")
    assert host != processes.this_host()  # same host name, another container

    gone = dead_pid()
    assert processes.died_here(processes.this_host(), gone)  # ours, and dead
    assert not processes.died_here(processes.this_host(), os.getpid())  # alive
    assert not processes.died_here(host, gone)  # the other container's: not ours to judge
    assert not processes.died_here(socket.gethostname(), gone)  # old name: host unknown
    this_host, _, this_pid = processes.this_process().rpartition(":")
    assert (this_host, int(this_pid)) == (processes.this_host(), os.getpid())
