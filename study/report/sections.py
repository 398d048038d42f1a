"""The report's sections, in order: each takes the read-only Context and returns a Section
(its Markdown, HTML and figures), or None when the compare has nothing for it. Add a
section by writing a function here and listing it in ORDER."""

from __future__ import annotations

import html

import numpy as np

from study import config, figures, leaderboard
from study.calibration import BINS
from study.config import CLASS_NAMES
from study.report.context import Context
from study.report.document import Section
from study.report.texts import (calibration_rows, calibration_verdict, confused_pairs,
                                references, verdict)

# The sections every report has, in order (optional ones follow: repeats, ablation).
TITLES = ("Leaderboard", "Ensemble", "Accuracy against cost", "Per-class results",
          "Calibration", "Misclassified images", "Dimensionality reduction", "Learning curves",
          "Against the references", "Tuning", "Reproducibility")
(LEADERBOARD, ENSEMBLE, COST, PER_CLASS, CALIBRATION, MISCLASSIFIED, REDUCTION, CURVES,
 REFERENCES, TUNING, REPRODUCIBILITY) = TITLES


CHOSEN = ("The champion is chosen on validation accuracy before the test set is read; the "
          "rows are ordered by test accuracy for display only, and the top test figure is an "
          "optimistic one (the best of many looks at one test set).")


def intro(ctx: Context) -> Section:
    """The title and what the report is about (before the numbered sections)."""
    section = Section("")
    n, pid = len(ctx.rows), ctx.run_id
    section.raw(f"# Fashion-MNIST model comparison ({ctx.profile} profile)\n\n"
                f"Compare run `{pid}`, started {ctx.stamp:%Y-%m-%d %H:%M} UTC; {n} models "
                f"scored once on the canonical 10,000-image test set. {CHOSEN}",
                f"<h1>Fashion-MNIST model comparison ({html.escape(ctx.profile)} profile)</h1>"
                f"<p>Compare run <code>{pid}</code>, started {ctx.stamp:%Y-%m-%d %H:%M} UTC; {n} "
                f"models scored once on the canonical 10,000-image test set. {CHOSEN}</p>")
    return section


def leaderboard_section(ctx: Context) -> Section:
    """The ranked table, the verdict, and how to read the columns."""
    section = Section(LEADERBOARD)
    if ctx.rows:
        section.para(verdict(ctx.rows))
    section.raw(leaderboard.render_markdown(ctx.rows), leaderboard.render_html(ctx.rows))
    section.para(
        "champion: the final model (the ensemble included) with the highest val acc, chosen "
        "before the test set is read (ties: the faster fit); it is the registered model and "
        "the fixed reference of the vs champion column. 95% CI: Wilson interval of the test "
        "accuracy. test ECE and test NLL: expected calibration error (15 equal-width bins of "
        "the top probability) and negative log-likelihood on the test images, after the "
        "model's temperature (fitted on validation), with 95% paired bootstrap intervals "
        "(300 resamples); lower is better, and accuracy is unchanged by the temperature. "
        "vs champion: two-sided exact McNemar test against the champion on the "
        "same test images, raw p and Holm-adjusted over the other rows; 'same' means not "
        "distinguishable at 5% on the adjusted p (highlighted green); 'n/a' means a model's "
        "test predictions could not be read. The registry alias @champion moves to the "
        "champion only when nothing holds it yet or when it is right significantly more "
        "often than the holder where the two disagree on the same test images (one-sided "
        "exact McNemar, 5%): a gain of a few images is not evidence. val acc (selection): "
        "the final model's accuracy on the validation rows (12,000 in the quick and full "
        "profiles), the figure each model was selected on (a network's best epoch, and "
        "mirror TTA where validation chose it; every tuned model's parameters; the "
        "ensemble's weights), optimistic by those choices; only the test columns are "
        "unbiased. limited by: what bounded each model, counted against its "
        "profile's recipe (trials run, failed ones said as failed; epochs run, and whether "
        "early stopping ended them; '(time budget)' only where a time budget's cut made "
        "trials or epochs fall short; an iteration cap that stopped a fit before it "
        "converged; a time cap or tuning timeout that stopped one is a safety net that "
        "bound, said as 'the plan failed': that row depends on the machine's speed). fit s: the time to produce the model from "
        "the data, including the models it is built on, each counted once (a specialist's "
        "generalist, the boosted member's out-of-fold pair, every distinct model under the "
        "ensemble's members); tuning is not in it. predict ms/1k: every model timed the same "
        "way, predicting all the test images in the compare's process, 2,048 a call (the "
        "ensemble: its logged Classifier over its members), per 1,000 images.")
    if ctx.skipped:
        section.para("Skipped by the time budget (not failed): " + "; ".join(
            f"{name} ({why})" for name, why in ctx.skipped.items()) + ".")
    if ctx.failures:
        section.para("Failed pipelines (traceback.txt in their runs): " +
                     ", ".join(f"{f['pipeline']} (run {f['run_id']})" for f in ctx.failures))
    return section


def ensemble_section(ctx: Context) -> Section:
    """Members, weights, what the ensemble gains over its best member, and how often the
    members agree (diverse members are what an ensemble needs)."""
    section = Section(ENSEMBLE)
    row = next((r for r in ctx.rows if r["family"] == "ensemble"), None)
    summary = ctx.ensemble_summary
    if not (row and summary):
        section.para(ctx.ensemble_note or "(no ensemble in this compare run)")
        return section
    weights = summary["weights"]
    # One figure per model in one report: the leaderboard's test accuracy (each run's logged
    # metric, from its logged predictions) over the summary's, which older ensemble stages
    # recomputed from float32 probabilities; the best single model on test is taken over
    # every final run, not only the ensemble's candidates.
    logged = {r["pipeline"]: r["test_accuracy"] for r in ctx.rows
              if r["family"] != "ensemble" and r["test_accuracy"] == r["test_accuracy"]}
    test_acc = {**summary["member_test_accuracy"], **logged}
    best_test = logged.get(summary["best_member"], summary["best_member_test_accuracy"])
    top = max(logged, key=lambda n: (logged[n], n)) if logged else summary.get(
        "best_single_on_test", summary["best_member"])
    top_test = logged.get(top, summary.get("best_single_test_accuracy"))
    section.para(
        f"Greedy forward selection with replacement (Caruana et al., ICML 2004) over the "
        f"validation class probabilities of {len(summary['candidates'])} final models: "
        f"{summary['rounds']} rounds, at most {summary['max_members']} distinct members "
        f"(pipelines/ensemble.yaml); the mix of round {summary['best_round']} was kept. "
        f"Ensemble run `{row['run_id']}`, rank {row['rank']}.")
    section.table(["member", "weight", "times added", "val acc", "test acc"],
                  [[n, f"{w:.3f}", summary["counts"][n], f"{summary['member_val_accuracy'][n]:.4f}",
                    f"{test_acc[n]:.4f}"] for n, w in weights.items()])
    val_gain = row["val_accuracy"] - summary["best_member_val_accuracy"]
    test_gain = row["test_accuracy"] - best_test
    section.table(["", "ensemble", f"best single model on validation ({summary['best_member']})",
                   "gain"], [
        ["validation accuracy (selection score)", f"{row['val_accuracy']:.4f}",
         f"{summary['best_member_val_accuracy']:.4f}", f"{100 * val_gain:+.2f} points"],
        ["test accuracy", f"{row['test_accuracy']:.4f}",
         f"{best_test:.4f}", f"{100 * test_gain:+.2f} points"]])
    section.para(
        "The validation figure is the score the weights were chosen on, so it flatters the "
        "ensemble; the networks' validation probabilities flatter them a little too (their "
        "best epoch and their mirror test-time augmentation were chosen on the same "
        "validation rows). The test figure is neither: the test set scored the chosen "
        "weights once.")
    if top != summary["best_member"]:
        section.para(
            f"The best single model on the test set is {top} ({top_test:.4f}): the ensemble is "
            f"{100 * (row['test_accuracy'] - top_test):+.2f} points against it. "
            "That model was not knowable before the test set was scored, so the "
            "table compares with the best by validation.")
    folded = [r for r in ctx.rows if r.get("generalist") and r["pipeline"] in weights]
    if folded:
        section.para(
            ", ".join(r["pipeline"] for r in folded) + " are specialists: their generalist's "
            "network (" + ", ".join(sorted({r["generalist"] for r in folded})) + ") with the "
            "probability of a group of confusable classes shared out by a network trained on "
            "that group only. As members they correct their generalist where it errs most.")
    for line in summary.get("notes", []):
        section.para(f"Note: {line}.")
    if summary.get("left_out"):
        section.para("Left out: " + "; ".join(summary["left_out"]) + ".")
    agree = summary.get("agreement_test", {})
    if len(agree.get("models", [])) > 1:
        section.para("Members' agreement: share of the test images on which two members "
                     "predict the same class.")
        section.table(["", *agree["models"]],
                      [[a, *(f"{v:.3f}" for v in line)]
                       for a, line in zip(agree["models"], agree["matrix"])])
    return section


def cost_section(ctx: Context) -> Section:
    """Test accuracy against fit and prediction time, with each Pareto frontier."""
    section = Section(COST)
    if ctx.rows:
        section.image(figures.fig_cost(ctx.rows, "fit_seconds", "fit seconds",
                                       ctx.folder / "accuracy_vs_fit_time.png"),
                      "Test accuracy against fit time (fit s: the models it is built on included); "
                      "the red line is the Pareto frontier")
        section.image(figures.fig_cost(ctx.rows, "predict_ms_per_1000",
                                       "prediction milliseconds per 1,000 images",
                                       ctx.folder / "accuracy_vs_predict_time.png"),
                      "Test accuracy against prediction time (all test images, in process); the red "
                      "line is the Pareto frontier")
        section.image(figures.fig_minutes(ctx.timeline, ctx.budgets,
                                          ctx.folder / "accuracy_vs_minutes.png"),
                      "What each minute buys: this compare's models against the minute they "
                      "were done, and the champion against the time budget of the budgeted "
                      "compares in this store")
    return section


def per_class_section(ctx: Context) -> Section:
    """F1 per class for every model, and the champion's confusion matrix and confused pairs."""
    section = Section(PER_CLASS)
    if ctx.per_class_f1:
        section.image(figures.fig_f1_heatmap(list(ctx.per_class_f1),
                                             np.array(list(ctx.per_class_f1.values())),
                                             ctx.folder / "per_class_f1.png"),
                      "Per-class F1, models by classes")
    champion = ctx.champion
    predicted = ctx.predictions.get(champion["run_id"]) if champion else None
    if predicted is not None:
        from sklearn.metrics import confusion_matrix

        cm = confusion_matrix(ctx.y_test, predicted, labels=list(range(len(CLASS_NAMES))))
        section.image(figures.plot_confusion(cm, f"{champion['pipeline']}: test confusion matrix",
                                             ctx.folder / "champion_confusion.png"),
                      f"Confusion matrix of the champion ({champion['pipeline']})")
        section.para("The champion's most confused class pairs (errors in both directions):")
        section.table(["class", "confused with", "test images"],
                      [[a, b, n] for a, b, n in confused_pairs(cm)])
    return section


def calibration_section(ctx: Context) -> Section:
    """Whether a model's "0.9" means nine in ten: the verdict, reliability diagrams of the
    champion and the top models before and after their temperature, and every model's test
    NLL, Brier and ECE with intervals, temperature and unsure threshold."""
    section = Section(CALIBRATION)
    if not ctx.calibration:
        section.para("(no final run of this compare logged calibration metrics)")
        return section
    section.para(calibration_verdict(ctx.calibration))
    shown = sorted((e for e in ctx.calibration if e["reliability"]),
                   key=lambda e: not e["champion"])  # the champion first, then by rank
    records = {e["pipeline"]: e["reliability"] for e in shown}
    if records:
        diagram = figures.plot_reliability(records, ctx.folder / "calibration_reliability.png")
        section.image(diagram,
                      "Reliability diagrams on the test set, the champion first, then the top "
                      "models by rank: accuracy against confidence per equal-width bin (image "
                      "counts above the bars) before (left) and after (right) each model's "
                      "temperature; the dashed diagonal is perfect calibration")
    section.table(["model", "temperature", "test NLL before", "test NLL after",
                   "test Brier before", "test Brier after", "test ECE before",
                   "test ECE after", "unsure below"], calibration_rows(ctx.calibration))
    section.para(
        "Each temperature T (probabilities softmax(log p / T)) is fitted on the validation "
        "rows only, minimising their log loss, and kept only where it lowers validation log "
        "loss and does not raise validation ECE (else T=1: the run's calibration tag says "
        "why); the argmax, and so accuracy, never changes. NLL: mean negative log-likelihood "
        "of the true class; Brier: sum over classes of the squared error (0-2); ECE: "
        f"expected calibration error over {BINS} equal-width bins of the top probability; "
        "all with 95% paired bootstrap intervals over the test images (300 resamples). "
        "unsure below: the confidence, chosen on the "
        "scaled validation probabilities, under which validation accuracy falls below 50%; "
        "`study predict` and the served model flag an answer below it as uncertain.")
    return section


def misclassified_section(ctx: Context) -> Section:
    """The champion's most confident mistakes, as images."""
    section = Section(MISCLASSIFIED)
    champion = ctx.champion
    predicted = ctx.predictions.get(champion["run_id"]) if champion else None
    if predicted is None or ctx.champion_proba is None:
        section.para("(no stored test probabilities for the champion)")
        return section
    confidence = ctx.champion_proba.astype(np.float32).max(axis=1)
    wrong = int((predicted != ctx.y_test).sum())
    section.image(figures.fig_misclassified(ctx.dataset.x_test, ctx.y_test, predicted, confidence,
                                            ctx.folder / "champion_misclassified.png"),
                  f"The champion's 24 most confident mistakes ({wrong} misclassified in all): "
                  "true label, prediction, confidence")
    return section


def reduction_section(ctx: Context) -> Section:
    """PCA variance and the 2-D maps of the test set, drawn by the compare."""
    section = Section(REDUCTION)
    needed = {k: int(v) for k, v in ctx.parent.data.metrics.items()
              if k.startswith("pca_components_")}
    if needed:
        section.para("PCA components needed for " + ", ".join(
            f"{k.split('_')[-1].replace('pct', '%')} of the variance: {v}"
            for k, v in sorted(needed.items(), key=lambda kv: kv[1])) + ".")
    alts = ("PCA explained variance (training split)",
            "Test set on the first two principal components",
            "Test set on a 2-D UMAP (fitted on training images)")
    for path, alt in zip(ctx.reduction_images.values(), alts):
        section.image(path, alt)
    return section


def learning_curves_section(ctx: Context) -> Section:
    """Validation accuracy and loss per epoch of every network."""
    section = Section(CURVES)
    if ctx.curves:
        section.image(figures.plot_validation_curves(ctx.curves, "Neural models",
                                                     ctx.folder / "learning_curves.png"),
                      "Validation accuracy and loss per epoch of the neural models (the kept "
                      "weights are each model's best validation epoch)")
    else:
        section.para("(no neural model in this compare run)")
    return section


def references_section(ctx: Context) -> Section:
    """Published figures (Zalando's benchmark, the seed report) against ours."""
    section = Section(REFERENCES)
    section.table(["reference", "published", "ours (best of the family)", "difference"],
                  references(ctx.rows))
    return section


def tuning_section(ctx: Context) -> Section:
    """Each study's trials beside its final model, and fANOVA parameter importance."""
    section = Section(TUNING)
    if any(t["trials"] for t in ctx.tunings):
        section.image(figures.fig_tuning(ctx.tunings, ctx.folder / "tuning_history.png"),
                      "Optimisation history of each tuned pipeline")
    final_val = {r["pipeline"]: r["val_accuracy"] for r in ctx.rows}
    body = []
    for t in ctx.tunings:
        imp = ", ".join(f"{k} {v:.2f}" for k, v in sorted(t["importances"].items(),
                                                           key=lambda kv: -kv[1]))
        best = t["metrics"].get("best_val_accuracy")
        scores = [tr["val_accuracy"] for tr in t["trials"] if tr["val_accuracy"] is not None]
        final = final_val.get(t["pipeline"])
        body.append([t["pipeline"], len(t["trials"]),
                     sum(tr["state"] == "PRUNED" for tr in t["trials"]),
                     " ".join(f"{v:.3f}" for v in scores) if scores else "fixed parameters",
                     "-" if best is None else f"{best:.4f}",
                     "-" if final is None else f"{final:.4f}",
                     f"{t['metrics'].get('tuning_seconds', 0):.0f}", imp or "-"])
    section.para("Each trial's validation accuracy (on the tuning subsample and schedule of its "
                 "profile) beside the final model's: trials that score far below the final "
                 "model say little about the parameters they tried.")
    section.table(["pipeline", "trials logged", "pruned", "trials' val acc", "best trial",
                   "final val acc", "tuning s", "parameter importance (fANOVA)"], body)
    return section


def reproducibility_section(ctx: Context) -> Section:
    """What reproduces the numbers (seed, split, commit, packages, store) and stage times."""
    section = Section(REPRODUCIBILITY)
    params, env, pid = ctx.parent.data.params, ctx.environment, ctx.run_id
    commit = env.get("git_commit", ctx.parent.data.tags.get("mlflow.source.git.commit", "?"))
    section.table(["setting", "value"], [
        ["profile", ctx.profile], ["seed (models, samplers)", params.get("seed", "?")],
        ["validation split", f"stratified 80/20, seed {env.get('split_seed', config.SEED)}"],
        ["git commit", commit + (" (uncommitted changes)" if env.get("git_dirty") else "")],
        ["CPU", f"{env.get('cpu', '?')} ({env.get('cpu_count', '?')} cores)"],
        ["Python", env.get("python", "?")],
        ["packages", ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items())],
        ["tracking store", config.redact(config.tracking_uri())],
        ["rebuild this report", f"mlflow run . -e report -P run_id={pid} --env-manager local"],
    ])
    section.para("Wall time per stage (seconds):")
    section.table(["stage", "seconds"], _stage_times(ctx))
    return section


def _stage_times(ctx: Context) -> list[list[str]]:
    """Wall seconds of each stage, from the compare's and the final runs' metrics."""
    m, params = ctx.parent.data.metrics, ctx.parent.data.params
    stages = [["data load and split", f"{m.get('data_seconds', float('nan')):.1f}"]]
    for r in sorted((r for r in ctx.rows if r["family"] != "ensemble"),
                    key=lambda r: r["pipeline"]):
        stages.append([f"{r['pipeline']}: tuning / final fit / total",
                       f"{r['tuning_seconds']:.1f} / {r['own_fit_seconds']:.1f}"
                       f" / {r['pipeline_seconds']:.1f}"])
    stages.append(["reduction figures", f"{m.get('figures_seconds', float('nan')):.1f}"])
    if "ensemble_seconds" in m:
        stages.append(["ensemble (selection, scoring, logging)", f"{m['ensemble_seconds']:.1f}"])
    parallel = int(float(params.get("parallel", 1) or 1))
    if parallel > 1:  # per-pipeline times overlap: say what the side-by-side stage took
        stages.append([f"pipelines and figures, {parallel} side by side",
                       f"{m.get('pipelines_seconds', float('nan')):.1f}"])
    # before_report_seconds: data load to ranking and registry; older compares logged only
    # compare_seconds, which leaves those out
    if "before_report_seconds" in m:
        stages.append(["compare, all stages before this report",
                       f"{m['before_report_seconds']:.1f}"])
    else:
        stages.append(["compare, up to the ensemble (no ranking, registry or report)",
                       f"{m.get('compare_seconds', float('nan')):.1f}"])
    if "report_seconds" in m:  # a rebuilt report: the previous report's time
        stages.append(["report (last written)", f"{m['report_seconds']:.1f}"])
    if "total_seconds" in m:
        stages.append(["compare, data to written report", f"{m['total_seconds']:.1f}"])
    return stages


def repeats_section(ctx: Context) -> Section | None:
    """Seed repeats of the compare's top models, when they have been run."""
    if ctx.repeats is None:
        return None
    from study import spread

    run, summary = ctx.repeats
    section = Section("Seed repeats (training variance)")
    section.para(f"Repeats run {run.info.run_id}: the top models refitted with "
                 f"seeds {', '.join(map(str, summary['seeds']))} (the parameters each final "
                 "run logged: tuned values, epochs and caps; same data, each scored on the "
                 f"test set once; "
                 f"{summary['seconds'] / 60:.1f} min). The leaderboard's intervals cover "
                 "the sampling of the test images; this is the spread from training. "
                 "These refits never change the leaderboard. " + spread.verdict(summary))
    section.table(["model", "in the compare", "mean +/- std", "range", "per seed"],
                  spread.table_rows(summary))
    for note in summary.get("notes", []):
        section.para(f"Note: {note}.")
    return section


def ablation_section(ctx: Context) -> Section | None:
    """The MLP ablation, when one belongs to this compare."""
    if ctx.ablation is None:
        return None
    run, table, images = ctx.ablation
    section = Section("MLP ablation (the seed report's experiments)")
    best = table.get("best_run_id")
    section.para(f"Ablation run {run.info.run_id} ({run.data.tags.get('profile', '?')} "
                 f"profile, {run.data.metrics.get('ablation_seconds', 0) / 60:.1f} min), "
                 "run for this compare. Each experiment starts from the best setting so far, "
                 "chosen on validation accuracy (experiments 2-4 at the seed's batch 128); best "
                 f"overall, as trained: {table.get('best')}" + (f" (run {best})." if best else "."))
    section.table(["experiment", "setting", "best val acc", "test acc", "epochs (best)"],
                  [[r["experiment"], r["setting"], f"{r['best_val_accuracy']:.4f}",
                    f"{r['test_accuracy']:.4f}", f"{r['epochs']} ({r['best_epoch']})"]
                   for r in table.get("rows", [])])
    for key, path in images.items():
        section.image(path, f"Ablation: {key} (validation accuracy and loss per epoch)")
    return section


ORDER = (leaderboard_section, ensemble_section, cost_section, per_class_section,
         calibration_section, misclassified_section, reduction_section, learning_curves_section,
         references_section, tuning_section, reproducibility_section, repeats_section,
         ablation_section)


def render(ctx: Context) -> list[Section]:
    """Every section the compare has content for, in order."""
    return [s for s in (make(ctx) for make in ORDER) if s is not None]

