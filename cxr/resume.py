"""Resuming a killed training stage: the history rows, the backup folder, its commits, and
the callbacks that carry their state over.

After every epoch, :class:`StageCheckpoint` commits the whole training state (model and
optimiser variables, including the dropout RNG states; the history rows; EarlyStopping's
counters; the best checkpoint so far) to the stage's backup folder (:func:`backup_dir_for`)
through :class:`StageBackup`, the JSON state file last, each file written atomically
(:mod:`cxr.io`). A run killed at any point (``kill -9`` included) and started again with the
same arguments continues after the last committed epoch and ends as an uninterrupted run
would: same epochs, same history rows, same weights. Different arguments or inputs (a
fingerprint of both, :func:`training_fingerprint`) discard the backup and start afresh.

The precision policy and the thread count change the rounding, so a resumed run must keep
those it started with: they are in the backup's fingerprint (:func:`run_fingerprint`) and
recorded beside it, and a rerun of the same settings and inputs in another precision or with
another thread count is refused (:class:`RuntimeMismatch`) rather than resumed or silently
restarted. Backups written before they were recorded (no ``runtime`` in ``state.json``; the
fingerprint is then that of the settings and inputs alone, as before) were float32: a float32
run resumes them, a mixed-precision one refuses.

References
----------
- Keras ``EarlyStopping``, ``ModelCheckpoint``, ``BackupAndRestore`` (whose role
  :class:`StageBackup` takes, atomically and with the callbacks' state):
  https://keras.io/api/callbacks/
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import time
from pathlib import Path

import keras
import numpy as np

from cxr.io import atomic_path, save_keras, savez, write_text
from cxr.sources import file_hash

#: Folder, beside the model files, that holds one backup folder per stage being trained.
BACKUP_DIRNAME = ".backup"


#: Version of the backup layout; a backup of another version is discarded.
BACKUP_VERSION = 1


HISTORY_COLUMNS = (
    "epoch",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "learning_rate",
    "seconds",
)


class EpochLog(keras.callbacks.Callback):
    """Callback collecting one history row per epoch (see :data:`HISTORY_COLUMNS`).

    ``epoch`` counts from 1; ``learning_rate`` is the optimiser's rate after the epoch's last
    step (for a schedule, its value at the current step); ``seconds`` is wall time of the epoch
    including validation.

    Parameters
    ----------
    rows : list of dict, optional
        Rows of the epochs already done (a resumed run); new rows are appended.
    """

    def __init__(self, rows: list[dict] | None = None):
        super().__init__()
        self.rows: list[dict] = list(rows or [])
        self._t0 = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        row = {"epoch": epoch + 1}
        for key in HISTORY_COLUMNS[1:5]:
            row[key] = float(logs[key]) if key in logs else float("nan")
        row["learning_rate"] = float(np.asarray(self.model.optimizer.learning_rate))
        row["seconds"] = round(time.perf_counter() - self._t0, 3)
        self.rows.append(row)


def write_history(rows: list[dict], path) -> None:
    """Write history rows as CSV with :data:`HISTORY_COLUMNS`, atomically.

    Parameters
    ----------
    rows : dicts with the keys of :data:`HISTORY_COLUMNS` (``EpochLog.rows``); losses are
        categorical cross-entropy (nats), accuracies fractions, ``seconds`` wall time.
    path : output CSV; its folder is created; written atomically (:func:`cxr.io.atomic_path`).

    Raises
    ------
    ValueError
        If a row has a key outside :data:`HISTORY_COLUMNS` (from ``csv.DictWriter``).
    """
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS)
        w.writeheader()
        w.writerows(rows)


def backup_dir_for(model_path) -> Path:
    """The backup folder of the stage writing ``model_path``: ``<dir>/.backup/<stem>/``.

    E.g. ``models/model_02.keras`` -> ``models/.backup/model_02/``. Not a declared output:
    Snakemake leaves it alone when a job fails, so the rerun finds it.
    """
    model_path = Path(model_path)
    return model_path.parent / BACKUP_DIRNAME / model_path.stem


def training_fingerprint(settings: dict, files: dict) -> str:
    """sha256 (hex) naming one training run: its settings and its input files' contents.
    The backup's own fingerprint adds the precision and thread count (:func:`run_fingerprint`).

    Parameters
    ----------
    settings : JSON-serialisable dict of everything that changes what is trained (seed, batch
        size, epochs, optimiser, ...); not the precision, threads or devices.
    files : ``{role: path or None}`` of the inputs (stores, starting weights or model).

    Raises
    ------
    OSError
        If an input file cannot be read.
    TypeError
        If ``settings`` is not JSON-serialisable.
    """
    named = {role: None if path is None else file_hash(path) for role, path in files.items()}
    text = json.dumps({"settings": settings, "files": named}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def run_fingerprint(fingerprint: str, runtime: dict | None) -> str:
    """The backup's fingerprint: :func:`training_fingerprint` ``fingerprint`` of the settings
    and inputs, combined with ``runtime`` (``{"precision", "threads"}``) as sha256 (hex) of
    both; ``runtime`` None gives ``fingerprint`` itself (backups written before the runtime
    was recorded).

    Raises
    ------
    TypeError
        If ``runtime`` is not JSON-serialisable.
    """
    if runtime is None:
        return fingerprint
    text = json.dumps({"fingerprint": fingerprint, "runtime": runtime}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class RuntimeMismatch(ValueError):
    """A backup of the same settings and inputs trained in another precision or thread count:
    resuming it would not give the run it started, and discarding it would lose its epochs."""


def state_variables(model: keras.Model) -> list:
    """Every variable a resumed run needs, in a fixed order.

    The model's variables (trainable, frozen, batch-norm statistics and the dropout layers'
    seed-generator states: ``Layer.variables``), then the optimiser's (iteration count,
    learning rate, slots). Builds the optimiser first if it has not run a step yet.
    Metric accumulators are left out (Keras resets them every epoch).
    """
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    return [*model.variables, *model.optimizer.variables]


def save_variables(model: keras.Model, path) -> None:
    """Write :func:`state_variables` to ``path`` (``.npz``, arrays ``v00000``, ... only).

    Written atomically (:func:`cxr.io.savez`); loads with ``allow_pickle=False``.
    """
    arrays = {f"v{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(state_variables(model))}
    savez(path, **arrays)


def load_variables(model: keras.Model, path) -> None:
    """Assign the arrays saved by :func:`save_variables` to the model's and optimiser's
    variables (same architecture, same optimiser; compile the model first).

    Raises
    ------
    ValueError
        If the number, shapes or dtypes of the saved arrays do not match the variables.
    """
    variables = state_variables(model)
    with np.load(path, allow_pickle=False) as f:
        arrays = [f[f"v{i:05d}"] for i in range(len(f.files))]
    if len(arrays) != len(variables):
        raise ValueError(f"{path}: {len(arrays)} arrays for {len(variables)} variables")
    for variable, array in zip(variables, arrays, strict=True):
        if tuple(variable.shape) != array.shape or np.dtype(variable.dtype) != array.dtype:
            raise ValueError(
                f"{path}: {array.shape} {array.dtype} for {variable.path}"
                f" {tuple(variable.shape)} {variable.dtype}"
            )
    for variable, array in zip(variables, arrays, strict=True):
        variable.assign(array)


class StageBackup:
    """The backup folder of one training stage: what a rerun needs to resume.

    Layout (``directory`` = :func:`backup_dir_for` of the model):

    - ``state.json``: the commit record, ``{"version", "fingerprint", "epoch"`` (epochs
      completed), ``"rows"`` (history rows), ``"variables"`` (file name), ``"best"``
      (``{"file", "epoch", "value"}`` of the best checkpoint so far, or null),
      ``"early_stopping"`` (its counters, or null), ``"stopped"`` (EarlyStopping ended the
      run), ``"runtime"`` (``{"precision", "threads"}``; absent in older backups)``}``.
    - ``variables-NNN.npz``: :func:`save_variables` after epoch NNN.
    - ``best-NNN.keras``: the model after epoch NNN, the best so far by the checkpoint
      monitor (the stage's output model once training ends).

    Every file is written under a temporary name and renamed; ``state.json`` is renamed last,
    so whatever instant a kill comes at, the folder holds one complete committed state (or
    none), and files no state names are leftovers that :meth:`load` deletes.

    Parameters
    ----------
    directory : path of the folder (created on the first commit).
    fingerprint : :func:`training_fingerprint` of the run's settings and inputs.
    runtime : ``{"precision": policy, "threads": n}`` of the run, or None. The folder's
        fingerprint is :func:`run_fingerprint` of both; ``runtime`` is committed with it.
        A backup of another fingerprint is stale (discarded), unless it differs only in
        ``runtime``: then :meth:`load` raises :class:`RuntimeMismatch`.
    """

    STATE = "state.json"

    def __init__(self, directory, fingerprint: str, runtime: dict | None = None):
        self.directory = Path(directory)
        self.settings_fingerprint = fingerprint
        self.runtime = runtime
        self.fingerprint = run_fingerprint(fingerprint, runtime)

    def load(self) -> dict | None:
        """The committed state, or None (no backup, or a stale or broken one, then removed).

        Prints why a backup is not used. Deletes leftover files of an uncommitted epoch.

        Raises
        ------
        RuntimeMismatch
            If the backup is of the same settings and inputs in another precision or thread
            count (see the class docstring); the folder is left as it is.
        """
        path = self.directory / self.STATE
        if not path.is_file():
            self.clear()
            return None
        try:
            state = json.loads(path.read_text())
            stale = state["version"] != BACKUP_VERSION or state["fingerprint"] != self.fingerprint
            theirs = state.get("runtime")
            other_runtime = stale and (
                state["version"] == BACKUP_VERSION
                and state["fingerprint"] == run_fingerprint(self.settings_fingerprint, theirs)
            )
            keep = self._files(state)
        except (OSError, ValueError, TypeError, KeyError) as err:
            print(f"backup {path} unreadable ({err!r}): starting afresh", flush=True)
            self.clear()
            return None
        if other_runtime:
            self._check_runtime(theirs)
            print(f"backup in {self.directory} predates the recorded precision: float32, resumed")
            stale = False
        if stale:
            print(f"backup in {self.directory} is of other settings or inputs: starting afresh")
            self.clear()
            return None
        missing = [name for name in keep if not (self.directory / name).is_file()]
        if missing:
            print(f"backup in {self.directory} lacks {missing}: starting afresh", flush=True)
            self.clear()
            return None
        self._prune(keep)
        return state

    def _check_runtime(self, theirs: dict | None) -> None:
        """Raise :class:`RuntimeMismatch` unless a backup of runtime ``theirs`` may be resumed
        by this run: only a backup without a recorded runtime (float32, from before) by a
        float32 run."""
        mine = self.runtime or {}
        if theirs is None and mine.get("precision", "float32") == "float32":
            return
        was = theirs or {"precision": "float32", "threads": "unrecorded"}

        def say(r):
            return f"precision {r.get('precision')}, {r.get('threads')} threads"

        raise RuntimeMismatch(
            f"{self.directory}: this stage was started with {say(was)} and is now run with"
            f" {say(mine)}. A stopped run resumes only in the precision and thread count it"
            " started with (they change the rounding, so the result would be neither run)."
            f" Rerun with precision {was.get('precision')} (config runtime.precision, option"
            " --precision) and the same threads to resume, or delete"
            f" {self.directory} to start this stage afresh."
        )

    def commit(self, model: keras.Model, state: dict, save_best: bool) -> dict:
        """Save the model after epoch ``state["epoch"]`` and commit ``state``; returns it.

        Parameters
        ----------
        model : the model being trained (compiled).
        state : the new state without ``version``, ``fingerprint``, ``runtime``,
            ``variables`` (set here);
            when ``save_best``, its ``best`` names the epoch and value, and the file is set here.
        save_best : also save the model as the new best checkpoint.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        epoch = state["epoch"]
        state = {**state, "version": BACKUP_VERSION, "fingerprint": self.fingerprint}
        if self.runtime is not None:
            state["runtime"] = self.runtime
        if save_best:
            best = self.directory / f"best-{epoch:03d}.keras"
            save_keras(model, best)
            state["best"] = {**state["best"], "file": best.name}
        state["variables"] = f"variables-{epoch:03d}.npz"
        save_variables(model, self.directory / state["variables"])
        # NaN allowed: a row's loss can be NaN (a diverged epoch), Python's json reads it back.
        write_text(json.dumps(state, indent=1), self.directory / self.STATE)
        self._prune(self._files(state))
        return state

    def clear(self) -> None:
        """Remove the folder, and its parent ``.backup`` if that is left empty."""
        shutil.rmtree(self.directory, ignore_errors=True)
        try:
            self.directory.parent.rmdir()
        except OSError:
            pass  # not empty (another stage's backup) or already gone

    def _files(self, state: dict) -> list[str]:
        names = [self.STATE, state["variables"]]
        if state.get("best"):
            names.append(state["best"]["file"])
        return names

    def _prune(self, keep: list[str]) -> None:
        for path in self.directory.iterdir():
            if path.name not in keep:
                path.unlink()


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """``keras.callbacks.EarlyStopping`` that can carry its counters over to a resumed run.

    Parameters
    ----------
    state : dict or None
        :meth:`get_state` of the run being resumed (``wait``, ``best``, ``best_epoch``), applied
        after Keras' ``on_train_begin`` resets them.
    Other parameters as ``keras.callbacks.EarlyStopping``.
    """

    def __init__(self, *args, state: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.resume_state = state

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.resume_state:
            self.wait = int(self.resume_state["wait"])
            self.best = self.resume_state["best"]
            self.best_epoch = int(self.resume_state["best_epoch"])

    def get_state(self) -> dict:
        """``{"wait", "best", "best_epoch"}``: what :meth:`on_train_begin` restores."""
        best = None if self.best is None else float(self.best)
        return {"wait": int(self.wait), "best": best, "best_epoch": int(self.best_epoch)}


def improved(monitor: str, value: float, best: float | None) -> bool:
    """Whether ``value`` of ``monitor`` beats ``best`` (None: nothing yet).

    Accuracies (``accuracy``, ``val_accuracy``) improve upwards, losses downwards, as in
    ``ModelCheckpoint(mode="auto")``; a non-finite value (NaN) never improves.
    """
    if not np.isfinite(value):
        return False
    if best is None:
        return True
    if monitor.removeprefix("val_") == "accuracy":
        return value > best
    return value < best


class StageCheckpoint(keras.callbacks.Callback):
    """Keeps the best epoch's model and commits the resumable state after every epoch.

    Replaces ``ModelCheckpoint(save_best_only=True)`` plus ``BackupAndRestore``: both go
    through :meth:`StageBackup.commit`, so the best checkpoint and the training state can
    never disagree after a kill. Must come after :class:`EpochLog` and the EarlyStopping
    callback in the callback list (it records what they did this epoch).

    Parameters
    ----------
    backup : where to commit.
    monitor : quantity choosing the best epoch (a key of the epoch logs, e.g. ``val_loss``).
    log : the run's :class:`EpochLog` (its rows are committed).
    early_stopping : the run's :class:`ResumableEarlyStopping`, or None.
    state : the state resumed from, or None.
    saved : the model to commit, when ``fit`` runs on a part of it (the trainable tail on
        cached features, :func:`cxr.model.trainable_tail`); None: the model being fitted.
    """

    def __init__(self, backup: StageBackup, monitor: str, log, early_stopping, state, saved=None):
        super().__init__()
        self.saved = saved
        self.backup = backup
        self.monitor = monitor
        self.log = log
        self.early_stopping = early_stopping
        self.state = state

    def on_epoch_end(self, epoch, logs=None):
        value = float((logs or {}).get(self.monitor, float("nan")))
        best = (self.state or {}).get("best")
        save_best = improved(self.monitor, value, None if best is None else best["value"])
        if save_best:
            before = "none" if best is None else f"{best['value']:.5f}"
            print(f"Epoch {epoch + 1}: {self.monitor} improved from {before} to {value:.5f}")
            best = {"epoch": epoch + 1, "value": value}
        state = {
            "epoch": epoch + 1,
            "rows": self.log.rows,
            "best": best,
            "early_stopping": self.early_stopping and self.early_stopping.get_state(),
            "stopped": bool(self.model.stop_training),
        }
        model = self.model if self.saved is None else self.saved
        self.state = self.backup.commit(model, state, save_best)
