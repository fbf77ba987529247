"""Training on several devices: MirroredStrategy over two logical CPUs stands in for two GPUs.

Logical devices must be configured before TensorFlow starts, so the two-device runs happen in
a subprocess (``two_cpus.py``, written here) and report JSON on their last line; the pytest
process keeps its one CPU. That script splits the CPU into two logical devices, records the
batch each replica's training step gets (``tf.print`` in ``train_step``), trains one epoch
with :func:`cxr.train.train_stage` on devices ``/cpu:0`` and ``/cpu:1``, then stops a 2-epoch
run in its second epoch and runs it again (the backup is saved and restored under the strategy).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from cxr.runtime import make_strategy, replica_batch_size  # noqa: E402
from cxr.store import save_store  # noqa: E402

from .conftest import REPO  # noqa: E402

TWO_CPUS = """
    import json, sys
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    from cxr.model import load_model
    from cxr.runtime import describe_strategy, make_strategy
    from cxr.train import TrainSettings, train_stage

    step = keras.Model.train_step

    def recorded(self, data):  # runs once per replica per step, on that replica's batch
        tf.print("REPLICA_BATCH", tf.shape(data[0])[0], output_stream=sys.stdout)
        return step(self, data)

    keras.Model.train_step = recorded
    root, batch_size = sys.argv[1], int(sys.argv[2])
    devices = ["/cpu:0", "/cpu:1"]
    strategy = make_strategy(devices)
    rows = train_stage(
        f"{root}/train.npz", f"{root}/val.npz", f"{root}/m.keras", f"{root}/h.csv",
        TrainSettings(batch_size=batch_size, epochs=1, seed=1, frozen_layers=17,
                      dense_units=(16, 8), threads=1, verbose=0, devices=devices),
    )
    model = load_model(f"{root}/m.keras")

    # Stopped in its second epoch and run again: resumes under the strategy too.
    from cxr.resume import StageCheckpoint

    def stop(self, batch, logs=None):
        if self.state and self.state["epoch"] == 1:
            raise KeyboardInterrupt

    StageCheckpoint.on_train_batch_end = stop
    again = TrainSettings(
        batch_size=batch_size, epochs=2, seed=1, frozen_layers=17, dense_units=(16, 8),
        threads=1, verbose=0, devices=devices,
    )
    try:
        train_stage(f"{root}/train.npz", f"{root}/val.npz", f"{root}/r.keras", f"{root}/r.csv",
                    again)
    except KeyboardInterrupt:
        pass
    del StageCheckpoint.on_train_batch_end
    print("RESUME", flush=True)
    resumed = train_stage(
        f"{root}/train.npz", f"{root}/val.npz", f"{root}/r.keras", f"{root}/r.csv", again
    )
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "strategy": describe_strategy(strategy),
        "auto": make_strategy("auto").num_replicas_in_sync,
        "rows": rows,
        "output": list(model.output_shape),
        "resumed": [r["epoch"] for r in resumed],
    }))
"""


def run_two_cpus(root: Path, batch_size: int) -> tuple[dict, list[int], str]:
    script = root / "two_cpus.py"
    script.write_text(textwrap.dedent(TWO_CPUS))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, str(script), str(root), str(batch_size)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    sizes = [int(line.split()[1]) for line in out.splitlines() if line.startswith("REPLICA_BATCH")]
    return json.loads(out.strip().splitlines()[-1]), sizes, out


def make_stores(root: Path, n_train: int, n_val: int) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        save_store(
            root / f"{split}.npz",
            rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            np.resize([0, 0, 1], n),
            [f"{split}/{i}.png" for i in range(n)],
            [f"p{i}" for i in range(n)],
        )
    return root


@pytest.mark.slow
def test_two_devices_train_with_the_global_batch_split(tmp_path):
    # 10 images, global batch 4: steps of 4, 4, 2 images -> 2, 2 | 2, 2 | 1, 1 per replica
    result, sizes, out = run_two_cpus(make_stores(tmp_path, n_train=10, n_val=6), batch_size=4)
    assert result["replicas"] == 2
    assert "MirroredStrategy, 2 replica(s)" in result["strategy"]
    assert "CPU:0" in result["strategy"] and "CPU:1" in result["strategy"]
    assert "batch: 4 images per step, 2 per replica" in out
    first, later = out.split("\nRESUME\n")
    assert sorted(sizes[:6]) == [1, 1, 2, 2, 2, 2], first[-3000:]
    assert "epochs 1-1 done, from epoch 2" in later
    assert result["resumed"] == [1, 2]
    assert result["auto"] == 1  # no GPU: "auto" keeps the default strategy (one replica)
    (row,) = result["rows"]
    assert row["epoch"] == 1 and all(np.isfinite(row[k]) for k in ("loss", "val_loss"))
    assert result["output"] == [None, 2]


def test_auto_without_gpus_is_the_default_strategy():
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        pytest.skip("this machine has GPUs")
    strategy = make_strategy("auto")
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1


def test_make_strategy_refuses_unknown_or_repeated_devices():
    with pytest.raises(ValueError, match="no such devices"):
        make_strategy(["/cpu:0", "/gpu:7"])
    with pytest.raises(ValueError, match="distinct"):
        make_strategy(["/cpu:0", "/cpu:0"])
    with pytest.raises(ValueError, match="distinct"):
        make_strategy([])
    with pytest.raises(ValueError, match="auto"):
        make_strategy("all")


def test_one_named_device_is_one_replica():
    assert make_strategy(["/cpu:0"]).num_replicas_in_sync == 1


@pytest.mark.parametrize(
    ("batch", "replicas", "sizes", "per_replica"),
    [(32, 1, {"train": 5}, 32), (32, 2, {"train": 100, "val": 6}, 16), (8, 4, {"val": 8}, 2)],
)
def test_replica_batch_size(batch, replicas, sizes, per_replica):
    assert replica_batch_size(batch, replicas, sizes) == per_replica


@pytest.mark.parametrize(
    ("batch", "replicas", "sizes", "match"),
    [
        (32, 3, {}, "does not split evenly"),  # 32 over 3
        (8, 2, {"val": 5}, "val: 5 images"),  # a first batch of 5 over 2
        (0, 1, {}, ">= 1"),
    ],
)
def test_replica_batch_size_refuses(batch, replicas, sizes, match):
    with pytest.raises(ValueError, match=match):
        replica_batch_size(batch, replicas, sizes)


@pytest.mark.parametrize("gpus", [0, 2])
def test_training_jobs_request_the_configured_gpus(tmp_path, gpus):
    """train.gpus -> each training rule's `gpu` resource (sbatch --gpus with the SLURM
    plugin; none when 0) and the script's --gpus."""
    from .conftest import copy_checkout

    work = copy_checkout(tmp_path)
    (work / "gpus.yaml").write_text(f"train:\n  gpus: {gpus}\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "8"]
        + ["--configfile", "gpus.yaml", "--", "models/model_03.keras"],
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    for stage in ("model_01", "model_02", "model_03"):
        assert f"Training {stage} (" in out
    assert out.count(f" epochs, {gpus} GPU) [8 threads") == 3, out[-3000:]
    assert len(re.findall(rf"--gpus {gpus}( |$)", out, flags=re.M)) == 3, out[-3000:]
