"""Resuming a training stage that was stopped: by an exception, by ``kill -9``, under Snakemake.

Synthetic stores (32 px, random base weights, small head) keep it cheap. The reference is the
same stage run without a stop: a resumed run must end with the same epochs, history rows and
weights, bit for bit (the backup holds every variable, the dropout RNG states included, and
the batches are seeded by epoch). The kill tests run ``scripts/train.py`` as a subprocess and
SIGKILL it mid-epoch; ``slow_train.py`` (written here) runs that same script with each training
batch slowed down and its progress written to a file, so the kill lands where it should.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from cxr.io import save_keras  # noqa: E402
from cxr.model import build_model, load_model  # noqa: E402
from cxr.resume import StageBackup, StageCheckpoint, backup_dir_for  # noqa: E402
from cxr.store import save_store  # noqa: E402
from cxr.train import TrainSettings, train_stage  # noqa: E402

from .conftest import MIRROR, REPO, WEIGHTS, copy_checkout  # noqa: E402


def make_stores(root: Path, n_train: int = 12, n_val: int = 6, size: int = 32) -> Path:
    """train.npz and val.npz under root: random images, classes 2:1."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        labels = np.resize([0, 0, 1], n)
        save_store(
            root / f"{split}.npz",
            rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
            labels,
            [f"{split}/{i}.png" for i in range(n)],
            [f"p{i}" for i in range(n)],
        )
    return root


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return make_stores(tmp_path_factory.mktemp("stores"))


def read_history(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def without_seconds(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def same_weights(a, b) -> bool:
    wa, wb = load_model(a).get_weights(), load_model(b).get_weights()
    return len(wa) == len(wb) and all(np.array_equal(x, y) for x, y in zip(wa, wb, strict=True))


class Stop(Exception):
    """Stands for a crash in the middle of an epoch."""


def stop_in_epoch(monkeypatch, epoch: int, batch: int = 1):
    """Make training raise :class:`Stop` after ``batch`` of 1-based ``epoch`` (once)."""

    def on_train_batch_end(self, b, logs=None):
        done = self.state["epoch"] if self.state else 0
        if done == epoch - 1 and b == batch:
            raise Stop(f"epoch {epoch}, batch {b}")

    monkeypatch.setattr(StageCheckpoint, "on_train_batch_end", on_train_batch_end, raising=False)


# Stage-2-like settings with EarlyStopping on val_accuracy (flat on 6 val images), so that the
# uninterrupted run stops early and the resumed one must carry EarlyStopping's counters over.
SETTINGS = dict(
    batch_size=4,
    epochs=4,
    seed=3,
    frozen_layers=17,
    dense_units=(16, 8),
    early_stopping_monitor="val_accuracy",
    patience=1,
    checkpoint_monitor="val_loss",
    threads=2,
    verbose=0,
)


def test_stopped_mid_epoch_resumes_as_if_never_stopped(stores, tmp_path, monkeypatch, capsys):
    train, val = stores / "train.npz", stores / "val.npz"
    ref = train_stage(
        train, val, tmp_path / "ref/m.keras", tmp_path / "ref/h.csv", TrainSettings(**SETTINGS)
    )
    assert 2 <= len(ref) < SETTINGS["epochs"], "the reference run must stop early"

    model, history = tmp_path / "run/models/m.keras", tmp_path / "run/h.csv"
    stop_in_epoch(monkeypatch, epoch=2)
    with pytest.raises(Stop):
        train_stage(train, val, model, history, TrainSettings(**SETTINGS))
    backup = backup_dir_for(model)
    assert backup == tmp_path / "run/models/.backup/m"
    state = json.loads((backup / "state.json").read_text())
    assert state["epoch"] == 1 and [r["epoch"] for r in state["rows"]] == [1]
    assert not model.exists() and not history.exists()  # nothing at the output paths
    assert sorted(p.name for p in backup.iterdir()) == [
        "best-001.keras",
        "state.json",
        "variables-001.npz",
    ]

    monkeypatch.undo()
    capsys.readouterr()
    rows = train_stage(train, val, model, history, TrainSettings(**SETTINGS))
    out = capsys.readouterr().out
    assert "epochs 1-1 done, from epoch 2" in out
    # same epochs (the early stop included), losses, accuracies, learning rates
    assert without_seconds(rows) == without_seconds(ref)
    assert without_seconds(read_history(history)) == without_seconds(
        read_history(tmp_path / "ref/h.csv")
    )
    assert same_weights(model, tmp_path / "ref/m.keras")
    # and the same bytes: the .keras file is a function of the model (cxr.io.save_keras)
    assert model.read_bytes() == (tmp_path / "ref/m.keras").read_bytes()
    assert sorted(p.name for p in model.parent.iterdir()) == ["m.keras"]  # backup removed


def test_stopped_after_training_only_publishes(stores, tmp_path, monkeypatch, capsys):
    """Killed between the history and the model being put in place: the rerun trains no more."""
    import cxr.train

    train, val = stores / "train.npz", stores / "val.npz"
    kwargs = {**SETTINGS, "epochs": 2, "patience": None}
    model, history = tmp_path / "m.keras", tmp_path / "h.csv"

    def fail(*args):
        raise Stop("before the model is published")

    monkeypatch.setattr(cxr.train, "publish", fail)
    with pytest.raises(Stop):
        train_stage(train, val, model, history, TrainSettings(**kwargs))
    assert not model.exists() and history.exists()
    monkeypatch.undo()
    capsys.readouterr()
    rows = train_stage(train, val, model, history, TrainSettings(**kwargs))
    out = capsys.readouterr().out
    assert "training had finished (2 epochs)" in out and "Epoch" not in out
    assert [r["epoch"] for r in rows] == [1, 2]
    assert load_model(model).output_shape == (None, 2)
    assert not backup_dir_for(model).parent.exists()


def test_backup_of_other_settings_is_discarded(stores, tmp_path, monkeypatch, capsys):
    train, val = stores / "train.npz", stores / "val.npz"
    kwargs = {**SETTINGS, "epochs": 2, "patience": None}
    model, history = tmp_path / "m.keras", tmp_path / "h.csv"
    stop_in_epoch(monkeypatch, epoch=2)
    with pytest.raises(Stop):
        train_stage(train, val, model, history, TrainSettings(**kwargs))
    monkeypatch.undo()
    capsys.readouterr()
    rows = train_stage(
        train, val, model, history, TrainSettings(**{**kwargs, "learning_rate": 2e-3})
    )
    out = capsys.readouterr().out
    assert "other settings or inputs: starting afresh" in out
    assert "training from epoch 1" in out
    assert [r["epoch"] for r in rows] == [1, 2]


def tiny_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dropout(0.5), keras.layers.Dense(2)])
    model.compile(optimizer="rmsprop", loss="mse")
    return model


def test_backup_keeps_one_committed_state(tmp_path):
    backup = StageBackup(tmp_path / ".backup/m", "f1")
    assert backup.load() is None
    model = tiny_model()
    state = {"epoch": 1, "rows": [], "best": {"epoch": 1, "value": 0.5}}
    state = backup.commit(model, {**state, "early_stopping": None, "stopped": False}, True)
    state = backup.commit(model, {**state, "epoch": 2}, False)
    assert sorted(p.name for p in backup.directory.iterdir()) == [
        "best-001.keras",
        "state.json",
        "variables-002.npz",
    ]
    # leftovers of an epoch killed before its commit are removed on load
    (backup.directory / "variables-003.npz.tmp").write_bytes(b"half")
    (backup.directory / "best-003.tmp.keras").write_bytes(b"half")
    assert backup.load()["epoch"] == 2
    assert len(list(backup.directory.iterdir())) == 3
    # another run's backup, or one missing a file it names, is not used
    assert StageBackup(backup.directory, "f2").load() is None
    assert not (tmp_path / ".backup").exists()


def test_backup_missing_a_file_is_not_used(tmp_path, capsys):
    backup = StageBackup(tmp_path / "b", "f")
    state = {"epoch": 1, "rows": [], "best": None, "early_stopping": None, "stopped": False}
    backup.commit(tiny_model(), state, False)
    (backup.directory / "variables-001.npz").unlink()
    assert backup.load() is None
    assert "lacks ['variables-001.npz']" in capsys.readouterr().out


# --- kill -9 ------------------------------------------------------------------------------

SLOW_TRAIN = """
    # scripts/train.py with each training batch slowed down and its (epoch, index) recorded.
    import os, runpy, sys, time
    import cxr.batches

    progress, delay = os.environ["CXR_TEST_PROGRESS"], float(os.environ["CXR_TEST_DELAY"])
    get = cxr.batches.AugmentedBatches.__getitem__

    def slow(self, index):
        with open(progress, "a") as f:
            f.write(f"{self.epoch} {index}\\n")
        time.sleep(delay)
        return get(self, index)

    cxr.batches.AugmentedBatches.__getitem__ = slow
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


def train_command(root: Path, stores: Path, init: Path, epochs: int) -> list[str]:
    return [
        sys.executable,
        str(root / "slow_train.py"),
        str(REPO / "scripts/train.py"),
        *("--train", str(stores / "train.npz"), "--val", str(stores / "val.npz")),
        *("--init", str(init), "--model", str(root / "models/model_02.keras")),
        *("--history", str(root / "history/model_02.csv"), "--threads", "1"),
        *("--seed", "5", "--batch_size", "4", "--realtime_augmentation", "true"),
        *("--early_stopping_monitor", "loss", "--patience", "None"),
        *("--checkpoint_monitor", "val_loss", "--epochs", str(epochs)),
        *("--frozen_layers", "17", "--optimizer", "rmsprop", "--learning_rate", "0.001"),
        *("--decay", "0", "--momentum", "0", "--nesterov", "false"),
        *("--dense_units", "16", "8"),
    ]


def wait_for(condition, proc, log: Path, timeout: float = 180.0):
    t0 = time.monotonic()
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) too early:\n{log.read_text()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"timed out:\n{log.read_text()}")
        time.sleep(0.05)


def committed_epoch(backup: Path) -> int:
    try:
        return json.loads((backup / "state.json").read_text())["epoch"]
    except (OSError, ValueError):
        return 0


@pytest.mark.slow
def test_kill_9_mid_epoch_then_same_command_resumes(tmp_path):
    stores = make_stores(tmp_path / "stores", n_train=16, n_val=6)
    keras.utils.set_random_seed(0)
    init = tmp_path / "model_01.keras"
    save_keras(build_model(32, dense_units=(16, 8)), init)
    (tmp_path / "slow_train.py").write_text(textwrap.dedent(SLOW_TRAIN))
    progress = tmp_path / "progress.txt"
    env = {**os.environ, "CXR_TEST_PROGRESS": str(progress), "CXR_TEST_DELAY": "0.3"}
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    cmd = train_command(tmp_path, stores, init, epochs=3)
    model, history = tmp_path / "models/model_02.keras", tmp_path / "history/model_02.csv"
    backup = tmp_path / "models/.backup/model_02"

    log1 = tmp_path / "run1.log"
    with open(log1, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)

    def mid_second_epoch():
        lines = progress.read_text().split("\n") if progress.exists() else []
        # batch 1 of the second epoch (0-based epoch 1) requested after epoch 1's commit:
        # 2 of its 4 batches (0.3 s each) still to come, so epoch 2 cannot be committed yet
        return committed_epoch(backup) == 1 and "1 1" in lines

    wait_for(mid_second_epoch, proc, log1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    state = json.loads((backup / "state.json").read_text())
    assert state["epoch"] == 1, "the kill must come before epoch 2 is committed"
    assert not model.exists() and not history.exists()
    assert not list(model.parent.glob("*.keras"))  # no half-written model anywhere beside it

    log2 = tmp_path / "run2.log"
    with open(log2, "w") as out:
        rerun = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=600)
    text = log2.read_text()
    assert rerun.returncode == 0, text
    assert "resuming from" in text and "epochs 1-1 done, from epoch 2" in text
    assert "Epoch 1/3" not in text and "Epoch 2/3" in text and "Epoch 3/3" in text
    rows = read_history(history)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    first = state["rows"][0]  # the epoch done before the kill, kept as it was
    assert float(rows[0]["loss"]) == first["loss"]
    assert float(rows[0]["seconds"]) == first["seconds"]
    assert load_model(model).input_shape == (None, 32, 32, 3)
    assert not backup.parent.exists()
    assert sorted(p.name for p in model.parent.iterdir()) == ["model_02.keras"]


@pytest.mark.slow
def test_snakemake_rerun_resumes_a_killed_training_job(tmp_path):
    """The job's process killed (a node lost, a time limit): Snakemake reports it failed; the
    same snakemake command again reruns the job, which resumes from the backup."""
    if not WEIGHTS.is_file() or not (MIRROR / "SHA256SUMS").is_file():
        pytest.skip(f"no VGG19 weights at {WEIGHTS} or mirror at {MIRROR}")
    work = copy_checkout(tmp_path / "work")
    make_stores(work / "data/store", n_train=48, n_val=12)
    (work / "resume.yaml").write_text(
        "train:\n  batch_size: 4\n  model_01:\n    epochs: 4\n  patience: null\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "models/model_01.keras",
        *("--allowed-rules", "acquire_weights", "features", "train_model_01"),
        *("--cores", "2", "--configfile", "resume.yaml"),
        *("--config", f"mirror={MIRROR}", f"pretrained_weights={WEIGHTS}"),
    ]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    backup = work / "models/.backup/model_01"
    log1 = tmp_path / "snakemake1.log"
    with open(log1, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=work, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    wait_for(lambda: committed_epoch(backup) >= 1, proc, log1)
    trainer = subprocess.run(
        ["pgrep", "-f", "-s", str(proc.pid), "scripts/train.py"], capture_output=True, text=True
    ).stdout.split()
    pids = [int(p) for p in trainer if int(p) != proc.pid]
    assert pids, log1.read_text()
    for pid in pids:  # the job's shell and its python: only these, by pid
        os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=120) != 0
    done = committed_epoch(backup)
    assert 1 <= done < 4, log1.read_text()
    assert not (work / "models/model_01.keras").exists()

    rerun = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=env, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-4000:] + rerun.stderr[-4000:]
    log = (work / "logs/train_model_01.log").read_text()
    assert f"epochs 1-{done} done, from epoch {done + 1}" in log, log
    rows = read_history(work / "reports/history/model_01.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert load_model(work / "models/model_01.keras").output_shape == (None, 2)
    assert not (work / "models/.backup").exists()
    shutil.rmtree(work / "models", ignore_errors=True)
