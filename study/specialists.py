"""Specialists: a network trained on a few confusable classes only, folded into a generalist.

Most of every model's errors fall among T-shirt/top, Pullover, Coat and Shirt. A specialist
(Hinton et al., "Distilling the knowledge in a neural network", 2015, section 5) learns only
those classes, on their training rows; its model is the generalist with the group's
probability shared out by the specialist: p(c) = p_gen(group) * p_spec(c | group) for c in
the group, p_gen(c) elsewhere (keras_models.fold_specialist). The folded model is a final
model like any other (validation and test probabilities over all ten classes), and a member
the ensemble may choose: its errors differ from the generalist's where they matter most.
No tracking here: compare passes the generalist's logged network in.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from study import config, training
from study.pipelines import PipelineSpec


def group_rows(labels: np.ndarray, classes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(mask of the rows whose label is in the group, their labels renumbered 0..k-1)."""
    remap = np.full(config.N_CLASSES, -1)
    remap[list(classes)] = np.arange(len(classes))
    mask = np.isin(labels, classes)
    return mask, remap[labels[mask]]


def final_fit(spec: PipelineSpec, params: dict[str, Any], splits, seed: int, generalist,
              progress: str | None = None) -> tuple[training.FitResult, np.ndarray]:
    """The specialist fitted on its group's training rows (early stopping and the mirror TTA
    decision on its group's validation rows), folded into `generalist` (a Keras network with
    ten outputs). Returns the fit of the folded model and its validation probabilities on
    every validation row."""
    from study.models.keras_models import fold_specialist

    train, y_train = group_rows(splits.y_train, spec.classes)
    val, y_val = group_rows(splits.y_val, spec.classes)
    fit = training.fit(spec, {**params, "classes": len(spec.classes)}, splits.x_train[train],
                       y_train, splits.x_val[val], y_val, seed, progress=progress, cache=False)
    if spec.tta == "mirror":  # decided on the group's rows, where the specialist answers
        training.choose_mirror_tta(fit, splits.x_val[val], y_val)
        for key in ("val_accuracy_plain", "val_accuracy_mirror"):  # figures within the group
            fit.info[f"within_group_{key}"] = fit.info.pop(key)
    within = training.accuracy(fit.predict_proba(splits.x_val[val]), y_val)
    fit.model = fold_specialist(generalist, fit.model, spec.classes)
    val_proba = fit.predict_proba(splits.x_val)
    names = ", ".join(config.CLASS_NAMES[c] for c in spec.classes)
    fit.notes.append(f"specialist for {names} ({len(y_train)} training rows; validation "
                     f"{within:.4f} within the group), folded into {spec.generalist}")
    fit.info.update(generalist=spec.generalist, specialist_classes=",".join(map(str, spec.classes)),
                    within_group_val_accuracy=within)
    return fit, val_proba
