"""cxr.gradcam: the lung box helpers by hand, and Grad-CAM on tiny models.

A hand-made model checks that Grad-CAM follows the gradient: its two feature maps copy the
red and the green channel, the covid score sums the red map and the non_covid score the green
one; an image red on the left and green on the right must put covid heat on the left and
non_covid heat on the right. A 32 px VGG19 (random weights, built by cxr.model) checks shapes,
normalisation and that the probabilities are the model's own.
"""

import keras
import numpy as np
import pytest

from cxr.gradcam import (
    box_area,
    box_mask,
    check_box,
    gradcam,
    heat_fraction,
    mask_box,
    pick_sample,
)
from cxr.model import BASE_NAME, build_model


def test_box_mask_by_pixel_centres():
    # 10 x 10: centres at 0.05, 0.15, ..., 0.95; box x [0.2, 0.6), y [0.0, 0.3)
    m = box_mask(10, 10, (0.2, 0.0, 0.6, 0.3))
    assert m.shape == (10, 10) and m.sum() == 4 * 3
    assert m[0:3, 2:6].all() and not m[3:, :].any() and not m[:, :2].any()
    assert box_area(10, 10, (0.2, 0.0, 0.6, 0.3)) == pytest.approx(0.12)
    assert box_area(100, 100, (0.15, 0.15, 0.85, 0.80)) == pytest.approx(0.70 * 0.65)
    for bad in [(0.5, 0, 0.4, 1), (0, 0, 1.2, 1), (0, 0, 1), "abcd"]:
        with pytest.raises(ValueError):
            check_box(bad)


def test_heat_fraction():
    box = (0.0, 0.0, 0.5, 1.0)  # left half
    left = np.zeros((4, 4))
    left[:, :2] = 1.0
    uniform = np.ones((4, 4))
    none = np.zeros((4, 4))
    frac = heat_fraction(np.stack([left, uniform, none]), box)
    assert frac[0] == 1.0 and frac[1] == 0.5 and np.isnan(frac[2])
    assert heat_fraction(uniform, box) == 0.5  # one map -> a scalar
    with pytest.raises(ValueError):
        heat_fraction(-uniform, box)


def test_mask_box_fills_with_the_image_mean():
    images = np.zeros((2, 4, 4, 3), np.uint8)
    images[0] = 100
    images[1, :, :2] = 200  # mean 100 per channel
    out = mask_box(images, (0.5, 0.5, 1.0, 1.0))  # bottom-right 2 x 2
    assert (out[:, 2:, 2:] == 100).all()
    np.testing.assert_array_equal(out[:, :2], images[:, :2])  # top rows untouched
    np.testing.assert_array_equal(out[1, 2:, :2], images[1, 2:, :2])
    assert images[1, 3, 3, 0] == 0  # input not modified


def test_pick_sample_is_seeded_and_split_by_correctness():
    correct = np.array([True, False] * 10)
    right, wrong = pick_sample(correct, 3, 2, seed=1)
    assert len(right) == 3 and len(wrong) == 2
    assert correct[right].all() and not correct[wrong].any()
    assert list(right) == sorted(right)
    again = pick_sample(correct, 3, 2, seed=1)
    assert [list(x) for x in again] == [list(right), list(wrong)]
    r, w = pick_sample(np.ones(4, bool), 6, 6, seed=0)
    assert list(r) == [0, 1, 2, 3] and len(w) == 0


def channel_model(size=8):
    """uint8 image -> 'vgg19' base: 1x1 conv copying R and G (ReLU) -> Flatten -> softmax Dense.

    covid logit = sum of the R map, non_covid logit = sum of the G map (kernel set by hand).
    """
    inp = keras.Input((size, size, 3), dtype="uint8")
    b_in = keras.Input((size, size, 3))
    conv = keras.layers.Conv2D(2, 1, activation="relu", name="block5_conv4")
    base = keras.Model(b_in, conv(b_in), name=BASE_NAME)
    x = keras.layers.Lambda(lambda t: keras.ops.cast(t, "float32") / 255.0, name="scale")(inp)
    x = keras.layers.Flatten()(base(x))
    dense = keras.layers.Dense(2, activation="softmax", name="predictions")
    model = keras.Model(inp, dense(x))
    kernel = np.zeros((1, 1, 3, 2), np.float32)
    kernel[0, 0, 0, 0] = 1.0  # map 0 = red
    kernel[0, 0, 1, 1] = 1.0  # map 1 = green
    conv.set_weights([kernel, np.zeros(2, np.float32)])
    w = np.zeros((size * size * 2, 2), np.float32)
    w[1::2, 0] = 0.1  # non_covid <- green map
    w[0::2, 1] = 0.1  # covid <- red map
    dense.set_weights([w, np.zeros(2, np.float32)])
    return model


def test_gradcam_follows_the_gradient_of_the_explained_class():
    model = channel_model()
    image = np.zeros((1, 8, 8, 3), np.uint8)
    image[0, :, :4, 0] = 255  # red left
    image[0, :, 4:, 1] = 200  # green right (weaker: predicted class is covid)
    left = (0.0, 0.0, 0.5, 1.0)
    heat_covid, probs = gradcam(model, image, class_index=1)
    heat_non, _ = gradcam(model, image, class_index=0)
    heat_pred, _ = gradcam(model, image)
    assert probs[0, 1] > 0.5
    np.testing.assert_allclose(probs, model.predict(image, verbose=0), atol=1e-6)
    assert heat_covid.shape == (1, 8, 8) and heat_covid.dtype == np.float32
    assert heat_fraction(heat_covid, left)[0] > 0.9  # red is on the left
    assert heat_fraction(heat_non, left)[0] < 0.1  # green is on the right
    np.testing.assert_array_equal(heat_pred, heat_covid)  # default: the predicted class
    for h in (heat_covid, heat_non):
        assert h.min() >= 0 and h.max() == pytest.approx(1.0)


def test_gradcam_on_a_tiny_vgg19():
    keras.utils.set_random_seed(0)
    model = build_model(32, weights=None, dense_units=(8, 4))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    heat, probs = gradcam(model, images, batch_size=2)
    assert heat.shape == (3, 32, 32) and probs.shape == (3, 2)
    assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1
    # each map scaled to a maximum of 1, or all zero (no positive evidence); not all zero
    maxima = [float(h.max()) for h in heat]
    assert all(m == pytest.approx(1.0) or m == 0 for m in maxima), maxima
    assert sum(m == pytest.approx(1.0) for m in maxima) >= 1, maxima
    np.testing.assert_allclose(probs, model.predict(images, verbose=0), atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-6)
    with pytest.raises(ValueError, match="no layer"):
        gradcam(model, images, layer="block9_conv1")
    with pytest.raises(ValueError):
        gradcam(model, images[0])
