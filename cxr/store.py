"""The preprocessed split store: every image of a split decoded once, resized, in one array.

One ``.npz`` file per split (``data/store/{train,val,test}.npz``), written by the preprocess
rule and read by training and evaluation. Arrays (no pickled objects, so it loads with
``allow_pickle=False``):

- ``images``: ``(N, S, S, 3) uint8``, RGB, S = ``preprocess.image_size``
- ``labels``: ``(N,) int8``, index into :data:`cxr.CLASSES` (1 = covid)
- ``paths``: ``(N,) str``, the image file each row came from
- ``patient_ids``: ``(N,) str``

The feature caches computed from a store are in :mod:`cxr.features`.
"""

from __future__ import annotations

import numpy as np

from cxr.io import savez

KEYS = ("images", "labels", "paths", "patient_ids")


def save_store(path, images, labels, paths, patient_ids) -> None:
    """Write a split store atomically (:func:`cxr.io.savez`).

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
    savez(path, images=images, labels=labels, paths=paths, patient_ids=patient_ids)


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
