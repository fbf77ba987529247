"""The imgaug recipe: seeded reproducibility, the augmentation plan, the augment script."""

import hashlib
import subprocess
import sys
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.augment import augment_one, image_seed, plan
from cxr.manifest import COLUMNS, describe_image


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)


def test_same_seed_same_bytes(image):
    a = augment_one(image, 1234)
    b = augment_one(image, 1234)
    assert a.dtype == np.uint8 and a.shape == image.shape
    assert np.array_equal(a, b)


def test_seeds_differ(image):
    outs = [augment_one(image, s).tobytes() for s in range(8)]
    assert len(set(outs)) == 8


def test_image_seed_is_stable_and_distinct():
    # SeedSequence([42, i]).generate_state(1)[0], computed independently of cxr.augment
    expected = int(np.random.SeedSequence([42, 3]).generate_state(1)[0])
    assert image_seed(42, 3) == expected
    assert len({image_seed(42, i) for i in range(100)}) == 100


def test_plan_cycles_sorted_parents_to_target():
    p = plan(["b.png", "a.png", "c.png"], target=8, seed=1)
    assert [x[0] for x in p] == [0, 1, 2, 3, 4]
    assert [x[1] for x in p] == ["a.png", "b.png", "c.png", "a.png", "b.png"]
    assert plan(["a.png"] * 3, target=2, seed=1) == []


def test_plan_without_parents_is_an_error():
    with pytest.raises(ValueError, match="no training COVID images"):
        plan([], target=5, seed=1)


def test_augmented_rows_carry_their_own_hashes(tmp_path):
    # Each augmented row describes its own file: sha256 of its bytes, pixel_sha256 of its
    # decoded pixels, phash of its grey picture; the parent is named in `parent` only.
    rng = np.random.default_rng(1)
    rows = []
    for i in range(2):
        path = tmp_path / f"p{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
        # p0: 65 y, female; p1: age and sex unknown
        who = {"age": 65.0, "sex": "F"} if i == 0 else {}
        rows.append(
            describe_image(path, "covid", "ieee8023", f"ieee8023:{i}", "PA", "COVID-19", **who)
        )
    pd.DataFrame(rows, columns=COLUMNS).to_csv(tmp_path / "train.csv", index=False)
    script = Path(__file__).resolve().parents[1] / "scripts/augment.py"
    cmd = [sys.executable, str(script), "--train", str(tmp_path / "train.csv")]
    cmd += ["--images", str(tmp_path / "aug"), "--csv", str(tmp_path / "aug.csv")]
    subprocess.run([*cmd, "--seed", "3", "--target", "5"], check=True, capture_output=True)
    aug = pd.read_csv(tmp_path / "aug.csv", dtype={"patient_id": str})
    assert len(aug) == 3 and list(aug.columns) == COLUMNS + ["parent", "seed"]
    parents = pd.DataFrame(rows).set_index("path")
    for row in aug.itertuples():
        img = Image.open(row.path)
        pixels = np.asarray(img.convert("RGB"))
        assert row.sha256 == hashlib.sha256(Path(row.path).read_bytes()).hexdigest()
        assert row.pixel_sha256 == hashlib.sha256(pixels.tobytes()).hexdigest()
        assert row.phash == str(imagehash.phash(img.convert("L")))
        assert row.pixel_sha256 != parents.loc[row.parent, "pixel_sha256"]
        assert row.patient_id == parents.loc[row.parent, "patient_id"]
        # The parent's age and sex, not the augmented file's (it has none of its own).
        parent = parents.loc[row.parent]
        ages = (row.age, row.age_low, row.age_high)
        if parent["sex"] == "F":
            assert ages == (65, 65, 65) and row.sex == "F"
        else:
            assert np.isnan(ages).all() and pd.isna(row.sex)
        assert (row.source, row.bit_depth, row.width, row.height) == ("augmented", 8, 48, 40)
