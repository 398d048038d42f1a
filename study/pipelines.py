"""Pipeline definitions: one declarative YAML per pipeline under `pipelines/`.

A pipeline names a reducer, a model builder, the builder's fixed parameters, the Optuna
search space and a budget per profile. This module only reads and validates that data;
builders live in `study.models`, tuning in `study.tuning`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from study import config
from study.errors import ConfigError

REDUCERS = ("none", "pca", "umap")
TTA = ("none", "mirror")  # test-time augmentation a pipeline may try (kept only if validation gains)
RESERVED = {"ensemble"}  # the compare's own ensemble stage logs a final run under this name
PARAM_TYPES = ("float", "int", "categorical")
BUDGET_KEYS = {"n_trials", "timeout", "tune_subsample", "tune_val_subsample", "fit", "tune_fit"}
SEARCH_KEYS = {"type", "low", "high", "log", "step", "choices"}  # what tuning.suggest reads
# Every key a pipeline YAML may hold (docs/writing-a-pipeline.md annotates each one)
TOP_KEYS = {"description", "family", "cover", "reducer", "model", "tta", "optional", "params",
            "fit", "search", "budget", "specialist", "boost", "share", "cost"}
# `family:` picks the report's reference rows (texts.py) and the ensemble's exclusions
# (ensemble.yaml's exclude_families); "ensemble" is the ensemble stage's own, not a pipeline's.
FAMILIES = ("baseline", "linear", "svm", "random_forest", "knn", "gradient_boosting", "mlp",
            "cnn")


@dataclass(frozen=True)
class Budget:
    """What tuning and the final fit may spend in one profile."""

    profile: str  # the profile it belongs to (names the Optuna study, tags the runs)
    n_trials: int
    timeout: float  # seconds for the whole study; checked between trials
    tune_subsample: int | None = None  # training rows used while tuning (None: all)
    tune_val_subsample: int | None = None  # validation rows scoring each trial (None: all)
    fit: dict[str, Any] = field(default_factory=dict)  # fit settings for tuning and final fit
    tune_fit: dict[str, Any] = field(default_factory=dict)  # extra settings while tuning only
    # the stratified part of the training rows to fit on: only a time budget cuts it (timebudget)
    train_fraction: float | None = None


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    family: str
    description: str
    reducer: str
    model: str
    params: dict[str, Any]
    fit: dict[str, Any]
    search: dict[str, dict[str, Any]]
    budgets: dict[str, Budget]
    path: Path
    digest: str  # hash of the definition: a changed YAML starts a fresh Optuna study
    tta: str = "none"  # "mirror": try mirror test-time augmentation, keep it where it pays
    generalist: str | None = None  # a specialist's: the pipeline whose model it folds into
    classes: tuple[int, ...] = ()  # a specialist's group of classes, in its outputs' order
    boost: dict[str, Any] | None = None  # {from, epochs, k}: trained where `from` errs (boosting)
    share: float = 1.0  # its weight when a time budget is shared out (timebudget)
    optional: bool = False  # left out of "all": runs when named
    cost: dict[str, dict[str, Any]] = field(default_factory=dict)  # profile -> measured cost
    cover: str = ""  # what a time budget covers it as (timebudget.families_of); "": its family

    def __post_init__(self):
        if not self.cover:
            object.__setattr__(self, "cover", self.family)

    def budget(self, profile: config.Profile | str) -> Budget:
        """What this pipeline may spend in `profile`: resolved once per compare, then passed."""
        return self.budgets[config.profile(profile).name]

    def tunes(self, budget: Budget) -> bool:
        """Whether a budget tunes anything (a search space and trials to spend on it)."""
        return bool(self.search) and budget.n_trials > 0


def available(pipelines_dir: Path | None = None) -> list[str]:
    return sorted(p.stem for p in (pipelines_dir or config.pipelines_dir()).glob("*.yaml")
                  if p.stem not in RESERVED)


def _refuse_unknown(path: Path, where: str, keys: Any, valid: set[str] | None) -> None:
    """One line naming the file, the first unknown key and the nearest valid one."""
    if valid is None or not isinstance(keys, dict):
        return
    unknown = sorted((k for k in keys if k not in valid), key=str)
    if unknown:
        near = difflib.get_close_matches(str(unknown[0]), sorted(valid), n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} in {where}; {hint}"
                          f"valid: {', '.join(sorted(valid))}")


def _check_names(path: Path, raw: dict) -> None:
    """Unknown keys at every level, and parameter names the builder (with its reducer and the
    trainer's fit settings) does not take: refused at load, before any data loads."""
    from study.models import contract_problem, get_builder, parameter_names

    problem = contract_problem(raw["model"])
    if problem:
        raise ConfigError(f"{path}: {problem}")
    if get_builder(raw["model"]).kind == "keras" and raw["reducer"] != "none":
        raise ConfigError(f"{path}: reducer {raw['reducer']} with a Keras builder: a network "
                          "takes the images themselves; use reducer: none")
    names = parameter_names(raw["model"], raw["reducer"])
    where = f"names {raw['model']} (reducer {raw['reducer']}) takes"
    for section in ("params", "fit", "search"):
        _refuse_unknown(path, f"{section}: ({where})", raw.get(section) or {}, names)
    mapping = lambda key: raw.get(key) if isinstance(raw.get(key), dict) else {}  # noqa: E731
    _refuse_unknown(path, "budget:", mapping("budget"), set(config.PROFILES))
    for profile, spend in mapping("budget").items():
        _refuse_unknown(path, f"budget.{profile}", spend, BUDGET_KEYS)
        for section in ("fit", "tune_fit"):
            if isinstance(spend, dict):
                _refuse_unknown(path, f"budget.{profile}.{section} ({where})",
                                spend.get(section) or {}, names)
    for param, spec in mapping("search").items():
        _refuse_unknown(path, f"search.{param}", spec, SEARCH_KEYS)
    # specialist:, boost: and cost: take exact key sets: their own checks name them all


def _check_search(name: str, search: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(search, dict):
        raise ConfigError(f"pipeline {name}: 'search' must be a mapping of parameter -> spec")
    for param, spec in search.items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind not in PARAM_TYPES:
            raise ConfigError(f"pipeline {name}: search parameter {param!r} needs type one of "
                              f"{', '.join(PARAM_TYPES)}")
        if kind == "categorical":
            if not spec.get("choices"):
                raise ConfigError(f"pipeline {name}: categorical {param!r} needs 'choices'")
        else:
            if "low" not in spec or "high" not in spec or not spec["low"] < spec["high"]:
                raise ConfigError(f"pipeline {name}: {param!r} needs numeric low < high")
            if spec.get("log") and spec["low"] <= 0:
                raise ConfigError(f"pipeline {name}: {param!r} is log-scaled, so low must be > 0")
    return search


def _check_budget(name: str, profile: str, raw: Any) -> Budget:
    if not isinstance(raw, dict) or set(raw) - BUDGET_KEYS:
        raise ConfigError(f"pipeline {name}: budget.{profile} must be a mapping with keys from "
                          f"{', '.join(sorted(BUDGET_KEYS))}")
    n_trials, timeout = raw.get("n_trials"), raw.get("timeout")
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 0:
        raise ConfigError(f"pipeline {name}: budget.{profile}.n_trials must be an integer >= 0 "
                          "(0: the fixed parameters, no tuning in that profile)")
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(f"pipeline {name}: budget.{profile}.timeout must be positive seconds")
    for key in ("tune_subsample", "tune_val_subsample"):
        if raw.get(key) is not None and (not isinstance(raw[key], int) or raw[key] < 10):
            raise ConfigError(f"pipeline {name}: budget.{profile}.{key} must be an integer >= 10")
    return Budget(profile, n_trials, float(timeout), raw.get("tune_subsample"),
                  raw.get("tune_val_subsample"), dict(raw.get("fit") or {}),
                  dict(raw.get("tune_fit") or {}))


def load(name: str, pipelines_dir: Path | None = None) -> PipelineSpec:
    """Read and validate `pipelines/<name>.yaml`; unknown names list the valid ones."""
    from study.models import get_builder

    path = (pipelines_dir or config.pipelines_dir()) / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown pipeline {name!r}; valid: {', '.join(available(pipelines_dir))}")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    _refuse_unknown(path, "the pipeline", raw, TOP_KEYS)  # `famliy:` is not a missing family
    missing = {"family", "reducer", "model", "budget"} - set(raw)
    if missing:
        raise ConfigError(f"{path}: missing key(s) {', '.join(sorted(missing))}")
    if raw["reducer"] not in REDUCERS:
        raise ConfigError(f"{path}: reducer {raw['reducer']!r} is not one of {', '.join(REDUCERS)}")
    if raw["family"] not in FAMILIES:
        raise ConfigError(f"{path}: family {raw['family']!r} is not one of {', '.join(FAMILIES)} "
                          "(it picks the report's reference rows and the ensemble's exclusions)")
    try:
        get_builder(raw["model"])
    except ConfigError as exc:  # the list of valid builders, with the file it came from
        raise ConfigError(f"{path}: {exc}") from None
    _check_names(path, raw)
    budgets_raw = raw["budget"] or {}
    lacking = set(config.PROFILES) - set(budgets_raw)
    if lacking:
        raise ConfigError(f"{path}: budget lacks profile(s) {', '.join(sorted(lacking))}")
    budgets = {p: _check_budget(name, p, budgets_raw[p]) for p in config.PROFILES}
    tta = raw.get("tta", "none")
    if tta not in TTA:
        raise ConfigError(f"{path}: tta {tta!r} is not one of {', '.join(TTA)}")
    if tta != "none" and get_builder(raw["model"]).kind != "keras":
        raise ConfigError(f"{path}: tta: {tta} needs an image model (a Keras builder), "
                          f"not {raw['model']}; remove the tta key")
    generalist, classes = _check_specialist(path, raw, pipelines_dir)
    boost = _check_boost(path, raw, pipelines_dir)
    share, cost = _check_time(path, raw)
    cover = raw.get("cover", raw["family"])
    if not isinstance(cover, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", cover):
        raise ConfigError(f"{path}: cover must be a family name (lower-case letters, digits, "
                          f"_: what a time budget covers it as; default its family), got {cover!r}")
    canonical = json.dumps(raw, sort_keys=True, default=str)
    if generalist:  # a retrained generalist makes its specialists' models stale too
        canonical += load(generalist, pipelines_dir).digest
    if boost:  # so does a changed recipe of the networks that weigh its rows
        canonical += load(boost["from"], pipelines_dir).digest
    return PipelineSpec(
        name=name,
        family=str(raw["family"]),
        description=str(raw.get("description", "")),
        reducer=raw["reducer"],
        model=raw["model"],
        params=dict(raw.get("params") or {}),
        fit=dict(raw.get("fit") or {}),
        search=_check_search(name, raw.get("search") or {}),
        budgets=budgets,
        path=path,
        digest=hashlib.sha256(canonical.encode()).hexdigest()[:10],
        tta=tta,
        generalist=generalist,
        classes=classes,
        boost=boost,
        share=share,
        cost=cost,
        cover=cover,
        optional=raw.get("optional") is True,
    )


COST_KEYS = {"seconds", "fit_seconds", "tuning_seconds", "epochs", "trials", "least_seconds"}


def _check_time(path: Path, raw: dict) -> tuple[float, dict[str, dict[str, Any]]]:
    """`share:` (a positive weight) and `cost:` ({profile: {seconds, fit_seconds, ...}}, what
    one run measured), both for a compare under a time budget."""
    share = raw.get("share", 1.0)
    if not isinstance(share, (int, float)) or isinstance(share, bool) or share <= 0:
        raise ConfigError(f"{path}: share must be a positive number (its weight when a time "
                          f"budget is shared out), got {share!r}")
    cost = raw.get("cost") or {}
    if not isinstance(cost, dict) or not all(
            isinstance(v, dict) and set(v) <= COST_KEYS and "seconds" in v and "fit_seconds" in v
            and all(isinstance(x, (int, float)) and x >= 0 for x in v.values())
            for v in cost.values()) or set(cost) - set(config.PROFILES):
        raise ConfigError(f"{path}: cost must map a profile to measured seconds, fit_seconds "
                          f"and optionally tuning_seconds, epochs, trials, least_seconds")
    return float(share), {k: dict(v) for k, v in cost.items()}


def _check_specialist(path: Path, raw: dict, pipelines_dir: Path | None
                      ) -> tuple[str | None, tuple[int, ...]]:
    """A `specialist:` section: {generalist: <pipeline>, classes: [2-9 distinct labels]}."""
    from study.models import get_builder

    section = raw.get("specialist")
    if section is None:
        return None, ()
    if not isinstance(section, dict) or set(section) != {"generalist", "classes"}:
        raise ConfigError(f"{path}: specialist must be a mapping with generalist (a pipeline) "
                          "and classes (a list of class numbers 0-9)")
    generalist, classes = section["generalist"], section["classes"]
    if generalist not in available(pipelines_dir) or generalist == path.stem:
        raise ConfigError(f"{path}: specialist.generalist {generalist!r} is not another "
                          f"pipeline; valid: {', '.join(available(pipelines_dir))}")
    if not (isinstance(classes, list) and 2 <= len(classes) < config.N_CLASSES
            and len(set(classes)) == len(classes)
            and all(isinstance(c, int) and 0 <= c < config.N_CLASSES for c in classes)):
        raise ConfigError(f"{path}: specialist.classes must list 2-9 distinct class numbers "
                          f"0-9, got {classes!r}")
    if get_builder(raw["model"]).kind != "keras":
        raise ConfigError(f"{path}: a specialist needs an image model (a Keras builder), "
                          f"not {raw['model']}")
    if raw.get("search"):
        raise ConfigError(f"{path}: a specialist takes its generalist's recipe as fixed "
                          "parameters; remove its search space")
    general = load(generalist, pipelines_dir)
    if general.generalist or get_builder(general.model).kind != "keras":
        raise ConfigError(f"{path}: specialist.generalist {generalist!r} must be an image "
                          "model that is not a specialist itself")
    return generalist, tuple(classes)


def _check_boost(path: Path, raw: dict, pipelines_dir: Path | None) -> dict[str, Any] | None:
    """A `boost:` section: {from: <image pipeline>, epochs: >= 1, k: >= 0} (study.boosting)."""
    from study.models import get_builder

    section = raw.get("boost")
    if section is None:
        return None
    if not isinstance(section, dict) or set(section) != {"from", "epochs", "k"}:
        raise ConfigError(f"{path}: boost must be a mapping with from (a pipeline), epochs "
                          "(of its out-of-fold networks) and k (the extra weight of a miss)")
    source, epochs, k = section["from"], section["epochs"], section["k"]
    if source not in available(pipelines_dir) or source == path.stem:
        raise ConfigError(f"{path}: boost.from {source!r} is not another pipeline; "
                          f"valid: {', '.join(available(pipelines_dir))}")
    if not (isinstance(epochs, int) and epochs >= 1 and isinstance(k, (int, float))
            and not isinstance(k, bool) and k >= 0):
        raise ConfigError(f"{path}: boost.epochs must be an integer >= 1 and boost.k a number "
                          f">= 0, got {epochs!r} and {k!r}")
    if get_builder(raw["model"]).kind != "keras" or raw.get("specialist"):
        raise ConfigError(f"{path}: a boosted pipeline needs an image model (a Keras builder) "
                          "and cannot be a specialist")
    src = load(source, pipelines_dir)
    if src.generalist or src.boost or get_builder(src.model).kind != "keras":
        raise ConfigError(f"{path}: boost.from {source!r} must be a plain image pipeline "
                          "(not a specialist, not boosted itself)")
    return {"from": source, "epochs": epochs, "k": float(k)}


def _optional(name: str, pipelines_dir: Path | None) -> bool:
    """`optional: true` in its YAML (read without validating: resolve validates)."""
    path = (pipelines_dir or config.pipelines_dir()) / f"{name}.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(raw, dict) and raw.get("optional") is True


def resolve(names: str | list[str] | None,
            pipelines_dir: Path | None = None) -> list[PipelineSpec]:
    """'all' (or empty) for every pipeline but the optional ones, else a comma list that may
    include 'all' (`all,cnn_upper`); every name is validated first."""
    items = (["all"] if names is None or names == "" else
             names.split(",") if isinstance(names, str) else list(names))
    wanted = []
    for item in (n.strip() for n in items if n.strip()):
        wanted += ([n for n in available(pipelines_dir) if not _optional(n, pipelines_dir)]
                   if item == "all" else [item])
    if not wanted:
        raise ConfigError(f"no pipelines selected; valid: {', '.join(available(pipelines_dir))}")
    unknown = [n for n in wanted if n not in available(pipelines_dir)]
    if unknown:
        raise ConfigError(f"unknown pipeline(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(available(pipelines_dir))}")
    specs = [load(n, pipelines_dir) for n in dict.fromkeys(wanted)]
    chosen = {spec.name for spec in specs}
    for spec in specs:
        if spec.generalist and spec.generalist not in chosen:
            raise ConfigError(f"pipeline {spec.name} is a specialist folded into "
                              f"{spec.generalist}: select {spec.generalist} too")
    # specialists after the generalists they fold into (a stable sort keeps the rest in order)
    return sorted(specs, key=lambda spec: spec.generalist is not None)
