"""The feature cache: outputs of the frozen part of VGG19, computed once per image.

With real-time augmentation off (config ``train.cache_features: true``,
``train.realtime_augmentation: false``) the frozen part of the network is a constant function
of the image, so its output (block5_pool for stage 1, block4_pool for stage 2, block3_pool for
stage 3; :func:`cxr.model.cut_layer`) is computed once per image (:func:`compute_features`, by
the features rule, ``scripts/features.py``, for every stage at once) and only the trainable
tail (:func:`cxr.model.trainable_tail`, the same layer objects) is trained on it
(:mod:`cxr.train`). Same batches, same dropout masks, same weights at the end up to float
rounding; the saved model is the whole classifier, as without the cache.

Files (``data/features/{train,val}.npz``, :func:`save_features`): one array per layer, the
store's labels and a ``meta`` record naming the store (its sha256) and, per layer, a digest of
the frozen weights that computed it (:func:`cxr.model.frozen_digest`), so a stage uses only
features of its own frozen weights (:func:`load_features`, :func:`cached_inputs`).

Comes after :mod:`cxr.model` and before the training modules: the features rule imports
this, never the training loop, so editing training does not invalidate 2.6 GB of features.
"""

from __future__ import annotations

import json
import time

import numpy as np

from cxr.io import savez
from cxr.sources import file_hash

#: Version of the feature cache layout; a file of another version is not used.
FEATURES_VERSION = 1


def feature_cache_off(cache_features: bool, realtime_augmentation: bool) -> str | None:
    """Why the feature cache is off for this configuration (config ``train``), or None if on.

    The cache needs ``cache_features`` and real-time augmentation off: with augmentation on,
    every epoch trains on new images, so there is nothing to compute once.
    """
    if not cache_features:
        return "train.cache_features is false"
    if realtime_augmentation:
        return "train.realtime_augmentation is true: every epoch trains on new images"
    return None


class UnusableFeatures(ValueError):
    """A feature cache that holds no usable features for this stage: written with the cache
    off, of another layout version, without the layer, or computed with other frozen weights.
    Training computes the features itself instead (nothing is wrong with the inputs)."""


def save_features(
    path, features: dict, labels, digests: dict, store_sha256: str | None, off: str | None = None
) -> None:
    """Write a feature cache (``.npz``, uncompressed, loads with ``allow_pickle=False``).

    Arrays: one per layer name (``(N, h, w, c) float32``; VGG19 at 224 px: block3_pool
    ``(N, 28, 28, 256)``, block4_pool ``(N, 14, 14, 512)``, block5_pool ``(N, 7, 7, 512)``,
    1.3 MB per image together), ``labels`` (``(N,) int8``, the store's), and ``meta``: JSON
    ``{"version", "store_sha256", "layers": {name: digest}, "off"}``, ``digest`` being
    :func:`cxr.model.frozen_digest` of the weights that computed that layer's output.
    ``off``: None, or why no features were computed (then ``features`` and ``digests`` are
    empty): the cache is off for this configuration and the file only stands in for it.
    Written atomically (:func:`cxr.io.savez`).
    """
    meta = {
        "version": FEATURES_VERSION,
        "store_sha256": store_sha256,
        "layers": dict(digests),
        "off": off,
    }
    arrays = {name: np.asarray(a, dtype=np.float32) for name, a in features.items()}
    savez(path, labels=np.asarray(labels, dtype=np.int8), meta=np.array(json.dumps(meta)), **arrays)


def features_meta(path) -> dict:
    """The ``meta`` record of a feature cache (see :func:`save_features`), arrays unread.

    Raises
    ------
    FileNotFoundError; ValueError if the file is not a feature cache.
    """
    with np.load(path, allow_pickle=False) as f:
        if "meta" not in f.files:
            raise ValueError(f"{path}: not a feature cache (no meta)")
        return json.loads(str(f["meta"]))


def load_features(path, layer: str, digest: str, store_sha256: str | None = None) -> np.ndarray:
    """One layer's cached features, after checking they belong to this model and store.

    Parameters
    ----------
    path : a file written by :func:`save_features`.
    layer : base layer name (:func:`cxr.model.cut_layer` of the stage).
    digest : :func:`cxr.model.frozen_digest` of the model being trained, for that cut.
    store_sha256 : sha256 of the store the features must come from, or None (not checked).

    Returns
    -------
    ``(N, h, w, c) float32``.

    Raises
    ------
    UnusableFeatures
        A cache written with the cache off, of another version, without that layer, or of
        other frozen weights (e.g. a stage that trained those layers before).
    ValueError
        Features of another store (a wiring error: the inputs do not belong together).
    """
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f["meta"]))
        if meta.get("version") != FEATURES_VERSION:
            raise UnusableFeatures(
                f"{path}: feature cache version {meta.get('version')}, expected {FEATURES_VERSION}"
            )
        if meta.get("off"):
            raise UnusableFeatures(f"{path}: no features ({meta['off']})")
        if layer not in meta["layers"] or layer not in f.files:
            raise UnusableFeatures(
                f"{path} has no {layer} features (it has {sorted(meta['layers'])})"
            )
        if meta["layers"][layer] != digest:
            raise UnusableFeatures(
                f"{path}: {layer} features were computed with other frozen weights"
            )
        if store_sha256 is not None and meta["store_sha256"] != store_sha256:
            raise ValueError(f"{path}: features of another store")
        return f[layer]


def compute_features(model, images, layer_names, batch_size: int = 32) -> dict:
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


def cached_inputs(model, frozen_layers, paths, stores, features=None):
    """Train and val inputs of the trainable tail: the stage's cut-layer features.

    From the feature caches ``features = (train, val)`` when given and usable (checked
    against the model's frozen weights and the stores, :func:`load_features`),
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

    cut = cut_layer(model, frozen_layers)
    if features is not None:
        digest = frozen_digest(model, frozen_layers)
        out = []
        try:
            for path, store_path, store in zip(features, paths, stores, strict=True):
                x = load_features(path, cut, digest, file_hash(store_path))
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
