"""The bad-input corpus through the smoke workflow: every file quarantined with its reason,
every convertible one loaded to the expected array, and no step crashed."""

import numpy as np
import pandas as pd
import pytest

from cxr.images import load_rgb

from .corpus import CROSS_CLASS_KERMANY, EXPECTED, expected_pixels

pytestmark = pytest.mark.e2e
RAW = "data/raw/covid-chestxray-dataset/images/"


@pytest.fixture(scope="module")
def tables(smoke_run):
    read = lambda rel: pd.read_csv(smoke_run / rel, dtype=str, keep_default_na=False)  # noqa: E731
    return read("data/interim/manifest.csv"), read("data/interim/excluded.csv")


@pytest.mark.parametrize("name", [n for n, r in EXPECTED.items() if r])
def test_bad_file_excluded_with_reason(tables, name):
    manifest, excluded = tables
    rows = excluded[excluded.path == RAW + name]
    assert rows.reason.tolist() == [EXPECTED[name]]
    assert (manifest.path == RAW + name).sum() == 0


def test_cross_class_copy_excluded_from_kermany_too(tables):
    manifest, excluded = tables
    path = "data/raw/" + CROSS_CLASS_KERMANY
    assert excluded[excluded.path == path].reason.tolist() == ["same image in both classes"]


@pytest.mark.parametrize("name", [n for n, r in EXPECTED.items() if r is None])
def test_convertible_file_taken(smoke_run, tables, name):
    manifest, _ = tables
    row = manifest[manifest.path == RAW + name]
    assert len(row) == 1 and row.label.item() == "covid"
    rgb = load_rgb(smoke_run / (RAW + name))
    assert rgb.dtype == np.uint8 and rgb.shape[2] == 3
    assert (int(row.height.item()), int(row.width.item())) == rgb.shape[:2]
    want = expected_pixels(name)
    assert want is not None and np.array_equal(rgb, want)


def test_exif_rotation_and_formats_recorded(tables):
    manifest, _ = tables
    m = manifest.set_index("path")
    assert (
        m.at[RAW + "ok-exif-rotated.jpg", "width"],
        m.at[RAW + "ok-exif-rotated.jpg", "height"],
    ) == ("200", "300")
    assert m.at[RAW + "ok-png-named.jpg", "format"] == "PNG"
    assert m.at[RAW + "ok-16bit.png", "mode"] == "I;16"
    assert m.at[RAW + "ok-cmyk.jpg", "mode"] == "CMYK"
