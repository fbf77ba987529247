"""The manifest: one row per usable image, and one row per excluded file with its reason.

Reads the acquired raw folders only (``data/raw/...``); writes nothing itself (the manifest
script writes the two tables). Every image goes through :func:`cxr.images.load_rgb`, so an
unreadable file is excluded with its reason instead of stopping the run.

Rules (Cohen et al. 2020 metadata; Kermany et al. 2018 file names):

- COVID: a ``metadata.csv`` row whose ``finding`` names one of ``covid_findings``, whose
  ``modality`` is ``X-ray`` and whose ``view`` is frontal (PA, AP, AP Supine by default).
  Patient: ``ieee8023:<patientid>``.
- non-COVID: Kermany files named ``personN_virus_M.jpeg``. Patient: ``kermany-<split>:personN``
  (the same N in the Kermany train and test folders is not the same child).
- Exact duplicates (same file sha256, or same decoded pixels under another encoding): the
  first path (sorted) is kept, the others excluded; an image found in both classes is
  excluded from both. The mirror has one pixel-identical pair filed under two ieee8023
  patients (78 and 201), which a file-hash check alone would let leak across splits.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.images import ImageError, image_info, load_rgb, perceptual_hash
from cxr.sources import file_hash

COLUMNS = [
    "path",
    "label",
    "source",
    "patient_id",
    "view",
    "finding",
    "sha256",
    "pixel_sha256",
    "phash",
    "width",
    "height",
    "mode",
    "format",
]
EXCLUDED_COLUMNS = ["path", "label", "source", "patient_id", "reason", "detail"]
NEAR_DUPLICATE_COLUMNS = ["path_a", "path_b", "distance", "same_patient", "same_label"]
#: Columns ``metadata.csv`` must have (upstream spelling).
REQUIRED_METADATA = ("patientid", "finding", "view", "modality", "filename")
KERMANY_FILE = re.compile(r"^person(\d+)_virus_\d+(?:_\d+)?\.jpeg$")


class MetadataError(ValueError):
    """``metadata.csv`` lacks a required column; the message names the file and column."""


def read_metadata(path) -> pd.DataFrame:
    """Read the covid-chestxray-dataset ``metadata.csv`` as strings.

    Raises
    ------
    MetadataError naming the file and the missing column(s), with the closest column name
    found when only the spelling differs (e.g. ``patient_id`` for ``patientid``).
    """
    meta = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in REQUIRED_METADATA if c not in meta.columns]
    if missing:
        norm = {re.sub(r"[^a-z]", "", c.lower()): c for c in meta.columns}
        hints = [f"'{c}' (found '{norm[c]}')" if c in norm else f"'{c}'" for c in missing]
        raise MetadataError(f"{path}: missing required column(s) {', '.join(hints)}")
    return meta


def _describe(path: Path, label, source, patient_id, view, finding, min_side, max_pixels):
    """Load one image; return a manifest row, or raise ImageError."""
    rgb = load_rgb(path, min_side=min_side, max_pixels=max_pixels)
    info = image_info(path)
    return {
        "path": path.as_posix(),
        "label": label,
        "source": source,
        "patient_id": patient_id,
        "view": view,
        "finding": finding,
        "sha256": file_hash(path),
        "pixel_sha256": hashlib.sha256(rgb.tobytes()).hexdigest(),
        "phash": perceptual_hash(rgb),
        "width": rgb.shape[1],
        "height": rgb.shape[0],
        "mode": info["mode"],
        "format": info["format"],
    }


def _exclude(rec: dict, reason: str, detail: str = "") -> dict:
    """An excluded.csv row for a candidate or manifest row ``rec`` (path, label, source,
    patient_id), with the reason it was not taken."""
    return {
        "path": Path(rec["path"]).as_posix(),
        "label": rec["label"],
        "source": rec["source"],
        "patient_id": rec["patient_id"],
        "reason": reason,
        "detail": detail,
    }


def covid_candidates(covid_dir, *, covid_findings, modality, views):
    """Yield ``(kind, dict)`` for each metadata row: ``("take", row)`` or ``("exclude", row)``."""
    covid_dir = Path(covid_dir)
    meta = read_metadata(covid_dir / "metadata.csv")
    findings = [f.lower() for f in covid_findings]
    seen = set()
    for rec in meta.to_dict("records"):
        path = covid_dir / "images" / rec["filename"]
        pid = f"ieee8023:{rec['patientid']}"
        is_covid = any(f in rec["finding"].lower() for f in findings)
        reason = detail = None
        if rec["modality"] != modality:
            reason, detail = "not X-ray", f"modality {rec['modality']}"
        elif not is_covid:
            reason, detail = "other finding", rec["finding"]
        elif rec["view"] not in views:
            reason, detail = "not frontal view", f"view {rec['view']}"
        elif rec["filename"] in seen:
            reason, detail = "duplicate row", "filename listed twice in metadata.csv"
        elif not path.is_file():
            reason, detail = "missing file", "listed in metadata.csv, no file"
        if reason:
            label = "covid" if is_covid else ""
            rec = {"path": path, "label": label, "source": "ieee8023", "patient_id": pid}
            yield "exclude", _exclude(rec, reason, detail)
            continue
        seen.add(rec["filename"])
        take = dict(path=path, label="covid", source="ieee8023", patient_id=pid)
        yield "take", take | {"view": rec["view"], "finding": rec["finding"]}


def kermany_candidates(kermany_dir):
    """Yield ``("take", dict)`` for each Kermany ``personN_virus_M.jpeg`` (sorted by path)."""
    kermany_dir = Path(kermany_dir)
    for path in sorted(kermany_dir.glob("*/PNEUMONIA/*")):
        m = KERMANY_FILE.match(path.name)
        if not m:
            continue
        split = path.parent.parent.name
        yield (
            "take",
            dict(
                path=path,
                label="non_covid",
                source=f"kermany-{split}",
                patient_id=f"kermany-{split}:person{m.group(1)}",
                view="",
                finding="viral pneumonia",
            ),
        )


def build_manifest(
    covid_dir,
    kermany_dir,
    *,
    covid_findings=("COVID-19",),
    modality="X-ray",
    views=("PA", "AP", "AP Supine"),
    min_side=128,
    max_pixels=50_000_000,
):
    """Build the manifest and the excluded table from the two raw folders.

    Returns
    -------
    (manifest, excluded) : two DataFrames with :data:`COLUMNS` and :data:`EXCLUDED_COLUMNS`,
    sorted by path, so the same inputs give byte-identical CSV files.

    Raises
    ------
    MetadataError if ``metadata.csv`` lacks a required column.
    """
    taken, excluded = [], []
    cands = list(
        covid_candidates(covid_dir, covid_findings=covid_findings, modality=modality, views=views)
    )
    cands += list(kermany_candidates(kermany_dir))
    for kind, rec in cands:
        if kind == "exclude":
            excluded.append(rec)
            continue
        try:
            taken.append(_describe(min_side=min_side, max_pixels=max_pixels, **rec))
        except ImageError as err:
            excluded.append(_exclude(rec, err.reason, str(err)))
    df = pd.DataFrame(taken, columns=COLUMNS).sort_values("path", ignore_index=True)
    # The same image under two labels cannot be trusted for either: drop both.
    labels_per_hash = df.groupby("sha256")["label"].transform("nunique")
    for rec in df[labels_per_hash > 1].to_dict("records"):
        excluded.append(_exclude(rec, "same image in both classes", rec["sha256"]))
    df = df[labels_per_hash <= 1]
    # Exact duplicates under other names (same bytes, or same decoded pixels): keep the first.
    for key, what in (("sha256", "same file bytes"), ("pixel_sha256", "same pixels")):
        dup = df.duplicated(key, keep="first")
        first = df.drop_duplicates(key).set_index(key)["path"]
        for rec in df[dup].to_dict("records"):
            excluded.append(_exclude(rec, "duplicate image", f"{what} as {first[rec[key]]}"))
        df = df[~dup]
    df = df.reset_index(drop=True)
    ex = pd.DataFrame(excluded, columns=EXCLUDED_COLUMNS).sort_values(
        ["path", "reason"], ignore_index=True
    )
    return df, ex


def near_duplicates(manifest: pd.DataFrame, max_distance: int) -> pd.DataFrame:
    """Pairs of manifest images whose perceptual hashes differ in at most ``max_distance`` bits.

    Reported, not excluded: a near duplicate may be a re-scan, a crop, or two genuinely similar
    films. Pairs of different patients are a leakage risk: the split keeps the patients of a
    same-label pair together (:func:`cxr.split.patient_groups`).

    Parameters
    ----------
    manifest : rows with ``path, patient_id, label, phash`` (64-bit phash as 16 hex digits).
    max_distance : Hamming distance in bits (0-64).

    Returns
    -------
    DataFrame with :data:`NEAR_DUPLICATE_COLUMNS`, one row per unordered pair, sorted.
    """
    h = np.array([int(x, 16) for x in manifest["phash"]], dtype=np.uint64)
    rows = []
    for i in range(len(h) - 1):
        dist = np.bitwise_count(h[i] ^ h[i + 1 :])
        for j in np.flatnonzero(dist <= max_distance) + i + 1:
            a, b = manifest.iloc[i], manifest.iloc[j]
            rows.append({
                "path_a": a["path"], "path_b": b["path"], "distance": int(dist[j - i - 1]),
                "same_patient": a["patient_id"] == b["patient_id"],
                "same_label": a["label"] == b["label"],
            })  # fmt: skip
    return pd.DataFrame(rows, columns=NEAR_DUPLICATE_COLUMNS).sort_values(
        ["path_a", "path_b"], ignore_index=True
    )
