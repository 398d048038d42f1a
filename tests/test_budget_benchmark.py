"""benchmarks/budget.py reads the plan and progress lines the compare really prints: parsed
from text made by budget_run and timebudget on the real pipelines, so a changed format fails
here, not in a 70-minute benchmark."""

from __future__ import annotations

import importlib.util
import logging

import pytest

from study import budget_run, config, pipelines, timebudget
from study.timebudget import Clock


@pytest.fixture(scope="module")
def bench():
    path = config.PROJECT_ROOT / "benchmarks" / "budget.py"
    spec = importlib.util.spec_from_file_location("budget_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def real_study(minutes: float):
    """The default pipelines with their YAML costs as they are (speed 1), a clock 20 s in."""
    specs = pipelines.resolve("all")
    budgets = {s.name: s.budget("quick") for s in specs}
    found = {s.name: timebudget.scaled_hint(s.cost.get("quick"), 1.0) for s in specs}
    return specs, budgets, found, Clock(60.0 * minutes, now=lambda: 20.0, start=0.0)


@pytest.mark.parametrize("minutes", [3, 60])
def test_the_plan_is_read_back_as_planned(bench, minutes):
    specs, budgets, found, clock = real_study(minutes)
    parsed = bench.parse_plan(budget_run.plan_text(specs, budgets, found, clock, 1.0))
    allotments = timebudget.plan(specs, budgets, found, clock)
    assert parsed["rows"] == {a.name: a.describe() for a in allotments}
    for a in allotments:
        seconds = bench.seconds_of(parsed["rows"][a.name])
        assert seconds["expected"] == (None if a.skipped else round(a.expected))
        assert seconds["allowed"] == (None if a.skipped else round(a.seconds))
        assert seconds["epochs"] == (a.budget.fit.get("epochs") if a.budget else None)
    ran = {a.name for a in allotments if not a.skipped}
    covered = set().union(*(timebudget.families_of(s) for s in specs if s.name in ran))
    families = set(timebudget.coverage(specs, found, clock.usable()).families)
    assert (parsed["covered"], parsed["families"]) == (len(covered & families), len(families))
    assert set(parsed["not_covered"]) == families - covered
    if minutes == 3:  # too small for every family: the plan names the budget that covers all
        assert parsed["not_covered"]
        assert parsed["covering_minutes"] == timebudget.covering_minutes(specs, found, clock)
    else:
        assert parsed["not_covered"] == [] and parsed["covering_minutes"] is None


def test_the_progress_lines_are_read_back_as_run(bench, tracking_store, caplog):
    """budget_run.run on the real pipelines with a fake clock (each takes its allowance's
    expected seconds): every pipeline's turn is found with the epochs it was given, and the
    skipped ones as skipped."""
    import mlflow

    specs, budgets, found, _ = real_study(4)
    now = [0.0]
    clock = Clock(240.0, now=lambda: now[0])
    parent = mlflow.MlflowClient().create_run(
        mlflow.set_experiment(config.EXPERIMENT_NAME).experiment_id).info.run_id
    given = {}

    def attempt(spec, budget):
        given[spec.name] = budget
        now[0] += min(30.0, clock.usable())

    with caplog.at_level(logging.INFO, logger="study.budget_run"):
        list(budget_run.run([(f"pipeline {i}/{len(specs)}", s) for i, s in enumerate(specs, 1)],
                            "quick", clock, parent, attempt, lambda name, why: None))
    turns = bench.parse_turns("\n".join(f"INFO study.budget_run: {r.getMessage()}"
                                        for r in caplog.records))
    assert set(turns) == {s.name for s in specs}
    assert {n for n, t in turns.items() if "plan" in t} == set(given)
    for name, budget in given.items():
        seconds = bench.seconds_of(turns[name]["plan"])
        assert seconds["allowed"] is not None and seconds["epochs"] == budget.fit.get("epochs")
    assert all(t["skipped"].startswith("budget") for t in turns.values() if "skipped" in t)
    assert any("skipped" in t for t in turns.values())  # 4 minutes cannot run everything
