"""Tests for cxr.images: a generated corpus (one file per kind) plus a few real dataset files.

Every expected pixel value is worked out by hand from the documented conversion rule, not by
calling Pillow's conversion.
"""

from __future__ import annotations

import io
import pickle
import re
import struct
import types
import zlib
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from cxr.images import (
    REASONS,
    ImageError,
    format_mismatch,
    image_info,
    load_image,
    load_rgb,
    perceptual_hash,
    png_significant_bits,
    sniff_format,
    to_rgb,
)

from .conftest import MIRROR

# Any warning (numpy's invalid-value, Pillow's) is a failure: conversions must be clean.
pytestmark = pytest.mark.filterwarnings("error")

# The real mirror beside the checkout (CXR_SHARED; tests/conftest.py), never a fixed path.
REAL_IMAGES = MIRROR / "covid-chestxray-dataset/images"


def _save(tmp_path, name, image, fmt, **kwargs) -> Path:
    path = tmp_path / name
    image.save(path, fmt, **kwargs)
    return path


def _write(tmp_path, name, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _raises(reason, path, **kwargs) -> ImageError:
    with pytest.raises(ImageError) as info:
        load_rgb(path, **kwargs)
    assert info.value.reason == reason, str(info.value)
    assert info.value.path == str(path)
    return info.value


def _noise_rgb(h=64, w=80, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _png_with_header_size(width, height) -> bytes:
    """A valid 1x1 grey PNG whose IHDR (with a correct CRC) claims ``width x height``."""
    buf = io.BytesIO()
    Image.new("L", (1, 1), 7).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# --- ImageError ------------------------------------------------------------------------------


def test_image_error_fields_str_and_pickle():
    err = ImageError("a/b.jpg", "truncated", "12 bytes not processed")
    assert isinstance(err, ValueError)
    assert (err.path, err.reason, err.detail) == ("a/b.jpg", "truncated", "12 bytes not processed")
    assert str(err) == "a/b.jpg: truncated: 12 bytes not processed"
    assert str(ImageError("x.png", "too small")) == "x.png: too small"
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.reason, back.detail, str(back)) == (
        err.path,
        err.reason,
        err.detail,
        str(err),
    )


def test_image_error_rejects_unknown_reason():
    with pytest.raises(ValueError, match="unknown ImageError reason"):
        ImageError("x.png", "broken")


# --- files that do not decode ----------------------------------------------------------------


def test_garbage_bytes_unreadable(tmp_path):
    path = _write(tmp_path, "garbage.jpg", b"this is not an image\n" * 40)
    _raises("unreadable", path)
    with pytest.raises(ImageError) as info:
        sniff_format(path)
    assert info.value.reason == "unreadable"
    with pytest.raises(ImageError) as info:
        image_info(path)
    assert info.value.reason == "unreadable"


def test_empty_file(tmp_path):
    err = _raises("empty file", _write(tmp_path, "empty.png", b""))
    assert str(err).startswith(str(tmp_path / "empty.png") + ": empty file")


def test_missing_file(tmp_path):
    _raises("missing", tmp_path / "nope.png")


def test_directory_unreadable(tmp_path):
    (tmp_path / "dir.png").mkdir()
    _raises("unreadable", tmp_path / "dir.png")


@pytest.mark.parametrize("keep", [0.5, "no EOI"])
def test_truncated_jpeg(tmp_path, keep):
    full = _save(tmp_path, "full.jpg", _noise_rgb(), "JPEG", quality=90).read_bytes()
    assert full[-2:] == b"\xff\xd9"
    cut = len(full) - 2 if keep == "no EOI" else int(len(full) * keep)
    _raises("truncated", _write(tmp_path, "cut.jpg", full[:cut]))


def test_truncated_png(tmp_path):
    full = _save(tmp_path, "full.png", _noise_rgb(), "PNG").read_bytes()
    path = _write(tmp_path, "cut.png", full[: len(full) // 2])
    assert sniff_format(path) == "PNG"  # the header is intact ...
    _raises("truncated", path)  # ... the pixel data is not


def test_corrupt_png_data(tmp_path):
    data = bytearray(_save(tmp_path, "ok.png", _noise_rgb(), "PNG").read_bytes())
    data[data.find(b"IDAT") + 4 + 100] ^= 0xFF  # damage the compressed pixel stream
    _raises("corrupt", _write(tmp_path, "bad.png", bytes(data)))


# --- format vs extension ---------------------------------------------------------------------


def test_png_named_jpg_loads_exactly_and_is_reported(tmp_path):
    rgb = np.array([[[1, 2, 3], [250, 128, 0]], [[9, 99, 199], [255, 255, 255]]], np.uint8)
    path = _save(tmp_path, "actually_png.jpg", Image.fromarray(rgb), "PNG")
    assert sniff_format(path) == "PNG"
    assert format_mismatch(path) == "PNG content named .jpg"
    np.testing.assert_array_equal(load_rgb(path), rgb)  # lossless: exact


def test_format_mismatch_agreeing_files(tmp_path):
    img = Image.new("RGB", (4, 4))
    assert format_mismatch(_save(tmp_path, "a.png", img, "PNG")) is None
    assert format_mismatch(_save(tmp_path, "b.JPEG", img, "JPEG")) is None
    assert format_mismatch(tmp_path / "c.jpg", fmt="MPO") is None  # fmt given: file not read
    assert format_mismatch(tmp_path / "d.dat", fmt="PNG") == "PNG content named .dat"


# --- modes -----------------------------------------------------------------------------------


def test_mode_1_to_0_and_255(tmp_path):
    img = Image.new("1", (3, 2))
    img.putdata([1, 0, 1, 0, 0, 1])
    path = _save(tmp_path, "bw.png", img, "PNG")
    assert image_info(path)["mode"] == "1"
    grey = np.array([[255, 0, 255], [0, 0, 255]], np.uint8)
    np.testing.assert_array_equal(load_rgb(path), np.stack([grey] * 3, axis=-1))


def test_mode_L_repeated(tmp_path):
    grey = np.array([[0, 50], [200, 255]], np.uint8)
    path = _save(tmp_path, "grey.png", Image.fromarray(grey), "PNG")
    out = load_rgb(path)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    expected = [[[0, 0, 0], [50, 50, 50]], [[200, 200, 200], [255, 255, 255]]]
    np.testing.assert_array_equal(out, expected)


def test_mode_RGB_exact(tmp_path):
    rgb = np.array([[[10, 20, 30], [40, 50, 60], [70, 80, 90]]], np.uint8)
    path = _save(tmp_path, "c.png", Image.fromarray(rgb), "PNG")
    np.testing.assert_array_equal(load_rgb(path), rgb)


def test_mode_LA_composited_on_black(tmp_path):
    img = Image.frombytes("LA", (3, 1), bytes([200, 255, 200, 0, 100, 128]))
    path = _save(tmp_path, "la.png", img, "PNG")
    assert image_info(path)["mode"] == "LA"
    # opaque keeps 200, transparent -> 0, 100 * 128 / 255 = 50.2 -> 50
    np.testing.assert_array_equal(load_rgb(path)[0, :, 0], [200, 0, 50])
    np.testing.assert_array_equal(load_rgb(path)[0], [[200] * 3, [0] * 3, [50] * 3])


def test_mode_RGBA_composited_on_black(tmp_path):
    px = [(100, 200, 50, 255), (255, 255, 255, 0), (200, 100, 50, 128)]
    img = Image.frombytes("RGBA", (3, 1), bytes(v for p in px for v in p))
    path = _save(tmp_path, "rgba.png", img, "PNG")
    # 200*128/255 = 100.4 -> 100, 100*128/255 = 50.2 -> 50, 50*128/255 = 25.1 -> 25
    expected = [[[100, 200, 50], [0, 0, 0], [100, 50, 25]]]
    np.testing.assert_array_equal(load_rgb(path), expected)


PALETTE = [10, 20, 30, 200, 100, 50, 0, 255, 0]


def test_mode_P_through_palette(tmp_path):
    img = Image.new("P", (2, 2))
    img.putpalette(PALETTE)
    img.putdata([0, 1, 2, 1])
    path = _save(tmp_path, "pal.png", img, "PNG")
    assert image_info(path)["mode"] == "P"
    expected = [[[10, 20, 30], [200, 100, 50]], [[0, 255, 0], [200, 100, 50]]]
    np.testing.assert_array_equal(load_rgb(path), expected)


def test_mode_P_transparency_index_is_black(tmp_path):
    img = Image.new("P", (2, 2))
    img.putpalette(PALETTE)
    img.putdata([0, 1, 2, 1])
    path = _save(tmp_path, "pal_t.png", img, "PNG", transparency=1)
    expected = [[[10, 20, 30], [0, 0, 0]], [[0, 255, 0], [0, 0, 0]]]
    np.testing.assert_array_equal(load_rgb(path), expected)


def test_mode_P_with_rgba_palette_in_memory():
    img = Image.new("P", (3, 1))
    img.putpalette([10, 20, 30, 0, 200, 100, 50, 255, 0, 255, 0, 128], "RGBA")
    img.putdata([0, 1, 2])
    assert "transparency" not in img.info  # the alpha lives in the palette only
    np.testing.assert_array_equal(to_rgb(img), [[[0, 0, 0], [200, 100, 50], [0, 128, 0]]])


def test_mode_PA_composited_on_black(tmp_path):
    img = Image.frombytes("PA", (3, 1), bytes([0, 255, 1, 0, 2, 128]))
    img.putpalette(PALETTE)
    path = _save(tmp_path, "pa.tif", img, "TIFF")
    assert image_info(path)["mode"] == "PA"
    # index 2 = (0, 255, 0) at alpha 128: 255 * 128 / 255 = 128
    np.testing.assert_array_equal(load_rgb(path), [[[10, 20, 30], [0, 0, 0], [0, 128, 0]]])


def test_mode_CMYK(tmp_path):
    px = [(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255), (100, 50, 0, 20), (200, 0, 0, 100)]
    img = Image.frombytes("CMYK", (5, 1), bytes(v for p in px for v in p))
    path = _save(tmp_path, "cmyk.tif", img, "TIFF")
    assert image_info(path)["mode"] == "CMYK"
    # Pillow's rule: channel = round((255 - ink) * (255 - K) / 255)
    # (100,50,0,20): 155*235/255 = 142.8, 205*235/255 = 188.9, 255*235/255 = 235
    # (200,0,0,100): 55*155/255 = 33.4, 255*155/255 = 155
    expected = [[[255, 255, 255], [0, 255, 255], [0, 0, 0], [143, 189, 235], [33, 155, 155]]]
    np.testing.assert_array_equal(load_rgb(path), expected)


I16_VALUES = np.array([[0, 1, 128, 129], [32768, 65535, 257, 65534]], np.uint16)
# v * 255 / 65535: 0, 0.004, 0.498, 0.502, 127.5019, 255, 1 (exactly), 254.996
I16_EXPECTED = np.array([[0, 0, 0, 1], [128, 255, 1, 255]], np.uint8)


def test_mode_I16_png_scaled_by_bit_depth(tmp_path):
    path = _save(tmp_path, "deep.png", Image.fromarray(I16_VALUES), "PNG")
    assert image_info(path)["mode"] == "I;16"
    out = load_rgb(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.stack([I16_EXPECTED] * 3, axis=-1))


def test_mode_I16B_tiff_scaled_by_bit_depth(tmp_path):
    img = Image.frombytes("I;16B", (4, 2), I16_VALUES.astype(">u2").tobytes())
    path = _save(tmp_path, "deep_be.tif", img, "TIFF")
    assert image_info(path)["mode"] == "I;16B"
    np.testing.assert_array_equal(load_rgb(path)[..., 2], I16_EXPECTED)


@pytest.mark.parametrize("mode, dtype", [("I;16L", "<u2"), ("I;16N", "=u2"), ("I;16B", ">u2")])
def test_mode_I16_variants_in_memory(mode, dtype):
    img = Image.frombytes(mode, (4, 2), I16_VALUES.astype(dtype).tobytes())
    np.testing.assert_array_equal(to_rgb(img)[..., 0], I16_EXPECTED)


def _ramp16(top: int, h=64, w=80) -> np.ndarray:
    """``(h, w) uint16`` values from 0 to ``top``, increasing in reading order."""
    return np.linspace(0, top, h * w).round().astype(np.uint16).reshape(h, w)


def _save16(tmp_path, values, sbit=None) -> Path:
    info = PngInfo()
    if sbit is not None:
        info.add(b"sBIT", bytes([sbit]))  # grey colour type: one byte, significant bits
    path = _save(tmp_path, "deep.png", Image.fromarray(values), "PNG", pnginfo=info)
    assert image_info(path)["mode"] == "I;16"
    return path


@pytest.mark.parametrize("with_sbit", [False, True], ids=["inferred", "sBIT"])
@pytest.mark.parametrize("bits", [10, 12, 14, 16])
def test_16bit_png_honours_stored_bit_depth(tmp_path, bits, with_sbit):
    # DICOM-derived X-rays store 10/12/14 bits in a 16-bit PNG: 0..2**bits-1 must span 0..255.
    top = 2**bits - 1
    values = _ramp16(top)
    path = _save16(tmp_path, values, sbit=bits if with_sbit else None)
    assert png_significant_bits(path) == (bits if with_sbit else None)
    loaded = load_image(path)
    grey = loaded.rgb[..., 0].astype(int)
    assert loaded.bit_depth == bits and loaded.warning == ""
    assert grey.max() == 255 and grey.min() == 0
    assert (np.diff(grey.ravel()) >= 0).all()  # grey levels in the stored order
    np.testing.assert_array_equal(grey, np.floor(values / top * 255 + 0.5))
    # every 8-bit level is reached (no 17-level picture)
    assert len(np.unique(grey)) == 256


def test_sbit_wins_over_the_inferred_depth(tmp_path):
    # 0..1000 fits in 10 bits, but sBIT says 12: scaled by 4095, and the low range is said.
    values = _ramp16(1000)
    loaded = load_image(_save16(tmp_path, values, sbit=12))
    assert loaded.bit_depth == 12
    np.testing.assert_array_equal(loaded.rgb[..., 1], np.floor(values / 4095 * 255 + 0.5))
    assert loaded.rgb.max() == 62  # 1000 * 255 / 4095 = 62.27
    assert loaded.warning == "low range: maximum 1000 of 4095 (12-bit)"
    assert load_image(_save16(tmp_path, values)).bit_depth == 10  # without sBIT


def test_sbit_with_spec_scaled_samples_uses_16_bits(tmp_path):
    # The PNG specification scales sBIT samples up to the full depth: 12 significant bits
    # stored as v << 4 | v >> 8 reach 65535, so the divisor stays 65535.
    v12 = _ramp16(4095).astype(np.uint32)
    values = ((v12 << 4) | (v12 >> 8)).astype(np.uint16)
    loaded = load_image(_save16(tmp_path, values, sbit=12))
    assert loaded.bit_depth == 16 and loaded.rgb.max() == 255
    np.testing.assert_array_equal(loaded.rgb[..., 0], np.floor(values / 65535 * 255 + 0.5))


def test_implausible_ranges_are_warned(tmp_path):
    flat = _save(tmp_path, "flat.png", Image.new("L", (32, 32), 7), "PNG")
    assert load_image(flat).warning == "flat: every pixel decodes to 7"
    assert load_image(flat).bit_depth == 8
    low = load_image(_save16(tmp_path, _ramp16(200)))  # 8-bit values in a 16-bit file
    assert low.bit_depth == 10 and low.warning == "low range: maximum 200 of 1023 (10-bit)"
    assert load_image(_save(tmp_path, "n.png", _noise_rgb(), "PNG")).warning == ""


def test_png_significant_bits_of_other_files(tmp_path):
    assert png_significant_bits(_save(tmp_path, "a.jpg", _noise_rgb(), "JPEG")) is None
    assert png_significant_bits(_save(tmp_path, "a.png", _noise_rgb(), "PNG")) is None


def test_mode_I_min_max_scaled(tmp_path):
    values = np.array([[-1000, 0], [1000, 3000]], np.int32)
    path = _save(tmp_path, "int32.tif", Image.fromarray(values), "TIFF")
    assert image_info(path)["mode"] == "I"
    # (v + 1000) * 255 / 4000: 0, 63.75 -> 64, 127.5 -> 128 (half up), 255
    np.testing.assert_array_equal(load_rgb(path)[..., 1], [[0, 64], [128, 255]])


def test_mode_I_rounds_half_up(tmp_path):
    values = np.array([[0, 1, 3, 510]], np.int32)
    path = _save(tmp_path, "half.tif", Image.fromarray(values), "TIFF")
    # v * 255 / 510 = v / 2: 0, 0.5 -> 1, 1.5 -> 2, 255 (half-to-even would give 0, 2)
    np.testing.assert_array_equal(load_rgb(path)[0, :, 0], [0, 1, 2, 255])


def test_mode_I_constant_gives_zeros(tmp_path):
    path = _save(tmp_path, "flat.tif", Image.fromarray(np.full((3, 2), 70000, np.int32)), "TIFF")
    np.testing.assert_array_equal(load_rgb(path), np.zeros((3, 2, 3), np.uint8))


def test_mode_F_min_max_scaled(tmp_path):
    values = np.array([[-2.0, -1.5], [-1.0, 2.0]], np.float32)
    path = _save(tmp_path, "float.tif", Image.fromarray(values), "TIFF")
    assert image_info(path)["mode"] == "F"
    # (v + 2) * 255 / 4: 0, 31.875 -> 32, 63.75 -> 64, 255
    np.testing.assert_array_equal(load_rgb(path)[..., 0], [[0, 32], [64, 255]])


def test_mode_F_non_finite_is_error(tmp_path):
    values = np.array([[0.0, np.nan], [1.0, 2.0]], np.float32)
    _raises("non-finite pixels", _save(tmp_path, "nan.tif", Image.fromarray(values), "TIFF"))


def test_mode_YCbCr_tiff(tmp_path):
    img = Image.frombytes("YCbCr", (2, 1), bytes([128, 128, 128, 255, 128, 128]))
    path = _save(tmp_path, "ycc.tif", img, "TIFF")
    assert image_info(path)["mode"] == "YCbCr"
    # neutral chroma (Cb = Cr = 128): R = G = B = Y
    np.testing.assert_array_equal(load_rgb(path), [[[128] * 3, [255] * 3]])


def test_premultiplied_and_padded_modes_in_memory():
    la = Image.frombytes("La", (2, 1), bytes([50, 128, 0, 0]))
    np.testing.assert_array_equal(to_rgb(la), [[[50] * 3, [0] * 3]])
    rgba = Image.frombytes("RGBa", (1, 1), bytes([10, 20, 30, 128]))
    np.testing.assert_array_equal(to_rgb(rgba), [[[10, 20, 30]]])
    rgbx = Image.frombytes("RGBX", (1, 1), bytes([1, 2, 3, 99]))
    np.testing.assert_array_equal(to_rgb(rgbx), [[[1, 2, 3]]])
    hsv = Image.frombytes("HSV", (1, 1), bytes([0, 0, 200]))  # no saturation: grey = V
    np.testing.assert_array_equal(to_rgb(hsv), [[[200, 200, 200]]])


def test_unknown_mode_unsupported():
    fake = types.SimpleNamespace(mode="CMYK;I", info={}, size=(1, 1))
    with pytest.raises(ImageError) as info:
        to_rgb(fake, path="x.tif")
    assert (info.value.reason, info.value.path) == ("unsupported mode", "x.tif")


def test_every_pillow_mode_converts():
    modes = getattr(Image, "MODES", None)
    if modes is None:
        pytest.skip("this Pillow has no Image.MODES list")
    for mode in modes:
        out = to_rgb(Image.new(mode, (3, 2)))
        assert out.shape == (2, 3, 3) and out.dtype == np.uint8, mode


# --- EXIF orientation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "orientation, block",
    [
        # 6 = rotate 90 deg clockwise to display: stored (r, c) -> (c, H-1-r): top-right
        (6, (slice(0, 10), slice(10, 20))),
        # 8 = rotate 90 deg counter-clockwise: stored (r, c) -> (W-1-c, r): bottom-left
        (8, (slice(30, 40), slice(0, 10))),
    ],
)
def test_exif_orientation_applied(tmp_path, orientation, block):
    stored = np.zeros((20, 40, 3), np.uint8)  # H=20, W=40
    stored[:10, :10] = 255  # white marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(tmp_path, "rot.jpg", Image.fromarray(stored), "JPEG", quality=95, exif=exif)
    assert image_info(path)["width"] == 40 and image_info(path)["height"] == 20
    out = load_rgb(path)
    assert out.shape == (40, 20, 3)
    inner = np.zeros((40, 20), bool)  # away from the marker's edges, where JPEG rings
    inner[block[0].start + 2 : block[0].stop - 2, block[1].start + 2 : block[1].stop - 2] = True
    far = np.ones_like(inner)  # more than 3 pixels from the marker
    rows, cols = block
    far[max(rows.start - 3, 0) : rows.stop + 3, max(cols.start - 3, 0) : cols.stop + 3] = False
    assert (out[inner] >= 240).all()
    assert (out[far] <= 15).all()


# --- size limits -----------------------------------------------------------------------------


def test_too_small(tmp_path):
    path = _save(tmp_path, "small.png", Image.new("L", (5, 3)), "PNG")
    err = _raises("too small", path, min_side=4)
    assert "5x3" in str(err)
    assert load_rgb(path, min_side=3).shape == (3, 5, 3)  # boundary: shorter side == min_side


def test_decompression_bomb_checked_from_header_before_decoding(tmp_path):
    # header claims 2000x2000 but holds one pixel: decoding would fail as "truncated"
    path = _write(tmp_path, "bomb.png", _png_with_header_size(2000, 2000))
    assert image_info(path) == {"width": 2000, "height": 2000, "mode": "L", "format": "PNG"}
    _raises("decompression bomb", path, max_pixels=1_000_000)
    _raises("truncated", path, max_pixels=4_000_000)  # allowed, so it decodes, and fails


def test_decompression_bomb_real_bilevel_image(tmp_path):
    path = _save(tmp_path, "big.png", Image.new("1", (1500, 1000)), "PNG")
    assert path.stat().st_size < 20_000  # small on disk
    _raises("decompression bomb", path, max_pixels=1_000_000)
    assert load_rgb(path, max_pixels=1_500_000).shape == (1000, 1500, 3)  # boundary: == limit


@pytest.mark.parametrize("side", [10_000, 100_000])  # Pillow's warning, Pillow's error
def test_decompression_bomb_pillow_limits(tmp_path, side):
    assert side * side > Image.MAX_IMAGE_PIXELS
    path = _write(tmp_path, "huge.png", _png_with_header_size(side, side))
    _raises("decompression bomb", path, max_pixels=10**12)


def test_bad_limits_rejected(tmp_path):
    path = _save(tmp_path, "x.png", Image.new("L", (2, 2)), "PNG")
    with pytest.raises(ValueError, match="min_side"):
        load_rgb(path, min_side=0)
    with pytest.raises(ValueError, match="max_pixels"):
        load_rgb(path, max_pixels=0)


# --- header info, hashes ---------------------------------------------------------------------


def test_image_info_and_sniff(tmp_path):
    path = _save(tmp_path, "pic.jpeg", Image.new("RGB", (7, 5)), "JPEG")
    assert image_info(path) == {"width": 7, "height": 5, "mode": "RGB", "format": "JPEG"}
    assert sniff_format(path) == "JPEG"
    assert format_mismatch(path) is None


def test_perceptual_hash_is_grey_phash_and_finds_near_duplicates():
    rng = np.random.default_rng(1)
    grey = np.kron(rng.integers(0, 256, (8, 8)), np.ones((16, 16))).astype(np.uint8)
    rgb = np.stack([grey] * 3, axis=-1)
    h = perceptual_hash(rgb)
    assert re.fullmatch("[0-9a-f]{16}", h), h  # 64 bits as 16 lower-case hex digits
    assert h == str(imagehash.phash(Image.fromarray(grey)))
    noisy = np.clip(rgb.astype(int) + rng.integers(-3, 4, rgb.shape), 0, 255).astype(np.uint8)
    other = np.stack([np.kron(rng.integers(0, 256, (8, 8)), np.ones((16, 16)))] * 3, axis=-1)
    dist = imagehash.hex_to_hash
    assert dist(h) - dist(perceptual_hash(noisy)) <= 4
    assert dist(h) - dist(perceptual_hash(other.astype(np.uint8))) > 10
    with pytest.raises(ValueError):
        perceptual_hash(grey)
    with pytest.raises(ValueError):
        perceptual_hash(rgb.astype(np.float32))


def test_reasons_are_unique_short_words():
    assert len(set(REASONS)) == len(REASONS)
    assert all(r == r.strip().lower() and ":" not in r for r in REASONS)


# --- real dataset files (read only) ----------------------------------------------------------

needs_real = pytest.mark.skipif(not REAL_IMAGES.is_dir(), reason="dataset mirror not present")


@needs_real
def test_real_png_named_jpg_loads():
    jpgs = sorted(p for p in REAL_IMAGES.iterdir() if p.suffix.lower() == ".jpg")
    disguised = [p for p in jpgs if sniff_format(p) == "PNG"][:3]
    assert disguised, "expected PNG content named .jpg in the real dataset"
    for path in disguised:
        assert format_mismatch(path) == "PNG content named .jpg"
        info = image_info(path)
        out = load_rgb(path)
        assert out.dtype == np.uint8 and out.shape == (info["height"], info["width"], 3)


@needs_real
def test_real_grey_jpeg_matches_pillow_pixels():
    for path in sorted(REAL_IMAGES.iterdir()):
        info = image_info(path)
        if info["format"] == "JPEG" and info["mode"] == "L":
            break
    else:
        raise AssertionError(f"no greyscale JPEG in {REAL_IMAGES}: the mirror has some")
    with Image.open(path) as im:
        assert im.getexif().get(0x0112, 1) == 1  # no rotation, so pixels compare 1:1
        grey = np.asarray(im)
    out = load_rgb(path)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], grey)
