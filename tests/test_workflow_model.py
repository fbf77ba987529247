"""End to end: the model rules of the smoke run (features, train x3, evaluate x4, report) on the
real mirror.

Uses the session's ``smoke_run`` (tests/config/smoke.yaml: 64 px, 1 epoch a stage, batch 8,
real-time augmentation off so every stage trains on cached features; both protocols, each run
under its prefix). Expected file lists are written out here, not imported from the rules.
The real-time augmentation path is tested on small stores in tests/test_feature_cache.py.
"""

import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.features import features_meta
from cxr.store import load_store

from .conftest import WEIGHTS, copy_checkout, snakemake

STAGES = ["model_01", "model_02", "model_03"]
# The base layer whose cached outputs each stage trains on (its first trainable layer's input).
CUTS = ["block5_pool", "block4_pool", "block3_pool"]
# The session run's protocols: seed at the top level, adult_controls under its folder.
RUNS = ["", "protocols/adult_controls/"]
EVALUATIONS = [("model_01", "val"), ("model_02", "val"), ("model_03", "val"), ("model_03", "test")]
FIGURES = [
    *(f"{s}_curves.png" for s in STAGES),
    *(f"{m}_{s}_confusion.png" for m, s in EVALUATIONS),
    *(f"{m}_{s}_report.png" for m, s in EVALUATIONS),
    "model_03_test_samples.png",
]
HISTORY_COLUMNS = [
    "epoch",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "learning_rate",
    "seconds",
]


def test_dry_run_schedules_the_model_jobs(tmp_path):
    out = snakemake(copy_checkout(tmp_path), "-n", "--quiet", "rules").stdout
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M))
    expected = {
        "features": "1",
        "train_model_01": "1",
        "train_model_02": "1",
        "train_model_03": "1",
    }
    assert {k: counts.get(k) for k in expected} == expected
    assert counts.get("evaluate") == "4" and counts.get("report") == "1"


@pytest.mark.e2e
def test_models_and_histories(smoke_run):
    for run in RUNS:
        for stage, cut in zip(STAGES, CUTS, strict=True):
            model = smoke_run / run / "models" / f"{stage}.keras"
            assert model.stat().st_size > 50_000_000, stage  # VGG19 alone is 80 MB of float32
            history = pd.read_csv(smoke_run / run / "reports/history" / f"{stage}.csv")
            assert list(history.columns) == HISTORY_COLUMNS
            assert history["epoch"].tolist() == [1]  # smoke: 1 epoch a stage
            assert np.isfinite(history.drop(columns="epoch").to_numpy()).all()
            assert 0 <= history["accuracy"].iloc[0] <= 1
            log = (smoke_run / run / "logs" / f"train_{stage}.log").read_text()
            assert "val_loss" in log and "Epoch 1" in log  # Keras' per-epoch progress lines
            # real-time augmentation off (smoke.yaml): the stage trains on the features rule's
            # file at its cut layer, and computes nothing itself
            assert f"cache_features: {cut} from ['{run}data/features/train.npz'" in log, stage
            assert "computed in" not in log, stage
        assert not list((smoke_run / run / "models").glob("*.tmp*"))
        lr = pd.read_csv(smoke_run / run / "reports/history/model_03.csv")["learning_rate"]
        assert 9.99e-5 < lr.iloc[0] < 1e-4  # SGD 1e-4 with 1e-6 inverse time decay, a few steps in


@pytest.mark.e2e
def test_features_are_keras_vgg19_outputs(smoke_run):
    """The features rule ran the ImageNet base once per image, for each protocol; the features
    are checked against Keras' own VGG19 (keras.applications, the same weights file), not
    against cxr's model code."""
    log = (smoke_run / ".test-session.log").read_text()
    stats = log.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    assert re.search(r"^features\s+2$", stats, flags=re.M), stats  # one job per protocol
    keras = pytest.importorskip("keras")
    shapes = dict(zip(CUTS[::-1], [(8, 8, 256), (4, 4, 512), (2, 2, 512)], strict=True))
    vgg = keras.applications.VGG19(weights=str(WEIGHTS), include_top=False, input_shape=(64, 64, 3))
    reference = keras.Model(vgg.input, [vgg.get_layer(name).output for name in shapes])
    for run in RUNS:
        for split in ("train", "val"):
            store = load_store(smoke_run / run / "data/store" / f"{split}.npz")
            path = smoke_run / run / "data/features" / f"{split}.npz"
            assert features_meta(path)["off"] is None
            expected = reference.predict(
                keras.applications.vgg19.preprocess_input(store["images"].astype("float32")),
                verbose=0,
            )
            with np.load(path, allow_pickle=False) as f:
                np.testing.assert_array_equal(f["labels"], store["labels"])
                for (name, shape), want in zip(shapes.items(), expected, strict=True):
                    assert f[name].shape == (len(store["labels"]), *shape), name
                    np.testing.assert_allclose(f[name], want, rtol=1e-4, atol=1e-3, err_msg=name)


@pytest.mark.e2e
def test_metrics_match_the_stores(smoke_run):
    for model, split in EVALUATIONS:
        store = load_store(smoke_run / "data/store" / f"{split}.npz")
        metrics = json.loads((smoke_run / "reports/metrics" / f"{model}_{split}.json").read_text())
        cm = np.array(metrics["confusion_matrix"])
        assert cm.shape == (2, 2)
        assert cm.sum() == len(store["labels"]) == metrics["n"]
        # rows are the true classes: their sums are the store's class counts
        assert cm.sum(axis=1).tolist() == np.bincount(store["labels"], minlength=2).tolist()
        assert metrics["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
        tn, fp, fn, tp = cm.ravel()
        assert metrics["sensitivity"] == pytest.approx(tp / (tp + fn))
        assert metrics["specificity"] == pytest.approx(tn / (tn + fp))
        preds = pd.read_csv(
            smoke_run / "reports/predictions" / f"{model}_{split}.csv", dtype={"patient_id": str}
        )
        assert preds["path"].tolist() == list(store["paths"])
        assert preds["patient_id"].tolist() == list(store["patient_ids"])
        assert preds["p_covid"].between(0, 1).all()
        # the predictions table and the confusion matrix agree
        recount = pd.crosstab(preds["label"], preds["predicted"]).reindex(
            index=["non_covid", "covid"], columns=["non_covid", "covid"], fill_value=0
        )
        assert recount.to_numpy().tolist() == cm.tolist()


@pytest.mark.e2e
def test_figures_are_real_pngs(smoke_run):
    for name in FIGURES:
        path = smoke_run / "reports/figures" / name
        with Image.open(path) as im:
            im.load()
            assert im.format == "PNG", name
            w, h = im.size
        assert 200 < w < 3000 and 100 < h < 3000, (name, im.size)
        # not a blank canvas: some pixels differ from the background
        assert np.asarray(Image.open(path).convert("L")).std() > 5, name


@pytest.mark.e2e
def test_second_dry_run_has_nothing_to_do(smoke_run):
    assert "Nothing to be done" in snakemake(smoke_run, "-n").stdout
