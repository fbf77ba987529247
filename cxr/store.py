"""The preprocessed split store: every image of a split decoded once, resized, in one array.

One ``.npz`` file per split (``data/store/{train,val,test}.npz``), written by the preprocess
rule and read by training and evaluation. Arrays (no pickled objects, so it loads with
``allow_pickle=False``):

- ``images``: ``(N, S, S, 3) uint8``, RGB, S = ``preprocess.image_size``
- ``labels``: ``(N,) int8``, index into :data:`cxr.CLASSES` (1 = covid)
- ``paths``: ``(N,) str``, the image file each row came from
- ``patient_ids``: ``(N,) str``

Also the feature caches of the features rule (``data/features/{train,val}.npz``,
:func:`save_features`): outputs of the frozen part of VGG19 for every image of a store, for
training with real-time augmentation off (:mod:`cxr.train`, "Feature cache").
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

KEYS = ("images", "labels", "paths", "patient_ids")


def save_store(path, images, labels, paths, patient_ids) -> None:
    """Write a split store atomically (temporary name, then rename).

    Parameters
    ----------
    path : path-like, ``.npz`` file to write.
    images : ``(N, S, S, 3) uint8`` array.
    labels : ``(N,)`` ints in ``{0, 1}``.
    paths, patient_ids : ``(N,)`` sequences of str.

    Raises
    ------
    ValueError if shapes or dtypes disagree.
    """
    images = np.asarray(images)
    n = len(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"{path}: images must be (N, S, S, 3) uint8, got {images.shape} {images.dtype}"
        )
    labels = np.asarray(labels, dtype=np.int8)
    paths = np.asarray(paths, dtype=str)
    patient_ids = np.asarray(patient_ids, dtype=str)
    for name, arr in (("labels", labels), ("paths", paths), ("patient_ids", patient_ids)):
        if arr.shape != (n,):
            raise ValueError(f"{path}: {name} has shape {arr.shape}, expected ({n},)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, images=images, labels=labels, paths=paths, patient_ids=patient_ids)
    os.replace(tmp, path)


def load_store(path) -> dict[str, np.ndarray]:
    """Read a split store written by :func:`save_store`.

    Returns a dict with the keys in :data:`KEYS` (shapes as in the module docstring).

    Raises
    ------
    FileNotFoundError if ``path`` does not exist; ValueError if a key is missing.
    """
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in KEYS if k not in f.files]
        if missing:
            raise ValueError(f"{path}: not a split store, missing arrays {missing}")
        return {k: f[k] for k in KEYS}


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an ``(H, W, 3) uint8`` image to ``(size, size, 3) uint8``.

    Aspect is not kept (as Keras' ``load_img(target_size=...)`` does in the seed protocol);
    bilinear resampling (Pillow), which, unlike nearest, does not alias fine lung texture.
    """
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR))


def preprocess_rows(rows, size: int, *, min_side: int = 1, max_pixels: int = 50_000_000) -> dict:
    """Decode and resize every image of a split once; return store arrays (see module doc).

    ``rows``: a DataFrame with ``path, label, patient_id`` (a split CSV, plus the augmented
    rows for train). Raises :class:`cxr.images.ImageError` naming the file if one no longer
    loads (the manifest step already excluded those that did not).
    """
    from cxr import LABEL_INDEX
    from cxr.images import load_rgb

    images = np.zeros((len(rows), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(rows["path"]):
        images[i] = resize_square(load_rgb(path, min_side=min_side, max_pixels=max_pixels), size)
    return {
        "images": images,
        "labels": np.array([LABEL_INDEX[x] for x in rows["label"]], dtype=np.int8),
        "paths": rows["path"].to_numpy(dtype=str),
        "patient_ids": rows["patient_id"].to_numpy(dtype=str),
    }


def file_digest(path) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks.

    Raises
    ------
    OSError
        If the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    Written as ``<name>.tmp.npz``, then renamed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "version": FEATURES_VERSION,
        "store_sha256": store_sha256,
        "layers": dict(digests),
        "off": off,
    }
    tmp = path.with_name(path.stem + ".tmp.npz")
    arrays = {name: np.asarray(a, dtype=np.float32) for name, a in features.items()}
    np.savez(
        tmp, labels=np.asarray(labels, dtype=np.int8), meta=np.array(json.dumps(meta)), **arrays
    )
    os.replace(tmp, path)


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
