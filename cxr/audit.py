"""Shortcut audit: how much of the task can be solved without looking at lungs.

Every non-COVID image of this data is a child aged 1-5 from one hospital (Kermany et al.
2018), every COVID image an adult from many hospitals and papers (ieee8023); the files also
differ in size, mode and handling (72 % of the viral files are exactly 224 x 224 RGB, no COVID
file is). A model can score well by telling those apart. This module measures it, on the same
patient-level split the model uses, as test ROC AUC with Newcombe's interval on patient
counts (:func:`cxr.intervals.auc_interval`):

(a) blind baselines, each a logistic regression (standardised features, balanced class
    weights, L2, C = 1) trained on the training split:

    - ``thumbnail``: the model's own input images (the store, augmented training images
      included) reduced to ``thumbnail_size`` x ``thumbnail_size`` grayscale (Pillow ``L``,
      then box-filter resize; pixel values / 255), i.e. no lung texture at all;
    - ``size_mode``: the image file's width, height and Pillow mode alone (from the split
      tables, i.e. the manifest): ``log width``, ``log height``, ``log(width / height)``,
      ``width == height``, one indicator per mode seen in training; no pixels at all;

(b) the model with the central lung box (:mod:`cxr.gradcam`) masked out, i.e. filled with
    each image's mean colour (:func:`masked_result`);

and gathers them, with the unmasked model and the Grad-CAM heat in the lung box, in one table
(:func:`shortcut_audit`). A blind or masked AUC at or above ``warn_auc`` is a warning, and so is
Grad-CAM heat in the lung box no higher than uniform heat would put there: the report prints
the warnings, it does not hide them.

Pure numpy / pandas / scikit-learn; no TensorFlow (the masked predictions are made by the
caller). Writes nothing.

References
----------
- Roberts et al. (2021), Common pitfalls and recommendations for using machine learning to
  detect and prognosticate for COVID-19 using chest radiographs and CT scans, Nature Machine
  Intelligence 3:199.
- DeGrave, Janizek & Lee (2021), AI for radiographic COVID-19 detection selects shortcuts over
  signal, Nature Machine Intelligence 3:610.
- Geirhos et al. (2020), Shortcut learning in deep neural networks, Nature Machine
  Intelligence 2:665.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr import LABEL_INDEX
from cxr.intervals import auc_interval
from cxr.metrics import format_interval

SIZE_MODE_COLUMNS = ("width", "height", "mode")


def thumbnails(images: np.ndarray, size: int = 16) -> np.ndarray:
    """``(N, size * size) float`` grayscale thumbnails in [0, 1] of ``(N, H, W, 3) uint8`` images.

    Grayscale is Pillow's ``L`` (ITU-R 601-2 luma); the resize is Pillow's box filter (each
    thumbnail pixel is the mean of the pixels it covers).
    """
    from PIL import Image

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    out = np.empty((len(images), size * size), dtype=np.float64)
    for i, rgb in enumerate(images):
        grey = Image.fromarray(rgb).convert("L").resize((size, size), Image.Resampling.BOX)
        out[i] = np.asarray(grey, dtype=np.float64).ravel() / 255.0
    return out


def size_mode_features(frame: pd.DataFrame, modes: list[str]) -> np.ndarray:
    """Features of the image files alone: log width, log height, log aspect, square, mode.

    Parameters
    ----------
    frame : rows with ``width``, ``height`` (pixels, > 0) and ``mode`` (Pillow mode), e.g. a
        split table.
    modes : the modes that get an indicator column (those seen in training); other modes
        get none (all indicators 0).

    Returns
    -------
    ``(N, 4 + len(modes)) float``.
    """
    missing = [c for c in SIZE_MODE_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"size/mode features need columns {SIZE_MODE_COLUMNS}, missing {missing}")
    w = frame["width"].to_numpy(dtype=float)
    h = frame["height"].to_numpy(dtype=float)
    if (w <= 0).any() or (h <= 0).any():
        raise ValueError("width and height must be > 0")
    cols = [np.log(w), np.log(h), np.log(w / h), (w == h).astype(float)]
    cols += [(frame["mode"].astype(str) == m).to_numpy(dtype=float) for m in modes]
    return np.column_stack(cols)


def fit_predict(x_train, y_train, x_test, seed: int = 0) -> np.ndarray:
    """P(covid) on ``x_test`` of a logistic regression fitted on ``(x_train, y_train)``.

    Standardised features (scikit-learn ``StandardScaler``), ``LogisticRegression(C=1,
    class_weight="balanced", max_iter=5000)``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y_train = np.asarray(y_train).astype(int)
    if len(np.unique(y_train)) < 2:
        raise ValueError("the training split must hold both classes")
    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000, random_state=seed),
    )
    model.fit(x_train, y_train)
    return model.predict_proba(x_test)[:, 1]


def _labels(frame: pd.DataFrame) -> np.ndarray:
    return frame["label"].map(LABEL_INDEX).to_numpy(dtype=int)


def blind_baselines(
    train_store: dict,
    test_store: dict,
    train_table: pd.DataFrame,
    test_table: pd.DataFrame,
    *,
    thumbnail_size: int = 16,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Test ROC AUC (with interval) of the two blind baselines described in the module doc.

    Parameters
    ----------
    train_store, test_store : split stores (:func:`cxr.store.load_store`).
    train_table, test_table : the split tables (``data/splits/{train,test}.csv``) with
        ``label``, ``patient_id``, ``width``, ``height``, ``mode``.
    thumbnail_size : side of the thumbnails, pixels.
    n_resamples, seed, confidence : of the patient-clustered bootstrap.

    Returns
    -------
    dict ``{thumbnail: {...}, size_mode: {...}}``, each with ``description``, ``n_train``,
    ``n_test``, ``roc_auc`` (:func:`cxr.intervals.auc_interval`) and ``p_covid``
    (test predictions, store / table order).
    """
    out = {}
    x_tr = thumbnails(train_store["images"], thumbnail_size)
    x_te = thumbnails(test_store["images"], thumbnail_size)
    p = fit_predict(x_tr, train_store["labels"], x_te, seed)
    out["thumbnail"] = {
        "description": (
            f"logistic regression on {thumbnail_size}x{thumbnail_size} grayscale thumbnails "
            "of the model's input images"
        ),
        "n_train": len(x_tr),
        "n_test": len(x_te),
        "roc_auc": auc_interval(
            test_store["labels"], p, test_store["patient_ids"], n_resamples, seed, confidence
        ),
        "p_covid": [float(v) for v in p],
    }
    modes = sorted(train_table["mode"].astype(str).unique())
    p = fit_predict(
        size_mode_features(train_table, modes),
        _labels(train_table),
        size_mode_features(test_table, modes),
        seed,
    )
    out["size_mode"] = {
        "description": (
            "logistic regression on the image file's width, height and mode alone "
            f"(modes {', '.join(modes)}), no pixels"
        ),
        "n_train": len(train_table),
        "n_test": len(test_table),
        "roc_auc": auc_interval(
            _labels(test_table),
            p,
            test_table["patient_id"].astype(str),
            n_resamples,
            seed,
            confidence,
        ),
        "p_covid": [float(v) for v in p],
    }
    return out


def masked_result(
    y_true, p_masked, patient_ids, box, *, n_resamples=1000, seed=0, confidence=0.95
) -> dict:
    """The masked-lungs check as a dict: box, test AUC with interval, p_covid per image."""
    return {
        "description": (
            "model_03 on the test images with the central lung box filled with each image's "
            f"mean colour (box x {box[0]}-{box[2]}, y {box[1]}-{box[3]} of width and height)"
        ),
        "lung_box": [float(v) for v in box],
        "n_test": len(p_masked),
        "roc_auc": auc_interval(y_true, p_masked, patient_ids, n_resamples, seed, confidence),
        "p_covid": [float(v) for v in p_masked],
    }


def _at_least(entry: dict, threshold: float) -> bool:
    est = entry["roc_auc"].get("estimate")
    return est is not None and est >= threshold


def shortcut_audit(
    baselines: dict,
    masked: dict,
    model_metrics: dict,
    gradcam_summary: dict | None,
    warn_auc: float,
) -> dict:
    """The audit table and its warnings.

    Parameters
    ----------
    baselines : :func:`blind_baselines` output; masked : :func:`masked_result` output.
    model_metrics : the unmasked model's test metrics (``reports/metrics/model_03_test.json``).
    gradcam_summary : the Grad-CAM summary (``reports/audit/gradcam.json``: ``mean_heat_in_box``,
        ``box_area_fraction``), or None.
    warn_auc : a blind or masked test AUC at or above this is a warning.

    Returns
    -------
    dict ``{warn_auc, confidence, entries, warnings, gradcam}``; ``entries`` in display order
    (blind baselines, masked model, model), each ``{key, name, description, roc_auc, flagged}``.
    """
    model_auc = model_metrics["intervals"]["roc_auc"]
    entries = [
        {"key": "thumbnail", "name": "blind: thumbnail LR", **_public(baselines["thumbnail"])},
        {"key": "size_mode", "name": "blind: size + mode LR", **_public(baselines["size_mode"])},
        {"key": "masked", "name": "model_03, lungs masked", **_public(masked)},
        {
            "key": "model",
            "name": "model_03 (as evaluated)",
            "description": "model_03 on the unmodified test images",
            "n_test": model_metrics["n"],
            "roc_auc": model_auc,
        },
    ]
    warnings = []
    for e in entries:
        e["flagged"] = e["key"] != "model" and _at_least(e, warn_auc)
    messages = {
        "thumbnail": "a logistic regression on {what} reaches test ROC AUC {auc}: the classes "
        "differ in ways visible without any lung detail (age, hospital, exposure, framing).",
        "size_mode": "the image files' width, height and mode alone reach test ROC AUC {auc}: "
        "file handling separates the classes.",
        "masked": "model_03 with the central lungs masked out keeps test ROC AUC {auc} "
        "(unmasked: {model}): it scores without seeing the lungs.",
    }
    thumb = baselines["thumbnail"]["description"].split(" on ", 1)[-1]
    for e in entries:
        if e["flagged"]:
            warnings.append(
                messages[e["key"]].format(
                    what=thumb, auc=format_interval(e["roc_auc"]), model=format_interval(model_auc)
                )
            )
    gc = None
    if gradcam_summary is not None:
        gc = {
            k: gradcam_summary.get(k)
            for k in ("mean_heat_in_box", "box_area_fraction", "n_images", "lung_box")
        }
        mean, area = gc["mean_heat_in_box"], gc["box_area_fraction"]
        gc["flagged"] = mean is not None and area is not None and mean <= area
        if gc["flagged"]:
            warnings.append(
                f"Grad-CAM puts {mean:.0%} of its heat in the central lung box, no more than "
                f"uniform heat would ({area:.0%}): the model's evidence is not in the lungs."
            )
    return {
        "warn_auc": float(warn_auc),
        "confidence": model_metrics.get("confidence", 0.95),
        "entries": entries,
        "warnings": warnings,
        "gradcam": gc,
    }


def _public(result: dict) -> dict:
    """A baseline / masked result without its per-image predictions."""
    return {k: v for k, v in result.items() if k != "p_covid"}
