"""Seed repeats: how much a model's test accuracy moves with its training seed.

The leaderboard's confidence intervals cover the sampling of the test images only. Here the
top models of a compare are refitted with more seeds (the parameters each final run logged:
tuned values, epochs and caps; same data, same training path, each scored on the test set
once) and summarised as mean +/- standard deviation, range, and whether their order holds from seed to seed (Zalando's benchmark reports
the mean of 5 repeats). The runs are children of a `repeats` run in their own experiment and
never change the compare's leaderboard.
"""

from __future__ import annotations

import ast
import logging
import time
from typing import Any

from study import config, data, leaderboard, pipelines, tracking, training, tuning
from study.attempts import final_fit
from study.errors import ConfigError
from study.spread import render_markdown, summarize, verdict

logger = logging.getLogger(__name__)


# what a final run logs beside its fit parameters (tracking.log_final): not fit parameters
RUN_PARAMS = {"pipeline", "reducer", "model", "profile", "seed"}


def logged_value(text: str, like: Any = None, choices: list | None = None) -> Any:
    """A param as it was before MLflow stored its str(): one of the search's `choices`, a
    string where the recipe's value (`like`) is one ("53", "24-48-96-96"), else a Python
    literal (numbers, 1e-05 included, None, booleans, lists) or the text itself."""
    for choice in choices or ():
        if str(choice) == text:
            return choice
    if isinstance(like, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def logged_fit_params(spec, profile, run: dict[str, Any]) -> dict[str, Any]:
    """The exact parameters the compare fitted `run`'s model with, from what the run logged:
    tuned values, epochs and caps (a time budget's cuts included), not the profile's recipe.
    A run that lacks one of the recipe's parameters, or holds a truncated one, is refused."""
    logged = run.get("params", {})
    recipe = tuning.final_params(spec, spec.budget(profile), {})
    params = {k: logged_value(v, recipe.get(k), spec.search.get(k, {}).get("choices"))
              for k, v in logged.items() if k not in RUN_PARAMS and not k.startswith("best.")}
    tuned = {k[len("best."):] for k in logged if k.startswith("best.")}
    missing = sorted((set(recipe) | tuned) - set(params))
    cut = sorted(k for k, v in logged.items() if len(v) >= tracking.PARAM_CHARS)
    if missing or cut:
        what = (f"logged no {', '.join(missing)}" if missing
                else f"holds {', '.join(cut)} truncated")
        raise ConfigError(f"final run {run['run_id']} ({spec.name}) {what}: it cannot be "
                          "refitted as the compare fitted it; rerun the compare, then repeat it")
    return params


def pick(rows: list[dict[str, Any]], top: int) -> tuple[list[dict[str, Any]], list[str]]:
    """The `top` best-ranked models that can be refitted, and notes on what was passed over:
    an ensemble trains nothing of its own, so the next-ranked single models take its place."""
    chosen, notes = [], []
    for row in rows:
        if len(chosen) == top:
            break
        if row.get("family") == "ensemble":
            notes.append(f"{row['pipeline']} (rank {row['rank']}) passed over: the ensemble is "
                         "not refitted; the next-ranked single models are repeated instead")
            continue
        chosen.append(row)
    return chosen, notes


def held_fixed(specs) -> list[str]:
    """What a repeat does not refit: a specialist is folded into the compare's own generalist
    network each seed (refitting that too would double the cost), so say so."""
    return [f"{spec.name} held fixed: the compare's {spec.generalist} network, into which each "
            f"seed's {spec.name} is folded; this spread leaves out {spec.generalist}'s seed "
            "variance" for spec in specs if spec.generalist]


def time_limited(name: str, seed: int, fit, compare_epochs: float | None) -> list[str]:
    """A note when the logged time cap (max_seconds) stopped this seed's fit early: a cap
    binds by this machine's speed, so that seed trained less than its epochs say."""
    ran = "" if compare_epochs is None else f"; the compare's fit ran {compare_epochs:.0f}"
    return [f"{name} seed {seed}: {note}{ran}" for note in fit.notes
            if note.startswith("time limit:")]


def run(compare_run_id: str = "latest", seeds: int = 5, top: int = 3,
        data_dir: str | None = None) -> dict[str, Any]:
    """Refit the compare's `top` models with `seeds` more seeds each; log and return the
    summary."""
    if seeds < 2 or top < 1:
        raise ConfigError(f"repeats need seeds >= 2 (a spread needs two) and top >= 1, got "
                          f"seeds={seeds}, top={top}")
    tracking.configure()
    compare = tracking.find_compare_run(compare_run_id)
    compare_id = compare.info.run_id
    name = compare.data.tags.get("profile") or compare.data.params.get("profile", "quick")
    try:
        profile = config.profile(name)  # the compare's, resolved once from its run
    except ConfigError as exc:
        raise ConfigError(f"compare {compare_id}: {exc}") from None
    base_seed = int(float(compare.data.params.get("seed", config.SEED)))
    runs = {r["run_id"]: r for r in tracking.final_runs(compare_id)}
    chosen, notes = pick(leaderboard.rank(list(runs.values())), top)
    if not chosen:
        raise ConfigError(f"compare {compare_id} has no final model to repeat")
    splits = data.make_splits(data.load(data_dir), profile)
    specs = _unchanged_specs(chosen, runs, data.fingerprint(splits), compare_id)
    # the compare's own fits, as logged (a time budget's cut epochs included); all checked
    # before any training
    fitted = {r["pipeline"]: logged_fit_params(specs[r["pipeline"]], profile, runs[r["run_id"]])
              for r in chosen}
    notes += held_fixed(specs.values())
    seed_list = [base_seed + k for k in range(1, seeds + 1)]
    parent_id = tracking.start_repeats(compare, profile.name, seed_list,
                                       [r["pipeline"] for r in chosen])
    started = time.perf_counter()
    results: dict[str, list[float]] = {r["pipeline"]: [] for r in chosen}
    try:
        for row in chosen:
            spec, params = specs[row["pipeline"]], fitted[row["pipeline"]]
            # on the rows the compare fitted it on (a time budget may have cut them)
            part = runs[row["run_id"]]["metrics"].get("train_fraction")
            rows = data.train_part(splits, part, base_seed) if part else splits
            for i, seed in enumerate(seed_list, start=1):
                # as compare (a specialist folds into the compare's generalist), epochs shown
                fit, val_proba = final_fit(
                    spec, params, rows, seed, compare_id,
                    progress=f"[repeats] {spec.name} seed {seed}")
                test_acc = training.accuracy(fit.predict_proba(splits.x_test), splits.y_test)
                val_acc = training.accuracy(val_proba, splits.y_val)
                results[spec.name].append(test_acc)
                notes += time_limited(spec.name, seed, fit,
                                      runs[row["run_id"]]["metrics"].get("epochs_run"))
                epochs = {"epochs_run": len(fit.history["loss"])} if fit.history.get("loss") \
                    else {}
                tracking.log_repeat(parent_id, spec.name, seed, {
                    "test_accuracy": test_acc, "val_accuracy": val_acc,
                    "fit_seconds": fit.total_seconds, "train_rows": len(rows.y_train),
                    **epochs}, params)
                logger.info(f"[repeats] {spec.name} seed {seed} ({i}/{seeds}): test "
                            f"{test_acc:.4f} val {val_acc:.4f} ({fit.total_seconds:.0f}s)")
        summary = summarize(results, {r["pipeline"]: r["test_accuracy"] for r in chosen})
        summary.update(compare_run_id=compare_id, profile=profile.name, seeds=seed_list,
                       notes=notes, seconds=time.perf_counter() - started, run_id=parent_id)
        tracking.finish_repeats(parent_id, summary, render_markdown(summary))
    except BaseException:
        tracking.finish_repeats(parent_id, None, None, status="FAILED")
        raise
    return summary


def _unchanged_specs(chosen, runs, digest: str, compare_id: str) -> dict[str, Any]:
    """The chosen models' pipeline definitions, refused before any training when the
    definition or the data changed since the compare: that would not be a repeat."""
    specs = {}
    for row in chosen:
        spec, logged = pipelines.load(row["pipeline"]), runs[row["run_id"]]
        if logged.get("pipeline_digest") != spec.digest:
            raise ConfigError(f"pipeline {spec.name} changed since compare {compare_id} "
                              f"(definition {logged.get('pipeline_digest')} -> {spec.digest}); "
                              "repeat a compare of the current definitions")
        if logged.get("data_digest") != digest:
            raise ConfigError(f"compare {compare_id} saw other data (digest "
                              f"{logged.get('data_digest')}, here {digest}); pass the data "
                              "folder it used with --data-dir")
        specs[row["pipeline"]] = spec
    return specs


def main_summary(summary: dict[str, Any]) -> str:
    """What the command prints at the end."""
    return (render_markdown(summary) + "\n\n" + verdict(summary)
            + "".join(f"\nnote: {n}" for n in summary["notes"])
            + f"\nrepeats run {summary['run_id']} of compare {summary['compare_run_id']}: "
              f"{summary['seconds'] / 60:.1f} min")
