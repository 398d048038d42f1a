"""The MLflow UI as a leaderboard: a small real compare (three cheap pipelines and their
ensemble), the link it prints opened in headless Chromium against `mlflow ui` on that store,
the model-training view with the final runs in rank order; models named by pipeline; the
registered model and its version described and tagged."""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml

from study import config, tracking
from study.tracking import registry
from study.tracking.queries import MODEL_NAME, leaderboard_url, model_uri_of
from study.tracking.store import EXPERIMENT_KIND_TAG, TRAINING_KIND

LINK_LINE = "The leaderboard in the MLflow UI: "
FIXED = {  # fixed parameters, no tuning: the compare takes seconds, not minutes
    "knn": {"reducer": "pca", "params": {"reduce__n_components": 30, "n_neighbors": 5}},
    "logreg": {"reducer": "pca", "params": {"reduce__n_components": 30, "C": 0.1,
                                            "max_iter": 200}},
}
ORDER = ["logreg", "knn", "dummy"]  # logged in this order: rank order is not creation order


@pytest.fixture(scope="module")
def small_compare(tmp_path_factory):
    """`study compare --profile smoke` of dummy and fixed-parameter knn and logreg (and the
    ensemble of the two) into a temporary SQLite store, as a user runs it."""
    tmp = tmp_path_factory.mktemp("ui")
    folder = tmp / "pipelines"
    folder.mkdir()
    for name in ("dummy", "ensemble"):
        shutil.copy(config.PIPELINES_DIR / f"{name}.yaml", folder)
    for name, fixed in FIXED.items():
        raw = yaml.safe_load((config.PIPELINES_DIR / f"{name}.yaml").read_text())
        raw.update(fixed, search={},
                   budget={p: {"n_trials": 0, "timeout": 10} for p in config.PROFILES})
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OPTUNA_JOURNAL": str(tmp / "o.journal"),
           config.REPORTS_ENV: str(tmp / "reports"), config.PIPELINES_ENV: str(folder),
           "PYTHONPATH": str(config.PROJECT_ROOT)}
    for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(leaked, None)
    proc = subprocess.run([sys.executable, "-m", "study", "compare", "--profile", "smoke",
                           "--pipelines", ",".join(ORDER)],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(config.EXPERIMENT_NAME).experiment_id
    (parent,) = client.search_runs([experiment], "tags.role = 'compare'")
    finals = client.search_runs([parent.info.experiment_id], (
        f"tags.role = 'final' and tags.mlflow.parentRunId = '{parent.info.run_id}'"))
    return {"tmp": tmp, "uri": uri, "stdout": proc.stdout, "parent": parent,
            "finals": {r.data.tags["pipeline"]: r for r in finals}}


@pytest.fixture
def store(small_compare):
    """The compare's store as this process's tracking store (other tests move it)."""
    mlflow.set_tracking_uri(small_compare["uri"])
    return mlflow.MlflowClient()


def printed_link(small_compare) -> str:
    (line,) = [line for line in small_compare["stdout"].splitlines()
               if line.startswith(LINK_LINE)]
    return line[len(LINK_LINE):]


def rank_order(small_compare) -> list[str]:
    finals = small_compare["finals"]
    return sorted(finals, key=lambda name: finals[name].data.metrics["rank"])


def test_the_printed_link_selects_this_compares_final_runs_by_rank(small_compare, store):
    """The compare's last lines: the command that starts the UI on this store and a link to
    its final runs, on the training side, sorted by the rank metric; its filter, run through
    MLflow's search API, finds exactly those runs."""
    lines = small_compare["stdout"].rstrip().splitlines()
    assert lines[-2].endswith(f"mlflow ui --backend-store-uri {small_compare['uri']}")
    link = printed_link(small_compare)
    assert lines[-1] == LINK_LINE + link
    parts = urllib.parse.urlsplit(link)
    assert f"{parts.scheme}://{parts.netloc}" == "http://127.0.0.1:5000"  # `mlflow ui`'s default
    route, query = parts.fragment.split("?", 1)
    parent = small_compare["parent"]
    assert route == f"/experiments/{parent.info.experiment_id}/runs"
    params = dict(urllib.parse.parse_qsl(query))
    assert params["workflowType"] == "machine_learning"
    assert (params["orderByKey"], params["orderByAsc"]) == ("metrics.`rank`", "true")
    found = store.search_runs([parent.info.experiment_id], params["searchFilter"])
    assert sorted(r.info.run_id for r in found) == sorted(
        r.info.run_id for r in small_compare["finals"].values())
    assert set(small_compare["finals"]) == {*ORDER, "ensemble"}


def test_a_server_link_carries_no_login(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://ann:s3cret@mlflow.example:8443/base/")
    link = leaderboard_url("7")
    assert link.startswith("https://mlflow.example:8443/base/#/experiments/7/runs?")
    assert "ann" not in link and "s3cret" not in link
    assert "parentRunId" not in urllib.parse.unquote(link)  # no compare given: every final run


def test_logged_models_are_named_by_their_pipeline(small_compare, store):
    """The Models view tells the models apart: each final run's one logged model carries its
    pipeline's name, and `runs:/<run>/<pipeline>` finds it as model_uri_of does."""
    for name, run in small_compare["finals"].items():
        (output,) = run.outputs.model_outputs
        model = store.get_logged_model(output.model_id)
        assert model.name == name and model.source_run_id == run.info.run_id
        assert model_uri_of(run.info.run_id) == f"models:/{model.model_id}"
    ensemble = small_compare["finals"]["ensemble"].info.run_id
    loaded = mlflow.pyfunc.load_model(f"runs:/{ensemble}/ensemble")
    assert loaded.metadata.model_id == model_uri_of(ensemble).split("/", 1)[1]


def test_a_model_logged_as_model_by_older_code_still_loads(tracking_store, tmp_path):
    """Stores written before the models were named by pipeline: model_uri_of still finds the
    run's model (named "model"), so resume, the ensemble and predict read them as before."""
    from sklearn.dummy import DummyClassifier
    import numpy as np

    with mlflow.start_run() as run:
        info = mlflow.sklearn.log_model(
            DummyClassifier(strategy="constant", constant=3).fit(np.zeros((10, 2)),
                                                                  np.arange(10)),
            name=MODEL_NAME)
    uri = model_uri_of(run.info.run_id)
    assert uri == f"models:/{info.model_id}"
    model = tracking.load_pyfunc(uri, "")
    assert list(model.predict(np.zeros((2, 2)))) == [3, 3]


def test_the_study_experiments_are_marked_model_training(small_compare, store):
    for name in (config.EXPERIMENT_NAME, config.EXPERIMENT_NAME + config.TUNING_SUFFIX):
        assert store.get_experiment_by_name(name).tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND


def test_a_kind_the_user_chose_is_kept(tracking_store):
    client = mlflow.MlflowClient()
    mine = client.create_experiment("mine", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    fresh = tracking.ensure_experiment("fresh")
    assert tracking.ensure_experiment("mine") == mine
    assert client.get_experiment(mine).tags[EXPERIMENT_KIND_TAG] == "genai_development"
    assert client.get_experiment(fresh).tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND


def test_the_registered_model_and_version_say_what_they_are(small_compare, store):
    """The registered model says what it holds and how its alias moves; the champion's
    version names its pipeline, scores, selection rule and compare; an ensemble's version
    (here, or built from its run) also its members and weights."""
    model = store.get_registered_model(config.REGISTERED_MODEL)
    assert "best validation accuracy among final models" in model.description
    assert model.tags["selection_rule"] == registry.SELECTION_RULE
    version = store.get_model_version(config.REGISTERED_MODEL, "1")
    finals = small_compare["finals"]
    champion = max(finals.values(), key=lambda r: r.data.metrics["val_accuracy"])
    pipeline = champion.data.tags["pipeline"]
    assert version.tags["pipeline"] == pipeline and version.run_id == champion.info.run_id
    assert version.tags["selection_rule"] == registry.SELECTION_RULE
    assert version.tags["compare_run_id"] == small_compare["parent"].info.run_id
    for key in ("test_accuracy", "val_accuracy"):
        assert float(version.tags[key]) == pytest.approx(champion.data.metrics[key], abs=1e-6)
        assert f"{key} {champion.data.metrics[key]:.4f}" in version.description
    assert version.description.startswith(pipeline)

    ensemble = finals["ensemble"]
    tags, description = registry.version_card(ensemble)
    weights = {m: float(w) for m, w in (p.split(":") for p in tags["members"].split(","))}
    assert set(weights) == {"knn", "logreg"} and sum(weights.values()) == pytest.approx(1, 1e-3)
    assert f"A weighted ensemble of {tags['members'].replace(',', ', ')}." in description
    if pipeline == "ensemble":
        assert version.tags["members"] == tags["members"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_ui(small_compare):
    """`mlflow ui` on a free loopback port against the compare's store; its address. One
    worker and no job runner (its seven consumer processes): the start takes seconds."""
    port = free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    log = small_compare["tmp"] / f"ui-{port}.log"  # a file: a full pipe would stall the server
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            [str(mlflow_bin), "ui", "--backend-store-uri", small_compare["uri"], "--host",
             "127.0.0.1", "--port", str(port), "--workers", "1"], cwd=small_compare["tmp"],
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    address = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(address + "/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow ui did not answer within 90 s"
            time.sleep(0.5)
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def browse(tmp_path):
    """The DOM headless Chromium renders for a URL in a fresh profile, as a new user's
    browser (skipped without Chromium, failed when STUDY_REQUIRE_BROWSER is set, as in CI)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("STUDY_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")

    def render(url: str, profile: str) -> str:
        # the UI is a React app fetching from the server: virtual time runs while it waits
        proc = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp_path / profile}",
             "--virtual-time-budget=15000", "--dump-dom", url],
            capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0 and "</html>" in proc.stdout, proc.stderr[-2000:]
        return proc.stdout

    return render


def page_text(dom: str) -> str:
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)))


def table_rows(dom: str) -> list[str]:
    """The run ids of the runs table, top to bottom (ag-grid's row-index, not DOM order)."""
    rows = dict(re.findall(r'<div [^>]*role="row" row-index="(\d+)" row-id="([0-9a-f]{32})"',
                           dom))
    return [rows[i] for i in sorted(rows, key=int)]


def test_the_link_opens_the_ranked_final_runs_in_chromium(small_compare, mlflow_ui, browse):
    """A fresh browser given the printed link (its address pointed at this UI) lands on the
    model-training side with the compare's final runs, rank 1 first; the same browser given
    the experiment's plain address lands on the GenAI side (what the link avoids)."""
    finals = small_compare["finals"]
    ranked = rank_order(small_compare)
    by_start = sorted(finals, key=lambda n: -finals[n].info.start_time)  # the UI's default
    assert ranked != by_start  # else the order below would not show the sort took
    link = printed_link(small_compare).replace("http://127.0.0.1:5000", mlflow_ui, 1)

    dom = browse(link, "fresh")
    text = page_text(dom)
    assert "Agent versions" not in text and "Model registry" in text, text[:1500]
    assert "Sort: rank" in text and f"{len(finals)} matching runs" in text, text[:1500]
    ids = {run.info.run_id: name for name, run in finals.items()}
    assert [ids.get(run_id, run_id) for run_id in table_rows(dom)] == ranked
    names = re.findall(r'href="#/experiments/\d+/runs/[0-9a-f]{32}"[^>]*>(?:<[^>]+>)*([^<]+)<',
                       dom)
    assert list(dict.fromkeys(names)) == ranked  # the run names shown, in rank order

    plain = page_text(browse(
        f"{mlflow_ui}/#/experiments/{small_compare['parent'].info.experiment_id}", "plain"))
    assert "Agent versions" in plain  # MLflow 3.17's default side for a fresh browser


def test_a_description_the_user_wrote_on_the_registered_model_stays(tracking_store):
    """The study describes the registered model once; a user's own text and tags stay, while
    every new version still gets its card."""
    import numpy as np
    from sklearn.dummy import DummyClassifier

    y_test = np.zeros(20, dtype=np.int64)

    def final_run(name: str) -> str:
        with mlflow.start_run(run_name=name, tags={"pipeline": name}) as run:
            mlflow.sklearn.log_model(DummyClassifier().fit(np.zeros((4, 2)), [0, 1, 0, 1]),
                                     name=name)
            mlflow.log_metrics({"test_accuracy": 0.5, "val_accuracy": 0.6})
        return run.info.run_id

    client = mlflow.MlflowClient()
    tracking.register_champion(final_run("first"), y_test)
    assert client.get_registered_model(config.REGISTERED_MODEL).description == \
        registry.MODEL_DESCRIPTION
    client.update_registered_model(config.REGISTERED_MODEL, description="ours, hands off")
    client.set_registered_model_tag(config.REGISTERED_MODEL, "selection_rule", "our rule")
    second = tracking.register_champion(final_run("second"), y_test)
    model = client.get_registered_model(config.REGISTERED_MODEL)
    assert model.description == "ours, hands off"
    assert model.tags["selection_rule"] == "our rule" and "alias_rule" in model.tags
    version = client.get_model_version(config.REGISTERED_MODEL, str(second["version"]))
    assert version.description.startswith("second (test_accuracy 0.5000, val_accuracy 0.6000)")
    assert version.tags["pipeline"] == "second"
