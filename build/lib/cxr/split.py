"""Patient-level, stratified, seeded test / validation / train split of the manifest.

The test split is set aside first: exactly ``test_per_class`` images per class, drawn as whole
patients. Then ``val_fraction`` of each class's remaining images (rounded), again as whole
patients; the rest is train. No patient and no identical image (sha256) is in two splits.

scikit-learn's group splitters (GroupShuffleSplit, StratifiedGroupKFold) size a split in
*patients* or folds, not in images, so they cannot hit "30 images per class" when patients have
1 to 8 images; hence the greedy draw below. Same seed and manifest give the same split.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


class SplitError(ValueError):
    """The split cannot be made as asked (e.g. too few patients for the test size)."""


def patient_groups(manifest: pd.DataFrame, near_duplicates: pd.DataFrame | None) -> pd.Series:
    """Group patients that share a near-duplicate image, so the split keeps them together.

    The covid-chestxray-dataset files some image series under two patient ids (e.g. the
    ``16660_*`` and ``covid-19-rapidly-progressive-...-day-*`` files: identical perceptual
    hashes, different ``patientid``); split by ``patientid`` alone, one copy could land in train
    and the other in test. Patients linked by a same-label near-duplicate pair form one group
    (connected components, scipy.sparse.csgraph). Cross-label pairs are only reported.

    Parameters
    ----------
    manifest : rows with ``path, patient_id``.
    near_duplicates : pairs with ``path_a, path_b, same_label`` (cxr.manifest.near_duplicates),
        or None for plain patient groups.

    Returns
    -------
    Series aligned with ``manifest``: the group key, the smallest patient id of the group.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    patients = np.array(sorted(manifest["patient_id"].unique()))
    index = {p: i for i, p in enumerate(patients)}
    a, b = [], []
    if near_duplicates is not None and len(near_duplicates):
        pid = dict(zip(manifest["path"], manifest["patient_id"], strict=True))
        for pa, pb, same in near_duplicates[["path_a", "path_b", "same_label"]].itertuples(
            index=False
        ):
            if same and pa in pid and pb in pid:
                a.append(index[pid[pa]])
                b.append(index[pid[pb]])
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(len(patients), len(patients)))
    _, comp = connected_components(graph, directed=False)
    first = pd.Series(patients).groupby(comp).transform("min").to_numpy()
    return manifest["patient_id"].map(dict(zip(patients, first, strict=True)))


def draw_patients(df: pd.DataFrame, n_images: int, rng: np.random.Generator) -> list[str]:
    """Draw whole patients in a seeded random order until they hold ``n_images`` images.

    Patients (patient groups) are visited in ``rng.permutation`` of their sorted ids; one who
    would overshoot ``n_images`` is skipped. Returns the drawn group keys (possibly fewer
    images than asked if no combination fits; callers check).

    Parameters
    ----------
    df : rows with a ``group`` column (see :func:`patient_groups`), one per image.
    n_images : images wanted.
    rng : numpy Generator; consumed once (one permutation).
    """
    counts = df.groupby("group").size().sort_index()
    order = rng.permutation(counts.index.to_numpy())
    chosen, total = [], 0
    for pid in order:
        if total == n_images:
            break
        c = int(counts[pid])
        if total + c <= n_images:
            chosen.append(str(pid))
            total += c
    return chosen


def split_manifest(
    manifest: pd.DataFrame,
    near_duplicates: pd.DataFrame | None = None,
    *,
    seed: int,
    test_per_class: int,
    val_fraction: float,
    max_per_class: int | None = None,
) -> dict[str, pd.DataFrame]:
    """Split the manifest into ``{"train", "val", "test"}`` DataFrames (same columns, by path).

    Parameters
    ----------
    manifest : one row per image with ``path, label, patient_id, sha256`` (see cxr.manifest).
    seed : seeds one ``numpy.random.default_rng``; classes are processed in sorted order.
    test_per_class : exact number of test images per class.
    val_fraction : fraction of each class's non-test images for validation (rounded).
    max_per_class : if set, first keep whole patients up to this many images per class.
    near_duplicates : near-duplicate pairs; patients they link stay in one split
        (:func:`patient_groups`). None: split by ``patient_id`` alone.

    Raises
    ------
    SplitError if a patient has images of two labels, or a class cannot give exactly
    ``test_per_class`` test images.
    """
    df = manifest.assign(group=patient_groups(manifest, near_duplicates))
    labels_per_patient = df.groupby("patient_id")["label"].nunique()
    if (labels_per_patient > 1).any():
        bad = labels_per_patient[labels_per_patient > 1].index.tolist()[:5]
        raise SplitError(f"patients with images of two labels cannot be split: {bad}")
    rng = np.random.default_rng(seed)
    assign = pd.Series("train", index=df.index, dtype=object)
    for label in sorted(df["label"].unique()):
        rows = df[df["label"] == label]
        if max_per_class is not None:
            keep = rows["group"].isin(draw_patients(rows, max_per_class, rng))
            assign[rows.index[~keep]] = None
            rows = rows[keep]
        in_test = rows["group"].isin(draw_patients(rows, test_per_class, rng))
        if in_test.sum() != test_per_class:
            raise SplitError(
                f"class {label!r}: could draw only {in_test.sum()} of {test_per_class} test images "
                f"from {len(rows)} images of {rows['group'].nunique()} patient groups"
            )
        assign[rows.index[in_test]] = "test"
        rest = rows[~in_test]
        in_val = rest["group"].isin(draw_patients(rest, round(val_fraction * len(rest)), rng))
        assign[rest.index[in_val]] = "val"
    out = {name: manifest[assign == name].sort_values("path", ignore_index=True) for name in SPLITS}
    check_disjoint(out)
    return out


def check_disjoint(splits: dict[str, pd.DataFrame]) -> None:
    """Raise SplitError if any patient_id, sha256 or pixel_sha256 appears in two splits."""
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for col in ("patient_id", "sha256", "pixel_sha256"):
                if col not in splits[a] or col not in splits[b]:
                    continue
                shared = set(splits[a][col]) & set(splits[b][col])
                if shared:
                    raise SplitError(f"{col} shared by {a} and {b}: {sorted(shared)[:5]}")
