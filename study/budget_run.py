"""A compare under a time budget (`--budget-minutes`): each pipeline's estimate, the plan
printed before any work, then the pipelines one at a time with their allotments and the
clock on every pipeline's first line. The arithmetic is timebudget's (pure, tested with a
fake clock); this module wires it to the store and to `attempts.attempt`."""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator

from study import config, tables, timebudget, tracking
from study.errors import ConfigError

logger = logging.getLogger(__name__)

# the reduction figures (PCA curve and maps; the UMAP map is the slow one), measured ~15/70 s
FIGURES_SECONDS = {"pca": 20.0, "umap": 90.0}


def check_room(clock: timebudget.Clock, data_seconds: float) -> None:
    """After loading the data: a budget that leaves nothing for the pipelines is refused
    before any store is touched."""
    if clock.usable() <= 0:
        need = (data_seconds + clock.reserve) / 60
        raise ConfigError(
            f"budget_minutes={clock.seconds / 60:g} leaves no time for the pipelines: loading the "
            f"data took {data_seconds:.0f} s and {clock.reserve:.0f} s are kept for the ensemble "
            f"and the report; give more than {need:.1f} minutes")


# Probe-based estimates (study.probes), for a store with no history of a pipeline. A real
# epoch (training.fit on the quick split) against rows / training rate + validation rows /
# prediction rate from a probe taken just before it, on this 2-core host under a load of 3.5-4.4
# (2026-12-03): mlp_seed 3.17 s against 2.88 (1.10), cnn_seed1 39.9 against 48.8 (0.82),
# cnn_modern with its weight average 81.6 against 55.3 on 12,000 rows (1.48; ~1.3 without the
# first epoch's tracing). One factor for all, and the weight average's own on top.
EPOCH_FACTOR = 1.0
EMA_FACTOR = 1.3  # ema: weights copied every 5 steps, swapped in for each validation pass
TRIAL_SECONDS = 3.0  # a tuning trial's building and tracing beyond its epochs
LOG_SECONDS = 6.0  # a final run's logging and model saving (store: ~9 s of a network's
# pipeline_seconds beyond its fit and tuning, ~1-3 s of it predicting)
TRAIN_ROWS = round(60_000 * (1 - config.VALIDATION_FRACTION))  # the quick training split
VAL_ROWS, TEST_ROWS = 60_000 - TRAIN_ROWS, 10_000


def estimates(specs, profile: str, parent_id: str | None
              ) -> tuple[dict[str, Any], str | None]:
    """Each pipeline's Estimate: its latest run in this store and profile; else, for a network,
    one built from a throughput probe of this machine (study.probes, cached per host) and its
    recipe; else its YAML cost scaled by a matrix-multiply probe; else None.
    Also what was probed, for the plan's head line (None: nothing). Without a compare run
    (`parent_id` None: a plan only), the store is read if it exists."""
    import time

    from study import probes

    stored = (tracking.pipeline_timings(profile, parent_id) if parent_id
              else tracking.existing_timings(profile))
    out: dict[str, Any] = {}
    speed, fresh, kept, start = None, set(), set(), time.perf_counter()

    def from_yaml(spec):
        nonlocal speed
        if profile not in spec.cost:
            return None
        if speed is None:
            speed = timebudget.probe_speed(config.COST_HOST_GFLOPS)
        return timebudget.scaled_hint(spec.cost[profile], speed, kind_of(spec),
                                      WARMUP_SECONDS.get(spec.reducer, 0.0), LEAST_LOG_SECONDS)

    for spec in specs:
        if spec.name in stored:
            t = stored[spec.name]
            least = t.get("least_seconds")  # its own run at its least, in preference
            hint = None if least is not None or not int(t["trials"]) else from_yaml(spec)
            if least is None and hint is not None:
                least = hint.least_seconds
            out[spec.name] = timebudget.Estimate(
                t["seconds"], t["fit_seconds"], t["tuning_seconds"],
                int(t["epochs"]) if t["epochs"] else None, int(t["trials"]), "store",
                least_seconds=least, kind=kind_of(spec))
            continue
        found = None
        if config.probes_enabled() and is_probed(spec):
            try:
                found, hit = probed_estimate(spec, config.profile(profile))
                (kept if hit else fresh).add(probes.network_key(spec, spec.budget(profile)))
            except Exception as exc:  # a probe that fails leaves the YAML's cost
                logger.warning(f"{spec.name}: throughput probe failed ({exc}); its YAML cost "
                               "is used")
        out[spec.name] = found if found is not None else from_yaml(spec)
    notes = []
    if fresh:
        notes.append(f"probed {len(fresh)} network architectures in "
                     f"{time.perf_counter() - start:.0f} s; cached for this host")
    if kept - fresh:
        notes.append(f"{len(kept - fresh)} network architectures' probes read from this host's "
                     "cache")
    if speed:
        notes.append(f"the others' YAML costs scaled by {speed:.2f} (a matrix-multiply probe)")
    return out, "; ".join(notes) or None


# What a process pays once before its first UMAP fit: `import umap` (it imports TensorFlow,
# ~14 s cold) and numba's JIT of the code paths a fit takes (~10 s; ../shared/PITFALLS.md);
# added to a UMAP pipeline's least, gone once one of them has run (Estimate.warmup)
WARMUP_SECONDS = {"umap": 24.0}
# a least run's evaluation, figures and logged model, beyond the fit and scoring its YAML's
# least_seconds measured (the tuned quick runs: 1-3 s of overhead beyond predicting the test set)
LEAST_LOG_SECONDS = 3.0


def kind_of(spec) -> str:
    """What a re-plan corrects together (timebudget.corrected): a network by its architecture
    (its builder), a UMAP pipeline by its reducer, the other one-fit estimators together."""
    from study.models import get_builder

    try:
        if get_builder(spec.model).kind == "keras":
            return f"network:{spec.model}"
    except Exception:  # an unknown model fails later, with its own message
        pass
    return "reducer:umap" if spec.reducer == "umap" else "one-fit"


def is_probed(spec) -> bool:
    """Whether a throughput probe estimates the pipeline: a Keras network trained on its own
    (not a specialist or a boosted one). The sklearn one-fit estimators (UMAP too: see
    study.probes) keep their YAML cost, scaled."""
    from study.models import get_builder

    if spec.generalist or spec.boost:
        return False
    try:
        return get_builder(spec.model).kind == "keras"
    except Exception:  # an unknown model fails later, with its own message
        return False


def _rows(profile: config.Profile) -> tuple[int, int]:
    return (profile.train_subsample or TRAIN_ROWS, profile.val_subsample or VAL_ROWS)


def probed_estimate(spec, profile: config.Profile) -> tuple[Any, bool]:
    """(an Estimate of a network from this machine's probe of its architecture and its recipe:
    epochs, rows, tuning trials, scoring; whether the probe's figures were cached)."""
    from study import probes

    budget = spec.budget(profile)
    rows, val = _rows(profile)
    tune_rows = min(rows, budget.tune_subsample or rows)
    tune_val = min(val, budget.tune_val_subsample or val)
    trials = budget.n_trials if spec.tunes(budget) else 0
    rates, hit = probes.cached(probes.network_key(spec, budget),
                               lambda: probes.probe_network(spec, budget))
    train, predict = rates["train_images_per_second"], rates["predict_images_per_second"]
    fit_kw = {**spec.fit, **budget.fit}
    epochs = int(fit_kw.get("epochs", 10))
    factor = EPOCH_FACTOR * (EMA_FACTOR if fit_kw.get("ema") else 1.0)
    epoch = factor * (rows / train + val / predict)
    tune_epochs = int(budget.tune_fit.get("epochs") or epochs)
    trial = TRIAL_SECONDS + tune_epochs * factor * (tune_rows / train + tune_val / predict)
    scored = (val + TEST_ROWS) * (2 if spec.tta == "mirror" else 1)
    # building and tracing, once a fit (a figure cached before it was probed counts 0)
    fit, overhead = epoch * epochs, LOG_SECONDS + scored / predict + rates.get("setup_seconds", 0.0)
    tuning = trial * trials
    return timebudget.Estimate(overhead + fit + tuning, fit, tuning, epochs, trials,
                               "probe", kind=kind_of(spec)), hit


def plan_text(specs, budgets, found, clock: timebudget.Clock, probed: str | None,
              data: str = "spent so far: the data and any probes") -> str:
    """The plan: per pipeline, its share, what it may spend and its estimate; the total."""
    allotments = timebudget.plan(specs, budgets, found, clock)
    shares = {spec.name: spec.share for spec in specs}
    rows = [[a.name, f"{shares[a.name]:g}", a.describe()] for a in allotments]
    expected = sum(a.expected for a in allotments if not a.skipped)
    head = (f"plan for {clock.seconds / 60:g} minutes ({clock.elapsed():.0f} s {data}; "
            f"{clock.reserve:.0f} s kept for the ensemble and the report{_probed(probed)}):")
    skipped = [a.name for a in allotments if a.skipped]
    tail = (f"expected: pipelines ~{expected / 60:.1f} min, the whole compare ~"
            f"{(clock.elapsed() + expected + clock.reserve) / 60:.1f} min"
            + (f"; expected to be skipped: {', '.join(skipped)}" if skipped else ""))
    return "\n".join([head, tables.text(["pipeline", "share", "plan"], rows, set()), tail,
                      coverage_line(specs, found, clock, allotments)])


def coverage_line(specs, found, clock: timebudget.Clock, allotments) -> str:
    """What the plan covers, by which rule; the families it leaves out and the budget that
    would cover them."""
    families = timebudget.coverage(specs, found, clock.usable()).families
    ran = {a.name for a in allotments if not a.skipped}
    covered = set().union(*(timebudget.families_of(s) for s in specs if s.name in ran))
    missing = [f for f in families if f not in covered]
    line = (f"covers {len(families) - len(missing)} of {len(families)} families "
            f"(first each family's cheapest pipeline at its least: no tuning (one trial where "
            f"cheaper), {timebudget.MIN_EPOCHS} epochs for a network, the cheapest families "
            f"first, the last "
            f"on part of the training rows (at least {timebudget.MIN_ROWS:.0%}) when only that "
            f"fits; then "
            f"the rest in proportion to each one's remaining cost, weighted by its YAML share "
            f"when short)")
    part = [f"{a.name} ({a.budget.train_fraction:.0%})" for a in allotments
            if not a.skipped and a.budget.train_fraction]
    if missing:
        line += f"; not covered: {', '.join(missing)}"
    if part:
        line += f"; on part of the training rows: {', '.join(part)}"
    if missing or part:
        line += (f"; the smallest budget that covers all on all their rows on this machine is "
                 f"{timebudget.covering_minutes(specs, found, clock)} min")
    return line


def _probed(note: str | None) -> str:
    return f"; {note}" if note else ""


LONG_MINUTES = 30.0  # a forecast past this suggests a time budget
SUGGESTED_BUDGET = 20  # minutes: the budget the hint offers


def forecast_text(specs, profile: str, found, probed: str | None,
                  data_seconds: float, data: str = "spent on the data") -> str:
    """The plan of a compare without a time budget: per pipeline, its recipe and expected
    seconds on this machine (the budget planner's estimates); the total, and a hint to use a
    budget when it is long."""
    rows, expected, unknown = [], 0.0, []
    for spec in specs:
        budget, est = spec.budget(profile), found.get(spec.name)
        seconds = est.configured(budget) if est else None
        if seconds is None:
            unknown.append(spec.name)
        else:
            expected += seconds
        guess = f"~{seconds:.0f} s ({est.source})" if est else "no estimate"
        rows.append([spec.name, f"{spec.share:g}",
                     f"{timebudget.spends(budget, spec.tunes(budget))}; {guess}"])
    figures = max((FIGURES_SECONDS.get(s.reducer, 0.0) for s in specs), default=0.0)
    total = data_seconds + expected + figures + timebudget.RESERVE_SECONDS
    head = (f"plan without a time budget ({profile} profile as it is; {data_seconds:.0f} s "
            f"{data}{_probed(probed)}):")
    tail = (f"expected: pipelines ~{expected / 60:.1f} min, the whole compare ~{total / 60:.1f} "
            f"min (with {figures + timebudget.RESERVE_SECONDS:.0f} s of figures, ensemble and "
            "report)" + (f"; not counted, no estimate: {', '.join(unknown)}" if unknown else ""))
    lines = [head, tables.text(["pipeline", "share", "plan"], rows, set()), tail]
    if total / 60 > LONG_MINUTES:
        lines.append(f"expected {total / 60:.0f} min on this machine; `make compare "
                     f"BUDGET={SUGGESTED_BUDGET}` gives a {SUGGESTED_BUDGET}-minute comparison")
    return "\n".join(lines)


def forecast(todo, profile: str, parent_id: str, data_seconds: float) -> None:
    """Print (and log as plan.txt) the unbudgeted compare's forecast before any work."""
    specs = [spec for _, spec in todo]
    found, probed = estimates(specs, profile, parent_id)
    text = forecast_text(specs, profile, found, probed, data_seconds)
    for line in text.splitlines():
        logger.info(line)
    tracking.log_text(text + "\n", "plan.txt", run_id=parent_id)


DATA_SECONDS = 5.0  # loading and splitting the data, for a plan made without it (~3.3 s here)


def plan_only(specs, profile: str, budget_minutes: float | None, parallel: int = 1) -> str:
    """The plan a compare would print, made without loading the data or writing anything:
    under a budget the budget's plan (its clock started DATA_SECONDS ago, for the data),
    else the forecast of the recipe."""
    found, probed = estimates(specs, profile, None)
    data = "expected for the data"
    if budget_minutes is None:
        return forecast_text(specs, profile, found, probed, DATA_SECONDS, data)
    clock = start_clock(budget_minutes, parallel)
    clock.start -= DATA_SECONDS
    check_room(clock, DATA_SECONDS)
    budgets = {spec.name: spec.budget(profile) for spec in specs}
    return plan_text(specs, budgets, found, clock, probed, data)


def run(todo, profile: str, clock: timebudget.Clock, parent_id: str,
        attempt: Callable[[Any, Any], Any], skipped_outcome: Callable[[str, str], Any]
        ) -> Iterator[Any]:
    """Print and log the plan, then run `todo` ((label, spec) pairs) with their allotments:
    `attempt(spec, budget)` runs one, `skipped_outcome(name, reason)` records a skip."""
    specs = [spec for _, spec in todo]
    labels = {spec.name: label for label, spec in todo}
    budgets = {spec.name: spec.budget(profile) for spec in specs}
    found, probed = estimates(specs, profile, parent_id)
    text = plan_text(specs, budgets, found, clock, probed)
    for line in text.splitlines():
        logger.info(line)
    tracking.log_text(text + "\n", "plan.txt", run_id=parent_id)

    def run_one(spec, allotment):
        logger.info(f"=== {labels[spec.name]}: {spec.name} {clock.line()}; "
                    f"{allotment.describe()}")
        return attempt(spec, allotment.budget)

    def skip(spec, allotment):
        logger.info(f"=== {labels[spec.name]}: {spec.name} skipped ({allotment.skipped}) "
                    f"{clock.line()}")
        return skipped_outcome(spec.name, allotment.skipped)

    yield from timebudget.schedule(specs, budgets, found, clock, run_one, skip)


def figures_fit(specs, clock: timebudget.Clock) -> bool:
    """Whether the reduction figures fit in what is left."""
    reducers = {spec.reducer for spec in specs} - {"none"}
    need = max((FIGURES_SECONDS.get(r, 0.0) for r in reducers), default=0.0)
    return clock.usable() >= need


def start_clock(budget_minutes: float, parallel: int) -> timebudget.Clock:
    """The time budget's clock, started now (before the data is loaded)."""
    if not budget_minutes > 0:
        raise ConfigError(f"budget_minutes must be a positive number of minutes, got "
                          f"{budget_minutes}")
    if parallel > 1:
        raise ConfigError("budget_minutes shares the time out one pipeline at a time; drop "
                          "parallel (or the budget)")
    return timebudget.Clock(60.0 * budget_minutes)


def pipelines_within(clock: timebudget.Clock, todo, specs, profile: config.Profile, splits,
                     seed: int, setup, parent_id: str, data_digest: str) -> Iterator[Any]:
    """The pipelines one at a time, each with its part of the time budget; then the
    reduction figures if they still fit."""
    from study.attempts import Outcome, attempt, attempt_reduction_figures

    tracking.log_metrics({"budget_minutes": clock.seconds / 60}, run_id=parent_id)
    yield from run(
        todo, profile.name, clock, parent_id,
        lambda spec, budget: attempt(spec, profile, splits, seed, setup, parent_id,
                                     data_digest, budget),
        lambda name, reason: Outcome(name, skipped=reason))
    if figures_fit(specs, clock):
        yield attempt_reduction_figures(specs, splits, seed, parent_id)
    else:
        logger.info("figures: the reduction figures skipped (the time budget)")
