"""Evaluation metrics of one model on one split, and its predictions table.

Owned by the model half. Pure numpy / scikit-learn / pandas (no TensorFlow): computes the
confusion matrix and classification report from labels and ``p_covid``, and writes
``reports/metrics/*.json`` and ``reports/predictions/*.csv`` atomically (temporary name, then
rename). Touches only the paths it is given.

Conventions: classes in :data:`cxr.CLASSES` order, covid (index 1) the positive class;
``p_covid`` is softmax column 1 and the predicted class is covid when ``p_covid > 0.5`` (the
argmax of the two-class softmax; an exact tie goes to non_covid, as ``numpy.argmax`` would).

Uncertainty (:func:`evaluation_summary`, what the evaluate rule writes): every proportion
(sensitivity, specificity, PPV, NPV, accuracy) gets a Wilson score interval on the patient
design effect's effective sample size, and ROC AUC Newcombe's score interval on patient
counts (with the patient bootstrap beside it), all from :mod:`cxr.intervals`. Every metric of
a model on a set is computed from its one stored predictions table, written at full precision
(:func:`write_predictions`, :func:`read_predictions`). Calibration of ``p_covid``:
reliability bins, expected calibration error and Brier score (:func:`calibration`). Curves
for plotting: :func:`roc_pr_curves`.

References
----------
- scikit-learn ``classification_report`` (``output_dict=True``) and ``confusion_matrix``:
  https://scikit-learn.org/stable/modules/model_evaluation.html
- Sensitivity = TP / (TP + FN) (recall of covid); specificity = TN / (TN + FP) (recall of
  non_covid); Altman & Bland (1994), BMJ 308:1552.
- Calibration: Guo et al. (2017), ICML, "On Calibration of Modern Neural Networks" (ECE);
  Brier (1950), Monthly Weather Review 78:1.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cxr import CLASSES
from cxr.intervals import auc_interval, check_confidence, clustered_proportion_intervals
from cxr.io import write_csv, write_json, write_table

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
    write_json(metrics, path)


def write_predictions(frame: pd.DataFrame, path) -> None:
    """Write a predictions table (:func:`predictions_frame`, or a scored external table) as
    CSV, atomically, at full precision: floats as Python's shortest round-trip repr, so
    :func:`read_predictions` gives back the very float64 values. The folder of ``path`` is
    created.
    """
    write_csv(frame, path)


def read_predictions(path) -> pd.DataFrame:
    """Read a table of :func:`write_predictions` back: ``p_covid`` exactly as written
    (float64; pandas' default parser round-trips the shortest repr), ids, paths and labels
    as strings.

    Raises
    ------
    ValueError naming the file when it has no ``label`` or ``p_covid`` column.
    """
    frame = pd.read_csv(
        path,
        dtype={"path": str, "patient_id": str, "label": str, "predicted": str},
        keep_default_na=False,
        na_values={"p_covid": [""]},
    )
    missing = [c for c in ("label", "p_covid") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a predictions table, missing column(s) {missing}")
    frame["p_covid"] = frame["p_covid"].astype(float)
    return frame


def table_summary(frame: pd.DataFrame, **options) -> dict:
    """:func:`evaluation_summary` of a predictions table (``label`` class names, ``p_covid``,
    ``patient_id``); ``options`` as :func:`evaluation_summary`'s keywords."""
    y = frame["label"].map({name: i for i, name in enumerate(CLASSES)}).to_numpy(dtype=int)
    return evaluation_summary(y, frame["p_covid"], frame["patient_id"].astype(str), **options)


def calibration(y_true, p_covid, n_bins: int = 10) -> dict:
    """Reliability of ``p_covid``: equal-width bins, expected calibration error, Brier score.

    Bins split [0, 1] into ``n_bins`` equal intervals, ``[0, 1/n_bins), ...,
    [1 - 1/n_bins, 1]`` (1.0 falls in the last). ECE is the image-weighted mean absolute gap
    between the mean ``p_covid`` of a bin and the fraction of covid images in it,
    ``sum_b (n_b / N) |mean_p_b - frac_covid_b|`` (Guo et al. 2017, for the positive class).
    Brier score is ``mean((p_covid - y)^2)``: 0 is perfect, 0.25 is a constant 0.5.

    Parameters
    ----------
    y_true : ``(N,)`` ints in ``{0, 1}``; p_covid : ``(N,)`` floats in [0, 1]; N >= 1.
    n_bins : int >= 1.

    Returns
    -------
    dict ``{n_bins, ece, brier, bins}``; ``bins`` a list of ``{lower, upper, count,
    mean_p_covid, fraction_covid}`` per bin (the two means None for an empty bin).

    Raises
    ------
    ValueError
        On empty or unequal inputs, ``p_covid`` outside [0, 1], or ``n_bins < 1``.
    """
    y = np.asarray(y_true, dtype=float)
    p = np.asarray(p_covid, dtype=float)
    if y.ndim != 1 or len(y) == 0 or p.shape != y.shape:
        raise ValueError(f"need equal-length non-empty 1-d arrays, got {y.shape}, {p.shape}")
    if not ((p >= 0) & (p <= 1)).all():
        raise ValueError("p_covid must lie in [0, 1]")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.floor(p * n_bins).astype(int), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        inside = index == b
        count = int(inside.sum())
        mean_p = float(p[inside].mean()) if count else None
        frac = float(y[inside].mean()) if count else None
        if count:
            ece += count / len(y) * abs(mean_p - frac)
        bins.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": count,
                "mean_p_covid": mean_p,
                "fraction_covid": frac,
            }
        )
    return {
        "n_bins": int(n_bins),
        "ece": float(ece),
        "brier": float(np.mean((p - y) ** 2)),
        "bins": bins,
    }


def roc_pr_curves(y_true, p_covid) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ROC and precision-recall curve points, as tables for plotting (and DVC plots).

    Returns
    -------
    roc : DataFrame ``fpr, tpr, threshold`` (scikit-learn ``roc_curve``; the first threshold
        is ``inf``: nothing called covid).
    pr : DataFrame ``recall, precision, threshold`` (``precision_recall_curve``; the last
        point, recall 0 and precision 1, has no threshold: NaN).
    Both are empty (columns only) when ``y_true`` holds one class.
    """
    from sklearn.metrics import precision_recall_curve, roc_curve

    y = np.asarray(y_true).astype(int)
    p = np.asarray(p_covid, dtype=float)
    if len(np.unique(y)) < 2:
        return (
            pd.DataFrame(columns=["fpr", "tpr", "threshold"], dtype=float),
            pd.DataFrame(columns=["recall", "precision", "threshold"], dtype=float),
        )
    fpr, tpr, roc_t = roc_curve(y, p)
    precision, recall, pr_t = precision_recall_curve(y, p)
    roc = pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": roc_t})
    pr = pd.DataFrame(
        {"recall": recall, "precision": precision, "threshold": np.append(pr_t, np.nan)}
    )
    return roc, pr


def evaluation_summary(
    y_true,
    p_covid,
    patient_ids,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    n_bins: int = 10,
) -> dict:
    """:func:`compute_metrics` plus intervals, average precision and calibration.

    Adds to the :func:`compute_metrics` dict: ``confidence``; ``n_patients``;
    ``intervals`` (:func:`cxr.intervals.clustered_proportion_intervals`: Wilson on the
    patient design effect's effective sample size, and ``roc_auc`` from
    :func:`cxr.intervals.auc_interval`: Newcombe on patient counts); ``average_precision``
    (area under the precision-recall curve, step-wise, None with one class); ``prevalence``
    (fraction covid); ``calibration`` (:func:`calibration`).
    """
    from sklearn.metrics import average_precision_score

    y = np.asarray(y_true).astype(int)
    p = np.asarray(p_covid, dtype=float)
    out = compute_metrics(y, predicted_labels(p), p)
    both = len(np.unique(y)) == 2
    out["n_patients"] = int(len(np.unique(np.asarray(patient_ids).astype(str))))
    out["prevalence"] = float(y.mean())
    out["average_precision"] = float(average_precision_score(y, p)) if both else None
    out["confidence"] = check_confidence(confidence)
    out["intervals"] = clustered_proportion_intervals(
        y, predicted_labels(p), np.asarray(patient_ids).astype(str), confidence
    )
    out["intervals"]["roc_auc"] = auc_interval(
        y, p, patient_ids, n_resamples=n_resamples, seed=seed, confidence=confidence
    )
    out["calibration"] = calibration(y, p, n_bins)
    return out


def write_curves(roc: pd.DataFrame, pr: pd.DataFrame, roc_path, pr_path) -> None:
    """Write :func:`roc_pr_curves` tables as CSV (6 significant digits), atomically."""
    write_table(roc, roc_path)
    write_table(pr, pr_path)


def write_calibration(cal: dict, path) -> None:
    """Write the reliability bins of :func:`calibration` as CSV (one row per bin), atomically.

    Columns ``bin, lower, upper, count, mean_p_covid, fraction_covid`` (empty bins: blank
    means), for plotting.
    """
    frame = pd.DataFrame(cal["bins"])
    frame.insert(0, "bin", range(len(frame)))
    write_table(frame, path)


def format_interval(entry: dict | None, digits: int = 3) -> str:
    """``"0.750 [0.301, 0.954]"`` from an interval dict; ``"n/a"`` when undefined."""
    if not entry or entry.get("estimate") is None:
        return "n/a"
    est, lo, hi = entry["estimate"], entry.get("lower"), entry.get("upper")
    if lo is None or hi is None:
        return f"{est:.{digits}f}"
    return f"{est:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
