"""The comparison report, rebuilt from MLflow alone: report.md and a self-contained report.html.

Everything here reads what compare logged (final runs, their predictions and curves, tuning
runs, the parent's figures); nothing is retrained. The test images themselves come from the
verified dataset files, for the grid of misclassified examples.
"""

from __future__ import annotations

import base64
import html
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from study import config, leaderboard, tracking
from study.config import CLASS_NAMES
from study.errors import first_line
from study.evaluation import plot_validation_curves, pyplot

# Published references, side by side with ours (section 7).
ZALANDO = [  # Xiao et al. 2017, Table 3 / the repository's benchmark: best of each family
    ("Logistic regression", "linear", 0.842),
    ("Random forest", "random_forest", 0.873),
    ("SVC", "svm", 0.897),
    ("k-NN", "knn", 0.854),
    ("Gradient boosting", "gradient_boosting", 0.880),
    ("MLP", "mlp", 0.871),
]
# (pipeline, published figure, the split it was measured on, its schedule): each is set
# against our figure on the same split, like with like
SEED_CNNS = [("cnn_seed1", 0.8902, "test", "10 epochs"), ("cnn_seed2", 0.918, "validation", "20 epochs"),
             ("cnn_seed3", 0.9178, "test", "50 epochs")]
SMALL_CNN_RANGE = (0.934, 0.939)  # the best small CNNs in Zalando's benchmark table

SECTIONS = ("Leaderboard", "Ensemble", "Accuracy against cost", "Per-class results", "Misclassified images",
            "Dimensionality reduction", "Learning curves", "Against the references", "Tuning",
            "Reproducibility")


@dataclass
class Report:
    run_id: str  # the compare run reported on
    folder: Path
    markdown: Path
    html: Path
    rows: list[dict[str, Any]]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    pyplot().close(fig)
    return path


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both cost (lower) and accuracy (higher)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def fig_cost(rows, key: str, label: str, path: Path) -> Path:
    plt = pyplot()
    pts = [(r[key], r["test_accuracy"]) for r in rows if r[key] > 0]
    named = [r for r in rows if r[key] > 0]
    fig, ax = plt.subplots(figsize=(8, 5))
    families = sorted({r["family"] for r in named})
    cmap = plt.get_cmap("tab10")
    for r in named:
        ax.scatter(r[key], r["test_accuracy"], s=40, color=cmap(families.index(r["family"]) % 10),
                   zorder=3)
        ax.annotate(r["pipeline"], (r[key], r["test_accuracy"]), fontsize=8,
                    xytext=(4, 3), textcoords="offset points")
    front = [pts[i] for i in pareto_front(pts)]
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="crimson",
                lw=1.5, label="Pareto frontier", zorder=2)
        ax.legend(loc="lower right")
    ax.set_xscale("log")
    ax.set_xlabel(f"{label} (log scale)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def fig_f1_heatmap(names: list[str], f1: np.ndarray, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(names) + 2))
    im = ax.imshow(f1, cmap="viridis", vmin=max(0.0, float(np.nanmin(f1)) - 0.02), vmax=1.0,
                   aspect="auto")
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=35, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(CLASS_NAMES)):
            ax.text(j, i, f"{f1[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if f1[i, j] < 0.8 else "black")
    fig.colorbar(im, ax=ax, label="F1")
    ax.set_title("Per-class F1 on the test set (rows in leaderboard order)")
    return _save(fig, path)


def fig_misclassified(images: np.ndarray, y_true, y_pred, confidence, path: Path,
                      n: int = 24) -> Path:
    plt = pyplot()
    wrong = np.flatnonzero(y_true != y_pred)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:n]  # most confident mistakes
    cols = 8
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.95))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, i in zip(np.atleast_1d(axes).ravel(), wrong):
        ax.imshow(images[i], cmap="gray_r")
        ax.set_title(f"true {CLASS_NAMES[y_true[i]]}\npred {CLASS_NAMES[y_pred[i]]}\n"
                     f"{confidence[i]:.0%}", fontsize=7)
    return _save(fig, path)


def fig_tuning(tunings: list[dict[str, Any]], path: Path) -> Path:
    plt = pyplot()
    shown = [t for t in tunings if t["trials"]]
    cols = 4
    rows = max(1, int(np.ceil(len(shown) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 3.2, rows * 2.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, t in zip(axes.ravel(), shown):
        ax.axis("on")
        xs = [tr["number"] + 1 for tr in t["trials"]]
        ys = [tr["val_accuracy"] if tr["val_accuracy"] is not None else np.nan for tr in t["trials"]]
        pruned = [tr["state"] == "PRUNED" for tr in t["trials"]]
        ax.scatter([x for x, p in zip(xs, pruned) if not p], [y for y, p in zip(ys, pruned) if not p],
                   s=18, label="complete")
        if any(pruned):
            ax.scatter([x for x, p in zip(xs, pruned) if p], [y for y, p in zip(ys, pruned) if p],
                       s=18, marker="x", color="grey", label="pruned")
        best = np.fmax.accumulate(np.where(pruned, np.nan, ys)) if ys else []
        ax.plot(xs, best, color="crimson", lw=1)
        ax.set_title(t["pipeline"], fontsize=9)
        ax.set_xlabel("trial", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("Optimisation history: validation accuracy per trial, best so far in red")
    return _save(fig, path)


def _fetch(run_id: str, artifact: str, folder: Path) -> Path | None:
    """Copy one artifact of a run into the report folder, flat, beside report.md."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = tracking.artifact_path(run_id, artifact, tmp)
        return Path(shutil.copy(local, folder / local.name)) if local else None


def confused_pairs(cm: np.ndarray, top: int = 5) -> list[tuple[str, str, int]]:
    """Class pairs the model mixes up most, both directions counted together."""
    pairs = []
    for i in range(len(cm)):
        for j in range(i + 1, len(cm)):
            pairs.append((CLASS_NAMES[i], CLASS_NAMES[j], int(cm[i, j] + cm[j, i])))
    return sorted(pairs, key=lambda p: -p[2])[:top]


def _md_table(head: list[str], body: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def _html_table(head: list[str], body: list[list[Any]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                  for row in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


class _Doc:
    """Writes the same content as Markdown and as HTML (images embedded as data URIs)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.md: list[str] = []
        self.html: list[str] = []
        self.sections: list[tuple[int, str]] = []

    def section(self, title: str) -> None:
        number = len(self.sections) + 1
        self.sections.append((number, title))
        self.md.append(f"\n## {number}. {title}\n")
        self.html.append(f'<h2 id="s{number}">{number}. {html.escape(title)}</h2>')

    def para(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text).replace('**', '')}</p>")

    def table(self, head: list[str], body: list[list[Any]]) -> None:
        self.md.append(_md_table(head, body) + "\n")
        self.html.append(_html_table(head, body))

    def raw(self, md: str, html_text: str) -> None:
        self.md.append(md + "\n")
        self.html.append(html_text)

    def image(self, path: Path | None, alt: str) -> None:
        if path is None or not path.exists():
            self.para(f"({alt}: not available in this compare run)")
            return
        self.md.append(f"![{alt}]({path.name})\n")
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        # onload/onerror leave a mark that a headless browser check can read back from the DOM
        self.html.append(f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" '
                         'onload="this.dataset.loaded=1" onerror="this.dataset.broken=1">'
                         f"<figcaption>{html.escape(alt)}</figcaption></figure>")


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;
padding:3px 6px;text-align:left;vertical-align:top}th{background:#f3f3f3}td.num{text-align:right}
tr.champion{background:#fff3c4}tr.same{background:#eef7ee}img{max-width:100%}figure{margin:1em 0}
figcaption{font-size:12px;color:#666}h2{border-bottom:1px solid #ddd;padding-bottom:4px}"""


def build(run_id: str | None = None, out_dir: Path | None = None, data_dir: str | None = None,
          log: bool = True) -> Report:
    """Rank the final runs of one compare (the latest by default) and write its report."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # dozens of downloads
    start = time.perf_counter()
    parent = tracking.find_compare_run(run_id)
    pid = parent.info.run_id
    profile = parent.data.tags.get("profile", parent.data.params.get("profile", "?"))
    from study import data

    given_dir = parent.data.params.get("data_dir")
    dataset = data.load(data_dir or (None if given_dir in (None, "", "auto", "-", "None")
                                     else given_dir))
    y_test = dataset.y_test
    ensemble_note = parent.data.tags.get("ensemble", "")
    if log and profile in config.PROFILES:  # an interrupted or older compare: build it now
        try:
            ensemble_note = rebuild_ensemble(pid, profile, dataset) or ensemble_note
        except Exception as exc:  # the models are ranked and reported without it
            ensemble_note = f"ensemble: could not be built ({type(exc).__name__}: {first_line(exc)})"
            print(ensemble_note)
    rows = leaderboard.rank(tracking.final_runs(pid))
    predictions = {r["run_id"]: tracking.load_npy(r["run_id"], "evaluation/test_predictions.npy")
                   for r in rows}
    predictions = {k: v.astype(np.int64) for k, v in predictions.items() if v is not None}
    leaderboard.add_significance(rows, predictions, y_test)
    for row in rows:
        tracking.set_rank(row["run_id"], row["rank"])

    stamp = datetime.fromtimestamp(parent.info.start_time / 1000, tz=timezone.utc)
    folder = Path(out_dir) if out_dir else config.reports_dir() / f"{stamp:%Y%m%d-%H%M%S}-{profile}"
    folder.mkdir(parents=True, exist_ok=True)
    doc = _Doc(folder)
    env = tracking.load_json(pid, "environment.json") or {}

    doc.raw(f"# Fashion-MNIST model comparison ({profile} profile)\n\n"
            f"Compare run `{pid}`, started {stamp:%Y-%m-%d %H:%M} UTC; {len(rows)} models ranked "
            "on the canonical 10,000-image test set, which selected nothing before this table.",
            f"<h1>Fashion-MNIST model comparison ({html.escape(profile)} profile)</h1>"
            f"<p>Compare run <code>{pid}</code>, started {stamp:%Y-%m-%d %H:%M} UTC; {len(rows)} "
            "models ranked on the canonical 10,000-image test set, which selected nothing "
            "before this table.</p>")

    # 1. Leaderboard and verdict
    doc.section(SECTIONS[0])
    if rows:
        doc.para(verdict(rows))
    doc.raw(leaderboard.render_markdown(rows), leaderboard.render_html(rows))
    doc.para("95% CI: Wilson interval of the test accuracy. vs #1: exact McNemar test against "
             "the champion on the same test images, raw p and Holm-adjusted over the "
             "leaderboard's comparisons; 'same' means not distinguishable at 5% on the adjusted "
             "p (highlighted green); 'n/a' means a model's test predictions could not be read. "
             "The registry alias @champion moves to rank 1 only when nothing holds it yet or when "
             "rank 1 is significantly better than the holder on the same test images (McNemar, "
             "5%): a gain of a few images is not evidence. val acc (selection): the validation "
             "accuracy each model was selected on (a network's best epoch, every tuned model's "
             "parameters, the ensemble's weights), optimistic by construction; only the test "
             "columns are unbiased.")
    failures = tracking.failed_runs(pid)
    if failures:
        doc.para("Failed pipelines (traceback.txt in their runs): " +
                 ", ".join(f"{f['pipeline']} (run {f['run_id']})" for f in failures))

    ensemble_section(doc, rows, ensemble_note)

    # 3. Accuracy against cost
    doc.section(SECTIONS[2])
    if rows:
        doc.image(fig_cost(rows, "fit_seconds", "final fit seconds",
                           folder / "accuracy_vs_fit_time.png"),
                  "Test accuracy against final-fit time; the red line is the Pareto frontier")
        doc.image(fig_cost(rows, "predict_ms_per_1000", "prediction milliseconds per 1,000 images",
                           folder / "accuracy_vs_predict_time.png"),
                  "Test accuracy against prediction time; the red line is the Pareto frontier")

    # 3. Per-class results
    doc.section(SECTIONS[3])
    f1_rows, names = [], []
    for r in rows:
        rep = tracking.load_json(r["run_id"], "evaluation/classification_report.json")
        if rep:
            names.append(r["pipeline"])
            f1_rows.append([rep[c]["f1-score"] for c in CLASS_NAMES])
    if f1_rows:
        doc.image(fig_f1_heatmap(names, np.array(f1_rows), folder / "per_class_f1.png"),
                  "Per-class F1, models by classes")
    champion = rows[0] if rows else None
    champ_pred = predictions.get(champion["run_id"]) if champion else None
    if champ_pred is not None:
        from sklearn.metrics import confusion_matrix

        from study.evaluation import plot_confusion

        cm = confusion_matrix(y_test, champ_pred, labels=list(range(len(CLASS_NAMES))))
        doc.image(plot_confusion(cm, f"{champion['pipeline']}: test confusion matrix",
                                 folder / "champion_confusion.png"),
                  f"Confusion matrix of the champion ({champion['pipeline']})")
        doc.para("The champion's most confused class pairs (errors in both directions):")
        doc.table(["class", "confused with", "test images"],
                  [[a, b, n] for a, b, n in confused_pairs(cm)])

    # 4. Misclassified images
    doc.section(SECTIONS[4])
    proba = tracking.load_npy(champion["run_id"], "evaluation/test_proba.npy") if champion else None
    if champ_pred is not None and proba is not None:
        confidence = proba.astype(np.float32).max(axis=1)
        doc.image(fig_misclassified(dataset.x_test, y_test, champ_pred, confidence,
                                    folder / "champion_misclassified.png"),
                  f"The champion's 24 most confident mistakes ({int((champ_pred != y_test).sum())} "
                  "misclassified in all): true label, prediction, confidence")
    else:
        doc.para("(no stored test probabilities for the champion)")

    # 5. Dimensionality reduction
    doc.section(SECTIONS[5])
    needed = {k: int(v) for k, v in parent.data.metrics.items() if k.startswith("pca_components_")}
    if needed:
        doc.para("PCA components needed for " + ", ".join(
            f"{k.split('_')[-1].replace('pct', '%')} of the variance: {v}"
            for k, v in sorted(needed.items(), key=lambda kv: kv[1])) + ".")
    for name, alt in (("pca_explained_variance.png", "PCA explained variance (training split)"),
                      ("pca_map.png", "Test set on the first two principal components"),
                      ("umap_map.png", "Test set on a 2-D UMAP (fitted on training images)")):
        doc.image(_fetch(pid, f"reduction/{name}", folder), alt)

    # 6. Learning curves
    doc.section(SECTIONS[6])
    curves = {r["pipeline"]: {k: tracking.metric_history(r["run_id"], f"epoch/{k}")
                              for k in ("val_accuracy", "val_loss")}
              for r in rows if r.get("kind") == "keras"}
    curves = {k: v for k, v in curves.items() if v["val_accuracy"]}
    if curves:
        doc.image(plot_validation_curves(curves, "Neural models", folder / "learning_curves.png"),
                  "Validation accuracy and loss per epoch of the neural models (the kept "
                  "weights are each model's best validation epoch)")
    else:
        doc.para("(no neural model in this compare run)")

    # 7. References
    doc.section(SECTIONS[7])
    doc.table(["reference", "published", "ours (best of the family)", "difference"],
              references(rows))

    # 8. Tuning
    doc.section(SECTIONS[8])
    tunings = tracking.tuning_runs(pid)
    if any(t["trials"] for t in tunings):
        doc.image(fig_tuning(tunings, folder / "tuning_history.png"),
                  "Optimisation history of each tuned pipeline")
    body = []
    final_val = {r["pipeline"]: r["val_accuracy"] for r in rows}
    for t in tunings:
        imp = ", ".join(f"{k} {v:.2f}" for k, v in sorted(t["importances"].items(),
                                                           key=lambda kv: -kv[1]))
        n = len(t["trials"])
        pruned = sum(tr["state"] == "PRUNED" for tr in t["trials"])
        best = t["metrics"].get("best_val_accuracy")
        scores = [tr["val_accuracy"] for tr in t["trials"] if tr["val_accuracy"] is not None]
        final = final_val.get(t["pipeline"])
        body.append([t["pipeline"], n, pruned,
                     " ".join(f"{v:.3f}" for v in scores) if scores else "fixed parameters",
                     "-" if best is None else f"{best:.4f}",
                     "-" if final is None else f"{final:.4f}",
                     f"{t['metrics'].get('tuning_seconds', 0):.0f}", imp or "-"])
    doc.para("Each trial's validation accuracy (on the tuning subsample and schedule of its "
             "profile) beside the final model's: trials that score far below the final model "
             "say little about the parameters they tried.")
    doc.table(["pipeline", "trials logged", "pruned", "trials' val acc", "best trial",
               "final val acc", "tuning s", "parameter importance (fANOVA)"], body)

    # 9. Reproducibility
    doc.section(SECTIONS[9])
    params = parent.data.params
    doc.table(["setting", "value"], [
        ["profile", profile], ["seed (models, samplers)", params.get("seed", "?")],
        ["validation split", f"stratified 80/20, seed {env.get('split_seed', config.SEED)}"],
        ["git commit", env.get("git_commit", parent.data.tags.get("mlflow.source.git.commit", "?"))
         + (" (uncommitted changes)" if env.get("git_dirty") else "")],
        ["CPU", f"{env.get('cpu', '?')} ({env.get('cpu_count', '?')} cores)"],
        ["Python", env.get("python", "?")],
        ["packages", ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items())],
        ["tracking store", config.redact(config.tracking_uri())],
        ["rebuild this report", f"mlflow run . -e report -P run_id={pid} --env-manager local"],
    ])
    m = parent.data.metrics
    stages = [["data load and split", f"{m.get('data_seconds', float('nan')):.1f}"]]
    for r in sorted((r for r in rows if r["family"] != "ensemble"), key=lambda r: r["pipeline"]):
        stages.append([f"{r['pipeline']}: tuning / final fit / total",
                       f"{r['tuning_seconds']:.1f} / {r['fit_seconds']:.1f}"
                       f" / {r['pipeline_seconds']:.1f}"])
    stages.append(["reduction figures", f"{m.get('figures_seconds', float('nan')):.1f}"])
    if "ensemble_seconds" in m:
        stages.append(["ensemble (selection, scoring, logging)", f"{m['ensemble_seconds']:.1f}"])
    parallel = int(float(params.get("parallel", 1) or 1))
    if parallel > 1:  # per-pipeline times overlap: say what the side-by-side stage took
        stages.append([f"pipelines and figures, {parallel} side by side",
                       f"{m.get('pipelines_seconds', float('nan')):.1f}"])
    stages.append(["compare, all stages", f"{m.get('compare_seconds', float('nan')):.1f}"])
    doc.para("Wall time per stage (seconds):")
    doc.table(["stage", "seconds"], stages)

    # Seed repeats of this compare's top models, when they have been run
    repeats_run = tracking.repeats_run_of(pid)
    if repeats_run is not None:
        from study import repeats

        summary = tracking.load_json(repeats_run.info.run_id, "repeats/repeats.json")
        if summary:
            doc.section("Seed repeats (training variance)")
            doc.para(f"Repeats run {repeats_run.info.run_id}: the top models refitted with "
                     f"seeds {', '.join(map(str, summary['seeds']))} (same tuned parameters, "
                     f"same data, each scored on the test set once; "
                     f"{summary['seconds'] / 60:.1f} min). The leaderboard's intervals cover "
                     "the sampling of the test images; this is the spread from training. "
                     "These refits never change the leaderboard. " + repeats.verdict(summary))
            doc.table(["model", "in the compare", "mean +/- std", "range", "per seed"],
                      [[n, "-" if m["compare_test_accuracy"] is None else
                        f"{m['compare_test_accuracy']:.4f}",
                        f"{m['mean']:.4f} +/- {m['std']:.4f}", f"{m['min']:.4f}-{m['max']:.4f}",
                        ", ".join(f"{v:.4f}" for v in m["values"])]
                       for n, m in ((n, summary["models"][n]) for n in summary["order"])])
            for note in summary.get("notes", []):
                doc.para(f"Note: {note}.")

    # 10. The MLP ablation, when one belongs to this compare
    ablation_run = tracking.ablation_run_of(pid)
    if ablation_run is not None:
        doc.section("MLP ablation (the seed report's experiments)")
        table = tracking.load_json(ablation_run.info.run_id, "ablation/ablation.json") or {}
        best = table.get("best_run_id")
        doc.para(f"Ablation run {ablation_run.info.run_id} ({ablation_run.data.tags.get('profile', '?')} "
                 f"profile, {ablation_run.data.metrics.get('ablation_seconds', 0) / 60:.1f} min), "
                 "run for this compare. Each experiment starts from the best setting so far, "
                 "chosen on validation accuracy (experiments 2-4 at the seed's batch 128); best "
                 f"overall, as trained: {table.get('best')}"
                 + (f" (run {best})." if best else "."))
        doc.table(["experiment", "setting", "best val acc", "test acc", "epochs (best)"],
                  [[r["experiment"], r["setting"], f"{r['best_val_accuracy']:.4f}",
                    f"{r['test_accuracy']:.4f}", f"{r['epochs']} ({r['best_epoch']})"]
                   for r in table.get("rows", [])])
        for key in ("lr_batch", "l2", "activation", "topology"):
            doc.image(_fetch(ablation_run.info.run_id, f"ablation/ablation_{key}.png", folder),
                      f"Ablation: {key} (validation accuracy and loss per epoch)")

    md_path = folder / "report.md"
    html_path = folder / "report.html"
    (folder / "leaderboard.csv").write_text(leaderboard.render_csv(rows))
    (folder / "leaderboard.md").write_text(leaderboard.render_markdown(rows) + "\n")
    (folder / "leaderboard.txt").write_text(leaderboard.render_text(rows, wide=True) + "\n")
    md_tmp, html_tmp = folder / ".report.md.tmp", folder / ".report.html.tmp"
    md_tmp.write_text("\n".join(doc.md).lstrip() + "\n")
    toc = " · ".join(f'<a href="#s{i}">{html.escape(t)}</a>' for i, t in doc.sections)
    html_tmp.write_text(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Fashion-MNIST comparison {html.escape(profile)} {pid}</title>"
        f"<style>{CSS}</style></head><body>"
        + doc.html[0] + f"<nav>{toc}</nav>" + "".join(doc.html[1:]) + "</body></html>\n")
    md_tmp.replace(md_path)  # complete files or none: a reader never sees half a report
    html_tmp.replace(html_path)
    if log:
        tracking.log_artifacts(folder, "report", run_id=pid)
        tracking.log_metric(pid, "report_seconds", time.perf_counter() - start)
    return Report(pid, folder, md_path, html_path, rows)


def rebuild_ensemble(pid: str, profile: str, dataset) -> str:
    """The compare's ensemble from its logged probabilities, when it has none yet; returns the
    stage's one-line message ("" when the ensemble was there already)."""
    from study import data, ensemble_stage

    if ensemble_stage.existing_run(pid):
        return ""
    splits = data.make_splits(dataset, config.PROFILES[profile])
    result = ensemble_stage.run(pid, profile, splits.y_val, splits.y_test, splits.x_test,
                                data.fingerprint(splits))
    print(result.message)
    return result.message


def ensemble_section(doc: _Doc, rows: list[dict[str, Any]], note: str) -> None:
    """Members, weights, what the ensemble gains over its best member, and how often the
    members agree (diverse members are what an ensemble needs)."""
    doc.section(SECTIONS[1])
    row = next((r for r in rows if r["family"] == "ensemble"), None)
    summary = tracking.load_json(row["run_id"], "ensemble/selection.json") if row else None
    if not summary:
        doc.para(note or "(no ensemble in this compare run)")
        return
    weights = summary["weights"]
    doc.para(f"Greedy forward selection with replacement (Caruana et al., ICML 2004) over the "
             f"validation class probabilities of {len(summary['candidates'])} final models: "
             f"{summary['rounds']} rounds, at most {summary['max_members']} distinct members "
             f"(pipelines/ensemble.yaml); the mix of round {summary['best_round']} was kept. "
             f"Ensemble run `{row['run_id']}`, rank {row['rank']}.")
    doc.table(["member", "weight", "times added", "val acc", "test acc"],
              [[n, f"{w:.3f}", summary["counts"][n], f"{summary['member_val_accuracy'][n]:.4f}",
                f"{summary['member_test_accuracy'][n]:.4f}"] for n, w in weights.items()])
    best = summary["best_member"]
    val_gain = row["val_accuracy"] - summary["best_member_val_accuracy"]
    test_gain = row["test_accuracy"] - summary["best_member_test_accuracy"]
    doc.table(["", "ensemble", f"best single model on validation ({best})", "gain"], [
        ["validation accuracy (selection score)", f"{row['val_accuracy']:.4f}",
         f"{summary['best_member_val_accuracy']:.4f}", f"{100 * val_gain:+.2f} points"],
        ["test accuracy", f"{row['test_accuracy']:.4f}",
         f"{summary['best_member_test_accuracy']:.4f}", f"{100 * test_gain:+.2f} points"]])
    doc.para("The validation figure is the score the weights were chosen on, so it flatters the "
             "ensemble; the networks' validation probabilities flatter them a little too (their "
             "best epoch and their mirror test-time augmentation were chosen on the same "
             "validation rows). The test figure is neither: the test set scored the chosen "
             "weights once.")
    for line in summary.get("notes", []):
        doc.para(f"Note: {line}.")
    if summary.get("left_out"):
        doc.para("Left out: " + "; ".join(summary["left_out"]) + ".")
    agree = summary.get("agreement_test", {})
    if len(agree.get("models", [])) > 1:
        doc.para("Members' agreement: share of the test images on which two members predict "
                 "the same class.")
        doc.table(["", *agree["models"]],
                  [[a, *(f"{v:.3f}" for v in line)] for a, line in zip(agree["models"],
                                                                         agree["matrix"])])


def verdict(rows: list[dict[str, Any]]) -> str:
    """Two sentences: who wins and by how much it matters; what the cheaper options cost."""
    champ = rows[0]
    same = [r["pipeline"] for r in rows[1:] if r.get("indistinguishable")]
    untested = [r["pipeline"] for r in rows[1:] if r.get("indistinguishable") is None]
    first = (f"**{champ['pipeline']}** ranks first with test accuracy {champ['test_accuracy']:.4f}"
             + (f" (95% CI {champ['ci_low']:.4f}-{champ['ci_high']:.4f})"
                if champ.get("ci_low", float("nan")) == champ.get("ci_low") else "")  # not NaN
             + ("; no model could be tested against it (test predictions missing)."
                if untested and len(untested) == len(rows) - 1 else
                f"; {', '.join(same)} {'is' if len(same) == 1 else 'are'} statistically "
                "indistinguishable from it (exact McNemar, 5%, Holm-adjusted)." if same else
                "; every other model is significantly worse (exact McNemar, 5%, "
                "Holm-adjusted)." if not untested else
                "; every model tested is significantly worse (exact McNemar, 5%, "
                f"Holm-adjusted); not tested (predictions missing): {', '.join(untested)}."))
    classical = [r for r in rows if r.get("kind") == "sklearn" and r["family"] != "baseline"]
    near = [r for r in rows if r["test_accuracy"] >= champ["test_accuracy"] - 0.01]
    fastest = min(near, key=lambda r: r["fit_seconds"]) if near else champ
    second = []
    if classical and classical[0]["run_id"] != champ["run_id"]:
        c = classical[0]
        second.append(f"The best classical model, {c['pipeline']}, reaches {c['test_accuracy']:.4f} "
                      f"({100 * (champ['test_accuracy'] - c['test_accuracy']):.1f} points behind) "
                      f"in {c['fit_seconds']:.0f} s of fitting")
    if fastest["run_id"] != champ["run_id"]:
        second.append(f"{'the' if second else 'The'} cheapest model within one point of the "
                      f"champion is {fastest['pipeline']} ({fastest['fit_seconds']:.0f} s to fit "
                      f"against {champ['fit_seconds']:.0f} s)")
    if not second:
        second.append(f"No cheaper model comes within one point of it; it took "
                      f"{champ['fit_seconds']:.0f} s to fit")
    return first + " " + "; ".join(second) + "."


def references(rows: list[dict[str, Any]]) -> list[list[str]]:
    def best(pred) -> dict[str, Any] | None:
        found = [r for r in rows if pred(r)]
        return max(found, key=lambda r: r["test_accuracy"]) if found else None

    def line(label, ref, ours, ref_text=None, split="test"):
        if ours is None:
            return [label, ref_text or f"{ref:.4f}", "not in this run", "-"]
        value = ours.get({"test": "test_accuracy", "validation": "val_accuracy"}[split],
                         float("nan"))
        if value != value:  # NaN: no figure on that split to set against it
            return [label, ref_text or f"{ref:.4f}", f"no {split} figure ({ours['pipeline']})", "-"]
        return [label, ref_text or f"{ref:.4f}",
                f"{value:.4f}{'' if split == 'test' else ' ' + split} ({ours['pipeline']})",
                f"{100 * (value - ref):+.1f} points"]

    out = [line(f"Zalando benchmark: {label}", ref, best(lambda r, f=fam: r["family"] == f))
           for label, fam, ref in ZALANDO]
    for name, ref, split, schedule in SEED_CNNS:
        out.append(line(f"Seed report: {name} ({split}, {schedule})", ref,
                        best(lambda r, n=name: r["pipeline"] == n), split=split))
    out.append(line("Published small CNNs (Zalando table)", SMALL_CNN_RANGE[0],
                    best(lambda r: r["family"] == "cnn"),
                    f"{SMALL_CNN_RANGE[0]:.3f}-{SMALL_CNN_RANGE[1]:.3f}"))
    out.append(line("Published small CNNs, against our ensemble", SMALL_CNN_RANGE[0],
                    best(lambda r: r["family"] == "ensemble"),
                    f"{SMALL_CNN_RANGE[0]:.3f}-{SMALL_CNN_RANGE[1]:.3f}"))
    return out

