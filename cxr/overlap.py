"""The overlap guard: no image scored outside the split may be one the run has seen.

Public COVID collections copy each other (COVIDx merged five of them; the COVID-19 Radiography
Database's normal and viral classes are Kermany images; RSNA pneumonia is a subset of NIH
ChestX-ray14), so an "external" image can be a training image under another name, format or
label. Every evaluation outside the split (rules ``evaluate_external``,
``evaluate_ieee8023_adult``, ``evaluate_ieee8023_viral``, and any later one) passes its table
through :func:`find_overlaps` before scoring.

Each scored image is compared with every image of the run (:func:`reference_table`): its
train, validation and test splits and the augmented training images (their own pixels; their
parents are training images), by

- ``file sha256``: the same file bytes;
- ``pixel sha256``: the same decoded pixels (another encoding of one picture);
- ``perceptual hash``: 64-bit phash within ``manifest.near_duplicate_distance`` bits (a crop,
  a rescale, a re-scan), the manifest's own hash and threshold
  (:func:`cxr.manifest.content_hashes`, :func:`cxr.manifest.phash_distances`);
- ``patient id``: the same patient id, where both ids carry the same namespace (the part
  before ``:``, e.g. ``ieee8023:173``; an external id without one is compared with nothing).
  So a within-source control of a patient who has COVID images in the run (the COVID class
  of its splits) is left out.

A pair matching by content is listed once, under its strongest kind (file, then pixels, then
phash); a patient match is listed as well. A match whose two labels differ is a *label
conflict*. The matches are left out of the metrics and listed (:data:`OVERLAP_COLUMNS`);
:func:`overlap_summary` counts them for the metrics JSON, the model card and the protocol
comparison. Pure numpy / pandas; reads the scored images, writes nothing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr.images import ImageError, load_image
from cxr.manifest import content_hashes, phash_distances

#: Kinds of match, strongest first.
KINDS = ("file sha256", "pixel sha256", "perceptual hash", "patient id")
#: Columns of the overlaps CSV: the scored image, the matched image, where it is, how it
#: matched (``distance``: phash bits, 0 for exact kinds, empty for patients).
OVERLAP_COLUMNS = (
    "path",
    "label",
    "patient_id",
    "matched_path",
    "matched_label",
    "matched_patient_id",
    "split",
    "kind",
    "distance",
    "label_conflict",
)
REFERENCE_COLUMNS = ("path", "label", "patient_id", "sha256", "pixel_sha256", "phash", "split")


def reference_table(
    splits: dict[str, pd.DataFrame], augmented: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Every image of a run, with its content keys and where it is.

    Parameters
    ----------
    splits : split name -> the split table (``data/splits/{train,val,test}.csv``: manifest
        rows, with ``path, label, patient_id, sha256, pixel_sha256, phash``).
    augmented : ``data/augmented/augmented.csv`` (its own hashes; split ``train
        (augmented)``); None: none.

    Returns
    -------
    DataFrame with :data:`REFERENCE_COLUMNS`, one row per image (ids as str).
    """
    parts = [frame.assign(split=name) for name, frame in splits.items()]
    if augmented is not None and len(augmented):
        parts.append(augmented.assign(split="train (augmented)"))
    ref = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    ref = ref.reindex(columns=list(REFERENCE_COLUMNS))
    return ref.astype({c: str for c in ("path", "label", "patient_id", "split")})


def image_keys(paths) -> pd.DataFrame:
    """``path, sha256, pixel_sha256, phash`` of image files, decoded by the manifest's loader.

    A file that does not decode gets its ``sha256`` (None too if it cannot be read) and None
    pixel keys: scoring lists it as an error; its bytes are still compared.
    """
    from cxr.sources import file_hash

    rows = []
    for path in paths:
        try:
            rows.append({"path": path, **content_hashes(path, load_image(path).rgb)})
        except ImageError:
            try:
                sha = file_hash(path)
            except OSError:
                sha = None
            rows.append({"path": path, "sha256": sha, "pixel_sha256": None, "phash": None})
    return pd.DataFrame(rows, columns=["path", "sha256", "pixel_sha256", "phash"])


def namespace(patient_id: str) -> str | None:
    """The namespace of a patient id: the part before the first ``:`` (``ieee8023``,
    ``kermany-train``, ``nih``), or None when it has none."""
    head, sep, _ = str(patient_id).partition(":")
    return head if sep and head else None


def find_overlaps(
    table: pd.DataFrame,
    keys: pd.DataFrame,
    reference: pd.DataFrame,
    max_distance: int,
) -> pd.DataFrame:
    """Every match of the scored images against the run's images.

    Parameters
    ----------
    table : the images to score: ``path, label, patient_id``.
    keys : :func:`image_keys` of ``table["path"]`` (same order or not: joined on ``path``).
    reference : :func:`reference_table`.
    max_distance : phash Hamming distance in bits at or below which two images match
        (``manifest.near_duplicate_distance``), 0-64.

    Returns
    -------
    DataFrame with :data:`OVERLAP_COLUMNS`, sorted by ``path``, kind order, matched path.
    """
    if not 0 <= max_distance <= 64:
        raise ValueError(f"max_distance must be 0-64 bits, got {max_distance}")
    scored = table[["path", "label", "patient_id"]].astype(str).reset_index(drop=True)
    keyed = scored.merge(keys.astype({"path": str}), on="path", how="left")
    ref = reference.reset_index(drop=True)
    rows = []

    def add(i, j, kind, distance):
        a, b = keyed.iloc[i], ref.iloc[j]
        rows.append(
            {
                "path": a["path"],
                "label": a["label"],
                "patient_id": a["patient_id"],
                "matched_path": b["path"],
                "matched_label": b["label"],
                "matched_patient_id": b["patient_id"],
                "split": b["split"],
                "kind": kind,
                "distance": distance,
                "label_conflict": a["label"] != b["label"],
            }
        )

    content = np.full((len(keyed), len(ref)), -1)  # strongest content kind per pair
    for k, col in enumerate(("sha256", "pixel_sha256")):
        mine, theirs = keyed[col].to_numpy(object), ref[col].to_numpy(object)
        same = (mine[:, None] == theirs[None, :]) & pd.notna(mine)[:, None]
        content[(content < 0) & same] = k
    have = pd.notna(keyed["phash"]).to_numpy()
    ref_have = pd.notna(ref["phash"]).to_numpy()
    dist = np.full((len(keyed), len(ref)), 65)
    if have.any() and ref_have.any():
        sub = phash_distances(keyed["phash"][have], ref["phash"][ref_have])
        dist[np.ix_(have, ref_have)] = sub
    content[(content < 0) & (dist <= max_distance)] = 2
    for i, j in zip(*np.nonzero(content >= 0), strict=True):
        kind = KINDS[content[i, j]]
        add(i, j, kind, int(dist[i, j]) if kind == "perceptual hash" else 0)
    ns = [namespace(p) for p in keyed["patient_id"]]
    ref_ids = ref["patient_id"].to_numpy(object)
    for i, pid in enumerate(keyed["patient_id"]):
        if ns[i] is None:
            continue
        for j in np.flatnonzero(ref_ids == pid):
            add(i, j, "patient id", None)
    out = pd.DataFrame(rows, columns=list(OVERLAP_COLUMNS))
    order = out["kind"].map({k: n for n, k in enumerate(KINDS)})
    return (
        out.assign(_order=order)
        .sort_values(["path", "_order", "matched_path"], kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def partition(table: pd.DataFrame, overlaps: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(clean, overlapping)``: the rows of ``table`` without and with a match (index reset)."""
    hit = table["path"].astype(str).isin(set(overlaps["path"]))
    return table[~hit].reset_index(drop=True), table[hit].reset_index(drop=True)


def overlap_summary(table: pd.DataFrame, overlaps: pd.DataFrame, kept: bool) -> dict:
    """Counts of the guard's result, for the metrics JSON.

    Returns
    -------
    dict ``n_checked`` (images of ``table``), ``n_overlapping`` (images with a match),
    ``by_kind`` (images with a match of each of :data:`KINDS`), ``by_split`` (images with a
    match in each split), ``label_conflicts`` (images with a match of another label),
    ``matches`` (rows of the overlaps CSV), ``handling`` ("left out of the metrics" or
    "scored as a separate group", config ``external.keep_overlaps``).
    """
    images = overlaps.drop_duplicates("path")
    return {
        "n_checked": len(table),
        "n_overlapping": len(images),
        "by_kind": {k: int(overlaps.loc[overlaps["kind"] == k, "path"].nunique()) for k in KINDS},
        "by_split": {
            str(s): int(g["path"].nunique()) for s, g in overlaps.groupby("split", sort=True)
        },
        "label_conflicts": int(overlaps.loc[overlaps["label_conflict"], "path"].nunique()),
        "matches": len(overlaps),
        "handling": "scored as a separate group" if kept else "left out of the metrics",
    }


def overlap_note(summary: dict | None) -> str | None:
    """``"2 of 40 images overlap the run's images (1 file sha256, ...; 1 label conflict): left
    out of the metrics"``, or None when none overlaps (or no summary)."""
    if not summary or not summary.get("n_overlapping"):
        return None
    kinds = ", ".join(f"{n} {k}" for k, n in summary["by_kind"].items() if n)
    conflicts = summary["label_conflicts"]
    return (
        f"{summary['n_overlapping']} of {summary['n_checked']} images overlap the run's images"
        f" ({kinds}; {conflicts} label conflict{'s' if conflicts != 1 else ''}):"
        f" {summary['handling']}"
    )
