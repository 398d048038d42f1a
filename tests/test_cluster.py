"""The Dask cluster option's checks: what an address may be, and which stores a scheduler's
workers can share, refused before anything connects (the runs themselves: test_scale_out)."""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys

import pytest

from study import cluster
from study.errors import ConfigError

PG = "postgresql://study@db.lab:5432/optuna"


@pytest.mark.parametrize("text, address, local", [
    ("local:2", "local:2", 2),
    ("LOCAL:03", "local:3", 3),
    ("tcp://10.0.0.5:8786", "tcp://10.0.0.5:8786", 0),
    ("scheduler.lab:8786", "tcp://scheduler.lab:8786", 0),
    ("tls://[::1]:8786", "tls://[::1]:8786", 0),
])
def test_an_address_is_local_n_or_a_scheduler(text, address, local):
    target = cluster.parse(text)
    assert (target.address, target.local_workers, target.is_local) == (address, local, local > 0)


@pytest.mark.parametrize("text", ["local:0", "local:-1", "local:two", "local:", "tcp://host",
                                  "http://host:8786", "host:99999", "two words:1"])
def test_a_bad_address_is_refused(text):
    with pytest.raises(ConfigError, match="cluster"):
        cluster.parse(text)


@pytest.mark.parametrize("text", [None, "", "none", "-"])
def test_no_cluster(text):
    assert cluster.parse(text) is None


@pytest.mark.parametrize("tracking, storage, message", [
    ("sqlite:////tmp/m.db", PG, "is on this machine only; set MLFLOW_TRACKING_URI"),
    ("/tmp/mlruns", PG, "is on this machine only"),
    ("http://mlflow.lab:5000", "/tmp/optuna.journal", "is a file on this machine; use "
                                                      "storage=postgresql://"),
    ("http://mlflow.lab:5000", "sqlite:////tmp/o.db", "is a file on this machine"),
    ("http://127.0.0.1:5000", PG, "MLFLOW_TRACKING_URI http://127.0.0.1:5000 is a loopback"),
    ("https://alice:s3cret@mlflow.lab", PG, "https://alice:***@mlflow.lab carries a password; "
                                            "give it without one"),
    ("http://mlflow.lab:5000", "postgresql://study@localhost/optuna", "storage postgresql"),
])
def test_a_scheduler_is_refused_stores_its_workers_cannot_share(tracking, storage, message):
    with pytest.raises(ConfigError, match="cluster tcp://sched.lab:8786") as raised:
        cluster.check_shared(cluster.parse("sched.lab:8786", insecure=True), tracking, storage)
    assert message in str(raised.value)
    assert "s3cret" not in str(raised.value)


def test_shared_stores_pass_and_local_workers_share_this_machines():
    remote = cluster.parse("tcp://sched.lab:8786", insecure=True)
    cluster.check_shared(remote, "https://mlflow.lab", PG)
    # a scheduler on this machine may use loopback servers: its workers are here too
    cluster.check_shared(cluster.parse("127.0.0.1:8786"), "http://127.0.0.1:5000",
                         "postgresql://study@127.0.0.1/optuna")
    cluster.check_shared(cluster.parse("local:2"), "sqlite:////tmp/m.db", "/tmp/o.journal")
    cluster.check_shared(None, "sqlite:////tmp/m.db", "/tmp/o.journal")


@pytest.mark.parametrize("address", ["tcp://192.0.2.1:8786", "sched.lab:8786",
                                     "tcp://10.0.0.5:8786", "tcp://[2001:db8::1]:8786"])
def test_plain_tcp_to_another_machine_is_refused_unless_insecure(address):
    """Whoever can submit to a Dask scheduler runs code on its workers: plain TCP only on
    loopback, or when the user says the network is trusted (only parsed, never connected)."""
    with pytest.raises(ConfigError, match=r"is plain TCP to another machine: anyone who "
                       r"reaches that scheduler runs code on its workers; start the scheduler "
                       r"with TLS .* or pass --cluster-insecure on a network you trust$"):
        cluster.check_secure(cluster.parse(address))
    cluster.check_secure(cluster.parse(address, insecure=True))


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:8786", "localhost:8786",
                                     "tcp://[::1]:8786", "127.0.0.5:8786"])
def test_plain_tcp_on_loopback_and_local_n_pass(address):
    cluster.check_secure(cluster.parse(address))
    cluster.check_secure(cluster.parse("local:2"))
    cluster.check_secure(None)


@pytest.mark.parametrize("given, insecure", [([], False), (["--cluster-insecure"], True),
                                             (["--cluster-insecure", "false"], False),
                                             (["--cluster-insecure", "True"], True)])
def test_the_insecure_flag_is_a_flag_or_mlprojects_true_false(given, insecure):
    from study.arguments import build_parser

    args = build_parser().parse_args(["compare", "--cluster", "tcp://192.0.2.1:8786", *given])
    assert args.cluster_insecure is insecure


def test_a_tls_scheduler_needs_the_clients_certificate_in_dask_config(tmp_path):
    """tls:// is joined with Dask's own TLS settings (~/.config/dask, DASK_* variables), never a
    study parameter: none set, or a file that is not there, is one line saying what to set."""
    import dask

    target = cluster.parse("tls://sched.lab:8786")
    unset = {f"distributed.comm.tls.{k}": None for k in cluster._TLS}
    with dask.config.set(unset), pytest.raises(
            ConfigError, match=r"^cluster tls://sched.lab:8786: no TLS set up for this client "
                               r"\(distributed.comm.tls.ca-file is unset\); set distributed"):
        cluster.check_secure(target)
    files = {k: tmp_path / f"{k}.pem" for k in cluster._TLS}
    for path in files.values():
        path.write_text("PEM")
    given = {f"distributed.comm.tls.{k}": str(v) for k, v in files.items()}
    with dask.config.set({**given, "distributed.comm.tls.client.key": str(tmp_path / "no.pem")}):
        with pytest.raises(ConfigError, match=r"distributed.comm.tls.client.key \S+no.pem is "
                                              r"not a file"):
            cluster.check_secure(target)
    with dask.config.set(given):
        cluster.check_secure(target)


def test_the_refusal_comes_before_any_connection(tmp_path, tmp_path_factory):
    """A scheduler address with this machine's SQLite store, plain TCP to another machine, or
    tls:// without the client's TLS settings: exit 2, one line, nothing written, and neither
    the scheduler nor the tracking server was contacted (both are listening sockets here, so
    a connection attempt would be seen). --cluster-insecure passes the TCP check and stops at
    the next one (192.0.2.1 is only parsed, never connected to)."""
    listeners = []
    for _ in range(2):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        listeners.append(sock)
    scheduler, server = (f"127.0.0.1:{s.getsockname()[1]}" for s in listeners)
    sqlite, far = f"sqlite:///{tmp_path / 'm.db'}", "tcp://192.0.2.1:8786"
    cases = [  # (MLFLOW_TRACKING_URI, cluster, extra arguments, message)
        (sqlite, f"tcp://{scheduler}", [], "is on this machine only"),
        (f"http://{server}", f"tcp://{scheduler}", [], "is a file on this machine"),  # journal
        (f"http://{server}", far, [], f"cluster {far} is plain TCP to another machine"),
        (sqlite, far, ["--cluster-insecure"], "is on this machine only"),
        (f"http://{server}", f"tls://{scheduler}", [], "no TLS set up for this client"),
    ]
    # no TLS settings of this machine's user: an empty Dask config folder, no DASK_ variables
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    clean["DASK_CONFIG"] = str(tmp_path_factory.mktemp("dask-config"))
    for uri, address, extra, message in cases:
        env = {**clean, "MLFLOW_TRACKING_URI": uri, "OPTUNA_JOURNAL": str(tmp_path / "o.journal")}
        proc = subprocess.run([sys.executable, "-m", "study", "compare", "--profile", "smoke",
                               "--pipelines", "dummy", "--cluster", address, *extra],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], proc.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == []
    for sock in listeners:
        with pytest.raises(BlockingIOError):  # nobody knocked
            sock.accept()
        sock.close()


@pytest.fixture
def in_worker():
    """Worker code called in this process: a worker sets its threads and store in its
    environment and keeps a compare's splits, so both are put back afterwards."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
    cluster._ready.clear()


def test_a_worker_refuses_other_data_or_other_code(tracking_store, real_dir, tmp_path,
                                                   in_worker):
    """What a worker checks before its first pipeline: the compare's data digest (computed
    from the files it loads itself) and the study's code; each mismatch is one clear line."""
    from study import attempts, config, side_by_side

    job = side_by_side.Job(config.profile("smoke"), config.SEED, str(real_dir),
                           str(tmp_path / "o.journal"), 1, "parent-run", "0" * 16,
                           attempts.attempt, attempts.attempt_reduction_figures)
    with pytest.raises(ConfigError, match=r"has other Fashion-MNIST files than the compare "
                                          r"\(data digest \w+, expected 0{16}\); give every"):
        cluster._prepare(cluster.Task(job, tracking_store, config.code_digest(), {}))
    with pytest.raises(ConfigError, match="runs other study code than the compare; install "
                                          "the same version on every worker"):
        cluster._prepare(cluster.Task(job, tracking_store, "other-code", {}))
    assert cluster._ready == {}  # nothing kept from a refused compare


def test_a_scheduler_that_would_retry_a_dead_workers_task_is_refused():
    """Joining a running scheduler (the several-machines path, here on loopback): refused in
    one line when it would run a pipeline again after its worker died, accepted at 0."""
    import dask
    from distributed import LocalCluster

    for failures in (3, 0):  # 3: Dask's default
        with dask.config.set({cluster.RETRIES: failures}), LocalCluster(
                n_workers=0, processes=False, protocol="tcp", host="127.0.0.1",
                dashboard_address="127.0.0.1:0") as running:
            target = cluster.parse(running.scheduler_address)
            assert not target.is_local
            if failures:
                with pytest.raises(ConfigError, match=r"retries a task whose worker died \("
                                   r"distributed.scheduler.allowed-failures = 3\): a pipeline "
                                   r"could train twice; start it with DASK_DISTRIBUTED__"):
                    with cluster.connect(target):
                        pass
            else:
                with cluster.connect(target) as client:
                    assert client.run_on_scheduler(cluster._allowed_failures) == 0


def test_a_task_dask_runs_again_returns_its_run_instead_of_training_twice(tracking_store,
                                                                         real_dir, tmp_path,
                                                                         in_worker):
    """Dask recomputes a finished task whose result was lost with a killed worker (the likely
    cause of test_scale_out's killed-worker test failing once under load: its rerun adopted
    another run of a pipeline that had finished): the second run of the task returns the
    first one's run."""
    from study import attempts, config, data, side_by_side, tracking

    profile = config.profile("smoke")
    digest = data.fingerprint(data.make_splits(data.load(real_dir), profile))
    with tracking.compare_run(profile.name, config.SEED, ["logreg"]) as parent_id:
        job = side_by_side.Job(profile, config.SEED, str(real_dir),
                               str(tmp_path / "o.journal"), 1, parent_id, digest,
                               attempts.attempt, attempts.attempt_reduction_figures)
        task = cluster.Task(job, tracking_store, config.code_digest(), {})
        first = cluster._pipeline_task(task, "logreg", "pipeline 1/1")
        again = cluster._pipeline_task(task, "logreg", "pipeline 1/1")
    assert first.run_id and not first.failure
    assert again.run_id == first.run_id and not again.failure
    assert [r["run_id"] for r in tracking.final_runs(parent_id)] == [first.run_id]


def _listening(pid: int) -> set[str]:
    """The addresses a process listens on (TCP)."""
    import psutil

    return {c.laddr.ip for c in psutil.Process(pid).net_connections("inet")
            if c.status == psutil.CONN_LISTEN}


def test_local_n_is_tls_on_loopback_and_refuses_any_other_client():
    """local:2: scheduler, nannies, workers and dashboard listen on 127.0.0.1 only, over TLS
    with this cluster's own certificate: a plain-TCP client, a TLS client without a
    certificate and one with another CA's are all refused; the cluster's own works."""
    import dask
    from distributed import Client, Security

    with cluster.connect(cluster.parse("local:2")) as client:
        info = client.scheduler_info(n_workers=-1)
        address = client.scheduler.address
        assert address.startswith("tls://127.0.0.1:")
        assert len(info["workers"]) == 2
        for worker, about in info["workers"].items():
            assert worker.startswith("tls://127.0.0.1:") and about["nanny"].startswith(
                "tls://127.0.0.1:")
        assert client.dashboard_link.startswith("http://127.0.0.1:")
        pids = client.run(os.getpid)
        for pid in [os.getpid(), *pids.values()]:  # the scheduler and nannies run here
            assert _listening(pid) <= {"127.0.0.1"}, pid
        assert _listening(os.getpid())  # the check above saw the scheduler's sockets

        unset = {f"distributed.comm.tls.{k}": None for k in cluster._TLS}
        attempts = [(address.replace("tls://", "tcp://"), None, OSError),  # plain TCP
                    (address, Security(require_encryption=True), TypeError),  # no certificate
                    (address, Security.temporary(), OSError)]  # another CA's: handshake fails
        for where, security, error in attempts:
            with dask.config.set(unset), pytest.raises(error):
                Client(where, security=security, timeout="5s").close()
            # the refused Client is closed by its __del__: here, not when the garbage
            # collector runs it inside the next Client's start (that deadlocked, both holding
            # Dask's loop-runner lock)
            gc.collect()
        with Client(address, security=client.security, timeout="10s") as own:
            assert own.submit(sum, [1, 2], pure=False).result(timeout=30) == 3


def test_a_tls_scheduler_is_joined_with_the_certificate_in_dask_config(tmp_path):
    """A running TLS scheduler (here on loopback, certificates as PEM files): joined through
    the client's settings in Dask's config; without them refused in one line, before any
    connection."""
    import dask
    from distributed import LocalCluster, Security

    made = Security.temporary()  # one CA's certificate and key, as PEM text
    pem = {"ca-file": made.tls_ca_file, "cert": made.tls_scheduler_cert,
           "key": made.tls_scheduler_key}
    files = {}
    for name, text in pem.items():
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_text(text)
    # the LocalCluster object talks to its scheduler as a client too
    server = Security(tls_ca_file=str(files["ca-file"]), tls_scheduler_cert=str(files["cert"]),
                      tls_scheduler_key=str(files["key"]), tls_client_cert=str(files["cert"]),
                      tls_client_key=str(files["key"]), require_encryption=True)
    unset = {f"distributed.comm.tls.{k}": None for k in cluster._TLS}
    with dask.config.set({cluster.RETRIES: 0, **unset}), LocalCluster(
            n_workers=0, processes=False, protocol="tls://", host="127.0.0.1", security=server,
            dashboard_address="127.0.0.1:0") as running:
        target = cluster.parse(running.scheduler_address)
        assert target.address.startswith("tls://127.0.0.1:")
        with pytest.raises(ConfigError, match="no TLS set up for this client"):
            with cluster.connect(target):
                pass
        client_tls = {"distributed.comm.tls.ca-file": str(files["ca-file"]),
                      "distributed.comm.tls.client.cert": str(files["cert"]),
                      "distributed.comm.tls.client.key": str(files["key"])}
        with dask.config.set(client_tls), cluster.connect(target) as client:
            assert client.run_on_scheduler(cluster._allowed_failures) == 0
