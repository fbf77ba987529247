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


def draw_patients(df: pd.DataFrame, n_images: int, rng: np.random.Generator) -> list[str]:
    """Draw whole patients in a seeded random order until they hold ``n_images`` images.

    Patients are visited in ``rng.permutation`` of their sorted ids; a patient who would
    overshoot ``n_images`` is skipped. Returns the drawn patient ids (possibly fewer images
    than asked if no combination fits; callers check).

    Parameters
    ----------
    df : rows with a ``patient_id`` column, one per image.
    n_images : images wanted.
    rng : numpy Generator; consumed once (one permutation).
    """
    counts = df.groupby("patient_id").size().sort_index()
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

    Raises
    ------
    SplitError if a patient has images of two labels, or a class cannot give exactly
    ``test_per_class`` test images.
    """
    labels_per_patient = manifest.groupby("patient_id")["label"].nunique()
    if (labels_per_patient > 1).any():
        bad = labels_per_patient[labels_per_patient > 1].index.tolist()[:5]
        raise SplitError(f"patients with images of two labels cannot be split: {bad}")
    rng = np.random.default_rng(seed)
    assign = pd.Series("train", index=manifest.index, dtype=object)
    for label in sorted(manifest["label"].unique()):
        rows = manifest[manifest["label"] == label]
        if max_per_class is not None:
            keep = draw_patients(rows, max_per_class, rng)
            assign[rows.index[~rows["patient_id"].isin(keep)]] = None
            rows = rows[rows["patient_id"].isin(keep)]
        test = draw_patients(rows, test_per_class, rng)
        n_test = int(rows["patient_id"].isin(test).sum())
        if n_test != test_per_class:
            raise SplitError(
                f"class {label!r}: could draw only {n_test} of {test_per_class} test images "
                f"from {len(rows)} images of {rows['patient_id'].nunique()} patients"
            )
        assign[rows.index[rows["patient_id"].isin(test)]] = "test"
        rest = rows[~rows["patient_id"].isin(test)]
        val = draw_patients(rest, round(val_fraction * len(rest)), rng)
        assign[rest.index[rest["patient_id"].isin(val)]] = "val"
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
