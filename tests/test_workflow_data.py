"""End to end: the data rules on the real mirror (smoke overlay, and the default split)."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.augment import augment_one
from cxr.images import load_rgb
from cxr.sources import file_hash
from cxr.store import load_store

from .conftest import SESSION_OVERLAYS, copy_checkout, snakemake

pytestmark = pytest.mark.e2e


def read(workdir, rel):
    return pd.read_csv(workdir / rel, dtype={"patient_id": str})


def test_smoke_split_is_patient_level_and_exact(smoke_run):
    splits = {s: read(smoke_run, f"data/splits/{s}.csv") for s in ("train", "val", "test")}
    assert splits["test"].label.value_counts().to_dict() == {"covid": 4, "non_covid": 4}
    total = pd.concat(splits.values())
    assert total.label.value_counts().to_dict() == {"covid": 20, "non_covid": 20}
    for col in ("patient_id", "sha256"):
        sets = [set(d[col]) for d in splits.values()]
        assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


def test_smoke_augmented_reproduced_from_seed(smoke_run):
    train = read(smoke_run, "data/splits/train.csv")
    aug = read(smoke_run, "data/augmented/augmented.csv")
    assert (train.label == "covid").sum() + len(aug) == 24  # augment.target in smoke.yaml
    assert set(aug.patient_id) <= set(train[train.label == "covid"].patient_id)
    row = aug.iloc[-1]
    parent = train.set_index("path").loc[row.parent]
    assert row.patient_id == parent.patient_id
    again = augment_one(load_rgb(smoke_run / row.parent), int(row.seed))
    assert np.array_equal(np.asarray(Image.open(smoke_run / row.path)), again)


def test_smoke_store_matches_splits(smoke_run):
    train = read(smoke_run, "data/splits/train.csv")
    aug = read(smoke_run, "data/augmented/augmented.csv")
    store = load_store(smoke_run / "data/store/train.npz")
    assert store["images"].shape == (len(train) + len(aug), 64, 64, 3)
    assert store["images"].dtype == np.uint8
    assert int(store["labels"].sum()) == 24
    assert list(store["paths"]) == list(train.path) + list(aug.path)


def test_smoke_rerun_has_nothing_to_do(smoke_run):
    out = snakemake(smoke_run, "-n").stdout
    assert "Nothing to be done" in out


def test_default_split_on_full_mirror(tmp_path, mirror):
    work = copy_checkout(tmp_path)
    cmd = ("data/splits/test.csv", "data/augmented/augmented.csv")
    snakemake(work, *cmd, smoke=False)
    splits = {s: read(work, f"data/splits/{s}.csv") for s in ("train", "val", "test")}
    assert splits["test"].label.value_counts().to_dict() == {"covid": 30, "non_covid": 30}
    for col in ("patient_id", "sha256", "pixel_sha256"):
        sets = [set(d[col]) for d in splits.values()]
        assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    aug = read(work, "data/augmented/augmented.csv")
    assert (splits["train"].label == "covid").sum() + len(aug) == 600
    assert "Nothing to be done" in snakemake(work, *cmd, smoke=False).stdout


def test_data_outputs_byte_identical_with_one_core(smoke_run, corpus_mirror, tmp_path):
    # Same config and seed, --cores 1 instead of 2, another folder: the same bytes.
    work = copy_checkout(tmp_path)
    targets = ("data/store/train.npz", "data/store/val.npz", "data/store/test.npz")
    snakemake(work, *targets, cores=1, mirror=corpus_mirror, overlays=SESSION_OVERLAYS)
    rels = [
        "data/interim/manifest.csv", "data/interim/excluded.csv",
        "data/interim/near_duplicates.csv", "data/augmented/augmented.csv",
        *(f"data/splits/{s}.csv" for s in ("train", "val", "test")),
    ]  # fmt: skip
    rels += [p.relative_to(work).as_posix() for p in (work / "data/augmented/images").iterdir()]
    assert len(rels) > 8
    for rel in rels:
        assert file_hash(work / rel) == file_hash(smoke_run / rel), rel
    for split in ("train", "val", "test"):
        a = load_store(work / f"data/store/{split}.npz")
        b = load_store(smoke_run / f"data/store/{split}.npz")
        assert all(np.array_equal(a[k], b[k]) for k in a), split


@pytest.mark.parametrize(
    "config, message",
    [
        (["mirror=/nonexistent"], "config 'mirror': '/nonexistent' is not a folder"),
        (["pretrained_weights=/no/such.h5"], "config 'pretrained_weights': '/no/such.h5'"),
        (["split={'seed': 'x'}"], "'x' is not of type 'integer'"),
        (["split={'seeed': 1}"], "Additional properties are not allowed ('seeed' was unexpected)"),
    ],
)
def test_bad_config_refused_naming_the_key(tmp_path, config, message):
    work = copy_checkout(tmp_path)
    cmd = [sys.executable, "-m", "snakemake", "-n", "--config", *config]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
