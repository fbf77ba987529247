"""Grad-CAM heatmaps of the classifier, and the central lung box they are measured against.

Grad-CAM (Selvaraju et al. 2017): for the last convolution of VGG19 (``block5_conv4``, inside
the nested base :data:`cxr.model.BASE_NAME`), the feature maps ``A_k`` are weighted by the
spatial mean of the gradient of the explained class' **pre-softmax** score ``z_c``,
``alpha_k = mean_ij dz_c / dA_k[i, j]``; the heatmap is ``ReLU(sum_k alpha_k A_k)``, upsampled
bilinearly to the input size and divided by its maximum, so each map lies in [0, 1] with a
maximum of 1 (an all-zero map stays zero: no positive evidence). The explained class is the
predicted one unless given.

The central lung box: a fixed rectangle ``(x0, y0, x1, y1)`` in fractions of the image width
and height (config ``audit.lung_box``, default ``[0.15, 0.15, 0.85, 0.80]``): on a frontal
chest X-ray squashed to a square, as the store holds them, it covers most of both lungs and
little of the neck, shoulders, abdomen, borders, text markers and burnt-in labels. It is a
crude stand-in for lung masks, which neither source provides. :func:`heat_fraction` is the
share of a heatmap's total heat inside the box (uniform heat gives the box's area fraction);
:func:`mask_box` blanks the box out for the shortcut audit. Pixel ``(i, j)`` (row, column) of an
``H x W`` image is inside when its centre ``((j + 0.5) / W, (i + 0.5) / H)`` lies in
``[x0, x1) x [y0, y1)``.

Keras / TensorFlow are imported inside :func:`gradcam` only, so the box helpers load without
them.

References
----------
- Selvaraju et al. (2017), Grad-CAM: Visual Explanations from Deep Networks via
  Gradient-based Localization, ICCV, arXiv:1610.02391.
- Keras example "Grad-CAM class activation visualization":
  https://keras.io/examples/vision/grad_cam/
- DeGrave, Janizek & Lee (2021), AI for radiographic COVID-19 detection selects shortcuts over
  signal, Nature Machine Intelligence 3:610 (saliency outside the lungs).
"""

from __future__ import annotations

import numpy as np

#: Last convolution of VGG19 (14 x 14 maps for 224 px input).
LAYER = "block5_conv4"
#: Default central lung box (x0, y0, x1, y1), fractions of width and height.
LUNG_BOX = (0.15, 0.15, 0.85, 0.80)


def check_box(box) -> tuple[float, float, float, float]:
    """Return ``box`` as a float 4-tuple, or raise ValueError unless ``0 <= x0 < x1 <= 1`` and
    ``0 <= y0 < y1 <= 1``."""
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"lung box must be 4 numbers (x0, y0, x1, y1), got {box!r}") from exc
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise ValueError(f"lung box needs 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {box!r}")
    return x0, y0, x1, y1


def box_mask(height: int, width: int, box=LUNG_BOX) -> np.ndarray:
    """``(height, width) bool``: True for the pixels whose centres lie inside ``box``."""
    x0, y0, x1, y1 = check_box(box)
    cy = (np.arange(height) + 0.5) / height
    cx = (np.arange(width) + 0.5) / width
    return ((cy >= y0) & (cy < y1))[:, None] & ((cx >= x0) & (cx < x1))[None, :]


def box_area(height: int, width: int, box=LUNG_BOX) -> float:
    """Fraction of the pixels inside ``box``: the heat fraction of a uniform heatmap."""
    return float(box_mask(height, width, box).mean())


def heat_fraction(heat: np.ndarray, box=LUNG_BOX) -> np.ndarray:
    """Share of each heatmap's total heat inside ``box``.

    Parameters
    ----------
    heat : ``(N, H, W)`` non-negative floats (or one ``(H, W)`` map).

    Returns
    -------
    ``(N,)`` floats in [0, 1] (a scalar for one map); NaN for a map with no heat at all.
    """
    heat = np.asarray(heat, dtype=float)
    single = heat.ndim == 2
    heat = heat[None] if single else heat
    if heat.ndim != 3 or (heat < 0).any():
        raise ValueError(f"heat must be (N, H, W) and non-negative, got shape {heat.shape}")
    mask = box_mask(heat.shape[1], heat.shape[2], box)
    total = heat.sum(axis=(1, 2))
    inside = heat[:, mask].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(total > 0, inside / np.where(total > 0, total, 1), np.nan)
    return frac[0] if single else frac


def mask_box(images: np.ndarray, box=LUNG_BOX) -> np.ndarray:
    """A copy of ``(N, H, W, 3) uint8`` images with ``box`` filled with each image's mean colour.

    The mean (per image and channel, over the whole image, rounded) rather than black keeps the
    blanked region close to the image's own grey level, so the model is not handed a new,
    unnatural black square; what is left to see is everything outside the lungs.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    out = images.copy()
    mask = box_mask(images.shape[1], images.shape[2], box)
    means = np.rint(images.reshape(len(images), -1, 3).mean(axis=1)).astype(np.uint8)
    out[:, mask, :] = means[:, None, :]
    return out


def _chain(model):
    """The classifier's layers in call order around the target: (before, base, after)."""
    import keras

    from cxr.model import BASE_NAME

    names = [layer.name for layer in model.layers]
    if BASE_NAME not in names:
        raise ValueError(f"model has no nested base named {BASE_NAME!r}: layers {names}")
    i = names.index(BASE_NAME)
    skip = (keras.layers.InputLayer,)
    before = [layer for layer in model.layers[:i] if not isinstance(layer, skip)]
    after = model.layers[i + 1 :]
    base = model.layers[i]
    return before, [layer for layer in base.layers if not isinstance(layer, skip)], after


def gradcam(
    model,
    images: np.ndarray,
    layer: str = LAYER,
    class_index: int | None = None,
    batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM heatmaps of ``images`` for the model's predicted (or a given) class.

    The classifier must be a chain of layers with the base nested under
    :data:`cxr.model.BASE_NAME` (as :func:`cxr.model.build_model` makes it), the target
    ``layer`` inside the base, and a last layer that is a softmax ``Dense`` (its pre-softmax
    output is the explained score). Dropout and batch normalisation run in inference mode.

    Parameters
    ----------
    model : keras.Model, e.g. ``models/model_03.keras``.
    images : ``(N, S, S, 3) uint8`` (the model's input).
    layer : name of the convolution inside the base.
    class_index : explain this class for every image; None: each image's predicted class.
    batch_size : images per gradient pass (memory only; results do not depend on it).

    Returns
    -------
    heat : ``(N, S, S) float32`` in [0, 1], each map's maximum 1 (or all 0).
    probs : ``(N, 2) float32`` softmax of the same forward pass (column 1 = ``p_covid``).

    Raises
    ------
    ValueError
        If the model is not such a chain, ``layer`` is not in the base, or the images are not
        ``(N, S, S, 3)``.
    """
    import keras
    import tensorflow as tf

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"images must be (N, S, S, 3), got {images.shape}")
    before, base_layers, after = _chain(model)
    names = [x.name for x in base_layers]
    if layer not in names:
        raise ValueError(f"no layer {layer!r} in the base; it has {names}")
    k = names.index(layer)
    last = after[-1]
    if not isinstance(last, keras.layers.Dense):
        raise ValueError(f"the last layer must be a softmax Dense, got {type(last).__name__}")
    heats, probs = [], []
    for start in range(0, len(images), batch_size):
        x = tf.convert_to_tensor(images[start : start + batch_size])
        with tf.GradientTape() as tape:
            for lay in before + base_layers[:k]:
                x = lay(x, training=False)
            conv = base_layers[k](x, training=False)
            tape.watch(conv)
            x = conv
            for lay in base_layers[k + 1 :] + after[:-1]:
                x = lay(x, training=False)
            # The output layer is float32 under every precision (cxr.model.build_model).
            logits = tf.matmul(tf.cast(x, last.kernel.dtype), last.kernel) + last.bias
            chosen = (
                tf.argmax(logits, axis=1)
                if class_index is None
                else tf.fill([tf.shape(logits)[0]], tf.cast(class_index, tf.int64))
            )
            score = tf.reduce_sum(tf.gather(logits, chosen, axis=1, batch_dims=1))
        # float32 maps also when the network computes in 16 bits (runtime.precision).
        grads = tf.cast(tape.gradient(score, conv), tf.float32)
        conv = tf.cast(conv, tf.float32)
        alpha = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(alpha * conv, axis=-1))
        cam = tf.image.resize(cam[..., None], images.shape[1:3], method="bilinear")[..., 0]
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        cam = tf.where(peak > 0, cam / tf.where(peak > 0, peak, 1.0), 0.0)
        heats.append(np.clip(cam.numpy(), 0.0, 1.0).astype(np.float32))
        probs.append(tf.nn.softmax(logits, axis=1).numpy().astype(np.float32))
    return np.concatenate(heats), np.concatenate(probs)


def pick_sample(correct: np.ndarray, n_correct: int, n_wrong: int, seed: int):
    """Seeded choice of up to ``n_correct`` correct and ``n_wrong`` wrong predictions.

    Parameters
    ----------
    correct : ``(N,) bool``, True where the prediction was right.

    Returns
    -------
    (right, wrong) : sorted index arrays, drawn with ``numpy.random.default_rng(seed)`` (right
    first); fewer when there are fewer.
    """
    correct = np.asarray(correct, dtype=bool)
    rng = np.random.default_rng(seed)
    out = []
    for pool, n in ((np.flatnonzero(correct), n_correct), (np.flatnonzero(~correct), n_wrong)):
        n = min(int(n), len(pool))
        out.append(np.sort(rng.choice(pool, n, replace=False)) if n else pool[:0])
    return out[0], out[1]
