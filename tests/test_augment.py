"""The imgaug recipe: seeded reproducibility and the augmentation plan."""

import numpy as np
import pytest

from cxr.augment import augment_one, image_seed, plan


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)


def test_same_seed_same_bytes(image):
    a = augment_one(image, 1234)
    b = augment_one(image, 1234)
    assert a.dtype == np.uint8 and a.shape == image.shape
    assert np.array_equal(a, b)


def test_seeds_differ(image):
    outs = [augment_one(image, s).tobytes() for s in range(8)]
    assert len(set(outs)) == 8


def test_image_seed_is_stable_and_distinct():
    # SeedSequence([42, i]).generate_state(1)[0], computed independently of cxr.augment
    expected = int(np.random.SeedSequence([42, 3]).generate_state(1)[0])
    assert image_seed(42, 3) == expected
    assert len({image_seed(42, i) for i in range(100)}) == 100


def test_plan_cycles_sorted_parents_to_target():
    p = plan(["b.png", "a.png", "c.png"], target=8, seed=1)
    assert [x[0] for x in p] == [0, 1, 2, 3, 4]
    assert [x[1] for x in p] == ["a.png", "b.png", "c.png", "a.png", "b.png"]
    assert plan(["a.png"] * 3, target=2, seed=1) == []


def test_plan_without_parents_is_an_error():
    with pytest.raises(ValueError, match="no training COVID images"):
        plan([], target=5, seed=1)
