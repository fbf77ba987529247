"""The overlap guard (cxr.overlap) on a hand-made run and hand-made sets outside the split.

The run: five training / validation / test images (smooth random greys, so their perceptual
hashes differ by 20 bits or more) and one augmented image. The external set holds (a) a byte
copy of a training image, (b) the same pixels re-encoded as BMP, (c) a training image cropped
by 4 px a side and rescaled, under the other label, (d) a new image of a training patient, and
six clean images whose scores are known (FakeModel: p_covid = mean red / 255). Each of (a)-(d)
must be left out and listed with its kind; the metrics must be those of the six clean images,
counted here by hand.
"""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.external import guarded_score, ieee8023_viral_summary, summarise
from cxr.intervals import wilson_interval
from cxr.manifest import describe_image, phash_distances
from cxr.metrics import read_predictions, write_predictions
from cxr.overlap import (
    KINDS,
    OVERLAP_COLUMNS,
    find_overlaps,
    image_keys,
    namespace,
    overlap_note,
    reference_table,
)

from .test_external import FakeModel

SIZE = 256


def grey(seed: int, base: float) -> np.ndarray:
    """A smooth random grey picture around ``base``: 8 x 8 random levels, bicubic to 256 px."""
    small = np.random.default_rng(seed).uniform(-60, 60, (8, 8)).astype(np.float32)
    big = np.asarray(Image.fromarray(small, mode="F").resize((SIZE, SIZE), Image.BICUBIC))
    g = np.clip(base + big, 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def save(rgb, path, **kw):
    Image.fromarray(rgb).save(path, **kw)
    return str(path)


def row(path, label, patient_id):
    source = patient_id.split(":")[0]
    return describe_image(__import__("pathlib").Path(path), label, source, patient_id, "PA", "")


@pytest.fixture()
def run(tmp_path):
    """A run's split tables and augmented table, from real files."""
    d = tmp_path / "run"
    d.mkdir()
    spec = {
        "A": (1, 200, "covid", "ieee8023:1", "train"),
        "B": (2, 60, "non_covid", "kermany-train:person1", "train"),
        "C": (3, 190, "covid", "ieee8023:2", "train"),
        "D": (4, 70, "non_covid", "kermany-train:person2", "val"),
        "E": (5, 210, "covid", "ieee8023:3", "test"),
    }
    rows = {}
    for name, (seed, base, label, pid, split) in spec.items():
        path = save(grey(seed, base), d / f"{name}.png")
        rows[name] = {**row(path, label, pid), "split": split}
    aug = save(grey(1, 200)[::-1].copy(), d / "aug_A.png")  # a flip of A, its own pixels
    augmented = pd.DataFrame([{**row(aug, "covid", "ieee8023:1"), "parent": rows["A"]["path"]}])
    frame = pd.DataFrame(rows.values())
    splits = {s: frame[frame["split"] == s].drop(columns="split") for s in ("train", "val", "test")}
    return {
        "dir": d,
        "rows": rows,
        "reference": reference_table(splits, augmented),
    }


def test_reference_table_holds_every_image_of_the_run_once(run):
    ref = run["reference"]
    assert ref["split"].value_counts().to_dict() == {
        "train": 3,
        "val": 1,
        "test": 1,
        "train (augmented)": 1,
    }
    assert ref.loc[ref["split"] == "train (augmented)", "patient_id"].tolist() == ["ieee8023:1"]


def test_namespace():
    assert namespace("ieee8023:173") == "ieee8023"
    assert namespace("kermany-train:person1") == "kermany-train"
    assert namespace("p17") is None and namespace(":x") is None


def external_set(run, tmp_path):
    """(a)-(d) and six clean images; returns the table and the clean images' bases."""
    rows = run["rows"]
    ext = tmp_path / "external"
    ext.mkdir()
    a = ext / "a_copy.png"
    a.write_bytes(open(rows["A"]["path"], "rb").read())
    b = save(np.asarray(Image.open(rows["B"]["path"]).convert("RGB")), ext / "b.bmp")
    c_src = grey(3, 190)[4:-4, 4:-4]
    c = save(np.asarray(Image.fromarray(c_src).resize((224, 224), Image.BILINEAR)), ext / "c.png")
    d = save(grey(40, 230), ext / "d_same_patient.png")
    table = [
        {"path": str(a), "label": "covid", "patient_id": "hospital-7"},
        {"path": b, "label": "non_covid", "patient_id": "hospital-8"},
        {"path": c, "label": "non_covid", "patient_id": "hospital-9"},  # C is covid
        {"path": d, "label": "covid", "patient_id": "ieee8023:1"},  # A's patient
    ]
    # clean images: covid at 220, 190, 70; non_covid at 40, 80, 170 (one error each way)
    clean = [("covid", 220), ("covid", 190), ("covid", 70)]
    clean += [("non_covid", 40), ("non_covid", 80), ("non_covid", 170)]
    for i, (label, base) in enumerate(clean):
        path = save(grey(100 + i, base), ext / f"clean{i}.png")
        table.append({"path": path, "label": label, "patient_id": f"hospital-{i}"})
    return pd.DataFrame(table)


def test_each_kind_of_overlap_is_left_out_and_listed(run, tmp_path):
    table = external_set(run, tmp_path)
    keys = image_keys(table["path"])
    # preconditions of the hand-made set: the clean images are far from every run image
    far = phash_distances(keys["phash"][4:], run["reference"]["phash"])
    assert far.min() > 4
    overlaps = find_overlaps(table, keys, run["reference"], max_distance=4)
    assert list(overlaps.columns) == list(OVERLAP_COLUMNS)
    rows = run["rows"]
    got = overlaps[["path", "matched_path", "split", "kind", "label_conflict"]]
    want = pd.DataFrame(
        [
            [table["path"][0], rows["A"]["path"], "train", "file sha256", False],
            [table["path"][1], rows["B"]["path"], "train", "pixel sha256", False],
            [table["path"][2], rows["C"]["path"], "train", "perceptual hash", True],
            [table["path"][3], rows["A"]["path"], "train", "patient id", False],
            [
                table["path"][3],
                str(run["dir"] / "aug_A.png"),
                "train (augmented)",
                "patient id",
                False,
            ],
        ],
        columns=got.columns,
    )
    pd.testing.assert_frame_equal(got, want)  # sorted by path, kind, matched path
    c = overlaps[overlaps["kind"] == "perceptual hash"].iloc[0]
    assert 0 < c["distance"] <= 4
    assert (c["label"], c["matched_label"]) == ("non_covid", "covid")
    # a stricter threshold lets the crop through, never the exact copies
    strict = find_overlaps(table, keys, run["reference"], max_distance=0)
    assert set(strict["kind"]) == {"file sha256", "pixel sha256", "patient id"}


def test_metrics_are_those_of_the_clean_images(run, tmp_path):
    table = external_set(run, tmp_path)
    scored, errors, overlaps, guard = guarded_score(
        FakeModel(), table, run["reference"], max_distance=4
    )
    assert len(errors) == 0
    assert sorted(scored["path"]) == sorted(table["path"][4:])
    assert guard["n_checked"] == 10 and guard["n_overlapping"] == 4
    assert guard["by_kind"] == {k: 1 for k in KINDS}
    assert guard["label_conflicts"] == 1
    assert guard["by_split"] == {"train": 4, "train (augmented)": 1}
    assert overlap_note(guard) == (
        "4 of 10 images overlap the run's images (1 file sha256, 1 pixel sha256, 1 perceptual"
        " hash, 1 patient id; 1 label conflict): left out of the metrics"
    )
    write_predictions(scored, tmp_path / "pred.csv")
    stored = read_predictions(tmp_path / "pred.csv")
    m = summarise(stored, errors, "ext", guard, n_resamples=50, seed=0, n_bins=5)
    # by hand: covid 220, 190 called covid, 70 not; non_covid 40, 80 right, 170 called covid
    assert m["n"] == 6 and m["n_listed"] == 10 and m["overlap"] == guard
    assert m["confusion_matrix"] == [[2, 1], [1, 2]]
    for name in ("sensitivity", "specificity", "ppv", "npv"):
        entry = m["intervals"][name]
        assert (entry["successes"], entry["trials"]) == (2, 3)
        # one image per patient: exactly the independent Wilson interval
        assert (entry["lower"], entry["upper"]) == pytest.approx(wilson_interval(2, 3))
    assert m["accuracy"] == pytest.approx(4 / 6)
    # covid {220, 190, 70} vs non_covid {40, 80, 170}: 3 + 3 + 1 of 9 pairs
    assert m["roc_auc"] == pytest.approx(7 / 9)
    assert "overlap_group" not in m


def test_keep_overlaps_scores_them_as_a_separate_group(run, tmp_path):
    table = external_set(run, tmp_path)
    scored, errors, _, guard = guarded_score(
        FakeModel(), table, run["reference"], max_distance=4, keep_overlaps=True
    )
    assert scored["group"].value_counts().to_dict() == {"scored": 6, "overlap": 4}
    assert guard["handling"] == "scored as a separate group"
    m = summarise(scored, errors, "ext", guard, n_resamples=50, seed=0, n_bins=5)
    assert m["n"] == 6 and m["confusion_matrix"] == [[2, 1], [1, 2]]
    # the group: a (covid, 200) right, b (non_covid, 60) right, c (non_covid, ~190) wrong,
    # d (covid, 230) right
    assert m["overlap_group"]["n"] == 4
    assert m["overlap_group"]["confusion_matrix"] == [[1, 1], [0, 2]]


def test_within_source_controls_of_a_covid_patient_are_left_out(run, tmp_path):
    """A within-source set (all non_covid, ieee8023 ids) with an image of a patient whose COVID
    images are in the run (A's patient, in train and augmented, and E's, in test): both left
    out as label conflicts; the ieee8023 summary counts only the other two."""
    d = tmp_path / "within"
    d.mkdir()
    table = pd.DataFrame(
        [
            {"path": save(grey(50, 60), d / "w1.png"), "patient_id": "ieee8023:1"},
            {"path": save(grey(51, 60), d / "w2.png"), "patient_id": "ieee8023:3"},
            {"path": save(grey(52, 220), d / "w3.png"), "patient_id": "ieee8023:90"},
            {"path": save(grey(53, 40), d / "w4.png"), "patient_id": "ieee8023:91"},
        ]
    ).assign(label="non_covid", finding="No Finding")
    scored, errors, overlaps, guard = guarded_score(
        FakeModel(), table, run["reference"], max_distance=4
    )
    assert overlaps[["patient_id", "split", "kind", "label_conflict"]].values.tolist() == [
        ["ieee8023:1", "train", "patient id", True],
        ["ieee8023:1", "train (augmented)", "patient id", True],
        ["ieee8023:3", "test", "patient id", True],
    ]
    assert sorted(scored["patient_id"]) == ["ieee8023:90", "ieee8023:91"]
    test = pd.DataFrame(
        {
            "label": ["covid", "non_covid"],
            "p_covid": [0.9, 0.1],
            "patient_id": ["ieee8023:1", "kermany-test:person1"],
        }
    )
    out = ieee8023_viral_summary(scored, errors, test, n_resamples=20, guard=guard)
    spec = out["intervals"]["specificity"]
    assert (spec["successes"], spec["trials"]) == (1, 2)  # w4 right, w3 (~220) called covid
    assert out["overlap"]["n_overlapping"] == 2 and out["n_listed"] == 4
    # test covid 0.9 vs w3 (~0.86) and w4 (~0.16): patient 1 is no longer compared with itself
    assert out["auc_test_covid_vs_these"]["estimate"] == 1.0
    assert out["auc_test_covid_vs_these"]["n_patients"] == 3
