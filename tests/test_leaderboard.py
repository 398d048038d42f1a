"""Ranking rules on a constructed set of runs."""

import math

from study import leaderboard


def run(name, acc, f1, fit, trials=3):
    return {"run_id": name, "pipeline": name, "family": "f", "reducer": "none",
            "metrics": {"test_accuracy": acc, "test_macro_f1": f1, "fit_seconds": fit,
                        "val_accuracy": acc, "n_trials": trials}}


def test_rank_by_accuracy_then_f1_then_fit_time():
    runs = [
        run("slow_tie", 0.90, 0.89, 50.0),
        run("best", 0.92, 0.80, 100.0),
        run("fast_tie", 0.90, 0.89, 5.0),
        run("f1_wins", 0.90, 0.91, 500.0),
        run("worst", 0.10, 0.02, 0.1),
    ]
    rows = leaderboard.rank(runs)
    assert [r["pipeline"] for r in rows] == ["best", "f1_wins", "fast_tie", "slow_tie", "worst"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]


def test_missing_metrics_sort_last():
    rows = leaderboard.rank([{"run_id": "x", "pipeline": "broken", "metrics": {}},
                             run("ok", 0.5, 0.5, 1.0)])
    assert [r["pipeline"] for r in rows] == ["ok", "broken"]
    assert math.isnan(rows[1]["test_accuracy"])


def test_text_rendering_has_header_and_one_line_per_run():
    text = leaderboard.render_text(leaderboard.rank([run("a", 0.9, 0.9, 1.0), run("b", 0.8, 0.8, 2.0)]))
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["rank", "pipeline"]
    assert len(lines) == 4 and "0.9000" in lines[2] and lines[3].split()[1] == "b"
