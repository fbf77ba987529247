"""Patient-level split: hand-made manifests whose correct split is known."""

import pandas as pd
import pytest

from cxr.split import SplitError, check_disjoint, patient_groups, split_manifest


def make_manifest(patients: dict[str, tuple[str, int]]) -> pd.DataFrame:
    """One row per image: {patient: (label, n_images)} -> manifest rows with unique sha256."""
    rows = [
        {"path": f"img/{pid}_{i}.png", "label": label, "patient_id": pid, "sha256": f"{pid}-{i}"}
        for pid, (label, n) in patients.items()
        for i in range(n)
    ]
    return pd.DataFrame(rows)


def test_only_feasible_test_set_is_found():
    # covid: A and B have 3 images each, C one; with 1 test image per class only C fits.
    # non_covid: X has 2 images, Y and Z one each; 1 test image -> Y or Z, never X.
    m = make_manifest(
        {
            "A": ("covid", 3),
            "B": ("covid", 3),
            "C": ("covid", 1),
            "X": ("non_covid", 2),
            "Y": ("non_covid", 1),
            "Z": ("non_covid", 1),
        }
    )
    for seed in range(5):
        s = split_manifest(m, seed=seed, test_per_class=1, val_fraction=0.5)
        test = s["test"]
        assert sorted(test["label"]) == ["covid", "non_covid"]
        assert set(test[test.label == "covid"].patient_id) == {"C"}
        assert set(test[test.label == "non_covid"].patient_id) <= {"Y", "Z"}
        # covid rest: A(3) + B(3); val = round(0.5 * 6) = 3 images = exactly one whole patient
        val_covid = s["val"][s["val"].label == "covid"]
        assert len(val_covid) == 3 and val_covid.patient_id.nunique() == 1
        # every image lands in exactly one split
        assert sum(len(d) for d in s.values()) == len(m)
        check_disjoint(s)


def test_patient_never_in_two_splits_and_counts_exact():
    patients = {f"c{i}": ("covid", 1 + i % 3) for i in range(40)}
    patients |= {f"n{i}": ("non_covid", 1 + i % 2) for i in range(60)}
    m = make_manifest(patients)
    s = split_manifest(m, seed=7, test_per_class=10, val_fraction=0.2)
    assert s["test"].label.value_counts().to_dict() == {"covid": 10, "non_covid": 10}
    ids = [set(d.patient_id) for d in s.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    n_rest = (m.label == "covid").sum() - 10
    assert (s["val"].label == "covid").sum() == round(0.2 * n_rest)


def test_same_seed_same_split_other_seed_other_split():
    m = make_manifest({f"p{i}": ("covid" if i % 2 else "non_covid", 1) for i in range(200)})
    a = split_manifest(m, seed=1, test_per_class=10, val_fraction=0.1)
    b = split_manifest(m, seed=1, test_per_class=10, val_fraction=0.1)
    c = split_manifest(m, seed=2, test_per_class=10, val_fraction=0.1)
    assert all(a[k].equals(b[k]) for k in a)
    assert set(a["test"].patient_id) != set(c["test"].patient_id)


def test_max_per_class_caps_before_splitting():
    m = make_manifest({f"p{i}": ("covid" if i % 2 else "non_covid", 1) for i in range(200)})
    s = split_manifest(m, seed=0, test_per_class=4, val_fraction=0.25, max_per_class=20)
    total = pd.concat(s.values())
    assert total.label.value_counts().to_dict() == {"covid": 20, "non_covid": 20}
    assert (s["val"].label == "covid").sum() == 4  # round(0.25 * 16)


def test_patient_with_two_labels_is_refused():
    m = make_manifest({"A": ("covid", 2), "B": ("non_covid", 2)})
    m.loc[0, "patient_id"] = "B"
    with pytest.raises(SplitError, match="two labels"):
        split_manifest(m, seed=0, test_per_class=1, val_fraction=0.5)


def test_too_few_images_for_test_set_names_class():
    m = make_manifest({"A": ("covid", 5), "B": ("non_covid", 1), "C": ("non_covid", 1)})
    with pytest.raises(SplitError, match="class 'covid'.*0 of 2"):
        split_manifest(m, seed=0, test_per_class=2, val_fraction=0.5)


def test_identical_image_in_two_splits_is_refused():
    m = make_manifest({"A": ("covid", 1), "B": ("covid", 1)})
    s = {"train": m.iloc[[0]], "test": m.iloc[[1]].assign(sha256=m.sha256[0])}
    with pytest.raises(SplitError, match="sha256 shared by train and test"):
        check_disjoint(s)


def test_near_duplicate_patients_stay_together():
    # A and B share a near-duplicate image (same label): one group, always in the same split.
    # C (covid) has a near duplicate in non_covid patient X: reported only, not linked.
    m = make_manifest(
        {"A": ("covid", 1), "B": ("covid", 1), "C": ("covid", 1), "D": ("covid", 1),
         "X": ("non_covid", 1), "Y": ("non_covid", 1), "Z": ("non_covid", 1)}
    )  # fmt: skip
    pairs = pd.DataFrame(
        {"path_a": ["img/A_0.png", "img/C_0.png"], "path_b": ["img/B_0.png", "img/X_0.png"],
         "same_label": [True, False]}
    )  # fmt: skip
    groups = patient_groups(m, pairs)
    assert dict(zip(m.patient_id, groups, strict=True)) == {
        "A": "A", "B": "A", "C": "C", "D": "D", "X": "X", "Y": "Y", "Z": "Z"
    }  # fmt: skip
    for seed in range(10):
        s = split_manifest(m, pairs, seed=seed, test_per_class=1, val_fraction=0.5)
        where = {pid: name for name, d in s.items() for pid in d.patient_id}
        assert where["A"] == where["B"]
        # the covid test image is C or D: the A+B group (2 images) cannot fill 1 test slot
        assert set(s["test"][s["test"].label == "covid"].patient_id) <= {"C", "D"}
