"""The ensemble stage of a compare.

Reads every final model's logged validation and test probabilities (nothing is retrained or
re-predicted), chooses weights on validation (study.ensemble.select), scores them on the test
set once and logs a final run like the others (family `ensemble`, tracking.log_ensemble). Its
model is a serving.Classifier over its members' logged models that returns the weighted mean
of their probabilities, so `study predict` and `mlflow models serve` use it like any single
model. Run by compare after the pipelines, and by report for a compare that has none (an
interrupted or older one).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from study import ensemble, serving, tracking
from study.ensemble import NAME

logger = logging.getLogger(__name__)


# Ensembles logged before serving.Classifier name this class in their pickle; it loads them.
WeightedEnsemble = serving.Classifier


@dataclass
class StageResult:
    run_id: str | None  # the ensemble's final run, or None when there is none to build
    message: str  # one line for the console and the report
    left_out: list[str] = field(default_factory=list)


def existing_run(parent_id: str, runs: list[dict] | None = None) -> str | None:
    """The compare's ensemble run, if any (`runs`: its final runs, when already fetched)."""
    for run in tracking.final_runs(parent_id) if runs is None else runs:
        if run.get("pipeline") == NAME:
            return run["run_id"]
    return None


def candidates(runs: list[dict]) -> list[ensemble.Candidate]:
    """Every final model among a compare's final runs, with its logged probabilities (None
    when missing) and the model URI tracking.final_runs found from its run id (the editable
    model_uri tag is never loaded)."""
    out = []
    for run in runs:
        if run.get("pipeline") == NAME:
            continue
        out.append(ensemble.Candidate(
            run["pipeline"], run["run_id"], run.get("family", ""),
            tracking.load_npy(run["run_id"], "evaluation/val_proba.npy"),
            tracking.load_npy(run["run_id"], "evaluation/test_proba.npy"),
            run["metrics"], run.get("model_uri", ""), run.get("kind", ""),
            run.get("data_digest", ""), run.get("reducer", "")))
    return out


def yardsticks(everyone: list[ensemble.Candidate], kept: list[ensemble.Candidate],
              members: list[str], y_val: np.ndarray) -> dict:
    """What the ensemble is set against: its best member by validation, in the selection's
    own order (ensemble.rank_key), and the best single model on test among every final run
    of the compare, candidate or not. Test figures are the runs' logged test_accuracy, scored
    from their logged predictions: the float32 probabilities, recomputed, flip argmax ties."""
    val_acc = {c.name: ensemble.accuracy(c.val_proba, y_val) for c in kept}
    test_acc = {c.name: c.metrics.get("test_accuracy", float("nan")) for c in everyone}
    best = min(kept, key=lambda c: ensemble.rank_key(c.val_proba, y_val, c.name)).name
    scored = [n for n, acc in test_acc.items() if acc == acc]  # not NaN
    # reported, never selected on
    top = max(scored, key=lambda n: (test_acc[n], n)) if scored else best
    return {"best_member": best, "best_member_val_accuracy": val_acc[best],
            "best_member_test_accuracy": test_acc[best], "best_single_on_test": top,
            "best_single_test_accuracy": test_acc[top],
            "member_val_accuracy": {n: val_acc[n] for n in members},
            "member_test_accuracy": {n: test_acc[n] for n in members}}


def run(parent_id: str, profile: str, y_val: np.ndarray, y_test: np.ndarray,
        x_test: np.ndarray, data_digest: str) -> StageResult:
    """Build, score and log the ensemble of one compare (once: an existing one is kept)."""
    settings = ensemble.load_config()
    if not settings.enabled:
        return StageResult(None, f"ensemble: off ({settings.path})")
    runs = tracking.final_runs(parent_id)
    found = existing_run(parent_id, runs)
    if found:
        return StageResult(found, f"ensemble: run {found} exists; kept")
    started = time.time()
    everyone = candidates(runs)
    kept, left_out = ensemble.usable(everyone, len(y_val), len(y_test),
                                     settings.exclude_families, data_digest,
                                     settings.exclude_reducers)
    for reason in left_out:
        logger.info(f"ensemble: left out {reason}")
    if len(kept) < 2:
        message = (f"ensemble: not built, {len(kept)} usable model(s); it needs two "
                   "(failed or excluded models are left out)")
        tracking.set_tags(parent_id, {"ensemble": message})
        return StageResult(None, message, left_out)
    clock = time.perf_counter()
    # Only validation data goes into the selection: the test set cannot influence the weights.
    selection = ensemble.select({c.name: c.val_proba for c in kept}, y_val, settings.rounds,
                                settings.max_members)
    selection_seconds = time.perf_counter() - clock
    by_name = {c.name: c for c in kept}
    members = [by_name[n] for n in selection.weights]
    val_proba = ensemble.combine({c.name: c.val_proba for c in members}, selection.weights)
    test_proba = ensemble.combine({c.name: c.test_proba for c in members}, selection.weights)
    from study.evaluation import evaluate

    # the one look at the test set; its own temperature is fitted on validation alone
    evaluation = evaluate(y_test, test_proba, val_proba, y_val)
    figures = yardsticks(everyone, kept, [c.name for c in members], y_val)
    best, top = figures["best_member"], figures["best_single_on_test"]
    over_best = evaluation.accuracy - figures["best_member_test_accuracy"]
    over_top = evaluation.accuracy - figures["best_single_test_accuracy"]
    names, agree = ensemble.agreement({c.name: c.test_proba.argmax(axis=1) for c in members})
    summary = {
        "weights": selection.weights, "counts": selection.counts, "rounds": settings.rounds,
        "max_members": settings.max_members, "best_round": selection.best_round,
        "history": selection.history, "notes": selection.notes, "left_out": left_out,
        "candidates": sorted(by_name), **figures,
        "agreement_test": {"models": names, "matrix": agree.round(4).tolist()},
        "selection_seconds": selection_seconds,
    }
    run_id = tracking.log_ensemble(parent_id, profile, data_digest, members, selection, summary,
                                   evaluation, val_proba, y_val, x_test, started,
                                   log_classifier=serving.log_model)
    mix = ", ".join(f"{n} {w:.2f}" for n, w in selection.weights.items())
    message = (f"ensemble: {mix} -> val {selection.val_accuracy:.4f} "
               f"(best member {best} {figures['best_member_val_accuracy']:.4f}), test "
               f"{evaluation.accuracy:.4f} ({100 * over_best:+.2f} points over {best}"
               + (f"; {100 * over_top:+.2f} over {top}, the best single model on test)"
                  if top != best else ")")
               + "".join(f"; {note}" for note in selection.notes))
    return StageResult(run_id, message, left_out)
