"""The classifier: VGG19 base + the seed protocol's dense head, stage freezing, optimisers.

Length: over 400 lines because the architecture, the preprocessing layers (old and new
file formats), stage freezing and the optimisers must agree on layer names; kept together.

Owned by the model half of the pipeline. Touches no files except through Keras' own
``load_model`` (reading a ``.keras`` file) and ``VGG19(weights=path)`` (reading the ImageNet
``.h5``). Imports TensorFlow/Keras, so only training, evaluation and tests import it, never the
Snakefile.

The model takes ``(N, S, S, 3) uint8`` RGB images (as stored by :mod:`cxr.store`) and applies
``keras.applications.vgg19.preprocess_input`` exactly once, in its first layer
(:func:`vgg19_preprocessing`, built from Keras' own layers), so callers never preprocess and a
saved model is self-contained: plain ``keras.models.load_model`` reads it, without this package.
Output: ``(N, 2)`` softmax over :data:`cxr.CLASSES` (column 1 = ``p_covid``).

References
----------
- Simonyan & Zisserman (2014), Very Deep Convolutional Networks for Large-Scale Image
  Recognition, arXiv:1409.1556 (VGG19, the Caffe/ImageNet BGR mean used by preprocess_input).
- Keras applications: https://keras.io/api/applications/vgg/
- Keras fine-tuning guide (freeze, then recompile):
  https://keras.io/guides/transfer_learning/
"""

from __future__ import annotations

import keras

from cxr import CLASSES

#: Name of the nested VGG19 model inside the classifier (``model.get_layer(BASE_NAME)``).
BASE_NAME = "vgg19"
#: Layer names of the head, in order (after the base).
HEAD_NAMES = ("flatten", "dense_01", "batch_norm", "dropout_01", "dense_02", "dropout_02")
OUTPUT_NAME = "predictions"
OPTIMIZERS = ("rmsprop", "sgd")


#: ImageNet channel means in B, G, R order that ``preprocess_input`` subtracts ('caffe' mode;
#: keras/src/applications/imagenet_utils.py; Simonyan & Zisserman 2014).
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)


def vgg19_preprocessing(image_size: int, name: str = "vgg19_preprocess") -> keras.Model:
    """``keras.applications.vgg19.preprocess_input`` as a small model of built-in Keras layers.

    ``(N, S, S, 3)`` RGB in 0..255 (uint8) -> float32 BGR minus :data:`IMAGENET_BGR_MEAN`, no
    scaling by 1/255: bit-identical to ``preprocess_input(x.astype("float32"))`` (the channel
    flip only copies values; ``x * 1.0 + (-m)`` rounds exactly as ``x - m``). The flip is three
    ``Cropping3D`` that each keep one channel (the image reshaped to ``(S, S, 3, 1)``), joined
    in B, G, R order; the mean goes through ``Rescaling(1.0, offset=-mean)``. No weights, no
    custom class, no ``Lambda``: a saved classifier loads with plain
    ``keras.models.load_model`` in safe mode, without importing this package.

    Parameters
    ----------
    image_size : int, side S (px) of the square input.
    name : the nested model's name (the classifier's layer ``"vgg19_preprocess"``).

    Returns
    -------
    keras.Model
        Input ``(None, S, S, 3) uint8``; output ``(None, S, S, 3) float32``.
    """
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="rgb")
    x = keras.layers.Reshape((image_size, image_size, 3, 1), name="channels_as_depth")(inputs)
    keep = {"red": (0, 2), "green": (1, 1), "blue": (2, 0)}  # crop (before, after) channel axis
    bgr = [
        keras.layers.Cropping3D(
            ((0, 0), (0, 0), keep[colour]), data_format="channels_last", name=colour
        )(x)
        for colour in ("blue", "green", "red")
    ]
    x = keras.layers.Concatenate(axis=3, name="bgr")(bgr)
    x = keras.layers.Reshape((image_size, image_size, 3), name="bgr_image")(x)
    offset = [-m for m in IMAGENET_BGR_MEAN]
    outputs = keras.layers.Rescaling(1.0, offset=offset, name="minus_imagenet_mean")(x)
    return keras.Model(inputs, outputs, name=name)


@keras.saving.register_keras_serializable(package="cxr")
class VGG19Preprocess(keras.layers.Layer):
    """The preprocessing layer of models saved before :func:`vgg19_preprocessing` (kept so
    that those files still load through :func:`load_model`; new models do not use it).

    Casts ``(N, S, S, 3)`` RGB in 0..255 (any dtype) to float32, flips RGB to BGR and subtracts
    the ImageNet channel means ``(103.939, 116.779, 123.68)`` (B, G, R); no scaling by 1/255.
    Registered as serializable, so ``keras.models.load_model`` rebuilds it once this module has
    been imported (no ``Lambda``, so loading needs no ``safe_mode=False``).
    """

    def call(self, inputs):
        x = keras.ops.cast(inputs, "float32")
        return keras.applications.vgg19.preprocess_input(x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(inputs.shape, dtype="float32")


#: Custom objects of classifiers saved before :func:`vgg19_preprocessing`, by registered name,
#: for ``keras.models.load_model`` (models built now have none).
CUSTOM_OBJECTS = {keras.saving.get_registered_name(VGG19Preprocess): VGG19Preprocess}


def build_model(
    image_size: int,
    weights: str | None = None,
    dense_units: tuple[int, int] = (1024, 512),
    dropout: tuple[float, float] = (0.5, 0.3),
) -> keras.Model:
    """Build the classifier (uncompiled, base frozen as for stage 1).

    Architecture (the seed protocol): uint8 input -> :func:`vgg19_preprocessing` -> VGG19
    (``include_top=False``) -> Flatten -> Dense(dense_units[0], relu, ``"dense_01"``) ->
    BatchNormalization -> Dropout(dropout[0]) -> Dense(dense_units[1], relu) ->
    Dropout(dropout[1]) -> Dense(2, softmax).

    Parameters
    ----------
    image_size : int
        Side S (px) of the square input ``(S, S, 3)``; VGG19 needs S >= 32 (the seed uses 224).
    weights : str or None
        Path to ``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5`` (ImageNet weights, the
        file Keras downloads), or None for random initialisation (tests only).
    dense_units : pair of int
        Units of the two hidden dense layers (seed: 1024, 512).
    dropout : pair of float
        Dropout rates after them (seed: 0.5, 0.3), each in [0, 1).

    Returns
    -------
    keras.Model
        Input ``(None, S, S, 3) uint8``; output ``(None, 2) float32`` softmax probabilities in
        :data:`cxr.CLASSES` order. The base is the nested model ``BASE_NAME``.

    Raises
    ------
    ValueError
        If ``image_size < 32``, the head sizes are not pairs, or Keras refuses ``weights``
        (missing file).
    """
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 for VGG19, got {image_size}")
    if len(dense_units) != 2 or len(dropout) != 2:
        raise ValueError(f"dense_units and dropout must be pairs, got {dense_units}, {dropout}")
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    x = vgg19_preprocessing(image_size)(inputs)
    base = keras.applications.VGG19(
        include_top=False,
        weights=None if weights is None else str(weights),
        input_shape=(image_size, image_size, 3),
    )
    base.name = BASE_NAME
    x = base(x)
    x = keras.layers.Flatten(name=HEAD_NAMES[0])(x)
    x = keras.layers.Dense(dense_units[0], activation="relu", name=HEAD_NAMES[1])(x)
    x = keras.layers.BatchNormalization(name=HEAD_NAMES[2])(x)
    x = keras.layers.Dropout(dropout[0], name=HEAD_NAMES[3])(x)
    x = keras.layers.Dense(dense_units[1], activation="relu", name=HEAD_NAMES[4])(x)
    x = keras.layers.Dropout(dropout[1], name=HEAD_NAMES[5])(x)
    # float32 under every precision policy: the softmax, the loss and the metrics (Keras
    # mixed-precision guide: "the last layer ... float32").
    outputs = keras.layers.Dense(
        len(CLASSES), activation="softmax", name=OUTPUT_NAME, dtype="float32"
    )(x)
    model = keras.Model(inputs, outputs, name="cxr_vgg19")
    set_frozen(model, "all")
    return model


def base_of(model: keras.Model) -> keras.Model:
    """The nested VGG19 base (22 layers) of a classifier built by :func:`build_model`.

    Raises
    ------
    ValueError
        If ``model`` has no layer named :data:`BASE_NAME` (from ``Model.get_layer``).
    """
    return model.get_layer(BASE_NAME)


def set_frozen(model: keras.Model, frozen_layers: int | str) -> list[str]:
    """Freeze ``base.layers[:frozen_layers]``, make every other layer trainable.

    The seed protocol's stages: ``"all"`` (model_01, the whole base), 17 (model_02: input and
    blocks 1-4 frozen, block 5 trainable), 12 (model_03: blocks 4-5 trainable). ``base.layers``
    counts the input layer and the pooling layers (22 in all for VGG19 without top). The head is
    always trainable. Takes effect at the next ``compile`` (call :func:`compile_model` after).

    Parameters
    ----------
    model : keras.Model built by :func:`build_model` (or loaded from one).
    frozen_layers : int in [0, 22] or ``"all"``.

    Returns
    -------
    list of str
        Names of the base layers that have trainable weights now, in order.

    Raises
    ------
    ValueError
        If ``frozen_layers`` is neither ``"all"`` nor an int in ``[0, len(base.layers)]``.
    """
    base = base_of(model)
    n_layers = len(base.layers)
    if frozen_layers == "all":
        n = n_layers
    elif isinstance(frozen_layers, int) and not isinstance(frozen_layers, bool):
        n = frozen_layers
    else:
        raise ValueError(f"frozen_layers must be an int or 'all', got {frozen_layers!r}")
    if not 0 <= n <= n_layers:
        raise ValueError(f"frozen_layers must be in [0, {n_layers}], got {n}")
    model.trainable = True
    base.trainable = True
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= n
    return [layer.name for layer in base.layers if layer.trainable and layer.weights]


def learning_rate_schedule(learning_rate: float, decay: float = 0.0):
    """The learning rate of Keras 2's ``decay`` argument, as a Keras 3 schedule.

    Keras 2 optimisers with ``decay=d`` used ``lr_k = lr0 / (1 + d * k)`` at step k (one step =
    one batch). Keras 3 dropped ``decay``; ``InverseTimeDecay(lr0, decay_steps=1,
    decay_rate=d)`` gives the same values. Source: Keras 2.x ``optimizers.py`` (``lr *= 1. /
    (1. + self.decay * iterations)``) and
    https://keras.io/api/optimizers/learning_rate_schedules/inverse_time_decay/

    Parameters
    ----------
    learning_rate : float > 0, lr0.
    decay : float >= 0, per step; 0 gives the constant ``learning_rate`` (a float).

    Returns
    -------
    float or keras.optimizers.schedules.InverseTimeDecay

    Raises
    ------
    ValueError
        If ``learning_rate <= 0`` or ``decay < 0``.
    """
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    if decay < 0:
        raise ValueError(f"decay must be >= 0, got {decay}")
    if decay == 0:
        return float(learning_rate)
    return keras.optimizers.schedules.InverseTimeDecay(
        float(learning_rate), decay_steps=1, decay_rate=float(decay)
    )


def make_optimizer(
    optimizer: str,
    learning_rate: float,
    decay: float = 0.0,
    momentum: float = 0.0,
    nesterov: bool = False,
) -> keras.optimizers.Optimizer:
    """A fresh optimiser for one stage.

    Seed protocol: model_01 and model_02 ``RMSprop(1e-3)`` (Keras defaults rho 0.9,
    epsilon 1e-7); model_03 ``SGD(1e-4, momentum=0.9, nesterov=True, decay=1e-6)`` with the
    decay as :func:`learning_rate_schedule`.

    Parameters
    ----------
    optimizer : ``"rmsprop"`` or ``"sgd"``.
    learning_rate : float > 0, initial learning rate.
    decay : float >= 0, Keras-2 style per-step inverse time decay.
    momentum : float in [0, 1).
    nesterov : bool, Nesterov momentum (SGD only).

    Raises
    ------
    ValueError
        Unknown optimiser, ``nesterov`` with RMSprop, or values out of range.
    """
    lr = learning_rate_schedule(learning_rate, decay)
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if optimizer == "rmsprop":
        if nesterov:
            raise ValueError("nesterov applies to sgd only")
        return keras.optimizers.RMSprop(learning_rate=lr, momentum=momentum)
    if optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=momentum, nesterov=nesterov)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")


def compile_model(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> keras.Model:
    """Compile with categorical cross-entropy and accuracy (the seed protocol); returns model.

    Must follow every :func:`set_frozen`, so the new ``trainable`` flags take effect.
    """
    model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def load_model(path) -> keras.Model:
    """Load a classifier saved as ``.keras`` (uncompiled: each stage compiles its own).

    Keras' safe mode is on (``safe_mode=True``, said explicitly): a file whose config holds a
    ``Lambda`` (arbitrary Python bytecode) is refused rather than run. Models built now need
    no custom object (``keras.models.load_model(path)`` alone reads them); the custom layer of
    older files, :class:`VGG19Preprocess`, is passed by its registered name
    (``"cxr>VGG19Preprocess"``).
    Only the Keras 3 zip format is read: legacy ``.h5`` / SavedModel files are refused. No
    pickle is involved (the ``.keras`` zip holds JSON config and HDF5 arrays).
    Source: https://keras.io/api/models/model_saving_apis/model_saving_and_loading/

    Parameters
    ----------
    path : path-like, a ``.keras`` file written by ``Model.save``.

    Returns
    -------
    keras.Model
        Input ``(None, S, S, 3) uint8``, output ``(None, 2)`` softmax (see :func:`build_model`).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If it is not a Keras 3 ``.keras`` zip, or safe mode refuses it (a ``Lambda`` layer).
    """
    import zipfile
    from pathlib import Path

    if not Path(path).is_file():
        raise FileNotFoundError(f"no model at {path}")
    if Path(path).suffix != ".keras" or not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a Keras 3 .keras model file")
    model = keras.models.load_model(
        path, custom_objects=CUSTOM_OBJECTS, compile=False, safe_mode=True
    )
    return with_policy(model, keras.config.dtype_policy().name)


def with_policy(model: keras.Model, policy: str) -> keras.Model:
    """``model`` computing in the dtype policy ``policy``, its output layer in float32.

    A saved model is float32 (:func:`cxr.io.save_keras`); :func:`load_model` calls this with
    the global policy (:func:`cxr.runtime.apply_precision`), so a model loaded under
    ``mixed_bfloat16`` runs as one built under it. Rebuilds the model from its config with
    every layer's policy but :data:`OUTPUT_NAME`'s set to ``policy``, then copies every
    variable (weights, batch-norm statistics, dropout seed states; float32 under any policy).

    Returns
    -------
    keras.Model, ``model`` itself when its layers already have those policies.

    Raises
    ------
    ValueError
        If ``policy`` is not a Keras dtype policy (from Keras).
    """
    want = keras.DTypePolicy(policy).name
    if all(
        layer.dtype_policy.name == ("float32" if layer.name == OUTPUT_NAME else want)
        for layer in _leaf_layers(model)
    ):
        return model
    config = keras.saving.serialize_keras_object(model)
    _set_policies(config, keras.saving.serialize_keras_object(keras.DTypePolicy(want)))
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(want)  # the nested models' own policy
    try:
        rebuilt = keras.saving.deserialize_keras_object(config, custom_objects=CUSTOM_OBJECTS)
    finally:
        keras.config.set_dtype_policy(before)
    for new, old in zip(rebuilt.variables, model.variables, strict=True):
        new.assign(old)
    return rebuilt


def _leaf_layers(model: keras.Model) -> list:
    """The layers of ``model`` and of the models nested in it, without input layers."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out += _leaf_layers(layer)
        elif not isinstance(layer, keras.layers.InputLayer):
            out.append(layer)
    return out


def _set_policies(config, policy: dict) -> None:
    """Set, in place, the ``dtype`` of every layer config in ``config`` (a serialised model)
    to ``policy``, except that of the layer :data:`OUTPUT_NAME` (float32)."""
    if isinstance(config, list):
        for item in config:
            _set_policies(item, policy)
    elif isinstance(config, dict):
        dtype = config.get("dtype")
        if isinstance(dtype, dict) and dtype.get("class_name") == "DTypePolicy":
            if config.get("name") != OUTPUT_NAME:
                config["dtype"] = dict(policy)
        for value in config.values():
            _set_policies(value, policy)


#: Base layers whose outputs the feature cache holds: the inputs of the trainable part in
#: stage 3 (``frozen_layers=12``), stage 2 (17) and stage 1 (``"all"``).
CACHE_LAYERS = ("block3_pool", "block4_pool", "block5_pool")


def frozen_count(model: keras.Model, frozen_layers: int | str) -> int:
    """How many base layers ``frozen_layers`` freezes (``"all"`` -> ``len(base.layers)``).

    Raises
    ------
    ValueError
        As :func:`set_frozen`.
    """
    n_layers = len(base_of(model).layers)
    if frozen_layers == "all":
        return n_layers
    if isinstance(frozen_layers, bool) or not isinstance(frozen_layers, int):
        raise ValueError(f"frozen_layers must be an int or 'all', got {frozen_layers!r}")
    if not 0 <= frozen_layers <= n_layers:
        raise ValueError(f"frozen_layers must be in [0, {n_layers}], got {frozen_layers}")
    return frozen_layers


def cut_layer(model: keras.Model, frozen_layers: int | str) -> str | None:
    """Name of the last frozen base layer, whose output is the input of the trainable part.

    ``"all"`` -> ``"block5_pool"``, 17 -> ``"block4_pool"``, 12 -> ``"block3_pool"``; None when
    nothing is frozen (0) or only the input layer (1): then there is nothing to cache.
    """
    n = frozen_count(model, frozen_layers)
    if n <= 1:
        return None
    return base_of(model).layers[n - 1].name


def frozen_digest(model: keras.Model, frozen_layers: int | str) -> str:
    """sha256 (hex) of the weights of the frozen part (``base.layers[:n]``): names, shapes,
    dtypes and bytes, and, under a precision other than float32, the layers' dtype policy
    (features computed in bfloat16 differ; float32 digests are those of earlier versions).
    Cached features are valid for a model exactly when this matches."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for layer in base_of(model).layers[: frozen_count(model, frozen_layers)]:
        if layer.dtype_policy.name != "float32":
            digest.update(f"{layer.name}:{layer.dtype_policy.name};".encode())
        for w in layer.weights:
            a = np.ascontiguousarray(w.numpy())
            digest.update(f"{layer.name}/{w.name}:{a.shape}:{a.dtype};".encode())
            digest.update(a.tobytes())
    return digest.hexdigest()


def feature_extractor(model: keras.Model, layer_names) -> keras.Model:
    """A model mapping ``(N, S, S, 3) uint8`` images to the outputs of the named base layers.

    Shares the classifier's layers (the preprocessing layer and the base): one forward pass
    gives every named output. Output: one float32 array per name (a list, in order).
    """
    base = base_of(model)
    inner = keras.Model(base.inputs, [base.get_layer(name).output for name in layer_names])
    inputs = keras.Input(model.input_shape[1:], dtype="uint8", name="image")
    x = model.get_layer("vgg19_preprocess")(inputs)
    outputs = inner(x)
    return keras.Model(inputs, list(outputs), name="cxr_features")


def trainable_tail(model: keras.Model, frozen_layers: int | str) -> keras.Model:
    """The part of the classifier after the frozen layers, as a model of its own.

    Input: the output of :func:`cut_layer` (e.g. ``(None, 14, 14, 512) float32`` block4_pool
    at 224 px); then ``base.layers[n:]`` and the head, *the same layer objects* as in
    ``model`` (shared weights, and the dropout layers' seed generators). Training the tail
    on cached features therefore trains ``model``: the full model applied to the images the
    features came from computes the same function, the frozen layers being constants.

    Raises
    ------
    ValueError
        If nothing is frozen (:func:`cut_layer` is None).
    """
    cut = cut_layer(model, frozen_layers)
    if cut is None:
        raise ValueError(f"frozen_layers={frozen_layers!r} freezes no layer: nothing to cut")
    base = base_of(model)
    n = frozen_count(model, frozen_layers)
    inputs = keras.Input(base.get_layer(cut).output.shape[1:], dtype="float32", name=cut)
    x = inputs
    for layer in base.layers[n:]:
        x = layer(x)
    layers = model.layers
    for layer in layers[layers.index(base) + 1 :]:
        x = layer(x)
    return keras.Model(inputs, x, name=f"cxr_tail_{cut}")
