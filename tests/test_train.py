"""cxr.train: class weights, the training batches, and the hand-off between stages.

Synthetic stores (32 px, random base weights) keep this fast; the weight hand-off test trains
model_01 -> model_02 -> model_03 for one epoch each with the real ``train_stage``.
"""

import csv

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from cxr.batches import AugmentedBatches, class_weights, one_hot  # noqa: E402
from cxr.io import save_keras  # noqa: E402
from cxr.model import base_of, build_model, load_model  # noqa: E402
from cxr.resume import HISTORY_COLUMNS  # noqa: E402
from cxr.store import save_store  # noqa: E402
from cxr.train import TrainSettings, head_of, start_model, train_stage  # noqa: E402

BLOCK4 = [f"block4_conv{i}" for i in range(1, 5)]
BLOCK5 = [f"block5_conv{i}" for i in range(1, 5)]


def test_class_weights_balanced_by_hand():
    # 6 non_covid, 2 covid: n / (2 * count) = 8/12 and 8/4
    weights = class_weights(np.array([0, 0, 0, 0, 0, 0, 1, 1], dtype=np.int8))
    assert weights == pytest.approx({0: 8 / 12, 1: 2.0})


def test_class_weights_need_both_classes():
    with pytest.raises(ValueError, match="every class"):
        class_weights(np.zeros(5, dtype=int))


def test_one_hot():
    np.testing.assert_array_equal(one_hot(np.array([1, 0, 1])), [[0, 1], [1, 0], [0, 1]])


def numbered_images(n, size=8):
    """Image i is filled with the value i, so a batch row tells which image it is."""
    return np.repeat(np.arange(n, dtype=np.uint8), size * size * 3).reshape(n, size, size, 3)


def test_batches_cover_each_image_once_with_its_label():
    images, labels = numbered_images(10), np.array([0, 1] * 5)
    batches = AugmentedBatches(images, labels, batch_size=4, seed=3, augment=False)
    assert len(batches) == 3
    seen = []
    for i in range(len(batches)):
        x, y = batches[i]
        assert x.dtype == np.uint8 and x.shape[1:] == (8, 8, 3)
        ids = x[:, 0, 0, 0].astype(int)
        np.testing.assert_array_equal(y.argmax(axis=1), labels[ids])
        seen += list(ids)
    assert sorted(seen) == list(range(10))
    first = [batches[i][0][:, 0, 0, 0].tolist() for i in range(3)]
    batches.on_epoch_end()
    second = [batches[i][0][:, 0, 0, 0].tolist() for i in range(3)]
    assert first != second  # reshuffled for the next epoch
    assert sorted(sum(second, [])) == list(range(10))


def test_batches_augmentation_is_seeded_and_changes_images():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 1, 0, 1, 0, 1])
    a = AugmentedBatches(images, labels, batch_size=6, seed=5, augment=True)
    b = AugmentedBatches(images, labels, batch_size=6, seed=5, augment=True)
    plain = AugmentedBatches(images, labels, batch_size=6, seed=5, augment=False)
    xa, ya = a[0]
    xb, _ = b[0]
    xp, yp = plain[0]
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yp)  # same order, augmentation leaves labels alone
    assert xa.shape == xp.shape and xa.dtype == np.uint8
    assert not np.array_equal(xa, xp)
    c = AugmentedBatches(images, labels, batch_size=6, seed=6, augment=True)
    assert not np.array_equal(c[0][0], xa)


def test_batches_of_an_epoch_depend_on_the_epoch_only():
    """A resumed run starts at a later epoch: same order as reaching it epoch by epoch."""
    images, labels = numbered_images(10), np.array([0, 1] * 5)
    walked = AugmentedBatches(images, labels, batch_size=4, seed=3, augment=False)
    for _ in range(2):
        walked.on_epoch_end()
    jumped = AugmentedBatches(images, labels, batch_size=4, seed=3, augment=False, start_epoch=2)
    pinned = AugmentedBatches(images, labels, batch_size=4, seed=3, augment=False)
    pinned.set_epoch(2)
    for i in range(3):
        np.testing.assert_array_equal(walked[i][0], jumped[i][0])
        np.testing.assert_array_equal(walked[i][0], pinned[i][0])
    assert walked.epoch == jumped.epoch == pinned.epoch == 2
    with pytest.raises(ValueError, match="start_epoch"):
        AugmentedBatches(images, labels, batch_size=4, seed=3, augment=False, start_epoch=-1)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 6)):
        labels = np.array([0, 0, 1] * (n // 3))
        save_store(
            root / f"{split}.npz",
            rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            labels,
            [f"{split}/{i}.png" for i in range(n)],
            [f"p{i}" for i in range(n)],
        )
    return root


def base_weights(model):
    return {ly.name: ly.get_weights() for ly in base_of(model).layers if ly.weights}


def changed(before, after, name):
    return not all(np.array_equal(a, b) for a, b in zip(before[name], after[name], strict=True))


def read_history(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_weight_handoff_through_the_three_stages(stores, tmp_path):
    common = dict(batch_size=4, epochs=1, seed=1, realtime_augmentation=True, threads=2, verbose=0)
    m1, m2, m3 = (tmp_path / f"models/model_0{i}.keras" for i in (1, 2, 3))
    train, val = stores / "train.npz", stores / "val.npz"
    rows1 = train_stage(
        train, val, m1, tmp_path / "h1.csv", TrainSettings(frozen_layers="all", **common)
    )
    train_stage(
        train, val, m2, tmp_path / "h2.csv", TrainSettings(frozen_layers=17, **common), init=m1
    )
    stage3 = TrainSettings(
        frozen_layers=12,
        optimizer="sgd",
        learning_rate=1e-4,
        decay=1e-6,
        momentum=0.9,
        nesterov=True,
        **common,
    )
    train_stage(train, val, m3, tmp_path / "h3.csv", stage3, init=m2)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        "model_01.keras",
        "model_02.keras",
        "model_03.keras",
    ]  # no temporary file left behind
    w1, w2, w3 = (base_weights(load_model(m)) for m in (m1, m2, m3))
    for name in w1:
        # stage 2: blocks 1-4 bit for bit as model_01, block 5 trained
        assert changed(w1, w2, name) == (name in BLOCK5), name
        # stage 3: blocks 1-3 bit for bit as model_02, blocks 4-5 trained
        assert changed(w2, w3, name) == (name in BLOCK4 + BLOCK5), name
    # the head moves in every stage
    h1, h2 = load_model(m1).get_layer("dense_01"), load_model(m2).get_layer("dense_01")
    assert not np.array_equal(h1.get_weights()[0], h2.get_weights()[0])

    hist1, hist3 = read_history(tmp_path / "h1.csv"), read_history(tmp_path / "h3.csv")
    assert list(hist1[0]) == list(HISTORY_COLUMNS)
    assert len(hist1) == len(rows1) == 1 and hist1[0]["epoch"] == "1"
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "seconds"):
        assert np.isfinite(float(hist1[0][key])), key
    assert float(hist1[0]["learning_rate"]) == pytest.approx(1e-3, rel=1e-6)
    # 12 images / batch 4 = 3 steps: lr = 1e-4 / (1 + 1e-6 * 3)
    assert float(hist3[0]["learning_rate"]) == pytest.approx(1e-4 / (1 + 3e-6), rel=2e-7)


def test_stage_refuses_both_starts(stores, tmp_path):
    with pytest.raises(ValueError, match="either"):
        train_stage(
            stores / "train.npz",
            stores / "val.npz",
            tmp_path / "m.keras",
            tmp_path / "h.csv",
            TrainSettings(epochs=1),
            pretrained="x.h5",
            init="y.keras",
        )


def test_same_seed_same_model(stores, tmp_path):
    kwargs = dict(batch_size=4, epochs=1, seed=7, frozen_layers=17, threads=2, verbose=0)
    train, val = stores / "train.npz", stores / "val.npz"
    for run in ("a", "b"):
        train_stage(
            train, val, tmp_path / f"{run}.keras", tmp_path / f"{run}.csv", TrainSettings(**kwargs)
        )
    a, b = load_model(tmp_path / "a.keras"), load_model(tmp_path / "b.keras")
    assert all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights(), strict=True))
    # the same weights give the same file (issue 14 item 9)
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    ha, hb = read_history(tmp_path / "a.csv"), read_history(tmp_path / "b.csv")
    assert [r["loss"] for r in ha] == [r["loss"] for r in hb]


def test_later_stage_checks_the_head_it_loads(tmp_path):
    keras.utils.set_random_seed(0)
    path = tmp_path / "m.keras"
    save_keras(build_model(32, dense_units=(16, 8), dropout=(0.25, 0.125)), path)
    model = start_model(32, init=path, dense_units=(16, 8), dropout=(0.25, 0.125))
    assert head_of(model) == ((16, 8), (0.25, 0.125))
    with pytest.raises(ValueError, match="head"):
        start_model(32, init=path)  # the seed protocol's 1024/512 head
    with pytest.raises(ValueError, match="images"):
        start_model(64, init=path, dense_units=(16, 8), dropout=(0.25, 0.125))
