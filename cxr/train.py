"""Training of one stage (model_01, model_02 or model_03) on the split store.

Owned by the model half. Imports Keras (TensorFlow) at import time: call
:func:`configure_threads` before the first TensorFlow op. Reads the train/val stores
(:mod:`cxr.store`), the pretrained ``.h5`` (stage 1) or the previous stage's ``.keras``
(stages 2-3); writes the model and history paths it is given, each through a temporary name
renamed into place, so no half-written file ever sits at an output path, and, while it
trains, a backup folder beside the model (:func:`backup_dir_for`) that it removes on success.

Data: training batches are real-time augmented with :func:`cxr.augment.build_recipe` on the
uint8 images (before the model's own ``preprocess_input``) by :class:`AugmentedBatches`, a
``keras.utils.PyDataset`` whose worker threads prepare the next batches while the training
step runs. Each batch's augmentation is seeded from ``(seed, epoch, batch index)``, so results
do not depend on thread scheduling. Validation images are only preprocessed (by the model).

Resuming: after every epoch, :class:`StageBackup` commits the whole training state (model and
optimiser variables, including the dropout RNG states; the history rows; EarlyStopping's
counters; the best checkpoint so far) to the backup folder, the JSON state file last, by
``os.replace``. A run killed at any point (``kill -9`` included) and started again with the
same arguments continues after the last committed epoch and ends as an uninterrupted run
would: same epochs, same history rows, same weights. Different arguments or inputs (a
fingerprint of both) discard the backup and start afresh.

Feature cache (``cache_features``, real-time augmentation off): the frozen part of the network
is a constant function of the image, so its output (block5_pool for stage 1, block4_pool for
stage 2, block3_pool for stage 3; :func:`cxr.model.cut_layer`) is computed once per image
(:func:`compute_features`, or read from the files of ``scripts/features.py``, checked by a
digest of the frozen weights) and only the trainable tail (:func:`cxr.model.trainable_tail`,
the same layer objects) is trained on it. Same batches, same dropout masks, same weights at
the end up to float rounding; the saved model is the whole classifier, as without the cache.

Devices: :func:`make_strategy` trains on every GPU the job sees (``MirroredStrategy`` when
there are several, the default strategy with one or none); ``batch_size`` is the global batch,
split evenly over the replicas.

References
----------
- Keras ``Model.fit``, ``PyDataset``, ``EarlyStopping``, ``ModelCheckpoint``,
  ``BackupAndRestore`` (whose role :class:`StageBackup` takes, atomically and with the
  callbacks' state): https://keras.io/api/models/model_training_apis/,
  https://keras.io/api/utils/python_utils/, https://keras.io/api/callbacks/
- Distributed training with Keras 3 on TensorFlow:
  https://keras.io/guides/distributed_training_with_tensorflow/ and
  https://www.tensorflow.org/api_docs/python/tf/distribute/MirroredStrategy
- Class weights: scikit-learn ``compute_class_weight('balanced')``, ``n / (k * count_c)``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np

from cxr.store import feature_cache_off, file_digest

HISTORY_COLUMNS = (
    "epoch",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "learning_rate",
    "seconds",
)
#: Folder, beside the model files, that holds one backup folder per stage being trained.
BACKUP_DIRNAME = ".backup"
#: Version of the backup layout; a backup of another version is discarded.
BACKUP_VERSION = 1


def configure_threads(threads: int) -> None:
    """Size TensorFlow's thread pools (intra- and inter-op) to ``threads``.

    Call before any TensorFlow op runs (TF fixes its pools on first use). Keras picks up the
    same runtime. Source: ``tf.config.threading`` docs.

    Raises
    ------
    ValueError
        If ``threads < 1``.
    RuntimeError
        If TensorFlow has already been initialised (from TensorFlow itself).
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def class_weights(labels: np.ndarray, n_classes: int = 2) -> dict[int, float]:
    """Balanced class weights from the training labels, ``n / (n_classes * count_c)``.

    Parameters
    ----------
    labels : ``(N,)`` ints in ``[0, n_classes)``.

    Returns
    -------
    dict ``{class index: weight}`` (what ``Model.fit(class_weight=...)`` takes).

    Raises
    ------
    ValueError
        If a class has no training image (sklearn would divide by zero).
    """
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(labels).astype(int)
    counts = np.bincount(labels, minlength=n_classes)
    if (counts == 0).any():
        raise ValueError(f"every class needs training images, counts per class: {counts}")
    classes = np.arange(n_classes)
    weights = compute_class_weight("balanced", classes=classes, y=labels)
    return {int(c): float(w) for c, w in zip(classes, weights, strict=True)}


def one_hot(labels: np.ndarray, n_classes: int = 2) -> np.ndarray:
    """One-hot targets for categorical cross-entropy.

    Parameters
    ----------
    labels : ``(N,)`` ints in ``[0, n_classes)``.

    Returns
    -------
    ``(N, n_classes) float32`` array, 1.0 in column ``labels[i]`` of row i.

    Raises
    ------
    IndexError
        If a label is outside ``[0, n_classes)``.
    """
    labels = np.asarray(labels).astype(int)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise IndexError(f"labels must be in [0, {n_classes}), got {np.unique(labels)}")
    return np.eye(n_classes, dtype="float32")[labels]


def batch_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of one training batch's augmentation.

    Parameters
    ----------
    seed : run seed (``train.seed``), int >= 0.
    epoch : 0-based epoch, int >= 0.
    index : 0-based batch index within the epoch, int >= 0.

    Returns
    -------
    int in ``[0, 2**32)``, from ``numpy.random.SeedSequence([seed, epoch, index])`` (independent
    streams per batch, whatever order worker threads build them in).

    Raises
    ------
    ValueError
        If an argument is negative (from ``SeedSequence``).
    """
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class AugmentedBatches(keras.utils.PyDataset):
    """Shuffled, optionally augmented training batches ``(uint8 images, one-hot labels)``.

    Parameters
    ----------
    images : ``(N, S, S, 3) uint8`` RGB, or (with ``augment=False``) any ``(N, ...)`` array,
        e.g. cached features (:func:`compute_features`); batches keep its dtype.
    labels : ``(N,)`` int class indices.
    batch_size : int >= 1; the last batch of an epoch may be smaller.
    seed : int; the epoch's order is ``default_rng((seed, epoch)).permutation(N)`` and each
        batch's augmentation :func:`batch_seed` ``(seed, epoch, index)``.
    augment : bool; apply :func:`cxr.augment.build_recipe` to each batch.
    workers : int >= 1 threads preparing batches in parallel with training (Keras'
        ``OrderedEnqueuer`` keeps the order).
    start_epoch : int >= 0, the 0-based epoch the first pass over the data is (a resumed
        run starts after its last completed epoch, with that epoch's order and seeds).

    Notes
    -----
    The epoch counter advances in :meth:`on_epoch_end`, which Keras calls after it has stopped
    the worker threads, so no batch of one epoch is built with the next epoch's order. Keras
    also calls it once before the first epoch (after sampling batches for the tensor spec), so
    :func:`train_stage` pins the counter to the training epoch with :meth:`set_epoch` at each
    epoch's start (:class:`EpochSync`), which a resumed run needs.
    """

    def __init__(
        self,
        images,
        labels,
        batch_size: int,
        seed: int,
        augment: bool,
        workers=1,
        start_epoch: int = 0,
    ):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=4)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(images) == 0 or len(images) != len(labels):
            raise ValueError(f"need as many labels as images (> 0): {len(images)}, {len(labels)}")
        if start_epoch < 0:
            raise ValueError(f"start_epoch must be >= 0, got {start_epoch}")
        self.images = images
        self.targets = one_hot(labels)
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.epoch = start_epoch
        self._order = self._permutation(start_epoch)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng((self.seed, epoch)).permutation(len(self.images))

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __getitem__(self, index: int):
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        x = self.images[rows]
        if self.augment:
            from cxr.augment import build_recipe

            x = build_recipe(batch_seed(self.seed, self.epoch, index))(images=x)
        return np.ascontiguousarray(x), self.targets[rows]

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)

    def set_epoch(self, epoch: int) -> None:
        """Use the order and augmentation seeds of 0-based ``epoch`` from now on."""
        self.epoch = epoch
        self._order = self._permutation(epoch)


class EpochSync(keras.callbacks.Callback):
    """Callback pinning :class:`AugmentedBatches` to the training epoch at each epoch start
    (before Keras starts the worker threads of that epoch)."""

    def __init__(self, batches: AugmentedBatches):
        super().__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.set_epoch(epoch)


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


def _commit(tmp: Path, path: Path) -> None:
    """Flush ``tmp`` to disk, then rename it to ``path`` (atomic on one filesystem)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_history(rows: list[dict], path) -> None:
    """Write history rows as CSV with :data:`HISTORY_COLUMNS`, atomically.

    Parameters
    ----------
    rows : dicts with the keys of :data:`HISTORY_COLUMNS` (``EpochLog.rows``); losses are
        categorical cross-entropy (nats), accuracies fractions, ``seconds`` wall time.
    path : output CSV; its folder is created; written as ``<name>.tmp``, flushed, then renamed.

    Raises
    ------
    ValueError
        If a row has a key outside :data:`HISTORY_COLUMNS` (from ``csv.DictWriter``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    _commit(tmp, path)


def make_strategy(devices="auto"):
    """The ``tf.distribute`` strategy to build and train the model under.

    Parameters
    ----------
    devices : ``"auto"`` or sequence of str
        ``"auto"``: every GPU TensorFlow sees (under SLURM, the ones the job was given:
        ``CUDA_VISIBLE_DEVICES``); ``MirroredStrategy`` over them when there are two or more,
        else the default strategy (TensorFlow places ops on the one GPU, or the CPU).
        A sequence names the logical devices (``"/gpu:0"``, ``"/cpu:1"``, ...): two or more
        give ``MirroredStrategy`` over exactly those, one gives ``OneDeviceStrategy``.

    Returns
    -------
    tf.distribute.Strategy
        Its ``num_replicas_in_sync`` is the number of devices the global batch is split over.

    Raises
    ------
    ValueError
        If ``devices`` is empty, names a device twice, or names a device TensorFlow does not
        have (``tf.config.list_logical_devices``).
    """
    import tensorflow as tf

    if isinstance(devices, str):
        if devices != "auto":
            raise ValueError(f"devices must be 'auto' or a list of device names, got {devices!r}")
        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        if len(gpus) < 2:
            return tf.distribute.get_strategy()
        return tf.distribute.MirroredStrategy(gpus)
    names = [tf.DeviceSpec.from_string(d).to_string() for d in devices]
    known = {
        tf.DeviceSpec.from_string(d.name).to_string() for d in tf.config.list_logical_devices()
    }
    if not names or len(set(names)) != len(names):
        raise ValueError(f"devices must be distinct device names, got {list(devices)}")
    unknown = [d for d in names if d not in known]
    if unknown:
        raise ValueError(f"no such devices: {unknown}; TensorFlow has {sorted(known)}")
    if len(names) == 1:
        return tf.distribute.OneDeviceStrategy(names[0])
    return tf.distribute.MirroredStrategy(names)


def replica_batch_size(batch_size: int, replicas: int, sizes: dict[str, int]) -> int:
    """Images per replica in each full batch: the global ``batch_size`` split evenly.

    Parameters
    ----------
    batch_size : int >= 1, the global batch (``train.batch_size``): images per optimiser step
        over all replicas together.
    replicas : int >= 1, ``strategy.num_replicas_in_sync``.
    sizes : ``{split name: number of images}`` of the data fed in batches of ``batch_size``.

    Returns
    -------
    int, ``batch_size // replicas``.

    Raises
    ------
    ValueError
        If ``batch_size`` is not a multiple of ``replicas``, or a split's first batch
        (``min(batch_size, n)``) is not: TensorFlow 2.21 / Keras 3.15 fail on a first
        distributed batch that does not split evenly (``AddN`` shape error); a later, smaller
        last batch may split unevenly.
    """
    if replicas < 1 or batch_size < 1:
        raise ValueError(f"need batch_size and replicas >= 1, got {batch_size}, {replicas}")
    if batch_size % replicas:
        raise ValueError(f"batch_size {batch_size} does not split evenly over {replicas} replicas")
    for name, n in sizes.items():
        if min(batch_size, n) % replicas:
            raise ValueError(
                f"{name}: {n} images (< batch_size {batch_size}) do not split evenly over"
                f" {replicas} replicas"
            )
    return batch_size // replicas


def describe_strategy(strategy) -> str:
    """One line naming the strategy and its devices, for the training log."""
    import tensorflow as tf

    if not tf.distribute.has_strategy() and strategy is tf.distribute.get_strategy():
        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        return f"default strategy, 1 replica on {gpus[0] if gpus else 'the CPU'}"
    devices = ", ".join(strategy.extended.worker_devices)
    return f"{type(strategy).__name__}, {strategy.num_replicas_in_sync} replica(s): {devices}"


def backup_dir_for(model_path) -> Path:
    """The backup folder of the stage writing ``model_path``: ``<dir>/.backup/<stem>/``.

    E.g. ``models/model_02.keras`` -> ``models/.backup/model_02/``. Not a declared output:
    Snakemake leaves it alone when a job fails, so the rerun finds it.
    """
    model_path = Path(model_path)
    return model_path.parent / BACKUP_DIRNAME / model_path.stem


def training_fingerprint(settings: dict, files: dict) -> str:
    """sha256 (hex) naming one training run: its settings and its input files' contents.

    Parameters
    ----------
    settings : JSON-serialisable dict of everything that changes the result (seed, batch
        size, epochs, optimiser, ...); not threads or devices.
    files : ``{role: path or None}`` of the inputs (stores, starting weights or model).

    Raises
    ------
    OSError
        If an input file cannot be read.
    TypeError
        If ``settings`` is not JSON-serialisable.
    """
    named = {role: None if path is None else file_digest(path) for role, path in files.items()}
    text = json.dumps({"settings": settings, "files": named}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


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

    Written as ``<name>.tmp``, flushed, then renamed; loads with ``allow_pickle=False``.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    arrays = {f"v{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(state_variables(model))}
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    _commit(tmp, path)


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
      run)``}``.
    - ``variables-NNN.npz``: :func:`save_variables` after epoch NNN.
    - ``best-NNN.keras``: the model after epoch NNN, the best so far by the checkpoint
      monitor (the stage's output model once training ends).

    Every file is written under a temporary name and renamed; ``state.json`` is renamed last,
    so whatever instant a kill comes at, the folder holds one complete committed state (or
    none), and files no state names are leftovers that :meth:`load` deletes.

    Parameters
    ----------
    directory : path of the folder (created on the first commit).
    fingerprint : :func:`training_fingerprint` of the run; a backup with another is stale.
    """

    STATE = "state.json"

    def __init__(self, directory, fingerprint: str):
        self.directory = Path(directory)
        self.fingerprint = fingerprint

    def load(self) -> dict | None:
        """The committed state, or None (no backup, or a stale or broken one, then removed).

        Prints why a backup is not used. Deletes leftover files of an uncommitted epoch.
        """
        path = self.directory / self.STATE
        if not path.is_file():
            self.clear()
            return None
        try:
            state = json.loads(path.read_text())
            stale = state["version"] != BACKUP_VERSION or state["fingerprint"] != self.fingerprint
            keep = self._files(state)
        except (OSError, ValueError, TypeError, KeyError) as err:
            print(f"backup {path} unreadable ({err!r}): starting afresh", flush=True)
            self.clear()
            return None
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

    def commit(self, model: keras.Model, state: dict, save_best: bool) -> dict:
        """Save the model after epoch ``state["epoch"]`` and commit ``state``; returns it.

        Parameters
        ----------
        model : the model being trained (compiled).
        state : the new state without ``version``, ``fingerprint``, ``variables`` (set here);
            when ``save_best``, its ``best`` names the epoch and value, and the file is set here.
        save_best : also save the model as the new best checkpoint.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        epoch = state["epoch"]
        state = {**state, "version": BACKUP_VERSION, "fingerprint": self.fingerprint}
        if save_best:
            best = self.directory / f"best-{epoch:03d}.keras"
            tmp = best.with_name(f"best-{epoch:03d}.tmp.keras")
            model.save(tmp)
            _commit(tmp, best)
            state["best"] = {**state["best"], "file": best.name}
        state["variables"] = f"variables-{epoch:03d}.npz"
        save_variables(model, self.directory / state["variables"])
        tmp = self.directory / (self.STATE + ".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        _commit(tmp, self.directory / self.STATE)
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

    def __init__(
        self, backup: StageBackup, monitor: str, log: EpochLog, early_stopping, state, saved=None
    ):
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


def publish(source: Path, path: Path) -> None:
    """Put a copy of ``source`` at ``path`` atomically (hard link or copy to a temporary
    name beside ``path``, then rename), leaving ``source`` in place; its mtime is now."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # no hard links here (other filesystem, FAT, some network mounts)
        shutil.copyfile(source, tmp)
    _commit(tmp, path)
    os.utime(path)  # as new as the job: a link keeps the (older) epoch's time


def compute_features(model: keras.Model, images, layer_names, batch_size: int = 32) -> dict:
    """Outputs of the named base layers for every image: one forward pass, all layers at once.

    Parameters
    ----------
    model : a classifier (:func:`cxr.model.build_model`); its base computes the features.
    images : ``(N, S, S, 3) uint8``.
    layer_names : base layer names, e.g. :data:`cxr.model.CACHE_LAYERS`.
    batch_size : images per forward pass (does not change the values beyond float rounding).

    Returns
    -------
    dict ``{name: (N, h, w, c) float32}``.
    """
    from cxr.model import feature_extractor

    layer_names = list(layer_names)
    extractor = feature_extractor(model, layer_names)
    out = {name: [] for name in layer_names}
    for start in range(0, len(images), batch_size):
        batch = extractor.predict_on_batch(np.asarray(images[start : start + batch_size]))
        batch = batch if isinstance(batch, (list, tuple)) else [batch]  # one output: an array
        for name, value in zip(layer_names, batch, strict=True):
            out[name].append(np.asarray(value, dtype=np.float32))
    return {name: np.concatenate(parts) for name, parts in out.items()}


def head_of(model: keras.Model) -> tuple[tuple[int, int], tuple[float, float]]:
    """``(dense_units, dropout)`` of a classifier's head (see :func:`cxr.model.build_model`).

    Raises
    ------
    ValueError
        If the model lacks the head layers (``Model.get_layer``).
    """
    from cxr.model import HEAD_NAMES

    units = tuple(int(model.get_layer(HEAD_NAMES[i]).units) for i in (1, 4))
    rates = tuple(float(model.get_layer(HEAD_NAMES[i]).rate) for i in (3, 5))
    return units, rates


def start_model(
    image_size: int,
    pretrained=None,
    init=None,
    dense_units=(1024, 512),
    dropout=(0.5, 0.3),
):
    """The model a stage starts from: fresh on ImageNet weights, or the previous stage's.

    Parameters
    ----------
    image_size : int, side S of the stores' images (must match ``init``'s input).
    pretrained : path to the VGG19 notop ``.h5`` (stage 1) or None (random base; tests).
    init : path to the previous stage's ``.keras`` (stages 2-3); exclusive with
        ``pretrained``. Its architecture and weights are loaded as saved.
    dense_units, dropout : head sizes: of a fresh model (see :func:`cxr.model.build_model`),
        or the sizes ``init``'s head must have.

    Raises
    ------
    ValueError
        If both ``pretrained`` and ``init`` are given, or ``init``'s input size is not
        ``image_size``, or its head is not ``dense_units`` / ``dropout``.
    """
    from cxr.model import build_model, load_model

    if init is not None:
        if pretrained is not None:
            raise ValueError("give either pretrained (stage 1) or init (later stages), not both")
        model = load_model(init)
        if tuple(model.input_shape[1:3]) != (image_size, image_size):
            raise ValueError(
                f"{init} takes {model.input_shape[1:3]} images, store has {image_size}"
            )
        want = (tuple(int(u) for u in dense_units), tuple(float(r) for r in dropout))
        if head_of(model) != want:
            raise ValueError(
                f"{init} has head (dense_units, dropout) {head_of(model)}, expected {want}"
            )
        return model
    return build_model(image_size, weights=pretrained, dense_units=dense_units, dropout=dropout)


def cached_inputs(model, frozen_layers, paths, stores, features=None):
    """Train and val inputs of the trainable tail: the stage's cut-layer features.

    From the feature caches ``features = (train, val)`` when given and usable (checked
    against the model's frozen weights and the stores, :func:`cxr.store.load_features`),
    else computed from ``model`` now, in memory (one forward pass of the frozen part per
    image), with a note saying why: a cache written with the cache off, without the stage's
    cut layer, or from other frozen weights (a stage whose frozen layers an earlier stage
    trained) is not an error, only not usable.

    Returns
    -------
    ``(x_train, x_val)``, float32 arrays ``(N, h, w, c)``.

    Raises
    ------
    ValueError
        Features of another store, or another number of rows than the store's images.
    """
    from cxr.model import cut_layer, frozen_digest
    from cxr.store import UnusableFeatures, load_features

    cut = cut_layer(model, frozen_layers)
    if features is not None:
        digest = frozen_digest(model, frozen_layers)
        out = []
        try:
            for path, store_path, store in zip(features, paths, stores, strict=True):
                x = load_features(path, cut, digest, file_digest(store_path))
                if len(x) != len(store["labels"]):
                    raise ValueError(f"{path}: {len(x)} rows for {len(store['labels'])} images")
                out.append(x)
        except UnusableFeatures as e:
            print(f"cache_features: not using the feature files: {e}")
        else:
            print(f"cache_features: {cut} from {list(map(str, features))}")
            return tuple(out)
    t0 = time.perf_counter()
    out = [compute_features(model, store["images"], [cut])[cut] for store in stores]
    n = sum(len(x) for x in out)
    print(f"cache_features: {cut} of {n} images computed in {time.perf_counter() - t0:.1f} s")
    return tuple(out)


def train_stage(
    train_store,
    val_store,
    model_path,
    history_path,
    *,
    pretrained=None,
    init=None,
    seed: int = 42,
    batch_size: int = 32,
    realtime_augmentation: bool = True,
    dense_units=(1024, 512),
    dropout=(0.5, 0.3),
    early_stopping_monitor: str = "loss",
    patience: int | None = 4,
    checkpoint_monitor: str = "val_loss",
    epochs: int = 10,
    frozen_layers: int | str = "all",
    optimizer: str = "rmsprop",
    learning_rate: float = 1e-3,
    decay: float = 0.0,
    momentum: float = 0.0,
    nesterov: bool = False,
    workers: int = 1,
    devices="auto",
    verbose: int = 2,
    cache_features: bool = False,
    features=None,
) -> list[dict]:
    """Train one stage and write its best checkpoint and per-epoch history; resumable.

    Seeds everything with ``keras.utils.set_random_seed(seed)``, starts from
    :func:`start_model`, freezes ``base.layers[:frozen_layers]``, compiles with a fresh
    optimiser, fits with balanced class weights, EarlyStopping(``early_stopping_monitor``,
    ``patience``; None disables it) and keeps the epoch with the best ``checkpoint_monitor``
    (:class:`StageCheckpoint`). Defaults are the seed protocol's stage 1.

    After each epoch the state is committed to :func:`backup_dir_for` ``(model_path)``. If
    that folder holds a committed state of the same settings and inputs (a run killed before
    it finished), training continues after its last epoch: the history keeps the rows of the
    epochs before, EarlyStopping and the best checkpoint carry on, the number of epochs is that
    of an uninterrupted run. The folder is removed once both outputs are in place.

    Parameters
    ----------
    train_store, val_store : paths of split stores (``.npz``, see :mod:`cxr.store`).
    model_path : output ``.keras`` (the best epoch's model, optimiser included); put in place
        from the backup by a temporary name and a rename.
    history_path : output CSV with :data:`HISTORY_COLUMNS`, one row per epoch trained.
    batch_size : global batch (images per step over all replicas; see :func:`make_strategy`).
    workers : threads preparing (augmenting) training batches.
    devices : ``"auto"`` or device names, see :func:`make_strategy`.
    verbose : Keras ``fit`` verbosity (1 progress bar, 2 one line per epoch).
    cache_features : bool; with ``realtime_augmentation`` off, run the frozen part of the
        network once per image and train only the trainable part
        (:func:`cxr.model.trainable_tail`) on its outputs, instead of the whole network at
        every step. Same function, same dropout streams; equal to full-model training within
        float rounding (tests/test_feature_cache.py). Ignored (with a note) when real-time
        augmentation is on (every epoch sees new images) or nothing is frozen.
    features : None, or ``(train, val)`` paths of feature caches
        (:func:`cxr.store.save_features`, the features rule) holding the stage's cut layer;
        their store must match, and their frozen-weights digest, else (or with None) the
        features are computed here, in memory, from the starting model
        (:func:`cached_inputs`).
    Other parameters: see :func:`start_model`, :func:`cxr.model.set_frozen`,
    :func:`cxr.model.make_optimizer`.

    Returns
    -------
    list of dict, the history rows written.

    Raises
    ------
    ValueError
        Bad parameters (see the functions above), a class missing from training, or a batch
        that does not split evenly over the replicas (:func:`replica_batch_size`).
    RuntimeError
        If no checkpoint was written (``checkpoint_monitor`` was never finite).
    """
    from cxr.model import (
        compile_model,
        cut_layer,
        make_optimizer,
        set_frozen,
        trainable_tail,
    )
    from cxr.store import load_store

    if pretrained is not None and init is not None:
        raise ValueError("give either pretrained (stage 1) or init (later stages), not both")
    strategy = make_strategy(devices)
    replicas = strategy.num_replicas_in_sync
    keras.utils.set_random_seed(seed)
    train = load_store(train_store)
    val = load_store(val_store)
    size = train["images"].shape[1]
    if val["images"].shape[1:] != train["images"].shape[1:]:
        raise ValueError(
            f"train and val images differ: {train['images'].shape} {val['images'].shape}"
        )
    per_replica = replica_batch_size(
        batch_size, replicas, {"train": len(train["labels"]), "val": len(val["labels"])}
    )
    print(f"devices: {describe_strategy(strategy)}")
    print(f"batch: {batch_size} images per step, {per_replica} per replica")
    weights = class_weights(train["labels"])
    counts = np.bincount(train["labels"], minlength=2)
    print(f"train: {len(train['labels'])} images, per class {counts}")
    print(f"val: {len(val['labels'])} images; class weights {weights}")

    settings = dict(
        seed=seed,
        batch_size=batch_size,
        realtime_augmentation=realtime_augmentation,
        dense_units=list(dense_units),
        dropout=list(dropout),
        early_stopping_monitor=early_stopping_monitor,
        patience=patience,
        checkpoint_monitor=checkpoint_monitor,
        epochs=epochs,
        frozen_layers=frozen_layers,
        optimizer=optimizer,
        learning_rate=learning_rate,
        decay=decay,
        momentum=momentum,
        nesterov=nesterov,
    )
    off = feature_cache_off(cache_features, realtime_augmentation)
    use_cache = off is None and frozen_layers not in (0, 1)
    if cache_features and not use_cache:
        print("cache_features: off (real-time augmentation on, or nothing frozen)")
    if use_cache:
        settings["cache_features"] = True  # rounding differs from the uncached run
    files = {"train": train_store, "val": val_store, "pretrained": pretrained, "init": init}
    backup = StageBackup(backup_dir_for(model_path), training_fingerprint(settings, files))
    state = backup.load()
    done = 0 if state is None else state["epoch"]
    finished = state is not None and (state["stopped"] or done >= epochs)
    if state is None:
        print(f"no backup in {backup.directory}: training from epoch 1", flush=True)
    elif finished:
        print(f"resuming from {backup.directory}: training had finished ({done} epochs)")
    else:
        print(f"resuming from {backup.directory}: epochs 1-{done} done, from epoch {done + 1}")

    if not finished:
        with strategy.scope():
            model = start_model(
                size, pretrained=pretrained, init=init, dense_units=dense_units, dropout=dropout
            )
            trainable = set_frozen(model, frozen_layers)
            print(
                f"frozen: base.layers[:{frozen_layers}]; trainable base layers:"
                f" {trainable or 'none'} (the head always trains)"
            )
            opt = make_optimizer(optimizer, learning_rate, decay, momentum, nesterov)
            fit_model, x_train, x_val = model, train["images"], val["images"]
            if use_cache:
                cut = cut_layer(model, frozen_layers)
                x_train, x_val = cached_inputs(
                    model, frozen_layers, (train_store, val_store), (train, val), features
                )
                fit_model = trainable_tail(model, frozen_layers)
                print(f"cache_features: training {fit_model.name} on {cut} {x_train.shape[1:]}")
                compile_model(fit_model, opt)
                opt.build(fit_model.trainable_variables)
            # The saved model carries the optimiser (built on the same variables either way).
            compile_model(model, opt)
            if state is not None:
                load_variables(model, backup.directory / state["variables"])
            log = EpochLog(rows=None if state is None else state["rows"])
            callbacks = [log]
            early_stopping = None
            if patience is not None:
                early_stopping = ResumableEarlyStopping(
                    monitor=early_stopping_monitor,
                    patience=patience,
                    verbose=1,
                    state=None if state is None else state["early_stopping"],
                )
                callbacks.append(early_stopping)
            checkpoint = StageCheckpoint(
                backup, checkpoint_monitor, log, early_stopping, state, saved=model
            )
            callbacks.append(checkpoint)
            batches = AugmentedBatches(
                x_train,
                train["labels"],
                batch_size,
                seed,
                realtime_augmentation,
                workers=workers,
                start_epoch=done,
            )
            callbacks.insert(0, EpochSync(batches))
            fit_model.fit(
                batches,
                validation_data=(x_val, one_hot(val["labels"])),
                validation_batch_size=batch_size,
                epochs=epochs,
                initial_epoch=done,
                # The batches shuffle themselves (seeded by epoch); Keras' own shuffle of the
                # batch order draws from Python's global `random`, which a resumed run lacks.
                shuffle=False,
                class_weight=weights,
                callbacks=callbacks,
                verbose=verbose,
            )
        state = checkpoint.state
    if state is None or state["best"] is None:
        backup.clear()
        raise RuntimeError(f"no checkpoint written: {checkpoint_monitor} was never finite")
    write_history(state["rows"], history_path)
    publish(backup.directory / state["best"]["file"], Path(model_path))
    backup.clear()
    print(
        f"best epoch {state['best']['epoch']} ({checkpoint_monitor} {state['best']['value']:.5f})"
    )
    return state["rows"]
