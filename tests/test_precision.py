"""Precision policies (config ``runtime.precision``): the resolver, mixed-precision models that
train, save and load as float32, determinism within a policy, and resume refusing a change.

Tiny models (32 px, random VGG19 base, small head, one or two epochs) keep it cheap; the speed
of each policy is measured in bench/ (docs/performance.md), not here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from cxr.gradcam import gradcam  # noqa: E402
from cxr.io import PRECISION_KEY, save_keras, saved_precision  # noqa: E402
from cxr.model import OUTPUT_NAME, build_model, load_model, with_policy  # noqa: E402
from cxr.model_card import metrics_context, render  # noqa: E402
from cxr.resume import (  # noqa: E402
    RuntimeMismatch,
    StageBackup,
    backup_dir_for,
    run_fingerprint,
    training_fingerprint,
)
from cxr.runtime import apply_precision, cpu_flags, resolve_precision  # noqa: E402
from cxr.train import TrainSettings, train_stage  # noqa: E402

from .test_model_card import card_inputs  # noqa: E402
from .test_resume import make_stores  # noqa: E402

#: The policies a CPU runs (mixed_float16 is for GPUs: emulated, slow, on a CPU).
CPU_POLICIES = ("float32", "mixed_bfloat16")

# Fragments of /proc/cpuinfo: two processors, as the kernel writes them.
ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni
bogomips\t: 4792.81

processor\t: 1
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni
"""
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: avx512f amx_tile amx_bf16 amx_int8\n"


@pytest.fixture(autouse=True)
def float32_after():
    """Every test leaves Keras' global policy float32, as the other test modules expect."""
    yield
    keras.config.set_dtype_policy("float32")


def test_cpu_flags_read_from_a_cpuinfo_file(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(ZEN4)
    assert cpu_flags(path) == {"fpu", "sse2", "avx2", "avx512f", "avx512_bf16", "avx512_vnni"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize(
    ("cpuinfo", "gpus", "want"),
    [
        (ZEN4, [], "mixed_bfloat16"),
        (SAPPHIRE_RAPIDS, [], "mixed_bfloat16"),
        (SKYLAKE, [], "float32"),  # AVX-512 without bfloat16: emulated, slower
        ("", [], "float32"),  # no flags line (not x86 Linux)
        (SKYLAKE, [(8, 0)], "mixed_float16"),  # A100
        (ZEN4, [(7, 0), (9, 0)], "mixed_float16"),  # the GPUs decide, not the CPU
        (ZEN4, [(6, 1)], "float32"),  # Pascal: no tensor cores
        (ZEN4, [(7, 5), (6, 0)], "float32"),  # not all of them
    ],
)
def test_auto_follows_the_hardware(tmp_path, cpuinfo, gpus, want):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    policy, reason = resolve_precision("auto", flags=cpu_flags(path), gpus=gpus)
    assert policy == want
    assert reason.startswith("auto: ")


def test_explicit_policies_are_kept_and_others_refused():
    for policy in ("float32", "mixed_bfloat16", "mixed_float16"):
        assert resolve_precision(policy, flags=set(), gpus=[]) == (policy, "as configured")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("bfloat16", flags=set(), gpus=[])
    with pytest.raises(ValueError, match="resolve 'auto'"):
        TrainSettings(precision="auto")


def test_apply_precision_sets_the_global_policy_and_logs_it(capsys):
    assert apply_precision("auto", flags={"avx512_bf16"}, gpus=[]) == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == "mixed_bfloat16"
    assert capsys.readouterr().out == (
        "precision: mixed_bfloat16 (auto: no GPU, CPU has native bfloat16 (avx512_bf16))\n"
    )
    assert apply_precision("float32") == "float32"
    assert keras.config.dtype_policy().name == "float32"


def test_mixed_model_saves_as_the_float32_model(tmp_path):
    """Built under mixed_bfloat16, saved: the file's config is byte for byte that of the same
    model built under float32; only the recorded precision differs."""
    for policy in ("float32", "mixed_bfloat16"):
        keras.backend.clear_session()
        keras.config.set_dtype_policy(policy)
        keras.utils.set_random_seed(1)
        model = build_model(32, dense_units=(8, 4), dropout=(0.5, 0.3))
        assert model.get_layer(OUTPUT_NAME).dtype_policy.name == "float32"
        assert model.get_layer("dense_01").compute_dtype == policy.removeprefix("mixed_")
        save_keras(model, tmp_path / f"{policy}.keras")
    files = [zipfile.ZipFile(tmp_path / f"{p}.keras") for p in ("float32", "mixed_bfloat16")]
    assert files[0].read("config.json") == files[1].read("config.json")
    assert b"bfloat16" not in files[1].read("config.json")
    meta = [json.loads(f.read("metadata.json")) for f in files]
    assert [m[PRECISION_KEY] for m in meta] == ["float32", "mixed_bfloat16"]
    assert saved_precision(tmp_path / "mixed_bfloat16.keras") == "mixed_bfloat16"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return make_stores(tmp_path_factory.mktemp("stores"))


# Stage-1-like: head only, on a random base; two epochs.
SETTINGS = dict(
    batch_size=4,
    epochs=2,
    seed=5,
    frozen_layers="all",
    dense_units=(16, 8),
    patience=None,
    checkpoint_monitor="val_loss",
    realtime_augmentation=False,
    verbose=0,
)

# Loads a model with plain Keras in a fresh process (float32 global policy, no cxr import)
# and prints its layers' policies and its predictions.
PLAIN_LOAD = """
import json, sys, numpy as np, keras
model = keras.models.load_model(sys.argv[1])
x = np.load(sys.argv[2])
layers = [model.get_layer("vgg19").get_layer("block1_conv1"), model.get_layer("dense_01"),
          model.get_layer("predictions")]
print(json.dumps({"policies": [layer.dtype_policy.name for layer in layers],
                  "dtype": str(model.predict(x, verbose=0).dtype),
                  "p": model.predict(x, verbose=0).tolist()}))
"""


@pytest.mark.parametrize("policy", CPU_POLICIES)
def test_tiny_model_trains_saves_and_loads_in_float32(stores, tmp_path, policy):
    train, val = stores / "train.npz", stores / "val.npz"
    model_path = tmp_path / "m.keras"
    rows = train_stage(
        train, val, model_path, tmp_path / "h.csv", TrainSettings(**SETTINGS, precision=policy)
    )
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)
    assert saved_precision(model_path) == policy

    x = np.load(train)["images"][:4]
    np.save(tmp_path / "x.npy", x)
    run = subprocess.run(
        [sys.executable, "-c", PLAIN_LOAD, str(model_path), str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        check=True,
    )
    plain = json.loads(run.stdout.strip().splitlines()[-1])
    assert plain["policies"] == ["float32", "float32", "float32"]
    assert plain["dtype"] == "float32"
    p_plain = np.asarray(plain["p"])
    np.testing.assert_allclose(p_plain.sum(axis=1), 1, atol=1e-6)

    # cxr's loader under the trained policy: that policy, output float32, and the same
    # probabilities as plain float32 within bfloat16's rounding (8 significant bits).
    keras.config.set_dtype_policy(policy)
    model = load_model(model_path)
    assert model.get_layer("dense_01").dtype_policy.name == policy
    assert model.get_layer(OUTPUT_NAME).dtype_policy.name == "float32"
    p = model.predict(x, verbose=0)
    assert p.dtype == np.float32
    if policy == "float32":
        np.testing.assert_array_equal(p, p_plain.astype(np.float32))
    else:
        np.testing.assert_allclose(p, p_plain, atol=0.05)
        assert not np.array_equal(p, p_plain.astype(np.float32))  # it did compute in 16 bits
    heat, probs = gradcam(model, x, batch_size=2)
    assert heat.dtype == probs.dtype == np.float32
    np.testing.assert_allclose(probs, p, atol=1e-2)


def test_same_seed_same_weights_within_mixed_bfloat16(stores, tmp_path, capsys):
    """Two runs, same settings: same history and the same file. On cached features (the
    frozen base's block5_pool computed in bfloat16, the head trained on it)."""
    train, val = stores / "train.npz", stores / "val.npz"
    s = TrainSettings(**SETTINGS, precision="mixed_bfloat16", cache_features=True)
    assert s.use_cache()
    runs = []
    for name in ("a", "b"):
        rows = train_stage(train, val, tmp_path / f"{name}.keras", tmp_path / f"{name}.csv", s)
        runs.append([{k: v for k, v in r.items() if k != "seconds"} for r in rows])
    assert "cache_features: training cxr_tail_block5_pool" in capsys.readouterr().out
    assert runs[0] == runs[1]
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()


def test_with_policy_keeps_every_variable(tmp_path):
    keras.utils.set_random_seed(2)
    model = build_model(32, dense_units=(8, 4), dropout=(0.5, 0.3))
    assert with_policy(model, "float32") is model  # already float32: nothing rebuilt
    mixed = with_policy(model, "mixed_bfloat16")
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left alone
    assert mixed.get_layer("vgg19").get_layer("block5_conv4").dtype_policy.name == (
        "mixed_bfloat16"
    )
    # Same variables in the same order (seed generators are renumbered by name only).
    paths = [
        [v.path for v in m.variables if "seed_generator" not in v.path] for m in (mixed, model)
    ]
    assert paths[0] == paths[1] and len(mixed.variables) == len(model.variables)
    for a, b in zip(mixed.variables, model.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def fake_state(backup: StageBackup, runtime) -> None:
    """A committed state.json of one epoch (no files besides) with ``runtime``."""
    backup.directory.mkdir(parents=True, exist_ok=True)
    state = {"version": 1, "fingerprint": run_fingerprint(backup.settings_fingerprint, runtime)}
    state.update(epoch=1, rows=[], variables="state.json", best=None, stopped=False)
    if runtime is not None:
        state["runtime"] = runtime
    (backup.directory / "state.json").write_text(json.dumps(state))


def test_fingerprint_includes_precision_and_threads():
    base = "ab" * 32
    f32 = {"precision": "float32", "threads": 2}
    assert run_fingerprint(base, None) == base  # backups written before keep their hash
    others = [{**f32, "precision": "mixed_bfloat16"}, {**f32, "threads": 8}]
    prints = {run_fingerprint(base, r) for r in [f32, *others]}
    assert len(prints) == 3 and base not in prints


def test_backup_of_another_precision_is_refused_not_discarded(tmp_path):
    f32 = {"precision": "float32", "threads": 2}
    bf16 = {"precision": "mixed_bfloat16", "threads": 2}
    folder = tmp_path / ".backup/m"
    fake_state(StageBackup(folder, "0" * 64, bf16), bf16)
    with pytest.raises(RuntimeMismatch) as err:
        StageBackup(folder, "0" * 64, f32).load()
    message = str(err.value)
    assert "started with precision mixed_bfloat16, 2 threads" in message
    assert "now run with precision float32, 2 threads" in message
    assert "Rerun with precision mixed_bfloat16" in message and str(folder) in message
    assert (folder / "state.json").is_file()  # kept for the right rerun
    with pytest.raises(RuntimeMismatch, match="8 threads"):
        StageBackup(folder, "0" * 64, {**bf16, "threads": 8}).load()
    assert StageBackup(folder, "0" * 64, bf16).load()["epoch"] == 1  # same runtime: resumed
    # Other settings or inputs: stale, discarded as before.
    assert StageBackup(folder, "1" * 64, f32).load() is None
    assert not folder.exists()


def test_backup_from_before_the_runtime_was_recorded(tmp_path):
    """A backup without ``runtime`` (an earlier version: float32, its fingerprint that of the
    settings and inputs alone) is resumed in float32 and refused in mixed precision."""
    folder = tmp_path / "b"
    fake_state(StageBackup(folder, "0" * 64), None)
    with pytest.raises(RuntimeMismatch, match="started with precision float32, unrecorded"):
        StageBackup(folder, "0" * 64, {"precision": "mixed_bfloat16", "threads": 2}).load()
    state = StageBackup(folder, "0" * 64, {"precision": "float32", "threads": 2}).load()
    assert state["epoch"] == 1


def test_train_stage_refuses_to_resume_in_another_precision(stores, tmp_path, monkeypatch):
    train, val = stores / "train.npz", stores / "val.npz"
    model, history = tmp_path / "m.keras", tmp_path / "h.csv"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed before the outputs were written")

    monkeypatch.setattr("cxr.train._finish", killed)
    with pytest.raises(KeyboardInterrupt):
        train_stage(train, val, model, history, TrainSettings(**SETTINGS))
    monkeypatch.undo()
    state = json.loads((backup_dir_for(model) / "state.json").read_text())
    assert state["runtime"] == {"precision": "float32", "threads": 1}
    files = {"train": train, "val": val, "pretrained": None, "init": None}
    fingerprint = training_fingerprint(TrainSettings(**SETTINGS).fingerprinted(), files)
    assert state["fingerprint"] == run_fingerprint(fingerprint, state["runtime"])

    mixed = TrainSettings(**SETTINGS, precision="mixed_bfloat16")
    with pytest.raises(RuntimeMismatch, match="Rerun with precision float32"):
        train_stage(train, val, model, history, mixed)
    assert not model.exists() and backup_dir_for(model).is_dir()
    rows = train_stage(train, val, model, history, TrainSettings(**SETTINGS))
    assert [r["epoch"] for r in rows] == [1, 2] and model.is_file()
    assert saved_precision(model) == "float32"


def test_model_card_records_the_precision():
    inputs = card_inputs()
    test = inputs["metrics"]["model_03_test"]
    assert metrics_context(inputs["metrics"])["precision_trained"] == "float32"  # older files
    inputs["metrics"]["model_03_test"] = {
        **test,
        "precision": {"trained": "mixed_bfloat16", "scored": "float32"},
    }
    card = render(**inputs)
    assert "model_03 trained in mixed_bfloat16, scored in float32;" in card
