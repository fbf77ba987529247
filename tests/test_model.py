"""cxr.model: preprocessing applied once, stage freezing, the optimisers' learning rates.

Small models (32 px, random base weights) except where the real ImageNet file is the point.
Expected values are written out by hand (layer names, constants), not taken from the code.
"""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from cxr.model import (  # noqa: E402
    base_of,
    build_model,
    compile_model,
    learning_rate_schedule,
    load_model,
    make_optimizer,
    set_frozen,
)

from .conftest import WEIGHTS  # noqa: E402

# Caffe/ImageNet channel means in BGR order (Simonyan & Zisserman 2014; Keras imagenet_utils).
BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)
BLOCK4 = [f"block4_conv{i}" for i in range(1, 5)]
BLOCK5 = [f"block5_conv{i}" for i in range(1, 5)]
HEAD_WEIGHTED = ["dense_01", "batch_norm", "dense_02", "predictions"]


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return build_model(32)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)


def reference_preprocess(x):
    """RGB -> BGR, ImageNet mean subtracted, float32 (written out, not Keras' code)."""
    return x[..., ::-1].astype(np.float32) - BGR_MEAN


def test_preprocess_layer_is_bgr_minus_mean_without_scaling(model, images):
    out = np.asarray(model.get_layer("vgg19_preprocess")(images))
    expected = reference_preprocess(images)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-4)
    # e.g. a pure red pixel (255, 0, 0) -> B, G, R = (-103.939, -116.779, 131.32)
    red = np.zeros((1, 32, 32, 3), np.uint8)
    red[..., 0] = 255
    np.testing.assert_allclose(
        np.asarray(model.get_layer("vgg19_preprocess")(red))[0, 0, 0],
        [-103.939, -116.779, 131.32],
        atol=1e-3,
    )


@pytest.mark.parametrize("size", [32, 40])
def test_preprocessing_is_bit_identical_to_keras_preprocess_input(size):
    """Every uint8 value in every channel, against Keras' own function ('caffe' mode)."""
    keras.utils.set_random_seed(0)
    layer = build_model(size).get_layer("vgg19_preprocess")
    x = np.random.default_rng(size).integers(0, 256, (4, size, size, 3), dtype=np.uint8)
    x[0].reshape(-1, 3)[:256] = np.arange(256, dtype=np.uint8)[:, None]  # all 256 values
    expected = keras.applications.vgg19.preprocess_input(x.astype(np.float32))
    got = np.asarray(layer(x))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, reference_preprocess(x))


def test_model_preprocesses_exactly_once(model, images):
    base = base_of(model)
    features = keras.Model(model.input, model.get_layer("flatten").input)
    got = np.asarray(features(images))
    once = np.asarray(base(reference_preprocess(images)))
    twice = np.asarray(base(reference_preprocess(reference_preprocess(images))))
    np.testing.assert_allclose(got, once, rtol=1e-4, atol=1e-4)
    assert not np.allclose(got, twice, rtol=1e-3, atol=1e-3)
    assert model.input.dtype == "uint8"
    assert model.output.shape[-1] == 2


def test_head_layout(model):
    names = [layer.name for layer in model.layers]
    assert names == [
        "image",
        "vgg19_preprocess",
        "vgg19",
        "flatten",
        "dense_01",
        "batch_norm",
        "dropout_01",
        "dense_02",
        "dropout_02",
        "predictions",
    ]
    assert model.get_layer("dense_01").units == 1024
    assert model.get_layer("dense_02").units == 512
    assert model.get_layer("dropout_01").rate == 0.5
    assert model.get_layer("dropout_02").rate == 0.3
    assert model.get_layer("predictions").activation.__name__ == "softmax"
    assert len(base_of(model).layers) == 22


@pytest.mark.parametrize(
    ("frozen", "trainable"),
    [("all", []), (17, BLOCK5), (12, BLOCK4 + BLOCK5), (0, None)],
    ids=["model_01", "model_02", "model_03", "none_frozen"],
)
def test_stage_freezing(model, frozen, trainable):
    names = set_frozen(model, frozen)
    base = base_of(model)
    if trainable is None:  # nothing frozen: all 16 convolutions
        trainable = [
            f"block{b}_conv{i}"
            for b, n in [(1, 2), (2, 2), (3, 4), (4, 4), (5, 4)]
            for i in range(1, n + 1)
        ]
    assert names == trainable
    with_weights = [ly.name for ly in base.layers if ly.trainable_weights]
    assert with_weights == trainable
    # The model's trainable variables: 2 per trainable conv + the head (2 each for the three
    # dense layers, gamma and beta of the batch norm).
    assert len(model.trainable_weights) == 2 * len(trainable) + 8
    head = {w.path.split("/")[0] for w in model.trainable_weights} - {"vgg19"}
    assert head <= set(HEAD_WEIGHTED) | set(trainable)
    # block5_pool is trainable after 17 but has no weights, so it is not listed.
    if frozen == 17:
        assert base.get_layer("block5_pool").trainable
        assert not base.get_layer("block4_pool").trainable


def test_freezing_takes_effect_after_recompile(model, images):
    set_frozen(model, 17)
    compile_model(model, make_optimizer("rmsprop", 1e-3))
    before = {ly.name: [w.copy() for w in ly.get_weights()] for ly in base_of(model).layers}
    y = np.eye(2, dtype="float32")[[0, 1, 0]]
    model.train_on_batch(images, y)
    for layer in base_of(model).layers:
        if not layer.weights:
            continue
        same = all(
            np.array_equal(a, b)
            for a, b in zip(before[layer.name], layer.get_weights(), strict=True)
        )
        assert same == (layer.name not in BLOCK5), layer.name


@pytest.mark.parametrize("bad", [23, -1, "some", None, True, 1.5])
def test_set_frozen_refuses_bad_values(model, bad):
    with pytest.raises(ValueError):
        set_frozen(model, bad)


def test_inverse_time_decay_matches_keras2_decay():
    schedule = learning_rate_schedule(1e-4, 1e-6)
    # lr_k = lr0 / (1 + decay * k): k = 0 -> 1e-4; k = 10**6 -> 5e-5; k = 3 * 10**6 -> 2.5e-5
    assert float(schedule(0)) == pytest.approx(1e-4, rel=1e-6)
    assert float(schedule(10**6)) == pytest.approx(5e-5, rel=1e-6)
    assert float(schedule(3 * 10**6)) == pytest.approx(2.5e-5, rel=1e-6)
    assert float(schedule(1000)) == pytest.approx(1e-4 / 1.001, rel=1e-6)
    assert learning_rate_schedule(1e-3, 0.0) == 1e-3


def test_stage3_optimizer_uses_the_schedule():
    opt = make_optimizer("sgd", 1e-4, decay=1e-6, momentum=0.9, nesterov=True)
    assert isinstance(opt, keras.optimizers.SGD)
    assert opt.nesterov is True and opt.momentum == pytest.approx(0.9)
    assert float(opt.learning_rate) == pytest.approx(1e-4, rel=1e-6)
    opt.iterations.assign(10**6)
    assert float(opt.learning_rate) == pytest.approx(5e-5, rel=1e-6)


def test_stage1_optimizer_is_constant_rmsprop():
    opt = make_optimizer("rmsprop", 1e-3)
    assert isinstance(opt, keras.optimizers.RMSprop)
    opt.iterations.assign(10**6)
    assert float(opt.learning_rate) == pytest.approx(1e-3, rel=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"optimizer": "adam", "learning_rate": 1e-3},
        {"optimizer": "rmsprop", "learning_rate": 1e-3, "nesterov": True},
        {"optimizer": "sgd", "learning_rate": 0.0},
        {"optimizer": "sgd", "learning_rate": 1e-3, "decay": -1.0},
        {"optimizer": "sgd", "learning_rate": 1e-3, "momentum": 1.0},
    ],
)
def test_make_optimizer_refuses(kwargs):
    with pytest.raises(ValueError):
        make_optimizer(**kwargs)


def test_saved_model_loads_with_same_outputs(model, images, tmp_path):
    path = tmp_path / "m.keras"
    model.save(path)
    again = load_model(path)
    np.testing.assert_array_equal(
        model.predict(images, verbose=0), again.predict(images, verbose=0)
    )
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.keras")


@pytest.mark.slow
def test_saved_model_loads_with_plain_keras_in_a_fresh_process(model, images, tmp_path):
    """A user's own script: ``keras.models.load_model`` alone, cxr never imported."""
    import subprocess
    import sys

    path, x, out = tmp_path / "m.keras", tmp_path / "x.npy", tmp_path / "p.npy"
    model.save(path)
    np.save(x, images)
    code = (
        "import sys, numpy as np, keras\n"
        f"m = keras.models.load_model({str(path)!r})\n"
        f"np.save({str(out)!r}, m.predict(np.load({str(x)!r}), verbose=0))\n"
        "assert not [k for k in sys.modules if k.split('.')[0] == 'cxr'], 'cxr was imported'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_array_equal(np.load(out), model.predict(images, verbose=0))


def test_models_saved_with_the_old_custom_layer_still_load(images, tmp_path):
    """Files written before the built-in layers (``cxr>VGG19Preprocess``) load through
    cxr.model.load_model, with the same preprocessing."""
    from cxr.model import VGG19Preprocess

    inputs = keras.Input((32, 32, 3), dtype="uint8")
    outputs = VGG19Preprocess(name="vgg19_preprocess")(inputs)
    path = tmp_path / "old.keras"
    keras.Model(inputs, outputs).save(path)
    again = load_model(path)
    assert type(again.get_layer("vgg19_preprocess")) is VGG19Preprocess
    np.testing.assert_array_equal(again.predict(images, verbose=0), reference_preprocess(images))


def test_build_model_refuses_too_small_input():
    with pytest.raises(ValueError):
        build_model(16)


def test_imagenet_weights_are_loaded_from_the_file():
    if not WEIGHTS.is_file():
        pytest.skip(f"no VGG19 weights at {WEIGHTS}")
    h5py = pytest.importorskip("h5py")
    model = build_model(32, weights=str(WEIGHTS))
    base = base_of(model)
    with h5py.File(WEIGHTS, "r") as f:
        for name in ("block1_conv1", "block5_conv4"):
            kernel = f[name][f"{name}_W_1:0"][()]
            bias = f[name][f"{name}_b_1:0"][()]
            got_kernel, got_bias = base.get_layer(name).get_weights()
            np.testing.assert_array_equal(got_kernel, kernel)
            np.testing.assert_array_equal(got_bias, bias)


def test_load_refuses_a_lambda_layer(tmp_path):
    """Safe mode: a file whose config holds Python bytecode (a Lambda) is not run."""
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ValueError, match="safe_mode"):
        load_model(path)


def test_load_refuses_other_formats(tmp_path):
    h5 = tmp_path / "m.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n")
    fake = tmp_path / "m.keras"
    fake.write_bytes(b"not a zip")
    for path in (h5, fake):
        with pytest.raises(ValueError, match="not a Keras 3"):
            load_model(path)


def test_preprocess_layer_is_registered():
    from cxr.model import CUSTOM_OBJECTS, VGG19Preprocess

    assert keras.saving.get_registered_name(VGG19Preprocess) == "cxr>VGG19Preprocess"
    assert keras.saving.get_registered_object("cxr>VGG19Preprocess") is VGG19Preprocess
    assert CUSTOM_OBJECTS == {"cxr>VGG19Preprocess": VGG19Preprocess}


def _calls(tree, name):
    import ast

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            dotted = []
            while isinstance(func, ast.Attribute):
                dotted.append(func.attr)
                func = func.value
            if isinstance(func, ast.Name):
                dotted.append(func.id)
            if ".".join(reversed(dotted)) in name:
                yield node


def test_no_pickle_and_safe_loading_in_the_code():
    """No pickle modules; np.load with allow_pickle=False; Keras loads with safe_mode=True."""
    import ast

    from .conftest import REPO

    sources = sorted((REPO / "cxr").glob("*.py")) + sorted((REPO / "scripts").glob("*.py"))
    assert sources
    problems = []
    for path in sources:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                bad = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve"}
                if any(n.split(".")[0] in bad for n in names):
                    problems.append(f"{path.name}:{node.lineno} imports a pickle module")
        for call in _calls(tree, {"np.load", "numpy.load"}):
            kw = {k.arg: k.value for k in call.keywords}
            value = kw.get("allow_pickle")
            if not (isinstance(value, ast.Constant) and value.value is False):
                problems.append(f"{path.name}:{call.lineno} np.load without allow_pickle=False")
        loaders = {
            "keras.models.load_model",
            "keras.saving.load_model",
            "tf.keras.models.load_model",
        }
        for call in _calls(tree, loaders):
            kw = {k.arg: k.value for k in call.keywords}
            value = kw.get("safe_mode")
            if not (isinstance(value, ast.Constant) and value.value is True):
                problems.append(f"{path.name}:{call.lineno} Keras load without safe_mode=True")
    assert not problems, problems
