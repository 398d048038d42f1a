"""Seed repeats' summary: each repeated model's mean and spread over the seeds, and whether
the models' order holds from seed to seed. Pure: the repeats (study.repeats) write it, the
report's section (report.sections) reads it."""

from __future__ import annotations

import statistics
from typing import Any

from study import tables


def summarize(results: dict[str, list[float]], original: dict[str, float]) -> dict[str, Any]:
    """Mean, standard deviation (n-1), range per model, and how often the models' order by
    test accuracy (the compare's order) holds seed by seed."""
    per_model = {}
    for name, accs in results.items():
        per_model[name] = {
            "n": len(accs), "mean": statistics.fmean(accs),
            "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "min": min(accs), "max": max(accs), "values": accs,
            "compare_test_accuracy": original.get(name)}
    names = list(results)  # in the compare's rank order
    n_seeds = min((len(v) for v in results.values()), default=0)
    held = sum(1 for k in range(n_seeds)
               if all(results[a][k] >= results[b][k] for a, b in zip(names, names[1:])))
    by_mean = sorted(names, key=lambda n: -per_model[n]["mean"])
    return {"models": per_model, "order": names, "order_by_mean": by_mean,
            "order_held_seeds": held, "n_seeds": n_seeds,
            "order_stable": n_seeds > 0 and held == n_seeds and by_mean == names}


def render_markdown(summary: dict[str, Any]) -> str:
    return tables.markdown(["model", "in the compare", "mean +/- std", "range", "per seed"],
                           table_rows(summary), numeric={1, 2, 3})


def table_rows(summary: dict[str, Any]) -> list[list[str]]:
    """One row per repeated model: its compare figure, mean and spread over the seeds."""
    rows = []
    for name in summary["order"]:
        m = summary["models"][name]
        compared = m["compare_test_accuracy"]
        rows.append([name, "-" if compared is None else f"{compared:.4f}",
                     f"{m['mean']:.4f} +/- {m['std']:.4f}", f"{m['min']:.4f}-{m['max']:.4f}",
                     ", ".join(f"{v:.4f}" for v in m["values"])])
    return rows


def verdict(summary: dict[str, Any]) -> str:
    """One sentence on whether the order of the repeated models holds."""
    order = " > ".join(summary["order"])
    if summary["order_stable"]:
        return (f"The order {order} held for every one of the {summary['n_seeds']} seeds and "
                "by mean test accuracy.")
    return (f"The order {order} held for {summary['order_held_seeds']} of "
            f"{summary['n_seeds']} seeds; by mean test accuracy it is "
            f"{' > '.join(summary['order_by_mean'])}: differences within the seed spread are "
            "not a ranking.")
