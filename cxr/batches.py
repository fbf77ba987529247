"""Training batches: real-time augmented, shuffled per epoch, with one-hot targets and
balanced class weights.

Training batches are augmented with :func:`cxr.augment.build_recipe` on the uint8 images
(before the model's own ``preprocess_input``) by :class:`AugmentedBatches`, a
``keras.utils.PyDataset`` whose worker threads prepare the next batches while the training
step runs. Each batch's augmentation is seeded from ``(seed, epoch, batch index)``
(:func:`batch_seed`), so results do not depend on thread scheduling, and a resumed run
(:mod:`cxr.resume`) sees the batches an uninterrupted run would. Validation images are only
preprocessed (by the model).

Imports Keras at import time (``PyDataset`` is the base class).

References
----------
- Keras ``PyDataset``: https://keras.io/api/utils/python_utils/
- Class weights: scikit-learn ``compute_class_weight('balanced')``, ``n / (k * count_c)``.
"""

from __future__ import annotations

import keras
import numpy as np


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
        e.g. cached features (:func:`cxr.features.compute_features`); batches keep its dtype.
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
    :func:`cxr.train.train_stage` pins the counter to the training epoch with
    :meth:`set_epoch` at each epoch's start (:class:`EpochSync`), which a resumed run needs.
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
