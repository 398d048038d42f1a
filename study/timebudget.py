"""A global time budget for a compare: the best it can do in N minutes, on any machine.

The clock starts before the data is loaded; time for the ensemble, the registry and the
report is reserved. Coverage comes before accuracy: first every family the selected pipelines
compare (their `cover`, default their `family`, and the pca/umap reductions) is bought once, by its cheapest pipeline
at its least honest setting (no tuning, a network's shortest useful fit), the cheapest
families first while they fit, the next ones on a stratified part of their training rows
(`coverage`). Only the rest of the time is then shared out, each pipeline in its turn getting
its share of what is left beyond those reserved least costs (in proportion to its remaining
cost when that covers every pipeline still to run, else to `share` (its YAML) x remaining
cost). Its tuning timeout and its network's epochs and time cap are cut to fit that
allowance; one that cannot give a model in it (its estimated least cost is larger) is skipped
("skipped: budget"), so its time goes to the pipelines after it; what is left at the end goes
to the skipped ones that fit then, an uncovered family first, then the largest share.
Estimates come from earlier runs of the pipeline in the store (same profile), else from
throughput probes of this machine (networks: study.probes), else from the cost its YAML
states, scaled by a short matrix-multiply probe; a tuned one-fit pipeline's least (its fixed
params) has its own measured cost. A network's epochs end inside its allotment with a margin;
its time cap is only a safety net beyond it. After each pipeline the estimates still to come
of its source and kind are corrected by what it really took against its plan (bounded).
Pure: no MLflow, no Optuna; the clock is injectable.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

RESERVE_SECONDS = 45.0  # ensemble, registry and report (26-40 s measured on quick compares)
MIN_EPOCHS = 2  # a network with fewer is not worth its time (its schedule never settles)
UNKNOWN_COST = 60.0  # seconds assumed for a pipeline with no estimate, when sharing out
CHEAP = 0.03  # a pipeline costing at most this part of what is left runs whatever its share
MIN_ROWS = 0.1  # the least part of the training rows a family is covered on (4,800 of 48,000)
# A network's epochs are chosen so its schedule ends inside its allotment with this margin on
# its estimated epoch; its time cap is a safety net SAFETY_CAP times the room, so an estimate a
# few percent low never stops a network mid-schedule (issue 43: the cap cut cnn_modern's
# 15-epoch schedule after 10).
EPOCH_MARGIN = 1.1
SAFETY_CAP = 1.5


@dataclass(frozen=True)
class Estimate:
    """What a pipeline costs as its profile runs it, in seconds on this machine."""

    seconds: float  # all of it: tuning, final fit, scoring, logging
    fit_seconds: float  # the final fit
    tuning_seconds: float = 0.0
    epochs: int | None = None  # a network's epochs in that fit
    trials: int = 0  # tuning trials in that time
    source: str = "store"  # "store" (an earlier run), "probe" (a network's throughput probe)
    # or "yaml" (the stated cost, scaled)
    # a one-fit pipeline's whole cost at its least (its YAML's fixed params, no tuning): measured
    # apart, since the tuned run's fit says nothing of it (pca_rf: 110 s against 37 planned
    # from its tuned run); None: the least is the fit above
    least_seconds: float | None = None
    kind: str = ""  # what a re-plan corrects together: a network's architecture, "one-fit"
    # (a scikit-learn estimator) or "reducer:umap"
    warmup: float = 0.0  # of least_seconds, what a process pays once for this kind (UMAP's
    # import and numba JIT): gone from the others of its kind once one has run

    @property
    def overhead(self) -> float:
        """Scoring the test set, figures and logging: what remains without tuning or fit."""
        return max(0.0, self.seconds - self.fit_seconds - self.tuning_seconds)

    @property
    def epoch_seconds(self) -> float | None:
        return self.fit_seconds / self.epochs if self.epochs else None

    @property
    def trial_seconds(self) -> float | None:
        return self.tuning_seconds / self.trials if self.trials else None

    def configured(self, budget) -> float:
        """What it would cost run as `budget` says (the estimate may come from a cut run):
        its trials and epochs at the measured rates; a tuned one-fit pipeline run without
        trials, its least."""
        if self.least_seconds is not None and not self.epochs and not budget.n_trials:
            return self.least_on(budget.train_fraction or 1.0)
        tuning = (self.trial_seconds * budget.n_trials if self.trials and budget.n_trials
                  else 0.0 if self.trials else self.tuning_seconds)
        if self.trials and budget.n_trials:  # Optuna stops at its timeout, one trial in hand
            tuning = min(tuning, budget.timeout + self.trial_seconds)
        fit = self.fit_seconds
        if self.epochs:
            fit = self.epoch_seconds * int(budget.fit.get("epochs", self.epochs))
        fit *= budget.train_fraction or 1.0
        if self.epochs:
            fit = min(fit, float(budget.fit.get("max_seconds") or math.inf))
        return self.overhead + tuning + fit

    @property
    def least(self) -> float:
        """Its least setting's cost: no tuning (a one-fit estimator's fixed params), a
        network's shortest useful fit."""
        if self.epochs:
            return self.overhead + self.epoch_seconds * min(MIN_EPOCHS, self.epochs)
        if self.least_seconds is not None:
            return self.least_seconds
        return self.overhead + self.fit_seconds

    @property
    def one_trial(self) -> float | None:
        """A tuned one-fit estimator's cost with one trial (its tuned fit, on the tuning
        subsample first), when that is below its least: pca_logreg's fixed params fit all 784
        components, its tuned ones 30-200."""
        # not UMAP's (a warm-up kind): its fit's cost is its rows and fixed epochs, whatever
        # tuning picks (umap_knn's single fit took 223 s where its tuned run's took ~67)
        if self.epochs or self.least_seconds is None or not self.trials or self.warmup:
            return None
        tuned = self.overhead + self.fit_seconds + self.trial_seconds
        return tuned if tuned < self.least_seconds else None

    @property
    def minimum(self) -> float:
        """The least that still gives a model: its least setting, or one trial when cheaper."""
        return min(self.least, self.one_trial or math.inf)

    def scaled(self, ratio: float) -> "Estimate":
        """The same pipeline `ratio` times as slow (a correction from what really ran)."""
        least = None if self.least_seconds is None else self.least_seconds * ratio
        return dataclasses.replace(self, seconds=self.seconds * ratio,
                                   fit_seconds=self.fit_seconds * ratio,
                                   tuning_seconds=self.tuning_seconds * ratio,
                                   least_seconds=least, warmup=self.warmup * ratio)

    def warmed(self) -> "Estimate":
        """The same pipeline in a process where one of its kind already paid the warm-up."""
        if not self.warmup or self.least_seconds is None:
            return self
        return dataclasses.replace(self, least_seconds=self.least_seconds - self.warmup,
                                   warmup=0.0)

    def least_on(self, fraction: float) -> float:
        """Its least cost fitted on `fraction` of the training rows: the fit (and what scales
        with the rows: tuning is gone) in proportion, scoring, logging and warm-up whole."""
        fixed = min(self.least, self.overhead + self.warmup)
        return fixed + fraction * (self.least - fixed)


class Clock:
    """Seconds left of a budget, minus the reserve; `now` is injectable (tests fake it)."""

    def __init__(self, seconds: float, reserve: float = RESERVE_SECONDS,
                 now: Callable[[], float] = time.perf_counter, start: float | None = None):
        self.seconds, self.reserve, self.now = float(seconds), float(reserve), now
        self.start = now() if start is None else start

    def elapsed(self) -> float:
        return self.now() - self.start

    def usable(self) -> float:
        """What the pipelines may still spend (the reserve kept back)."""
        return max(0.0, self.seconds - self.reserve - self.elapsed())

    def line(self) -> str:
        done = min(1.0, self.elapsed() / self.seconds)
        bar = "#" * round(20 * done) + "." * (20 - round(20 * done))
        return (f"[{bar}] {self.elapsed() / 60:.1f} of {self.seconds / 60:.1f} min, "
                f"{max(0.0, self.seconds - self.elapsed()) / 60:.1f} left")


@dataclass(frozen=True)
class Allotment:
    """One pipeline's part of the budget: the profile's Budget cut to fit, or a skip."""

    name: str
    seconds: float  # its allowance when its turn came
    budget: Any = None  # pipelines.Budget to run with; None when skipped
    skipped: str = ""  # why it was skipped ("budget: ...")
    estimate: Estimate | None = None

    @property
    def expected(self) -> float:
        """What it should spend: its estimate of this budget (a store estimate may come from
        a cut run), at most its allowance; the allowance when there is no estimate."""
        if self.estimate is None or self.budget is None:
            return self.seconds
        return min(self.estimate.configured(self.budget), self.seconds)

    def describe(self) -> str:
        if self.skipped:
            return f"skip ({self.skipped})"
        guess = f"~{self.expected:.0f} s ({self.estimate.source})" if self.estimate \
            else "no estimate"
        return (f"{self.seconds:.0f} s allowed: "
                f"{spends(self.budget, bool(self.budget.n_trials))}; {guess}")


def spends(budget, tunes: bool) -> str:
    """What a Budget runs, for the plan tables: its trials (when it `tunes`), a network's
    epochs and time cap, the part of the training rows."""
    parts = [f"<= {budget.n_trials} trials in {budget.timeout:.0f} s"] if tunes else []
    epochs, cap = budget.fit.get("epochs"), budget.fit.get("max_seconds")
    if epochs:
        parts.append(f"{epochs} epochs" + (f", cap {cap:.0f} s" if cap else ""))
    if budget.train_fraction:
        parts.append(f"{budget.train_fraction:.0%} of the training rows")
    return ", ".join(parts) or "one fit"


def allot(spec, budget, estimate: Estimate | None, allowance: float, tunes: bool,
          subsample: bool = False) -> Allotment:
    """Cut `budget` (the profile's) to `allowance` seconds, or skip the pipeline when even
    its least cost does not fit; with `subsample` (a family's only chance), its least on a
    stratified part of the training rows (at least MIN_ROWS) before skipping. Without an
    estimate it runs as configured, its tuning capped by the allowance."""
    if estimate is None:  # tuning gets half of the allowance, a network's fit a cap at it
        fit = dict(budget.fit)
        if "epochs" in fit:
            fit["max_seconds"] = min(float(fit.get("max_seconds") or math.inf), allowance)
        return Allotment(spec.name, allowance, dataclasses.replace(
            budget, timeout=max(1.0, min(budget.timeout, allowance / 2)), fit=fit))
    need = estimate.minimum if tunes else estimate.least  # one trial only if it may tune
    if need > allowance and subsample and estimate.least_on(MIN_ROWS) <= allowance:
        fixed = estimate.least_on(0.0)
        fraction = math.floor(100 * (allowance - fixed) / (estimate.least - fixed)) / 100
        fit = dict(budget.fit)
        if estimate.epochs:  # its shortest useful fit, its schedule sized to it
            fit["epochs"] = min(MIN_EPOCHS, int(fit.get("epochs", estimate.epochs)))
            fit["max_seconds"] = safety_cap(fit, allowance - estimate.overhead)
        return Allotment(spec.name, allowance, dataclasses.replace(
            budget, n_trials=0, timeout=1.0, fit=fit, train_fraction=fraction),
            estimate=estimate)
    if need > allowance:
        return Allotment(spec.name, allowance, skipped=(
            f"budget: needs ~{need:.0f} s at least, {allowance:.0f} s left for it"),
            estimate=estimate)
    # beyond the least: tuning, then more epochs; when one trial is cheaper than the least
    # (its tuned fit is), beyond that fit: it must tune
    tuned_first = tunes and estimate.one_trial is not None
    spare = allowance - (estimate.overhead + estimate.fit_seconds if tuned_first
                         else estimate.least)
    n_trials, timeout, tuning = budget.n_trials, budget.timeout, 0.0
    if tunes:
        trial = estimate.trial_seconds or 0.0
        room = spare / 3 if estimate.epochs else spare  # a network keeps most for epochs
        if room >= estimate.tuning_seconds + trial:  # as much tuning as last time, or more
            tuning = estimate.tuning_seconds
        elif room - trial > 0 or (tuned_first and room >= trial):
            timeout = tuning = room - trial  # Optuna checks its timeout between trials: one
            # in hand
        else:
            n_trials, timeout = 0, 1.0
    fit = dict(budget.fit)
    if estimate.epochs:
        wanted = int(fit.get("epochs", estimate.epochs))
        room = allowance - estimate.overhead - tuning
        fit["epochs"] = max(min(MIN_EPOCHS, wanted),
                            min(wanted, math.floor(room / (estimate.epoch_seconds
                                                           * EPOCH_MARGIN))))
        fit["max_seconds"] = safety_cap(fit, room)
    return Allotment(spec.name, allowance, dataclasses.replace(
        budget, n_trials=n_trials, timeout=max(1.0, timeout), fit=fit), estimate=estimate)


def safety_cap(fit: dict[str, Any], room: float) -> float:
    """A network's time cap under a budget: SAFETY_CAP times the `room` its epochs were
    chosen for (never above the recipe's own cap): a net for an estimate far off, not the
    limit that ends its schedule."""
    return min(float(fit.get("max_seconds") or math.inf), SAFETY_CAP * room)


def families_of(spec) -> set[str]:
    """The families a pipeline puts on the leaderboard: its model's (its YAML `cover`, default
    its `family`: the seed's CNNs and the modern CNN are both family cnn), and its reduction's."""
    return ({spec.cover} - {"ensemble"}) | ({spec.reducer} - {"none"})


def least(estimate: Estimate | None) -> float:
    """A pipeline's least cost (UNKNOWN_COST without an estimate: it runs in what it gets)."""
    return UNKNOWN_COST if estimate is None else estimate.minimum


@dataclass(frozen=True)
class Coverage:
    """The first pass: one pipeline per family, each at its least cost, cheapest first; when
    they do not all fit, the next ones on part of the training rows (at least MIN_ROWS)."""

    families: tuple[str, ...]  # every family to cover (not yet covered)
    picks: tuple[str, ...]  # the pipelines that cover them, cheapest first
    minimums: tuple[float, ...]  # each pick's least cost, in the same order
    fits: int  # how many of the picks (the first ones) fit in the time given
    on_part: int = 0  # how many after those fit only on part of the training rows
    on_part_seconds: tuple[float, ...] = ()  # what is kept back for each of those

    @property
    def seconds(self) -> float:
        """What covering every family costs at least."""
        return sum(self.minimums)

    @property
    def reserved(self) -> dict[str, float]:
        """The picks that fit, with the time kept back for each: its least cost, or for those
        that fit only on part of the rows, all that is left of the time (on MIN_ROWS at least)."""
        return dict(zip(self.picks[:self.fits + self.on_part],
                        self.minimums[:self.fits] + self.on_part_seconds))


def coverage(specs, estimates: dict[str, Estimate | None], usable: float,
             covered: set[str] = frozenset()) -> Coverage:
    """Each family not in `covered` bought by its cheapest pipeline in `specs` (a specialist
    needs its generalist, so never covers alone), cheapest first; those that fit in `usable`,
    then the next ones on part of the rows."""
    candidates = sorted((s for s in specs if not s.generalist),
                        key=lambda s: least(estimates.get(s.name)))
    families = set().union(*(families_of(s) for s in candidates)) - set(covered)
    seen, picks, minimums = set(covered), [], []
    for spec in candidates:  # the first pipeline to name a family is its cheapest
        if families_of(spec) - seen:
            seen |= families_of(spec)
            picks.append(spec.name)
            minimums.append(least(estimates.get(spec.name)))
    fits, total = 0, 0.0
    while fits < len(picks) and total + minimums[fits] <= usable:
        total += minimums[fits]
        fits += 1
    # the families left, each on MIN_ROWS of the rows while that fits, cheapest first; then
    # what is left tops them up toward all their rows, before anyone gets more than its least
    on_part = [min(estimates[name].least_on(MIN_ROWS), estimates[name].minimum)
               if estimates.get(name) else UNKNOWN_COST for name in picks[fits:]]
    n = 0
    while n < len(on_part) and total + on_part[n] <= usable:
        total += on_part[n]
        n += 1
    kept = on_part[:n]
    for i in range(n):
        more = min(usable - total, minimums[fits + i] - kept[i])
        kept[i] += more
        total += more
    return Coverage(tuple(sorted(families)), tuple(picks), tuple(minimums), fits, n,
                    tuple(kept))


def share_of(spec, remaining, estimates: dict[str, Estimate | None], usable: float,
             budgets: dict[str, Any] | None = None,
             reserved: dict[str, float] | None = None) -> float:
    """`spec`'s allowance out of `usable` seconds, against the pipelines still to run. The
    `reserved` ones (coverage's picks) first get their least cost; the rest of the time goes
    in proportion to each one's remaining cost (its cost less what was reserved for it) when
    it covers them all (nobody is cut), else to share x remaining cost, so the YAML's shares
    decide who keeps most when time is short; a pipeline that costs at most CHEAP of what is
    left gets its cost whatever its share."""
    reserved = reserved or {}

    def cost_of(name: str) -> float:
        est = estimates.get(name)
        if est is None:
            return UNKNOWN_COST
        return est.configured(budgets[name]) if budgets else est.seconds

    base = {s.name: reserved.get(s.name, 0.0) for s in remaining}
    cost = {s.name: max(0.0, cost_of(s.name) - base[s.name]) for s in remaining}
    usable, floor = max(0.0, usable - sum(base.values())), base[spec.name]
    total = sum(cost.values())
    if total <= 0:
        return floor + usable
    if usable >= total:
        return floor + usable * cost[spec.name] / total
    weighted = sum(s.share * cost[s.name] for s in remaining)
    allowance = usable * spec.share * cost[spec.name] / weighted if weighted > 0 else 0.0
    # a cheap pipeline is always worth its few seconds: up to CHEAP of what is left
    return floor + max(allowance, min(cost[spec.name], CHEAP * usable))


CORRECTION = (0.5, 2.0)  # the bounds of a re-plan's correction of the estimates to come
# a pipeline expected to take less corrects nothing: its seconds are mostly fixed costs
# (logging, scoring) that do not scale with the machine (dummy: 3.6 s against ~1.8 planned)
MIN_CORRECTING = 20.0


def corrected(estimates: dict[str, Estimate | None], ran: str, expected: float,
              actual: float, done: set[str]) -> dict[str, Estimate | None]:
    """The estimates after pipeline `ran` took `actual` seconds where its plan expected
    `expected`: those not yet `done` from the same source and of the same kind (a network
    architecture's probe, the scaled YAML costs of the one-fit estimators, UMAP's: one
    machine's error repeats within a kind, not across: a CNN running slow says nothing of the
    MLP) scaled by actual/expected, within CORRECTION; those of its kind no longer pay the
    warm-up it paid. Store figures are this machine's own: left alone."""
    est = estimates.get(ran)
    if est is None:
        return estimates
    same = {name for name, e in estimates.items()
            if e is not None and name not in done and e.kind == est.kind}
    out = {name: (e.warmed() if name in same else e) for name, e in estimates.items()}
    if est.source == "store" or expected < MIN_CORRECTING:
        return out
    ratio = min(CORRECTION[1], max(CORRECTION[0], actual / expected))
    return {name: (e.scaled(ratio) if name in same and e.source == est.source else e)
            for name, e in out.items()}


def schedule(specs, budgets: dict[str, Any], estimates: dict[str, Estimate | None],
             clock: Clock, run: Callable[[Any, Allotment], Any],
             skip: Callable[[Any, Allotment], Any]) -> Iterator[Any]:
    """Run the pipelines in order, each with its share of what is left when its turn comes
    (`run(spec, allotment)`), or `skip(spec, allotment)` it; yields what those return. Before
    each turn the families not yet on the leaderboard are re-covered from the pipelines still
    to run (`coverage`, in the time really left), and their picks' least costs are kept back
    from the shares. A specialist whose generalist was skipped is skipped too."""
    skipped: dict[str, Allotment] = {}
    covered: set[str] = set()
    done: set[str] = set()

    def run_and_correct(spec, allotment: Allotment):
        """Run it; then re-plan what is left of its kind from what it really took."""
        nonlocal estimates
        before = clock.elapsed()
        result = run(spec, allotment)
        done.add(spec.name)
        estimates = corrected(estimates, spec.name, allotment.expected,
                              clock.elapsed() - before, done)
        return result

    for i, spec in enumerate(specs):
        cover = coverage(specs[i:], estimates, clock.usable(), covered)
        allowance = share_of(spec, specs[i:], estimates, clock.usable(), budgets,
                             cover.reserved)
        allotment = allot(spec, budgets[spec.name], estimates.get(spec.name), allowance,
                          spec.tunes(budgets[spec.name]), subsample=spec.name in cover.picks)
        if spec.generalist in skipped and not allotment.skipped:
            allotment = dataclasses.replace(allotment, budget=None, skipped=(
                f"budget: its generalist {spec.generalist} was skipped"))
        if allotment.skipped:
            skipped[spec.name] = allotment
        else:
            covered |= families_of(spec)
            yield run_and_correct(spec, allotment)
    # What the others left: the skipped ones, a family not yet covered first, then the largest
    # share first, each in what is left
    later = sorted((s for s in specs if s.name in skipped and not s.generalist),
                   key=lambda s: (not families_of(s) - covered, -s.share))
    for spec in later:
        allotment = allot(spec, budgets[spec.name], estimates.get(spec.name), clock.usable(),
                          spec.tunes(budgets[spec.name]),
                          subsample=bool(families_of(spec) - covered))
        if not allotment.skipped:
            del skipped[spec.name]
            covered |= families_of(spec)
            yield run_and_correct(spec, allotment)
    for spec in specs:
        if spec.name in skipped:
            yield skip(spec, skipped[spec.name])


def plan(specs, budgets: dict[str, Any], estimates: dict[str, Estimate | None],
         clock: Clock) -> list[Allotment]:
    """What each pipeline would get if every one before it spent its estimate (or its
    allowance, when smaller): the plan printed before any work."""
    spent = [clock.elapsed()]  # a clock that moves by what each pipeline is expected to spend
    fake = Clock(clock.seconds, clock.reserve, now=lambda: spent[0], start=0.0)

    def expect(spec, allotment: Allotment) -> Allotment:
        spent[0] += allotment.expected
        return allotment

    return list(schedule(specs, budgets, estimates, fake, expect, lambda s, a: a))


def covering_minutes(specs, estimates: dict[str, Estimate | None], clock: Clock) -> int:
    """The smallest budget, in whole minutes, that covers every family on this machine: the
    time spent so far (the data), the reserve, and every family's least cost."""
    need = clock.elapsed() + clock.reserve + coverage(specs, estimates, math.inf).seconds
    return math.ceil(need / 60)


def scaled_hint(hint: dict[str, Any] | None, speed: float, kind: str = "",
                warmup: float = 0.0, logging: float = 0.0) -> Estimate | None:
    """A YAML cost (`cost:` seconds measured on the project's reference run; `least_seconds`,
    its fit and scoring at its least) as an Estimate for this machine, `speed` times as fast
    as the one it was measured on; its least gets `warmup` (import and JIT, once a process)
    and `logging` (evaluation, figures, the logged model) seconds on top, not scaled."""
    if not hint:
        return None
    keys = ("seconds", "fit_seconds", "tuning_seconds")
    least = hint.get("least_seconds")
    return Estimate(**{k: float(hint.get(k, 0.0)) / speed for k in keys},
                    epochs=hint.get("epochs"), trials=int(hint.get("trials", 0)), source="yaml",
                    least_seconds=(None if least is None
                                   else float(least) / speed + warmup + logging),
                    kind=kind, warmup=warmup if least is not None else 0.0)


def probe_speed(reference_gflops: float, n: int = 768, repeats: int = 7) -> float:
    """This machine's float32 matrix-multiply rate against the one the YAML costs were
    measured on (>1: faster). ~0.1 s."""
    import numpy as np

    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a, b = (rng.random((n, n), dtype=np.float32) for _ in range(2))
    best = math.inf
    # one thread: the same figure whatever thread settings the process runs with (with two
    # threads it moved between 104 and 190 GFLOP/s inside compares on one host)
    with threadpool_limits(limits=1, user_api="blas"):
        a @ b
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
    return (2 * n ** 3 / best / 1e9) / reference_gflops
