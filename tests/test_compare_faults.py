"""A pipeline that raises is isolated: marked FAILED with its traceback, the others finish."""

from __future__ import annotations

import shutil

import mlflow
import pytest

from study import cli, config


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
