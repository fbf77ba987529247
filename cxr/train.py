"""Training of one stage (model_01, model_02 or model_03) on the split store: the stage loop.

Imports Keras (TensorFlow) at import time: call :func:`cxr.runtime.configure_threads` before
the first TensorFlow op. Reads the train/val stores (:mod:`cxr.store`), the pretrained ``.h5``
(stage 1) or the previous stage's ``.keras`` (stages 2-3); writes the model and history paths
it is given, atomically (:mod:`cxr.io`), and, while it trains, a backup folder beside the model
(:func:`cxr.resume.backup_dir_for`) that it removes on success.

Every setting that changes the result is a field of :class:`TrainSettings`, filled from the
command line by ``scripts/train.py`` and hashed into the resume fingerprint. The pieces live in
one module per concern, in the order of the data flow (``cxr.FLOW``):

- :mod:`cxr.runtime`: threads, devices, the distribution strategy, the per-replica batch;
- :mod:`cxr.features`: the feature cache (frozen part run once per image);
- :mod:`cxr.batches`: augmented batches, class weights, one-hot targets;
- :mod:`cxr.resume`: the history, the backup folder, its commits and the resumable callbacks;
- here: the settings, the starting model and :func:`train_stage`.

References
----------
- Keras ``Model.fit``: https://keras.io/api/models/model_training_apis/
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np

from cxr.batches import AugmentedBatches, EpochSync, class_weights, one_hot
from cxr.features import cached_inputs, feature_cache_off
from cxr.io import publish
from cxr.resume import (
    EpochLog,
    ResumableEarlyStopping,
    StageBackup,
    StageCheckpoint,
    backup_dir_for,
    load_variables,
    training_fingerprint,
    write_history,
)
from cxr.runtime import PRECISIONS, describe_strategy, make_strategy, replica_batch_size


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


#: Metadata of the :class:`TrainSettings` fields that do not change the result (left out of
#: the resume fingerprint).
RUNTIME = {"runtime": True}
#: Metadata of the fields that change the rounding but not what is trained: kept apart from
#: the settings' fingerprint, a resumed run must have the same (:meth:`TrainSettings.runtime`).
RESUME = {"runtime": True, "resume": True}


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Everything one stage's training is run with, besides its files. Defaults: the seed
    protocol's stage 1. Field names are the options of ``scripts/train.py`` and the keys of
    config ``train`` / ``train.model_0N`` (:meth:`from_args`).

    Attributes
    ----------
    seed : seeds Keras, NumPy and Python (``keras.utils.set_random_seed``) and the batches.
    batch_size : global batch, images per step over all replicas
        (:func:`cxr.runtime.replica_batch_size`).
    realtime_augmentation : augment every training batch (:mod:`cxr.batches`).
    dense_units, dropout : head sizes, see :func:`start_model`.
    early_stopping_monitor, patience : EarlyStopping on that log key; ``patience`` None: off.
    checkpoint_monitor : log key choosing the best epoch (the saved model).
    epochs : maximum number of epochs.
    frozen_layers : ``"all"`` or the number of base layers frozen
        (:func:`cxr.model.set_frozen`).
    optimizer, learning_rate, decay, momentum, nesterov : see :func:`cxr.model.make_optimizer`.
    cache_features : with ``realtime_augmentation`` off, run the frozen part of the network
        once per image and train only the trainable part (:func:`cxr.model.trainable_tail`) on
        its outputs (:mod:`cxr.features`). Same function, same dropout streams; equal to
        full-model training within float rounding (tests/test_feature_cache.py). Ignored (with
        a note) when real-time augmentation is on or nothing is frozen.
    precision : Keras dtype policy to train in (``float32``, ``mixed_bfloat16``,
        ``mixed_float16``; ``auto`` is resolved before, by :func:`cxr.runtime.apply_precision`).
        :func:`train_stage` sets it as the global policy. With ``threads``, the run's runtime
        (:meth:`runtime`): in the resume fingerprint, and a backup of another runtime is
        refused (:class:`cxr.resume.RuntimeMismatch`).
    threads : TensorFlow's thread pools (set by ``scripts/train.py``) and the threads preparing
        (augmenting) training batches.
    devices : ``"auto"`` or device names, see :func:`cxr.runtime.make_strategy`. Not in the
        fingerprint.
    verbose : Keras ``fit`` verbosity (1 progress bar, 2 one line per epoch). Not in the
        fingerprint.
    """

    seed: int = 42
    batch_size: int = 32
    realtime_augmentation: bool = True
    dense_units: tuple[int, int] = (1024, 512)
    dropout: tuple[float, float] = (0.5, 0.3)
    early_stopping_monitor: str = "loss"
    patience: int | None = 4
    checkpoint_monitor: str = "val_loss"
    epochs: int = 10
    frozen_layers: int | str = "all"
    optimizer: str = "rmsprop"
    learning_rate: float = 1e-3
    decay: float = 0.0
    momentum: float = 0.0
    nesterov: bool = False
    cache_features: bool = False
    precision: str = dataclasses.field(default="float32", metadata=RESUME)
    threads: int = dataclasses.field(default=1, metadata=RESUME)
    devices: str | tuple[str, ...] = dataclasses.field(default="auto", metadata=RUNTIME)
    verbose: int = dataclasses.field(default=2, metadata=RUNTIME)

    def __post_init__(self):
        # Sequences from argparse (lists) become tuples: hashable, and equal to the defaults.
        object.__setattr__(self, "dense_units", tuple(self.dense_units))
        object.__setattr__(self, "dropout", tuple(self.dropout))
        if not isinstance(self.devices, str):
            object.__setattr__(self, "devices", tuple(self.devices))
        if self.precision not in PRECISIONS or self.precision == "auto":
            raise ValueError(
                f"precision must be one of {PRECISIONS[:-1]} (resolve 'auto' with"
                f" cxr.runtime.apply_precision), got {self.precision!r}"
            )

    @classmethod
    def from_args(cls, args) -> TrainSettings:
        """The settings from an ``argparse.Namespace`` (``scripts/train.py``): every field
        the namespace has an attribute for; the others keep their defaults."""
        names = [f.name for f in dataclasses.fields(cls) if hasattr(args, f.name)]
        return cls(**{name: getattr(args, name) for name in names})

    def runtime(self) -> dict:
        """``{"precision", "threads"}``: what a resumed run must keep
        (:class:`cxr.resume.StageBackup`)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if "resume" in f.metadata
        }

    def use_cache(self) -> bool:
        """Whether this stage trains on cached features (the cache is on and something is
        frozen, see :func:`cxr.features.feature_cache_off`)."""
        off = feature_cache_off(self.cache_features, self.realtime_augmentation)
        return off is None and self.frozen_layers not in (0, 1)

    def fingerprinted(self) -> dict:
        """The fields that change the result, as JSON values (what
        :func:`cxr.resume.training_fingerprint` hashes): no runtime fields, and
        ``cache_features`` only when the cache is used (its rounding differs)."""
        out = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if not f.metadata.get("runtime") and f.name != "cache_features"
        }
        out["dense_units"], out["dropout"] = list(self.dense_units), list(self.dropout)
        if self.use_cache():
            out["cache_features"] = True
        return out


def _load_stores(train_store, val_store, settings: TrainSettings, strategy):
    """The train and val stores, checked to fit together and to split over the replicas of
    ``strategy``."""
    from cxr.store import load_store

    train = load_store(train_store)
    val = load_store(val_store)
    if val["images"].shape[1:] != train["images"].shape[1:]:
        raise ValueError(
            f"train and val images differ: {train['images'].shape} {val['images'].shape}"
        )
    sizes = {"train": len(train["labels"]), "val": len(val["labels"])}
    per_replica = replica_batch_size(settings.batch_size, strategy.num_replicas_in_sync, sizes)
    print(f"devices: {describe_strategy(strategy)}")
    print(f"batch: {settings.batch_size} images per step, {per_replica} per replica")
    return train, val


def _resume_state(backup: StageBackup, epochs: int) -> tuple[dict | None, bool]:
    """The backup's committed state (or None) and whether that training had finished."""
    state = backup.load()
    done = 0 if state is None else state["epoch"]
    finished = state is not None and (state["stopped"] or done >= epochs)
    if state is None:
        print(f"no backup in {backup.directory}: training from epoch 1", flush=True)
    elif finished:
        print(f"resuming from {backup.directory}: training had finished ({done} epochs)")
    else:
        print(f"resuming from {backup.directory}: epochs 1-{done} done, from epoch {done + 1}")
    return state, finished


def _build(settings: TrainSettings, size: int, pretrained, init, inputs):
    """The stage's model, compiled, and what ``fit`` runs on: ``(model, fit_model, x_train,
    x_val)``; ``fit_model`` is the trainable tail on cached features, else ``model``.

    ``inputs``: ``(train_store, val_store, train, val, features)`` paths and loaded stores.
    """
    from cxr.model import compile_model, cut_layer, make_optimizer, set_frozen, trainable_tail

    s = settings
    train_store, val_store, train, val, features = inputs
    model = start_model(
        size, pretrained=pretrained, init=init, dense_units=s.dense_units, dropout=s.dropout
    )
    trainable = set_frozen(model, s.frozen_layers)
    print(
        f"frozen: base.layers[:{s.frozen_layers}]; trainable base layers:"
        f" {trainable or 'none'} (the head always trains)"
    )
    opt = make_optimizer(s.optimizer, s.learning_rate, s.decay, s.momentum, s.nesterov)
    fit_model, x_train, x_val = model, train["images"], val["images"]
    if s.use_cache():
        cut = cut_layer(model, s.frozen_layers)
        x_train, x_val = cached_inputs(
            model, s.frozen_layers, (train_store, val_store), (train, val), features
        )
        fit_model = trainable_tail(model, s.frozen_layers)
        print(f"cache_features: training {fit_model.name} on {cut} {x_train.shape[1:]}")
        compile_model(fit_model, opt)
        opt.build(fit_model.trainable_variables)
    # The saved model carries the optimiser (built on the same variables either way).
    compile_model(model, opt)
    return model, fit_model, x_train, x_val


def _fit(settings: TrainSettings, model, fit_model, data, backup: StageBackup, state):
    """Fit from the state resumed (or from epoch 1), committing every epoch; returns the last
    committed state. ``data``: ``(x_train, train labels, x_val, val labels, class weights)``."""
    s = settings
    x_train, y_train, x_val, y_val, weights = data
    done = 0 if state is None else state["epoch"]
    if state is not None:
        load_variables(model, backup.directory / state["variables"])
    log = EpochLog(rows=None if state is None else state["rows"])
    callbacks = [log]
    early_stopping = None
    if s.patience is not None:
        early_stopping = ResumableEarlyStopping(
            monitor=s.early_stopping_monitor,
            patience=s.patience,
            verbose=1,
            state=None if state is None else state["early_stopping"],
        )
        callbacks.append(early_stopping)
    checkpoint = StageCheckpoint(
        backup, s.checkpoint_monitor, log, early_stopping, state, saved=model
    )
    callbacks.append(checkpoint)
    batches = AugmentedBatches(
        x_train,
        y_train,
        s.batch_size,
        s.seed,
        s.realtime_augmentation,
        workers=s.threads,
        start_epoch=done,
    )
    callbacks.insert(0, EpochSync(batches))
    fit_model.fit(
        batches,
        validation_data=(x_val, one_hot(y_val)),
        validation_batch_size=s.batch_size,
        epochs=s.epochs,
        initial_epoch=done,
        # The batches shuffle themselves (seeded by epoch); Keras' own shuffle of the
        # batch order draws from Python's global `random`, which a resumed run lacks.
        shuffle=False,
        class_weight=weights,
        callbacks=callbacks,
        verbose=s.verbose,
    )
    return checkpoint.state


def train_stage(
    train_store,
    val_store,
    model_path,
    history_path,
    settings: TrainSettings = TrainSettings(),
    *,
    pretrained=None,
    init=None,
    features=None,
) -> list[dict]:
    """Train one stage and write its best checkpoint and per-epoch history; resumable.

    Seeds everything with ``keras.utils.set_random_seed(settings.seed)``, starts from
    :func:`start_model`, freezes ``base.layers[:frozen_layers]``, compiles with a fresh
    optimiser, fits with balanced class weights, EarlyStopping(``early_stopping_monitor``,
    ``patience``; None disables it) and keeps the epoch with the best ``checkpoint_monitor``
    (:class:`cxr.resume.StageCheckpoint`).

    After each epoch the state is committed to :func:`cxr.resume.backup_dir_for`
    ``(model_path)``. If that folder holds a committed state of the same settings and inputs
    (a run killed before it finished), training continues after its last epoch: the history
    keeps the rows of the epochs before, EarlyStopping and the best checkpoint carry on, the
    number of epochs is that of an uninterrupted run. The folder is removed once both outputs
    are in place.

    Parameters
    ----------
    train_store, val_store : paths of split stores (``.npz``, see :mod:`cxr.store`).
    model_path : output ``.keras`` (the best epoch's model, optimiser included; bytes a
        function of the model, :func:`cxr.io.save_keras`); put in place from the backup by a
        temporary name and a rename.
    history_path : output CSV with :data:`cxr.resume.HISTORY_COLUMNS`, one row per epoch trained.
    settings : :class:`TrainSettings`.
    pretrained, init : see :func:`start_model` (exclusive).
    features : None, or ``(train, val)`` paths of feature caches
        (:func:`cxr.features.save_features`, the features rule) holding the stage's cut
        layer; their store must match, and their frozen-weights digest, else (or with None)
        the features are computed here, in memory, from the starting model
        (:func:`cxr.features.cached_inputs`). Used only with ``settings.cache_features``.

    Returns
    -------
    list of dict, the history rows written.

    Raises
    ------
    ValueError
        Bad settings (see the functions above), a class missing from training, or a batch
        that does not split evenly over the replicas
        (:func:`cxr.runtime.replica_batch_size`); :class:`cxr.resume.RuntimeMismatch` if the
        backup is of another precision or thread count (the backup is kept).
    RuntimeError
        If no checkpoint was written (``checkpoint_monitor`` was never finite).
    """
    s = settings
    if pretrained is not None and init is not None:
        raise ValueError("give either pretrained (stage 1) or init (later stages), not both")
    # Fresh Keras state: layer names (in the saved file) do not depend on models built
    # before in this process (a no-op in a fresh process, as under Snakemake or DVC).
    keras.backend.clear_session()
    keras.config.set_dtype_policy(s.precision)
    print(f"precision: {s.precision}, threads: {s.threads}")
    strategy = make_strategy(s.devices)
    keras.utils.set_random_seed(s.seed)
    train, val = _load_stores(train_store, val_store, s, strategy)
    weights = class_weights(train["labels"])
    counts = np.bincount(train["labels"], minlength=2)
    print(f"train: {len(train['labels'])} images, per class {counts}")
    print(f"val: {len(val['labels'])} images; class weights {weights}")
    if s.cache_features and not s.use_cache():
        print("cache_features: off (real-time augmentation on, or nothing frozen)")
    files = {"train": train_store, "val": val_store, "pretrained": pretrained, "init": init}
    fingerprint = training_fingerprint(s.fingerprinted(), files)
    backup = StageBackup(backup_dir_for(model_path), fingerprint, s.runtime())
    state, finished = _resume_state(backup, s.epochs)
    if not finished:
        with strategy.scope():
            inputs = (train_store, val_store, train, val, features)
            model, fit_model, x_train, x_val = _build(
                s, train["images"].shape[1], pretrained, init, inputs
            )
            data = (x_train, train["labels"], x_val, val["labels"], weights)
            state = _fit(s, model, fit_model, data, backup, state)
    _finish(state, backup, model_path, history_path, s.checkpoint_monitor)
    return state["rows"]


def _finish(state, backup: StageBackup, model_path, history_path, monitor: str) -> None:
    """Write the history and put the best checkpoint at ``model_path``, then remove the
    backup; raises RuntimeError if no epoch was checkpointed (``monitor`` never finite)."""
    if state is None or state["best"] is None:
        backup.clear()
        raise RuntimeError(f"no checkpoint written: {monitor} was never finite")
    write_history(state["rows"], history_path)
    publish(backup.directory / state["best"]["file"], Path(model_path))
    backup.clear()
    best = state["best"]
    print(f"best epoch {best['epoch']} ({monitor} {best['value']:.5f})")
