"""The one image loader: every pipeline step reads image files through :func:`load_rgb`
(or :func:`load_image`, which also says the bit depth used).

Length: over 400 lines because decoding every Pillow mode, bit depth (sBIT) and orientation
is one concern: the one loader, which must not be split into loaders that could disagree.

It turns any image file Pillow can decode into an ``(H, W, 3) uint8`` RGB array, or raises
:class:`ImageError` naming the file and a short reason from :data:`REASONS`. It never returns
a silently wrong pixel: truncated files are errors (``ImageFile.LOAD_TRUNCATED_IMAGES`` is left
``False`` and every image is decoded fully), and the size limits are checked from the header
before any pixel is decoded.

DICOM files (recognised by content, the ``DICM`` magic at byte 128, whatever their name) are
read by :mod:`cxr.dicom`: modality and VOI transforms, MONOCHROME1 inverted, 8 bits from
``BitsStored``; refused with a reason of :data:`cxr.dicom.REASONS` when multi-frame, colour,
without pixel data or decoder, or not a frontal chest image by the header.

Content in another format than the extension says (the COVID-19 image collection has PNG files
named ``.jpg``) is not an error: Pillow decodes by content. :func:`sniff_format` and
:func:`format_mismatch` let a caller report such files.

Conversions to RGB (``to_rgb``), by Pillow mode:

- ``1``: 0 / 255. ``L``: the grey value repeated in R, G and B. ``RGB``: as is.
  ``RGBX``: padding dropped. ``P`` (no transparency): through the palette.
  ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: Pillow's ``convert("RGB")``.
- Alpha (``LA``, ``RGBA``, ``PA``, ``P`` with a transparency entry) is composited onto a
  BLACK background: ``round(c * a / 255)``, so a fully transparent pixel becomes 0, the
  radiograph background. Premultiplied ``La`` / ``RGBa`` already are that, so their alpha is
  dropped.
- ``I;16`` (and ``I;16L``, ``I;16B``, ``I;16N``): scaled by the bit depth the file stores,
  ``round(v * 255 / (2**d - 1))``, never clipped (:func:`stored_bit_depth` picks ``d``). Many
  X-rays converted from DICOM hold 10, 12 or 14 bits in a 16-bit PNG (values 0..4095 for
  12 bits); dividing those by 65535 would leave a nearly black picture. ``d`` is the PNG
  ``sBIT`` chunk's value when the pixels fit in it (16 when they do not: the PNG
  specification's scaled samples), else the smallest of :data:`STORED_DEPTHS` (10, 12, 14,
  16) that holds the image's maximum.
- ``I`` (32-bit int) and ``F`` (32-bit float): no fixed bit depth, so min-max scaled over the
  image's own range, ``round((v - min) * 255 / (max - min))``; a constant image gives zeros.
  NaN or infinite ``F`` pixels are an error.

Every conversion also reports the bit depth it scaled by and a warning for an implausible
range (:func:`load_image`, :class:`LoadedImage`): a flat picture (any mode), or a 16-bit
grey one whose maximum is under a quarter of its depth's range.

Only decoding errors become :class:`ImageError` (:data:`DECODE_ERRORS`): ``MemoryError``,
``KeyboardInterrupt`` and any other exception propagate, so a busy machine stops the run
instead of quarantining a good image and changing the data set.

Rounding is half up. EXIF orientation is applied (``ImageOps.exif_transpose``) before the
conversion. Multi-frame files (GIF, TIFF) give their first frame. 16-bit-per-channel colour
PNGs are reduced to 8 bits by Pillow itself.

This module only reads files; it writes nothing.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cxr import dicom

#: Every :attr:`ImageError.reason`. ``"format mismatch"`` is never raised here (such files
#: load); it is the word for callers that record :func:`format_mismatch` findings.
REASONS = (
    "missing",  # no such file
    "empty file",  # zero bytes
    "unreadable",  # not an image Pillow can identify, or not readable (directory, permissions)
    "truncated",  # the data ends before the image does
    "corrupt",  # identified, but the pixel data or metadata fails to decode
    "too small",  # shorter side < min_side
    "decompression bomb",  # more pixels than allowed, from the header
    "unsupported mode",  # a Pillow mode with no RGB conversion here
    "non-finite pixels",  # NaN or infinite values in a float image
    "format mismatch",  # content format differs from the extension (reporting only)
    *dicom.REASONS,  # a DICOM file refused from its header (cxr.dicom)
)


#: Bit depths a 16-bit grey image may hold when no ``sBIT`` chunk says which, smallest first.
STORED_DEPTHS = (10, 12, 14, 16)
#: Bits per sample the conversion scales by, for modes whose depth is fixed. ``I`` and ``F``
#: (32 bits, min-max scaled) are recorded as 32; ``I;16*`` as :func:`stored_bit_depth` says.
MODE_DEPTHS = {"1": 1, "I": 32, "F": 32}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: What a decoder raises on a malformed or truncated file, and so what the loader turns into
#: an :class:`ImageError` ("unreadable", "truncated", "corrupt"). ``OSError`` (with
#: ``PIL.UnidentifiedImageError`` and "image file is truncated"), ``ValueError``,
#: ``EOFError`` and ``zlib.error`` are what Pillow's plugins raise on bad data; ``SyntaxError``,
#: ``IndexError``, ``TypeError`` and ``struct.error`` are the ones Pillow's own
#: ``Image.open`` treats as "this data is not that format" (``PIL/Image.py``, ``_open_core``).
#: ``MemoryError`` and ``KeyboardInterrupt`` are not among them: they say nothing about the
#: file. Pillow's decompression-bomb error and warning are handled on their own.
DECODE_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    SyntaxError,
    IndexError,
    TypeError,
    struct.error,
    zlib.error,
)


@dataclass(frozen=True)
class LoadedImage:
    """What :func:`load_image` returns.

    Attributes
    ----------
    rgb : ``(H, W, 3) uint8`` C-contiguous array.
    bit_depth : int, bits per sample the conversion scaled by (8 for 8-bit modes, 1 for
        ``1``, 10/12/14/16 or the ``sBIT`` value for ``I;16*``, 32 for ``I`` and ``F``).
    warning : str, ``""`` or why the range is implausible (``"flat: ..."``,
        ``"low range: ..."``); the image still loads.
    """

    rgb: np.ndarray
    bit_depth: int
    warning: str = ""


class ImageError(ValueError):
    """An image file that cannot be turned into trustworthy RGB pixels.

    Attributes
    ----------
    path : str, the file.
    reason : str, one of :data:`REASONS`.
    detail : str, a human-readable explanation (may be empty).

    ``str(err)`` is ``"<path>: <reason>: <detail>"``. The exception pickles (for process pools).
    """

    def __init__(self, path, reason: str, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown ImageError reason {reason!r}; expected one of {REASONS}")
        super().__init__(str(path), reason, detail)
        self.path = str(path)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        head = f"{self.path}: {self.reason}"
        return f"{head}: {self.detail}" if self.detail else head


def _open(path) -> Image.Image:
    """Open ``path`` lazily (header only), mapping every failure to :class:`ImageError`.

    Pillow's ``DecompressionBombWarning`` (more than ``Image.MAX_IMAGE_PIXELS``) is turned into
    an error here, as is its ``DecompressionBombError``. Note ``warnings.catch_warnings`` is
    process-global, not thread-local.
    """
    try:
        size = os.stat(path).st_size
    except FileNotFoundError as exc:
        raise ImageError(path, "missing", "no such file") from exc
    except OSError as exc:
        raise ImageError(path, "unreadable", str(exc)) from exc
    if size == 0:
        raise ImageError(path, "empty file", "0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(path, "decompression bomb", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(path, "unreadable", "not an image format Pillow can identify") from exc
    except DECODE_ERRORS as exc:  # plugin errors at header parse: OSError, SyntaxError, ...
        reason = "truncated" if "truncat" in str(exc).lower() else "unreadable"
        raise ImageError(path, reason, f"{type(exc).__name__}: {exc}") from exc


def sniff_format(path) -> str:
    """Return the format Pillow detects from the content, e.g. ``"PNG"``, ``"JPEG"``.

    Reads the header only; the extension plays no part.

    Raises
    ------
    ImageError if the file is missing, empty or not an identifiable image.
    """
    if dicom.is_dicom(path):
        return "DICOM"
    with _open(path) as im:
        return im.format


def _family(fmt: str) -> str:
    return "JPEG" if fmt == "MPO" else fmt  # MPO (multi-picture JPEG) is JPEG to a reader


def format_mismatch(path, fmt: str | None = None) -> str | None:
    """Describe a content / extension disagreement, or return ``None`` if they agree.

    Parameters
    ----------
    path : path-like, the image file.
    fmt : the content format if already known (from :func:`sniff_format` or
        :func:`image_info`); sniffed from ``path`` otherwise.

    Returns
    -------
    ``None`` when the extension is one Pillow registers for ``fmt`` (MPO counts as JPEG),
    else a detail such as ``"PNG content named .jpg"``. Such files still load.

    Raises
    ------
    ImageError if ``fmt`` is not given and the file cannot be identified.
    """
    fmt = fmt or sniff_format(path)
    ext = os.path.splitext(os.fspath(path))[1].lower()
    expected = Image.registered_extensions().get(ext)
    if fmt == "DICOM" and expected is None:  # .dcm, none, or an archive's numbered names
        return None
    if expected is not None and _family(expected) == _family(fmt):
        return None
    return f"{fmt} content named {ext or '(no extension)'}"


def image_info(path) -> dict:
    """Read ``width``, ``height``, ``mode`` and ``format`` from the header, without decoding.

    ``width`` and ``height`` are as stored, before EXIF orientation (which :func:`load_rgb`
    applies, swapping them for orientations 5-8).

    Returns
    -------
    dict with ``width`` (int), ``height`` (int), ``mode`` (str, Pillow mode), ``format``
    (str, Pillow format name).

    Raises
    ------
    ImageError if the file is missing, empty, not an identifiable image, or a decompression
    bomb by Pillow's own limit. A DICOM file gives ``mode`` = its photometric interpretation
    and ``format`` = ``"DICOM"`` (:func:`cxr.dicom.info`).
    """
    if dicom.is_dicom(path):
        return _dicom(dicom.info, path)
    with _open(path) as im:
        return {"width": im.width, "height": im.height, "mode": im.mode, "format": im.format}


def _dicom(read, path, **kwargs):
    """``read(path, **kwargs)`` of :mod:`cxr.dicom`, its refusals as :class:`ImageError`."""
    try:
        return read(path, **kwargs)
    except dicom.DicomError as err:
        raise ImageError(path, err.reason, err.detail) from err


def load_image(
    path, *, min_side: int = 1, max_pixels: int = 50_000_000, dicom_voi: bool = True
) -> LoadedImage:
    """Decode an image file to RGB pixels with the bit depth used, or fail loudly.

    Parameters
    ----------
    path : path-like, the image file (any format Pillow decodes, or DICOM, whatever its
        extension).
    min_side : smallest allowed shorter side, in pixels.
    max_pixels : largest allowed ``width * height``, checked from the header before decoding.
        Pillow's own ``Image.MAX_IMAGE_PIXELS`` also applies, so the effective limit is the
        smaller of the two.
    dicom_voi : for DICOM files, apply the VOI LUT or first window (:func:`cxr.dicom.read`);
        False skips it (config ``external.dicom_voi``, ``cxr-predict --dicom_voi``).

    Returns
    -------
    :class:`LoadedImage`: ``rgb``, an ``(H, W, 3) uint8`` array, C-contiguous, EXIF
    orientation applied, converted as the module docstring describes; ``bit_depth``;
    ``warning``. A 16-bit PNG's ``sBIT`` chunk is read from the file (Pillow does not).

    Raises
    ------
    ImageError with ``reason`` one of ``"missing"``, ``"empty file"``, ``"unreadable"``,
    ``"truncated"``, ``"corrupt"``, ``"too small"``, ``"decompression bomb"``,
    ``"unsupported mode"``, ``"non-finite pixels"``, or for DICOM one of
    :data:`cxr.dicom.REASONS`: only for what the file holds, and for the decoders'
    :data:`DECODE_ERRORS`.
    ValueError if ``min_side`` or ``max_pixels`` is below 1.
    MemoryError, KeyboardInterrupt and any other exception that is not a decoding error, as
    raised (never turned into an :class:`ImageError`).
    """
    if min_side < 1 or max_pixels < 1:
        raise ValueError(f"min_side and max_pixels must be >= 1, got {min_side}, {max_pixels}")
    if dicom.is_dicom(path):
        kwargs = dict(min_side=min_side, max_pixels=max_pixels, voi=dicom_voi)
        loaded = _dicom(dicom.read, path, **kwargs)
        return LoadedImage(loaded.rgb, loaded.bit_depth, loaded.warning)
    with _open(path) as im:
        width, height = im.size
        if width * height > max_pixels:
            raise ImageError(
                path, "decompression bomb", f"{width}x{height} exceeds max_pixels={max_pixels}"
            )
        if min(width, height) < min_side:
            raise ImageError(path, "too small", f"{width}x{height}, min_side={min_side}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(path, "decompression bomb", str(exc)) from exc
        except DECODE_ERRORS as exc:  # what decoders raise on bad data: OSError, EOFError, ...
            text = f"{type(exc).__name__}: {exc}"
            truncated = isinstance(exc, EOFError) or "truncat" in str(exc).lower()
            raise ImageError(path, "truncated" if truncated else "corrupt", text) from exc
        try:
            oriented = ImageOps.exif_transpose(im)
        except DECODE_ERRORS as exc:  # malformed EXIF: the orientation cannot be trusted
            raise ImageError(path, "corrupt", f"EXIF orientation: {exc}") from exc
        sbit = png_significant_bits(path) if im.format == "PNG" else None
        return convert(oriented, path=path, significant_bits=sbit)


def load_rgb(
    path, *, min_side: int = 1, max_pixels: int = 50_000_000, dicom_voi: bool = True
) -> np.ndarray:
    """Decode an image file to ``(H, W, 3) uint8`` RGB: :func:`load_image`'s ``rgb``.

    Same parameters and errors as :func:`load_image`.
    """
    return load_image(path, min_side=min_side, max_pixels=max_pixels, dicom_voi=dicom_voi).rgb


def png_significant_bits(path) -> int | None:
    """The first value of a PNG file's ``sBIT`` chunk (significant bits of grey or red).

    Pillow does not read ``sBIT``, so the chunks before the first ``IDAT`` are walked here
    (PNG specification, 3rd ed., 11.3.2.4: ``sBIT`` comes before ``PLTE`` and ``IDAT``).

    Returns
    -------
    int, or None when the file is not a PNG, has no ``sBIT``, or its value is outside 1..16.
    """
    with open(path, "rb") as f:
        if f.read(8) != PNG_SIGNATURE:
            return None
        while len(head := f.read(8)) == 8:
            length, cid = struct.unpack(">I4s", head)
            if cid == b"sBIT":
                data = f.read(length)
                return data[0] if data and 1 <= data[0] <= 16 else None
            if cid in (b"IDAT", b"IEND"):
                return None
            f.seek(length + 4, os.SEEK_CUR)  # data and CRC
    return None


def stored_bit_depth(maximum: int, significant_bits: int | None = None) -> int:
    """The bit depth a 16-bit grey image's values are scaled by.

    Parameters
    ----------
    maximum : int, the image's largest stored value (0..65535).
    significant_bits : the PNG ``sBIT`` value, or None.

    Returns
    -------
    ``significant_bits`` when given and ``maximum < 2**significant_bits`` (the values are
    stored unscaled, as DICOM converters write them); with ``sBIT`` but larger values, 16
    (the PNG specification's own convention: the samples were scaled up to the full depth);
    without ``sBIT``, the smallest of :data:`STORED_DEPTHS` whose range holds ``maximum``.
    """
    if significant_bits is not None:
        return significant_bits if maximum < 2**significant_bits else 16
    return next(d for d in STORED_DEPTHS if maximum < 2**d)


def _round_half_up(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5).astype(np.uint8)


def _minmax(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    lo, hi = a.min(), a.max()
    if hi == lo:
        return np.zeros(a.shape, np.uint8)
    return _round_half_up((a - lo) * 255.0 / (hi - lo))


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
    """``(H, W, 4) uint8`` -> ``(H, W, 3) uint8``, ``round(c * a / 255)`` (never a tie)."""
    c = rgba[..., :3].astype(np.uint32)
    a = rgba[..., 3:4].astype(np.uint32)
    return ((c * a + 127) // 255).astype(np.uint8)


def _palette_has_alpha(image: Image.Image) -> bool:
    palette = getattr(image, "palette", None)
    return "transparency" in image.info or getattr(palette, "mode", "RGB") == "RGBA"


def to_rgb(image: Image.Image, path="<in memory>", significant_bits=None) -> np.ndarray:
    """Convert a decoded Pillow image to ``(H, W, 3) uint8`` RGB: :func:`convert`'s ``rgb``."""
    return convert(image, path=path, significant_bits=significant_bits).rgb


def convert(image: Image.Image, path="<in memory>", significant_bits=None) -> LoadedImage:
    """Convert a decoded Pillow image to RGB (rules: module docstring), with its bit depth.

    Parameters
    ----------
    image : a loaded ``PIL.Image.Image`` of any Pillow mode.
    path : what to name in an :class:`ImageError`.
    significant_bits : the PNG ``sBIT`` value (:func:`png_significant_bits`) or None; used
        for ``I;16*`` modes only.

    Returns
    -------
    :class:`LoadedImage` (``rgb`` ``(H, W, 3) uint8`` C-contiguous).

    Raises
    ------
    ImageError with reason ``"unsupported mode"`` or ``"non-finite pixels"``.
    """
    mode = image.mode
    depth, warning, grey = MODE_DEPTHS.get(mode, 8), "", None
    if mode == "1":
        grey = np.asarray(image).astype(np.uint8) * np.uint8(255)
    elif mode == "L":
        grey = np.asarray(image)
    elif mode == "La":  # premultiplied: already composited onto black
        grey = np.asarray(image)[..., 0]
    elif mode.startswith("I;16"):
        a = np.asarray(image).astype(np.uint32)
        top = int(a.max()) if a.size else 0
        depth = stored_bit_depth(top, significant_bits)
        full = 2**depth - 1
        grey = ((a * 255 + full // 2) // full).astype(np.uint8)  # round(v*255/full), no tie
        if 0 < top < (full + 1) // 4:
            warning = f"low range: maximum {top} of {full} ({depth}-bit)"
    elif mode == "I":
        grey = _minmax(np.asarray(image))
    elif mode == "F":
        a = np.asarray(image)
        if not np.isfinite(a).all():
            raise ImageError(path, "non-finite pixels", f"{np.count_nonzero(~np.isfinite(a))}")
        grey = _minmax(a)
    elif mode == "RGB":
        rgb = np.asarray(image)
    elif mode in ("RGBX", "RGBa"):  # padding / premultiplied alpha: drop the fourth band
        rgb = np.asarray(image)[..., :3]
    elif mode in ("LA", "RGBA", "PA") or (mode == "P" and _palette_has_alpha(image)):
        rgb = _composite_on_black(np.asarray(image.convert("RGBA")))
    elif mode in ("P", "CMYK", "YCbCr", "LAB", "HSV"):
        rgb = np.asarray(image.convert("RGB"))
    else:
        raise ImageError(path, "unsupported mode", f"Pillow mode {mode!r}")
    if grey is not None:
        rgb = np.repeat(grey[..., None], 3, axis=2)
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.size and rgb.min() == rgb.max():
        warning = f"flat: every pixel decodes to {rgb.flat[0]}"
    return LoadedImage(rgb, depth, warning)


def perceptual_hash(rgb: np.ndarray) -> str:
    """Perceptual hash for near-duplicate reporting: ImageHash ``phash`` of the grey image.

    Parameters
    ----------
    rgb : ``(H, W, 3) uint8`` array, as :func:`load_rgb` returns.

    Returns
    -------
    str, 16 hex characters (64 bits). Compare two with
    ``imagehash.hex_to_hash(a) - imagehash.hex_to_hash(b)`` (Hamming distance).

    Raises
    ------
    ValueError if ``rgb`` is not ``(H, W, 3) uint8``.
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"perceptual_hash needs (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    return str(imagehash.phash(Image.fromarray(rgb).convert("L")))
