"""Tests outside the split: a labelled folder from another source, and ieee8023's adult viral
pneumonia images.

- :func:`read_labelled_table`: any folder of labelled images, described by a CSV like the
  manifest: columns ``path`` and ``label`` (``covid`` / ``non_covid``), optionally
  ``patient_id`` (without it each image counts as its own patient, which makes the AUC
  interval too narrow if patients have several images), ``view``, ``age`` (years) and
  ``sex``. Relative paths are taken from ``images`` (default: the CSV's folder). The images
  may be DICOM files (any name): cells the CSV leaves empty or out are then filled from the
  file's header, ``PatientID``, ``PatientAge`` (``045Y`` -> 45), ``PatientSex`` and
  ``ViewPosition`` (:func:`fill_from_headers`), and nothing else of the header is read.
- :func:`ieee8023_viral_table`: the ieee8023 X-rays that the manifest excluded as "other
  finding" whose finding names a non-COVID viral pneumonia (config
  ``external.ieee8023_viral_findings``: SARS, MERS, influenza, varicella...) in a frontal view.
  They are adults from the same papers and hospitals as the COVID images, so, unlike the
  Kermany children, they do not differ from them by age or source: a model that reads disease
  should call them non_covid, a model that tells adults from children calls them covid.
  With ``min_age`` it also gives the within-source check of every protocol: the frontal
  non-COVID adults of ieee8023 (config ``external.ieee8023_adult_findings``: No Finding,
  bacterial and viral pneumonias and the other non-COVID findings; patients aged
  ``external.ieee8023_adult_min_age`` or more). No shipped protocol trains on them, and they
  share the COVID images' source, so a model that learned the source calls them covid.

Inputs are held to the training images' rules: the CSV is read as UTF-8 only
(:func:`cxr.io.read_input_csv`), and every image goes through the manifest's inclusion rules,
the one loader :func:`cxr.images.load_image` with the manifest's ``min_side`` and
``max_pixels`` (config ``manifest.*``): an image the manifest would exclude (too small, a
decompression bomb, an unsupported mode, undecodable) is listed in the errors table with the
same reason text as in ``excluded.csv``, and not scored.

Every table passes the overlap guard first (:func:`guarded_score`, :mod:`cxr.overlap`): an
image the run has seen (same file, same pixels, a near-duplicate, or the same patient) is left
out of the metrics and listed, or, with ``external.keep_overlaps``, scored as a separate group
(``group`` column ``overlap``).

Scoring and metrics: :func:`score_table` (through :func:`cxr.predict.load_for_model`, so bad
files are listed, not fatal) and :func:`cxr.metrics.table_summary` of the stored predictions
table (:func:`cxr.metrics.read_predictions`). A table of which no
file loads is refused (:func:`require_loaded`: usually paths relative to the wrong folder);
when some do not load, :func:`failure_note` says how many, for the figure and the model card.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr import CLASSES
from cxr.intervals import auc_interval, clustered_proportion
from cxr.io import read_input_csv
from cxr.manifest import parse_age
from cxr.metrics import table_summary
from cxr.overlap import find_overlaps, image_keys, overlap_summary, partition

TABLE_COLUMNS = ("path", "label", "patient_id")
#: Optional columns of a labelled table, kept from the CSV; DICOM headers fill blank cells.
HEADER_COLUMNS = ("view", "age", "sex")
ERROR_COLUMNS = ("path", "reason", "detail")


class TableError(ValueError):
    """A labelled-images CSV that cannot be used; the message names the file, row and column."""


def images_root(csv_path, images=None) -> Path:
    """The folder that relative ``path`` values of a labelled table are taken from:
    ``images`` when given, else the CSV's own folder."""
    return Path(images) if images else Path(csv_path).parent


def read_labelled_table(csv_path, images=None) -> pd.DataFrame:
    """Read an external test table: ``path, label[, patient_id]``.

    Parameters
    ----------
    csv_path : the CSV file.
    images : folder that relative ``path`` values are relative to; None: the CSV's folder.

    Returns
    -------
    DataFrame ``path`` (str, resolved), ``label`` (class name), ``patient_id`` (str; from a
    DICOM file's header when the CSV has none or leaves it empty, else the path), ``view``,
    ``age``, ``sex`` (str, :data:`HEADER_COLUMNS`; the CSV's, else a DICOM header's, else
    empty).

    Raises
    ------
    TableError
        Missing ``path`` / ``label`` column, no rows, or a label outside :data:`cxr.CLASSES`
        (naming the first bad row).
    cxr.io.InputEncodingError
        The CSV is not UTF-8 (a byte-order mark is allowed): naming the file, the line and
        how to convert it (:func:`cxr.io.read_input_csv`).
    """
    csv_path = Path(csv_path)
    frame = read_input_csv(csv_path, dtype=str, keep_default_na=False)
    missing = [c for c in ("path", "label") if c not in frame.columns]
    if missing:
        raise TableError(f"{csv_path}: missing column(s) {missing}; need path, label")
    if frame.empty:
        raise TableError(f"{csv_path}: no rows")
    bad = ~frame["label"].isin(CLASSES)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise TableError(
            f"{csv_path}: row {row + 2}: label {frame['label'].iloc[row]!r} is not one of "
            f"{list(CLASSES)}"
        )
    root = images_root(csv_path, images)
    paths = [str(p if Path(p).is_absolute() else root / p) for p in frame["path"]]
    pid = frame["patient_id"] if "patient_id" in frame.columns else pd.Series([""] * len(frame))
    table = pd.DataFrame({"path": paths, "label": list(frame["label"]), "patient_id": list(pid)})
    for col in HEADER_COLUMNS:
        table[col] = list(frame[col]) if col in frame.columns else ""
    table = fill_from_headers(table)
    table["patient_id"] = [q if q else p for q, p in zip(table["patient_id"], paths, strict=True)]
    return table


def fill_from_headers(table: pd.DataFrame) -> pd.DataFrame:
    """Fill the empty ``patient_id``, ``view``, ``age`` and ``sex`` cells of DICOM rows from
    the files' headers (:func:`cxr.dicom.header_fields`: ``PatientID``, ``PatientAge`` in
    years, ``PatientSex``, ``ViewPosition``), so that per-patient intervals and view checks
    work on DICOM sets. A cell the CSV gives is kept; non-DICOM and unreadable files are left
    as they are (the loader reports them when scored).

    Returns
    -------
    A copy of ``table`` (its ``path`` column: the files).
    """
    from cxr.dicom import header_fields

    table = table.copy()
    columns = ["patient_id", *HEADER_COLUMNS]
    for i, path in enumerate(table["path"]):
        fields = header_fields(path)
        for col in columns:
            j = table.columns.get_loc(col)
            if fields.get(col) and not str(table.iat[i, j]):
                table.iat[i, j] = fields[col]
    return table


def ieee8023_viral_table(
    excluded: pd.DataFrame,
    metadata: pd.DataFrame,
    covid_dir,
    findings,
    views,
    min_age: float | None = None,
) -> pd.DataFrame:
    """The ieee8023 adult non-COVID viral pneumonia X-rays, as a labelled table.

    Parameters
    ----------
    excluded : the manifest's ``excluded.csv`` (``path``, ``patient_id``, ``reason``,
        ``detail``).
    metadata : the raw ``metadata.csv`` (``filename``, ``view``, ``finding``, ``age``, ...).
    covid_dir : the raw covid-chestxray-dataset folder the excluded paths point into.
    findings : a row is taken when its finding contains one of these (case-insensitive).
    views : frontal views to keep (e.g. PA, AP, AP Supine).
    min_age : years; when given, only rows whose metadata ``age``
        (:func:`cxr.manifest.parse_age`) is at least this (unknown age left out).

    Returns
    -------
    DataFrame ``path, label (non_covid), patient_id, finding, view, age``, sorted by path,
    one row per image file (a file listed twice once).
    """
    wanted = [f.lower() for f in findings]
    other = excluded[excluded["reason"] == "other finding"]
    other = other[other["detail"].str.lower().apply(lambda d: any(f in d for f in wanted))]
    meta = metadata.drop_duplicates("filename").set_index("filename")
    rows = []
    for rec in other.to_dict("records"):
        name = Path(rec["path"]).name
        if name not in meta.index:
            continue
        m = meta.loc[name]
        if m["view"] not in views:
            continue
        if min_age is not None and not parse_age(m.get("age", "")) >= min_age:
            continue
        rows.append(
            {
                "path": str(Path(covid_dir) / "images" / name),
                "label": "non_covid",
                "patient_id": rec["patient_id"],
                "finding": rec["detail"],
                "view": m["view"],
                "age": m.get("age", ""),
            }
        )
    cols = ["path", "label", "patient_id", "finding", "view", "age"]
    return (
        pd.DataFrame(rows, columns=cols)
        .drop_duplicates("path")
        .sort_values("path", ignore_index=True)
    )


def score_table(
    model,
    table: pd.DataFrame,
    batch_size: int = 16,
    *,
    dicom_voi: bool = True,
    min_side: int = 1,
    max_pixels: int = 50_000_000,
):
    """p_covid for every row of a labelled table whose image passes the inclusion rules.

    Parameters
    ----------
    model : a Keras model with an ``(S, S, 3)`` input.
    table : rows ``path, label, patient_id`` (and any others, kept).
    batch_size : images per prediction batch.
    min_side, max_pixels : the manifest's inclusion rules (config ``manifest.min_side``,
        ``manifest.max_pixels``; the rules pass them, so these images are held to the
        training images' rules), applied by :func:`cxr.images.load_image`.
    dicom_voi : apply DICOM files' VOI LUT or first window (config ``external.dicom_voi``).

    Returns
    -------
    scored : the rows that loaded, with ``predicted`` and ``p_covid`` added.
    errors : DataFrame ``path, reason, detail`` of the rows that did not (reasons as in the
        manifest's ``excluded.csv``: :data:`cxr.images.REASONS`).
    """
    from cxr.metrics import predicted_labels
    from cxr.predict import load_for_model, model_size, predict_p_covid

    images, ok, errors = load_for_model(
        list(table["path"]),
        model_size(model),
        min_side=min_side,
        max_pixels=max_pixels,
        dicom_voi=dicom_voi,
    )
    failed = {e[0] for e in errors}
    scored = table[~table["path"].astype(str).isin(failed)].reset_index(drop=True)
    if len(scored) != len(ok):
        raise RuntimeError("scored rows and loaded images disagree")  # cannot happen
    p = predict_p_covid(model, images, batch_size)
    scored["predicted"] = np.asarray(CLASSES)[predicted_labels(p)] if len(p) else []
    scored["p_covid"] = p
    return scored, pd.DataFrame(errors, columns=list(ERROR_COLUMNS))


def guarded_score(
    model,
    table: pd.DataFrame,
    reference: pd.DataFrame,
    max_distance: int,
    keep_overlaps: bool = False,
    batch_size: int = 16,
    **load_options,
):
    """The overlap guard, then scoring.

    Parameters
    ----------
    table : labelled table (``path, label, patient_id``, ...).
    reference : :func:`cxr.overlap.reference_table` of the run.
    max_distance : ``manifest.near_duplicate_distance`` (phash bits).
    keep_overlaps : False: overlapping images are not scored; True: scored, ``group``
        ``overlap``.
    load_options : :func:`score_table`'s ``min_side``, ``max_pixels`` (the manifest's
        inclusion rules) and ``dicom_voi``.

    Returns
    -------
    scored : :func:`score_table` rows with ``group`` (``scored`` / ``overlap``).
    errors : files that did not load.
    overlaps : :func:`cxr.overlap.find_overlaps` (every match).
    guard : :func:`cxr.overlap.overlap_summary`.
    """
    overlaps = find_overlaps(table, image_keys(list(table["path"])), reference, max_distance)
    clean, overlapping = partition(table, overlaps)
    parts = [clean.assign(group="scored")]
    if keep_overlaps:
        parts.append(overlapping.assign(group="overlap"))
    to_score = pd.concat(parts, ignore_index=True)
    scored, errors = score_table(model, to_score, batch_size, **load_options)
    return scored, errors, overlaps, overlap_summary(table, overlaps, keep_overlaps)


def require_loaded(scored: pd.DataFrame, errors: pd.DataFrame, csv_path, images=None) -> None:
    """Refuse a labelled table of which no listed file loaded.

    Parameters
    ----------
    scored, errors : the two tables of :func:`score_table`.
    csv_path, images : as given to :func:`read_labelled_table`.

    Raises
    ------
    TableError
        When ``scored`` is empty and ``errors`` is not, naming the CSV, the folder relative
        paths were resolved against (:func:`images_root`), the failures by reason and the
        first failed path.
    """
    if len(scored) or not len(errors):
        return
    first = errors.iloc[0]
    reasons = ", ".join(f"{n} {r}" for r, n in errors["reason"].value_counts().items())
    raise TableError(
        f"{csv_path}: none of the {len(errors)} listed images loaded ({reasons}); relative "
        f"paths were resolved against {images_root(csv_path, images)} (config "
        f"external.images, default the CSV's folder); first: {first['path']} "
        f"({first['reason']})"
    )


def failure_note(summary: dict) -> str | None:
    """``"2 of 7 listed images did not load (1 missing, 1 truncated)"``, or None when every
    listed image loaded. ``summary``: a dict of :func:`summarise` (``n_listed``,
    ``n_failed``, ``failed_by_reason``)."""
    if not summary.get("n_failed"):
        return None
    reasons = ", ".join(f"{n} {r}" for r, n in summary.get("failed_by_reason", {}).items())
    return f"{summary['n_failed']} of {summary['n_listed']} listed images did not load" + (
        f" ({reasons})" if reasons else ""
    )


def summarise(
    scored: pd.DataFrame, errors: pd.DataFrame, name: str, guard: dict | None = None, **bootstrap
) -> dict:
    """Metrics of a stored predictions table (:func:`cxr.metrics.table_summary`), the
    failures and the overlap guard's counts.

    ``scored``: the predictions table as read back (:func:`cxr.metrics.read_predictions`);
    rows of ``group`` ``overlap`` (kept by ``external.keep_overlaps``) are summarised apart,
    under ``overlap_group``. ``guard``: :func:`cxr.overlap.overlap_summary`, stored as
    ``overlap``. ``bootstrap``: ``n_resamples``, ``seed``, ``confidence``, ``n_bins`` for
    :func:`cxr.metrics.evaluation_summary`. With no scored image, only counts are returned.
    """
    group = scored["group"] if "group" in scored.columns else pd.Series("scored", scored.index)
    main, extra = scored[group == "scored"], scored[group == "overlap"]
    n_listed = guard["n_checked"] if guard else len(scored) + len(errors)
    out = {"name": name, "n_listed": n_listed, "n_failed": len(errors)}
    out["failed_by_reason"] = {str(k): int(v) for k, v in errors["reason"].value_counts().items()}
    if guard is not None:
        out["overlap"] = guard
    if len(main):
        out.update(table_summary(main, **bootstrap))
        out["p_covid_mean"] = float(main["p_covid"].mean())
        out["p_covid_median"] = float(main["p_covid"].median())
    if len(extra):
        out["overlap_group"] = table_summary(extra, **bootstrap)
    return out


def ieee8023_viral_summary(
    scored: pd.DataFrame,
    errors: pd.DataFrame,
    test_predictions: pd.DataFrame,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    n_bins: int = 10,
    name: str = "ieee8023 adult non-COVID viral pneumonia",
    guard: dict | None = None,
) -> dict:
    """The honesty check's numbers: specificity on the adult viral images, p_covid per finding,
    and the ROC AUC of test COVID images against them (same population, patient bootstrap).

    ``test_predictions``: ``reports/predictions/model_03_test.csv`` (``label``, ``p_covid``,
    ``patient_id``; :func:`cxr.metrics.read_predictions`); its non_covid rows (the run's
    controls) give the comparison specificity (patient design effect). ``scored``: the stored
    predictions table of these images; only its ``group`` ``scored`` rows enter the
    comparisons. ``guard``: as :func:`summarise`.
    """
    out = summarise(
        scored,
        errors,
        name,
        guard,
        n_resamples=n_resamples,
        seed=seed,
        confidence=confidence,
        n_bins=n_bins,
    )
    if "group" in scored.columns:
        scored = scored[scored["group"] == "scored"]
    out["per_finding"] = {
        str(f): {
            "n": len(g),
            "predicted_covid": int((g["predicted"] == "covid").sum()),
            "p_covid_mean": float(g["p_covid"].mean()),
        }
        for f, g in scored.groupby("finding")
    }
    covid = test_predictions[test_predictions["label"] == "covid"]
    children = test_predictions[test_predictions["label"] == "non_covid"]
    y = np.r_[np.ones(len(covid)), np.zeros(len(scored))].astype(int)
    p = np.r_[covid["p_covid"].to_numpy(float), scored["p_covid"].to_numpy(float)]
    g = np.r_[covid["patient_id"].astype(str), scored["patient_id"].astype(str)]
    out["auc_test_covid_vs_these"] = (
        auc_interval(y, p, g, n_resamples, seed, confidence) if len(y) else None
    )
    out["test_non_covid_specificity"] = clustered_proportion(
        (children["p_covid"] <= 0.5).to_numpy(), children["patient_id"].astype(str), confidence
    )
    return out
