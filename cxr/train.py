"""Training of one stage (model_01, model_02 or model_03) on the split store.

Owned by the model half. Imports Keras (TensorFlow) at import time: call
:func:`configure_threads` before the first TensorFlow op. Reads the train/val stores
(:mod:`cxr.store`), the pretrained ``.h5`` (stage 1) or the previous stage's ``.keras``
(stages 2-3); writes only the model and history paths it is given, each through a temporary
name renamed into place, so no half-written file ever sits at an output path.

Data: training batches are real-time augmented with :func:`cxr.augment.build_recipe` on the
uint8 images (before the model's own ``preprocess_input``) by :class:`AugmentedBatches`, a
``keras.utils.PyDataset`` whose worker threads prepare the next batches while the training
step runs. Each batch's augmentation is seeded from ``(seed, epoch, batch index)``, so results
do not depend on thread scheduling. Validation images are only preprocessed (by the model).

References
----------
- Keras ``Model.fit``, ``PyDataset``, ``EarlyStopping``, ``ModelCheckpoint``:
  https://keras.io/api/models/model_training_apis/, https://keras.io/api/utils/python_utils/,
  https://keras.io/api/callbacks/
- Class weights: scikit-learn ``compute_class_weight('balanced')``, ``n / (k * count_c)``.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import keras
import numpy as np

HISTORY_COLUMNS = (
    "epoch",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "learning_rate",
    "seconds",
)


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
    images : ``(N, S, S, 3) uint8`` RGB.
    labels : ``(N,)`` int class indices.
    batch_size : int >= 1; the last batch of an epoch may be smaller.
    seed : int; the epoch's order is ``default_rng((seed, epoch)).permutation(N)`` and each
        batch's augmentation :func:`batch_seed` ``(seed, epoch, index)``.
    augment : bool; apply :func:`cxr.augment.build_recipe` to each batch.
    workers : int >= 1 threads preparing batches in parallel with training (Keras'
        ``OrderedEnqueuer`` keeps the order).

    Notes
    -----
    The epoch counter advances in :meth:`on_epoch_end`, which Keras calls after it has stopped
    the worker threads, so no batch of one epoch is built with the next epoch's order.
    """

    def __init__(self, images, labels, batch_size: int, seed: int, augment: bool, workers=1):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=4)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(images) == 0 or len(images) != len(labels):
            raise ValueError(f"need as many labels as images (> 0): {len(images)}, {len(labels)}")
        self.images = images
        self.targets = one_hot(labels)
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.epoch = 0
        self._order = self._permutation(0)

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
        return np.ascontiguousarray(x, dtype=np.uint8), self.targets[rows]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._permutation(self.epoch)


class EpochLog(keras.callbacks.Callback):
    """Callback collecting one history row per epoch (see :data:`HISTORY_COLUMNS`).

    ``epoch`` counts from 1; ``learning_rate`` is the optimiser's rate after the epoch's last
    step (for a schedule, its value at the current step); ``seconds`` is wall time of the epoch
    including validation.
    """

    def __init__(self):
        super().__init__()
        self.rows: list[dict] = []
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
    path : output CSV; its folder is created; written as ``<name>.tmp`` then renamed.

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
    os.replace(tmp, path)


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
    dense_units, dropout : head sizes for a fresh model (see :func:`cxr.model.build_model`).

    Raises
    ------
    ValueError
        If both ``pretrained`` and ``init`` are given, or ``init``'s input size is not
        ``image_size``.
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
        return model
    return build_model(image_size, weights=pretrained, dense_units=dense_units, dropout=dropout)


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
    verbose: int = 2,
) -> list[dict]:
    """Train one stage and write its best checkpoint and per-epoch history.

    Seeds everything with ``keras.utils.set_random_seed(seed)``, starts from
    :func:`start_model`, freezes ``base.layers[:frozen_layers]``, compiles with a fresh
    optimiser, fits with balanced class weights, EarlyStopping(``early_stopping_monitor``,
    ``patience``; None disables it) and a ModelCheckpoint that keeps the epoch with the best
    ``checkpoint_monitor``. Defaults are the seed protocol's stage 1.

    Parameters
    ----------
    train_store, val_store : paths of split stores (``.npz``, see :mod:`cxr.store`).
    model_path : output ``.keras``; written via ``<stem>.tmp.keras`` then renamed.
    history_path : output CSV with :data:`HISTORY_COLUMNS`.
    workers : threads preparing (augmenting) training batches.
    verbose : Keras ``fit`` verbosity (1 progress bar, 2 one line per epoch).
    Other parameters: see :func:`start_model`, :func:`cxr.model.set_frozen`,
    :func:`cxr.model.make_optimizer`.

    Returns
    -------
    list of dict, the history rows written.

    Raises
    ------
    ValueError
        Bad parameters (see the functions above), or a class missing from training.
    RuntimeError
        If no checkpoint was written (``checkpoint_monitor`` never had a finite value).
    """
    from cxr.model import compile_model, make_optimizer, set_frozen
    from cxr.store import load_store

    keras.utils.set_random_seed(seed)
    train = load_store(train_store)
    val = load_store(val_store)
    size = train["images"].shape[1]
    if val["images"].shape[1:] != train["images"].shape[1:]:
        raise ValueError(
            f"train and val images differ: {train['images'].shape} {val['images'].shape}"
        )
    weights = class_weights(train["labels"])
    counts = np.bincount(train["labels"], minlength=2)
    print(f"train: {len(train['labels'])} images, per class {counts}")
    print(f"val: {len(val['labels'])} images; class weights {weights}")

    model = start_model(
        size, pretrained=pretrained, init=init, dense_units=dense_units, dropout=dropout
    )
    trainable = set_frozen(model, frozen_layers)
    print(f"frozen: base.layers[:{frozen_layers}]; trainable base layers: {trainable or 'none'}")
    compile_model(model, make_optimizer(optimizer, learning_rate, decay, momentum, nesterov))

    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = model_path.with_name(model_path.stem + ".tmp.keras")
    tmp.unlink(missing_ok=True)
    log = EpochLog()
    callbacks = [
        log,
        keras.callbacks.ModelCheckpoint(
            tmp, monitor=checkpoint_monitor, mode="auto", save_best_only=True, verbose=1
        ),
    ]
    if patience is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=early_stopping_monitor, patience=patience, verbose=1
            )
        )
    batches = AugmentedBatches(
        train["images"], train["labels"], batch_size, seed, realtime_augmentation, workers=workers
    )
    model.fit(
        batches,
        validation_data=(val["images"], one_hot(val["labels"])),
        validation_batch_size=batch_size,
        epochs=epochs,
        class_weight=weights,
        callbacks=callbacks,
        verbose=verbose,
    )
    if not tmp.is_file():
        raise RuntimeError(f"no checkpoint written: {checkpoint_monitor} was never finite")
    os.replace(tmp, model_path)
    write_history(log.rows, history_path)
    return log.rows
