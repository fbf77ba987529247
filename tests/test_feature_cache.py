"""Cached-feature training (``train_stage(cache_features=True)``) equals full-model training.

Tiny synthetic stores (32 px, random base weights, a 16/8 head with dropout 0.5/0.3) and
real-time augmentation off. Each stage is trained twice from the same start and seed: once
the whole network on the images, once only its trainable tail on the frozen part's cached
outputs. The tail is made of the same layer objects (so the dropout layers draw the same
masks) and batch normalisation sees the same batches, so the two runs compute the same
function; only float rounding may differ (convolutions run on other batch shapes). The
tolerances below are far below what one training step changes.
"""

import subprocess
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from cxr.features import (  # noqa: E402
    UnusableFeatures,
    compute_features,
    features_meta,
    load_features,
    save_features,
)
from cxr.io import save_keras  # noqa: E402
from cxr.model import (  # noqa: E402
    CACHE_LAYERS,
    base_of,
    build_model,
    cut_layer,
    frozen_digest,
    load_model,
    trainable_tail,
)
from cxr.sources import file_hash  # noqa: E402
from cxr.store import load_store, save_store  # noqa: E402
from cxr.train import TrainSettings, train_stage  # noqa: E402

from .conftest import REPO  # noqa: E402

HEAD = dict(dense_units=(16, 8), dropout=(0.5, 0.3))
STAGES = {
    "model_01": dict(frozen_layers="all"),
    "model_02": dict(frozen_layers=17),
    "model_03": dict(
        frozen_layers=12, optimizer="sgd", learning_rate=0.05, momentum=0.9, nesterov=True
    ),
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 6)):
        save_store(
            root / f"{split}.npz",
            rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            np.resize([0, 0, 1], n),
            [f"{split}/{i}.png" for i in range(n)],
            [f"p{i}" for i in range(n)],
        )
    return root


def run(stores, out, stage, init=None, features=None, **kwargs):
    """Train one stage (2 epochs, batch 4, no augmentation); returns (model, history rows)."""
    return run_settings(stores, out, stage, init, features, **kwargs)


def run_settings(stores, out, stage, init=None, features=None, **kwargs):
    """:func:`run` where ``kwargs`` may also change the epochs and the augmentation."""
    model = out / f"{stage}.keras"
    fixed = dict(seed=3, batch_size=4, epochs=2, realtime_augmentation=False, patience=None)
    settings = TrainSettings(
        **{**fixed, **kwargs},
        checkpoint_monitor="loss",  # the last epoch (loss falls): both runs keep the same one
        threads=2,
        verbose=0,
        **HEAD,
        **STAGES[stage],
    )
    rows = train_stage(
        stores / "train.npz",
        stores / "val.npz",
        model,
        out / f"{stage}.csv",
        settings,
        init=init,
        features=features,
    )
    return load_model(model), rows


def assert_same_training(full, cached, start):
    (m_full, rows_full), (m_cached, rows_cached) = full, cached
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
        np.testing.assert_allclose(
            [r[key] for r in rows_cached], [r[key] for r in rows_full], rtol=1e-4, err_msg=key
        )
    moved = 0
    for w0, wf, wc in zip(start, m_full.get_weights(), m_cached.get_weights(), strict=True):
        np.testing.assert_allclose(wc, wf, rtol=1e-4, atol=1e-5)
        # what training moved, it moved by far more than the tolerance
        moved += np.abs(wf - w0).max() > 1e-3
    assert moved >= 4


def assert_identical_runs(a, b):
    """Two ``run`` results with bit-identical weights and per-epoch losses."""
    for x, y in zip(a[0].get_weights(), b[0].get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)
    assert [r["loss"] for r in a[1]] == [r["loss"] for r in b[1]]


def test_cut_layers():
    model = build_model(32, **HEAD)
    assert [cut_layer(model, n) for n in ("all", 17, 12, 1, 0)] == [
        "block5_pool",
        "block4_pool",
        "block3_pool",
        None,
        None,
    ]
    tail = trainable_tail(model, 17)
    assert tail.input_shape == (None, 2, 2, 512)
    assert [ly.name for ly in tail.layers[1:6]] == [f"block5_conv{i}" for i in (1, 2, 3, 4)] + [
        "block5_pool"
    ]
    # the same layer objects: the tail's weights are the classifier's
    assert tail.get_layer("dense_01") is model.get_layer("dense_01")
    assert tail.get_layer("block5_conv1") is base_of(model).get_layer("block5_conv1")


def test_tail_on_features_is_the_full_model(stores):
    keras.utils.set_random_seed(0)
    model = build_model(32, **HEAD)
    images = load_store(stores / "train.npz")["images"]
    features = compute_features(model, images, CACHE_LAYERS, batch_size=5)
    assert {k: v.shape for k, v in features.items()} == {
        "block3_pool": (12, 4, 4, 256),
        "block4_pool": (12, 2, 2, 512),
        "block5_pool": (12, 1, 1, 512),
    }
    full = model.predict(images, verbose=0)
    for frozen, cut in (("all", "block5_pool"), (17, "block4_pool"), (12, "block3_pool")):
        tail = trainable_tail(model, frozen)
        np.testing.assert_allclose(tail.predict(features[cut], verbose=0), full, rtol=1e-5)


def test_cached_training_equals_full_training_through_the_stages(stores, tmp_path):
    full, cached = tmp_path / "full", tmp_path / "cached"
    results = {}
    for stage, previous in zip(STAGES, [None, *STAGES][:3], strict=True):
        # both variants start from the *full* run's previous stage: the comparison is per stage
        init = None if previous is None else full / f"{previous}.keras"
        keras.utils.set_random_seed(3)
        start = (load_model(init) if init else build_model(32, **HEAD)).get_weights()
        results[stage] = run(stores, full, stage, init=init)
        cached_run = run(stores, cached, stage, init=init, cache_features=True)
        assert_same_training(results[stage], cached_run, start)
    # stage 1 leaves the base alone, stage 2 changes block 5 only: bit for bit
    w1 = {ly.name: ly.get_weights() for ly in base_of(results["model_01"][0]).layers}
    w2 = {ly.name: ly.get_weights() for ly in base_of(results["model_02"][0]).layers}
    for name in w1:
        same = all(np.array_equal(a, b) for a, b in zip(w1[name], w2[name], strict=True))
        assert same == (not name.startswith("block5_conv")), name


def test_feature_files_give_the_in_memory_result_and_are_checked(stores, tmp_path):
    keras.utils.set_random_seed(3)
    model = build_model(32, **HEAD)  # what train_stage builds for stage 1 with this seed
    names = [ly.name for ly in base_of(model).layers]
    digests = {n: frozen_digest(model, names.index(n) + 1) for n in CACHE_LAYERS}
    paths = []
    for split in ("train", "val"):
        store = load_store(stores / f"{split}.npz")
        path = tmp_path / f"features/{split}.npz"
        features = compute_features(model, store["images"], CACHE_LAYERS)
        save_features(path, features, store["labels"], digests, file_hash(stores / f"{split}.npz"))
        paths.append(path)
        got = load_features(path, "block4_pool", digests["block4_pool"])
        np.testing.assert_array_equal(got, features["block4_pool"])
    a = run(stores, tmp_path / "memory", "model_01", cache_features=True)
    b = run(stores, tmp_path / "file", "model_01", cache_features=True, features=paths)
    assert_identical_runs(a, b)
    with pytest.raises(UnusableFeatures, match="other frozen weights"):
        load_features(paths[0], "block5_pool", digests["block4_pool"])
    with pytest.raises(ValueError, match="another store") as wrong_store:
        load_features(paths[0], "block5_pool", digests["block5_pool"], "0" * 64)
    assert not isinstance(wrong_store.value, UnusableFeatures)  # an error, not a fallback
    with pytest.raises(UnusableFeatures, match="no block2_pool"):
        load_features(paths[0], "block2_pool", digests["block5_pool"])
    # stage 3 from a model whose blocks 1-3 differ from the cache's: the files do not fit, so
    # the stage computes its block3_pool features itself: the same run as without the files
    keras.utils.set_random_seed(99)
    save_keras(build_model(32, **HEAD), tmp_path / "other.keras")
    other = dict(init=tmp_path / "other.keras", cache_features=True)
    c = run(stores, tmp_path / "x", "model_03", features=paths, **other)
    d = run(stores, tmp_path / "y", "model_03", **other)
    assert_identical_runs(c, d)


def test_feature_files_written_with_the_cache_off_are_not_used(stores, tmp_path):
    """An 'off' file (real-time augmentation on) holds no arrays and says why; a stage given
    it anyway trains as without files."""
    paths = [tmp_path / "train.npz", tmp_path / "val.npz"]
    for path in paths:
        save_features(path, {}, [], {}, None, off="train.cache_features is false")
        assert features_meta(path)["off"] == "train.cache_features is false"
        with np.load(path, allow_pickle=False) as f:
            assert sorted(f.files) == ["labels", "meta"] and f["labels"].shape == (0,)
        with pytest.raises(UnusableFeatures, match="no features .train.cache_features is false"):
            load_features(path, "block5_pool", "x")
    a = run(stores, tmp_path / "memory", "model_01", cache_features=True)
    b = run(stores, tmp_path / "file", "model_01", cache_features=True, features=paths)
    assert_identical_runs(a, b)


def test_script_options(stores, tmp_path):
    """scripts/train.py: --cache_features defaults to false (the behaviour before it)."""
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts/train.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--cache_features" in out and "--features TRAIN VAL" in out


def test_realtime_augmentation_on_leaves_the_cache_off(stores, tmp_path, capsys):
    """What the smoke run (real-time augmentation off) no longer runs end to end: with it on,
    scripts/features.py writes 'off' files without starting TensorFlow, and a stage given
    them trains on augmented batches as without them (the cache is not used, and says so)."""
    out = [tmp_path / "features/train.npz", tmp_path / "features/val.npz"]
    cmd = [sys.executable, str(REPO / "scripts/features.py")]
    cmd += ["--stores", str(stores / "train.npz"), str(stores / "val.npz")]
    cmd += ["--pretrained", str(tmp_path / "never-read.h5"), "--out", *map(str, out)]
    cmd += ["--cache_features", "true", "--realtime_augmentation", "true"]
    code = (
        "import runpy, sys\n"
        "sys.argv = sys.argv[1:]\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, *cmd[1:]], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    why = "train.realtime_augmentation is true: every epoch trains on new images"
    for path in out:
        assert features_meta(path)["off"] == why
        assert f"{path}: feature cache off ({why})" in proc.stdout
        with np.load(path, allow_pickle=False) as f:
            assert sorted(f.files) == ["labels", "meta"] and f["labels"].shape == (0,)
    capsys.readouterr()
    on = dict(realtime_augmentation=True, cache_features=True, epochs=1)
    a = run_settings(stores, tmp_path / "with_files", "model_01", features=out, **on)
    printed = capsys.readouterr().out
    assert "cache_features: off (real-time augmentation on, or nothing frozen)" in printed
    b = run_settings(stores, tmp_path / "without", "model_01", **on)
    assert_identical_runs(a, b)
    # augmented batches: another function of the images than the same run without augmentation
    off = on | {"realtime_augmentation": False}
    c = run_settings(stores, tmp_path / "plain", "model_01", **off)
    assert [r["loss"] for r in c[1]] != [r["loss"] for r in a[1]]
