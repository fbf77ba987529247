"""The seed's imgaug recipe, and offline augmentation of the training COVID images.

The recipe (the seed protocol; imgaug's "heavy augmentation" example, trimmed) is used twice:
offline, to grow the training COVID set to ``augment.target`` images, and in real time during
training (``train.realtime_augmentation``). Runs on the numpy-2 build of the imgaug 0.4 API
(``pyimgaug``), imported as ``imgaug``.
"""

from __future__ import annotations

import numpy as np


def build_recipe(seed: int | None = None):
    """Return the seed protocol's imgaug pipeline, seeded.

    Fliplr 0.5, Flipud 0.2, Sometimes(0.5, Affine: translate +-20 %, rotate +-25 deg,
    shear +-8 deg, order [0, 1], cval 0-255, mode ALL), then SomeOf(0-5) in random order of:
    OneOf[GaussianBlur sigma 0-3, AverageBlur k 2-7], Sharpen(alpha 0-1, lightness 0.75-1.5),
    AdditiveGaussianNoise(scale 0-0.05*255, per_channel 0.5).

    Parameters
    ----------
    seed : int or None. The same seed gives the same sequence of augmentations (bit for bit).

    Returns
    -------
    ``imgaug.augmenters.Sequential``; call it as ``aug(image=img)`` with ``(H, W, 3) uint8``
    or ``aug(images=batch)`` with ``(N, H, W, 3) uint8``; output has the same shape and dtype.
    """
    import imgaug as ia
    import imgaug.augmenters as iaa

    recipe = iaa.Sequential(
        [
            iaa.Fliplr(0.5),
            iaa.Flipud(0.2),
            iaa.Sometimes(
                0.5,
                iaa.Affine(
                    translate_percent={"x": (-0.2, 0.2), "y": (-0.2, 0.2)},
                    rotate=(-25, 25),
                    shear=(-8, 8),
                    order=[0, 1],
                    cval=(0, 255),
                    mode=ia.ALL,
                ),
            ),
            iaa.SomeOf(
                (0, 5),
                [
                    iaa.OneOf([iaa.GaussianBlur((0, 3.0)), iaa.AverageBlur(k=(2, 7))]),
                    iaa.Sharpen(alpha=(0, 1.0), lightness=(0.75, 1.5)),
                    iaa.AdditiveGaussianNoise(loc=0, scale=(0.0, 0.05 * 255), per_channel=0.5),
                ],
                random_order=True,
            ),
        ]
    )
    if seed is not None:
        # seed_() reseeds the children too (Sequential(seed=...) would seed only the parent).
        recipe.seed_(seed)
    return recipe


def image_seed(seed: int, index: int) -> int:
    """Seed of the ``index``-th augmented image under run seed ``seed`` (a 32-bit int).

    Derived with ``numpy.random.SeedSequence([seed, index])`` so that images are independent of
    each other and of how many are made.
    """
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def augment_one(image: np.ndarray, seed: int) -> np.ndarray:
    """Augment one ``(H, W, 3) uint8`` image with the recipe seeded by ``seed``.

    Returns an ``(H, W, 3) uint8`` array; the same image and seed give the same bytes.
    """
    return build_recipe(seed)(image=image)


def plan(parents: list[str], target: int, seed: int) -> list[tuple[int, str, int]]:
    """Which augmented images to make: ``(index, parent, image_seed)`` for each.

    ``parents`` (the training COVID image paths) are sorted and cycled until originals plus
    augmented copies number ``target``. Nothing is made if there are already ``target`` or more.
    """
    parents = sorted(parents)
    n = max(0, target - len(parents))
    if n and not parents:
        raise ValueError("augment: no training COVID images to augment")
    return [(i, parents[i % len(parents)], image_seed(seed, i)) for i in range(n)]
