"""The manifest: one row per usable image, and one row per excluded file with its reason.

Length: over 400 lines because each source's rows (ieee8023, Kermany, NIH) are built here
with the shared de-duplication rules (file hash, pixel hash, both classes, near duplicates);
they must agree, so they stay side by side.

Reads the acquired raw folders only (``data/raw/...``); writes nothing itself (the manifest
script writes the two tables). Every image goes through :func:`cxr.images.load_rgb`, so an
unreadable file is excluded with its reason instead of stopping the run.

Rules (Cohen et al. 2020 metadata; Kermany et al. 2018 file names):

- COVID: a ``metadata.csv`` row whose ``finding`` names one of ``covid_findings``, whose
  ``modality`` is ``X-ray`` and whose ``view`` is frontal (PA, AP, AP Supine by default).
  Patient: ``ieee8023:<patientid>``.
- non-COVID: Kermany files named ``personN_virus_M.jpeg``. Patient: ``kermany-<split>:personN``
  (the same N in the Kermany train and test folders is not the same child).
- non-COVID, only when an NIH folder is given (:func:`nih_candidates`; the adult controls of
  ``docs/protocols.md``): the NIH ChestX-ray8 files ``{No_findings,Pneumonia}/<8-digit patient
  id>_<3-digit follow-up>.png``, joined by file name to ``Data_Entry_2017_v2020.csv.gz``.
  Patient: ``nih:<Patient ID>`` (one id for a patient's images in both folders); ``finding``
  from the folder (``No Finding`` / ``Pneumonia``), ``labels`` the NIH ``Finding Labels``.
  Files not in the metadata, whose patient id disagrees with it, or whose folder the NIH labels
  contradict are excluded with that reason.
- Age and sex (columns ``age, age_low, age_high, sex``): ``age`` in years where the source
  gives one per image (ieee8023 ``age``, NIH ``Patient Age``), else empty. ``age_low`` /
  ``age_high`` bound it: both equal ``age`` where known; for Kermany, per-image ages are not
  published, only the cohort's: children aged one to five (:data:`KERMANY_AGE_RANGE`), so
  Kermany rows have an empty ``age`` and ``age_low, age_high = 1, 5``. No bound: both empty.
  ``sex`` is ``M`` / ``F`` where the source says, else empty.
- Exact duplicates (same file sha256, or same decoded pixels under another encoding): the
  first path (sorted) is kept, the others excluded; an image found in both classes, by file
  hash or by pixel hash, is excluded from both (each row's detail names the other paths).
  The mirror has one pixel-identical pair filed under two ieee8023
  patients (78 and 201), which a file-hash check alone would let leak across splits.
- ``bit_depth`` is the depth the loader scaled the pixels by (:class:`cxr.images.LoadedImage`;
  8 for ordinary files, 10/12/14/16 for 16-bit grey X-rays); ``warning`` is empty or says why
  the range is implausible (a flat picture, a low range). Such images are kept and counted.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.images import ImageError, image_info, load_image, perceptual_hash
from cxr.io import read_input_csv
from cxr.sources import file_hash

COLUMNS = [
    "path",
    "label",
    "source",
    "patient_id",
    "view",
    "finding",
    "labels",
    "age",
    "age_low",
    "age_high",
    "sex",
    "sha256",
    "pixel_sha256",
    "phash",
    "width",
    "height",
    "mode",
    "format",
    "bit_depth",
    "warning",
]
EXCLUDED_COLUMNS = ["path", "label", "source", "patient_id", "reason", "detail"]
NEAR_DUPLICATE_COLUMNS = ["path_a", "path_b", "distance", "same_patient", "same_label"]
#: Columns ``metadata.csv`` must have (upstream spelling).
REQUIRED_METADATA = ("patientid", "finding", "view", "modality", "filename")
KERMANY_FILE = re.compile(r"^person(\d+)_virus_\d+(?:_\d+)?\.jpeg$")
#: Ages (years) of the Kermany children: "pediatric patients of one to five years old from
#: Guangzhou Women and Children's Medical Center" (Kermany et al. 2018, Cell 172(5):1122-1131,
#: Methods). A cohort range, not per-image ages.
KERMANY_AGE_RANGE = (1.0, 5.0)
#: NIH file names: ``<8-digit patient id>_<3-digit follow-up>.png``.
NIH_FILE = re.compile(r"^(\d{8})_(\d{3})\.png$")
#: NIH folders (upstream: darkcovidnet's ``X-Ray Image DataSet/``) and the finding each means.
NIH_FOLDERS = {"No_findings": "No Finding", "Pneumonia": "Pneumonia"}
NIH_METADATA = "Data_Entry_2017_v2020.csv.gz"
#: Columns ``Data_Entry_2017_v2020.csv`` must have (NIH spelling).
REQUIRED_NIH_METADATA = (
    "Image Index",
    "Finding Labels",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
)
#: Ages outside this range (years) are read as unknown (a typing error, not an age).
PLAUSIBLE_AGE = (0.0, 120.0)


class MetadataError(ValueError):
    """``metadata.csv`` lacks a required column; the message names the file and column."""


def read_metadata(path, required=REQUIRED_METADATA) -> pd.DataFrame:
    """Read a metadata table (default: the covid-chestxray-dataset ``metadata.csv``) as strings.

    ``required``: the columns it must have (:data:`REQUIRED_NIH_METADATA` for the NIH table;
    a ``.gz`` file is decompressed). Read as UTF-8 by :func:`cxr.io.read_input_csv`.

    Raises
    ------
    MetadataError naming the file and the missing column(s), with the closest column name
    found when only the spelling differs (e.g. ``patient_id`` for ``patientid``).
    cxr.io.InputEncodingError naming the file and line when it is not UTF-8.
    """
    meta = read_input_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in required if c not in meta.columns]
    if missing:
        norm = {re.sub(r"[^a-z]", "", c.lower()): c for c in meta.columns}
        hints = [f"'{c}' (found '{norm[c]}')" if c in norm else f"'{c}'" for c in missing]
        raise MetadataError(f"{path}: missing required column(s) {', '.join(hints)}")
    return meta


def parse_age(text) -> float:
    """Age in years from a metadata cell; NaN when empty, not a number, or outside
    :data:`PLAUSIBLE_AGE`."""
    age = pd.to_numeric(str(text).strip(), errors="coerce")
    lo, hi = PLAUSIBLE_AGE
    return float(age) if pd.notna(age) and lo <= age <= hi else float("nan")


def matches_finding(finding: str, names) -> bool:
    """True when one of ``names`` occurs in ``finding``, case-insensitively (``COVID-19``
    matches ``COVID-19, ARDS``). The one rule for ``manifest.covid_findings`` and protocols."""
    return any(n.lower() in finding.lower() for n in names)


def content_hashes(path, rgb: np.ndarray) -> dict:
    """The three keys that identify an image's content, the one definition for the manifest
    and the overlap guard (:mod:`cxr.overlap`).

    Parameters
    ----------
    path : the image file; rgb : its decoded ``(H, W, 3) uint8`` pixels
        (:func:`cxr.images.load_image`).

    Returns
    -------
    dict ``sha256`` (of the file's bytes), ``pixel_sha256`` (of ``rgb.tobytes()``: the same
    picture under another encoding or file format matches) and ``phash``
    (:func:`cxr.images.perceptual_hash`, 16 hex digits).
    """
    return {
        "sha256": file_hash(path),
        "pixel_sha256": hashlib.sha256(np.ascontiguousarray(rgb).tobytes()).hexdigest(),
        "phash": perceptual_hash(rgb),
    }


def phash_distances(a, b) -> np.ndarray:
    """Hamming distances in bits between two lists of 64-bit perceptual hashes (16 hex digits).

    Returns
    -------
    ``(len(a), len(b))`` int array; compare with ``manifest.near_duplicate_distance``.
    """
    ha = np.array([int(x, 16) for x in a], dtype=np.uint64)
    hb = np.array([int(x, 16) for x in b], dtype=np.uint64)
    return np.bitwise_count(ha[:, None] ^ hb[None, :]).astype(int)


def describe_image(
    path: Path,
    label,
    source,
    patient_id,
    view,
    finding,
    min_side=1,
    max_pixels=50_000_000,
    *,
    labels="",
    age=float("nan"),
    age_low=None,
    age_high=None,
    sex="",
) -> dict:
    """Load one image through :func:`cxr.images.load_image`; return its manifest row.

    ``age`` (years, NaN: unknown), ``age_low``/``age_high`` (bounds in years; None: ``age``),
    ``sex`` and ``labels`` are copied into the row as given (module docstring).

    Returns
    -------
    dict with :data:`COLUMNS`: the given fields, the file's ``sha256``, the decoded pixels'
    ``pixel_sha256`` (sha256 of the ``(H, W, 3) uint8`` bytes) and ``phash``, the decoded
    ``width``/``height``, the header's ``mode``/``format``, the loader's ``bit_depth`` and
    ``warning``.

    Raises
    ------
    ImageError (from the loader) naming the file and the reason.
    """
    loaded = load_image(path, min_side=min_side, max_pixels=max_pixels)
    rgb = loaded.rgb
    info = image_info(path)
    return {
        "path": path.as_posix(),
        "label": label,
        "source": source,
        "patient_id": patient_id,
        "view": view,
        "finding": finding,
        "labels": labels,
        "age": age,
        "age_low": age if age_low is None else age_low,
        "age_high": age if age_high is None else age_high,
        "sex": sex,
        **content_hashes(path, rgb),
        "width": rgb.shape[1],
        "height": rgb.shape[0],
        "mode": info["mode"],
        "format": info["format"],
        "bit_depth": loaded.bit_depth,
        "warning": loaded.warning,
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
    seen = set()
    for rec in meta.to_dict("records"):
        path = covid_dir / "images" / rec["filename"]
        pid = f"ieee8023:{rec['patientid']}"
        is_covid = matches_finding(rec["finding"], covid_findings)
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
        age = parse_age(rec.get("age", ""))
        sex = rec.get("sex", "").strip()
        yield (
            "take",
            take | {"view": rec["view"], "finding": rec["finding"], "age": age, "sex": sex},
        )


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
                age_low=KERMANY_AGE_RANGE[0],
                age_high=KERMANY_AGE_RANGE[1],
            ),
        )


def nih_candidates(nih_dir):
    """Yield ``("take", dict)`` / ``("exclude", dict)`` for each NIH control image (by path).

    ``nih_dir`` holds ``No_findings/*.png``, ``Pneumonia/*.png`` and
    ``Data_Entry_2017_v2020.csv.gz`` (:func:`cxr.sources.acquire_nih`). Every image is labelled
    ``non_covid`` here; which of them a run uses is the protocol's choice (:mod:`cxr.protocols`).

    Raises
    ------
    MetadataError if the metadata lacks a required column; FileNotFoundError if it is absent.
    """
    nih_dir = Path(nih_dir)
    meta = read_metadata(nih_dir / NIH_METADATA, REQUIRED_NIH_METADATA)
    meta = meta.drop_duplicates("Image Index").set_index("Image Index")
    for folder, finding in NIH_FOLDERS.items():
        for path in sorted((nih_dir / folder).glob("*")):
            m = NIH_FILE.match(path.name)
            pid = f"nih:{int(m.group(1))}" if m else ""
            rec = {"path": path, "label": "non_covid", "source": "nih", "patient_id": pid}
            reason = detail = None
            if not m:
                reason = "unexpected file name"
                detail = "not <8-digit patient id>_<3-digit follow-up>.png"
            elif path.name not in meta.index:
                reason, detail = "not in NIH metadata", f"no row {path.name!r} in {NIH_METADATA}"
            else:
                row = meta.loc[path.name]
                labels = row["Finding Labels"]
                if str(int(row["Patient ID"])) != str(int(m.group(1))):
                    reason = "metadata mismatch"
                    detail = (
                        f"file name patient {m.group(1)}, metadata Patient ID {row['Patient ID']}"
                    )
                elif finding not in labels.split("|"):
                    reason = "folder contradicts NIH labels"
                    detail = f"folder {folder}, Finding Labels {labels!r}"
            if reason:
                yield "exclude", _exclude(rec, reason, detail)
                continue
            yield (
                "take",
                rec
                | {
                    "view": row["View Position"],
                    "finding": finding,
                    "labels": labels,
                    "age": parse_age(row["Patient Age"]),
                    "sex": row["Patient Gender"].strip(),
                },
            )


def build_manifest(
    covid_dir,
    kermany_dir,
    *,
    nih_dir=None,
    covid_findings=("COVID-19",),
    modality="X-ray",
    views=("PA", "AP", "AP Supine"),
    min_side=128,
    max_pixels=50_000_000,
):
    """Build the manifest and the excluded table from the raw folders.

    ``nih_dir``: the acquired NIH controls (:func:`nih_candidates`); None (default): the
    seed's two sources only.

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
    if nih_dir is not None:
        cands += list(nih_candidates(nih_dir))
    for kind, rec in cands:
        if kind == "exclude":
            excluded.append(rec)
            continue
        try:
            taken.append(describe_image(min_side=min_side, max_pixels=max_pixels, **rec))
        except ImageError as err:
            excluded.append(_exclude(rec, err.reason, str(err)))
    df = pd.DataFrame(taken, columns=COLUMNS).sort_values("path", ignore_index=True)
    # The same image under two labels cannot be trusted for either: drop every copy, whether
    # the copies share their bytes or only their pixels (another encoding of one picture).
    both = pd.Series(False, index=df.index)
    for key in ("sha256", "pixel_sha256"):
        both |= df.groupby(key)["label"].transform("nunique") > 1
    paths_by = {key: df[both].groupby(key)["path"].agg(list) for key in ("sha256", "pixel_sha256")}
    for rec in df[both].to_dict("records"):
        same_bytes = [p for p in paths_by["sha256"][rec["sha256"]] if p != rec["path"]]
        same_pixels = [
            p for p in paths_by["pixel_sha256"][rec["pixel_sha256"]]
            if p != rec["path"] and p not in same_bytes
        ]  # fmt: skip
        detail = "; ".join(
            f"{what} as {', '.join(paths)}"
            for what, paths in (("same file bytes", same_bytes), ("same pixels", same_pixels))
            if paths
        )
        excluded.append(_exclude(rec, "same image in both classes", detail))
    df = df[~both]
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
