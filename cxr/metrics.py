"""Evaluation metrics of one model on one split, and its predictions table.

Owned by the model half. Pure numpy / scikit-learn / pandas (no TensorFlow): computes the
confusion matrix and classification report from labels and ``p_covid``, and writes
``reports/metrics/*.json`` and ``reports/predictions/*.csv`` atomically (temporary name, then
rename). Touches only the paths it is given.

Conventions: classes in :data:`cxr.CLASSES` order, covid (index 1) the positive class;
``p_covid`` is softmax column 1 and the predicted class is covid when ``p_covid > 0.5`` (the
argmax of the two-class softmax; an exact tie goes to non_covid, as ``numpy.argmax`` would).

References
----------
- scikit-learn ``classification_report`` (``output_dict=True``) and ``confusion_matrix``:
  https://scikit-learn.org/stable/modules/model_evaluation.html
- Sensitivity = TP / (TP + FN) (recall of covid); specificity = TN / (TN + FP) (recall of
  non_covid); Altman & Bland (1994), BMJ 308:1552.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxr import CLASSES

PREDICTION_COLUMNS = ("path", "patient_id", "label", "predicted", "p_covid")


def predicted_labels(p_covid: np.ndarray) -> np.ndarray:
    """Predicted class index from the probability of covid.

    Parameters
    ----------
    p_covid : ``(N,)`` floats in [0, 1], softmax column 1.

    Returns
    -------
    ``(N,) int`` array: 1 (covid) where ``p_covid > 0.5``, else 0 (non_covid).
    """
    return (np.asarray(p_covid, dtype=float) > 0.5).astype(int)


def _ratio(num: int, den: int) -> float:
    return float(num / den) if den else 0.0


def compute_metrics(y_true, y_pred, p_covid=None) -> dict:
    """Confusion matrix, per-class and averaged scores of binary predictions.

    Parameters
    ----------
    y_true, y_pred : ``(N,)`` ints in ``{0, 1}`` (indices into :data:`cxr.CLASSES`), N >= 1.
    p_covid : optional ``(N,)`` floats in [0, 1]; adds ``roc_auc`` (None if only one class is
        present in ``y_true``).

    Returns
    -------
    dict (JSON-ready, plain Python numbers)
        ``classes``; ``n``; ``confusion_matrix`` (2x2 list, rows true, columns predicted, in
        ``classes`` order); ``accuracy``; per class name ``{precision, recall, f1-score,
        support, specificity}`` (specificity of class c: TN_c / (TN_c + FP_c)); ``macro avg``
        and ``weighted avg`` ``{precision, recall, f1-score, support}``; ``sensitivity`` and
        ``specificity`` for covid as the positive class; ``roc_auc`` when ``p_covid`` is given.
        Undefined ratios (0/0) are 0.0, as sklearn's ``zero_division=0``.

    Raises
    ------
    ValueError
        If the arrays are empty, differ in length, or hold labels outside ``{0, 1}``.
    """
    from sklearn.metrics import classification_report, confusion_matrix, roc_auc_score

    y_true = np.asarray(y_true).astype(int)
    y_pred = np.asarray(y_pred).astype(int)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape or len(y_true) == 0:
        raise ValueError(
            f"y_true and y_pred must be equal-length 1-d, got {y_true.shape}, {y_pred.shape}"
        )
    labels = list(range(len(CLASSES)))
    bad = set(np.unique(np.concatenate([y_true, y_pred]))) - set(labels)
    if bad:
        raise ValueError(f"labels outside {labels}: {sorted(bad)}")
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    report = classification_report(
        y_true, y_pred, labels=labels, target_names=list(CLASSES), output_dict=True, zero_division=0
    )
    n = int(cm.sum())
    out = {"classes": list(CLASSES), "n": n, "confusion_matrix": cm.tolist()}
    out["accuracy"] = _ratio(int(np.trace(cm)), n)
    for i, name in enumerate(CLASSES):
        tp = int(cm[i, i])
        fp = int(cm[:, i].sum()) - tp
        fn = int(cm[i, :].sum()) - tp
        tn = n - tp - fp - fn
        scores = {k: float(v) for k, v in report[name].items()}
        scores["support"] = int(scores["support"])
        scores["specificity"] = _ratio(tn, tn + fp)
        out[name] = scores
    for avg in ("macro avg", "weighted avg"):
        scores = {k: float(v) for k, v in report[avg].items()}
        scores["support"] = int(scores["support"])
        out[avg] = scores
    positive = CLASSES[1]
    out["sensitivity"] = out[positive]["recall"]
    out["specificity"] = out[positive]["specificity"]
    if p_covid is not None:
        p_covid = np.asarray(p_covid, dtype=float)
        if p_covid.shape != y_true.shape:
            raise ValueError(f"p_covid has shape {p_covid.shape}, expected {y_true.shape}")
        both = len(np.unique(y_true)) == 2
        out["roc_auc"] = float(roc_auc_score(y_true, p_covid)) if both else None
    return out


def predictions_frame(store: dict, p_covid: np.ndarray) -> pd.DataFrame:
    """One row per image: ``path, patient_id, label, predicted, p_covid``.

    Parameters
    ----------
    store : a split store dict (:func:`cxr.store.load_store`), ``N`` rows.
    p_covid : ``(N,)`` float, softmax column 1.

    Returns
    -------
    DataFrame in store order; ``label`` and ``predicted`` are class names.

    Raises
    ------
    ValueError
        If ``p_covid`` does not have one value per store row, or is outside [0, 1].
    """
    p_covid = np.asarray(p_covid, dtype=float)
    if p_covid.shape != store["labels"].shape:
        raise ValueError(f"p_covid has shape {p_covid.shape}, store {store['labels'].shape}")
    if len(p_covid) and not ((p_covid >= 0) & (p_covid <= 1)).all():
        raise ValueError("p_covid must lie in [0, 1]")
    names = np.asarray(CLASSES)
    return pd.DataFrame(
        {
            "path": store["paths"],
            "patient_id": store["patient_ids"],
            "label": names[store["labels"].astype(int)],
            "predicted": names[predicted_labels(p_covid)],
            "p_covid": p_covid,
        },
        columns=list(PREDICTION_COLUMNS),
    )


def _atomic_write_text(path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_metrics(metrics: dict, path) -> None:
    """Write a metrics dict as indented JSON (NaN refused), atomically.

    Raises
    ------
    ValueError
        If a value is NaN or infinite (not valid JSON).
    """
    for value in metrics.values():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{path}: non-finite metric {value}")
    _atomic_write_text(path, json.dumps(metrics, indent=2, allow_nan=False) + "\n")


def write_predictions(frame: pd.DataFrame, path) -> None:
    """Write a :func:`predictions_frame` as CSV, atomically.

    ``p_covid`` is written with 6 decimals; ``predicted`` was computed before rounding, so it
    is the class the metrics counted. The folder of ``path`` is created.
    """
    _atomic_write_text(path, frame.to_csv(index=False, float_format="%.6f"))
