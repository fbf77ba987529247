"""DICOM in: radiographs as they come from a hospital archive, for the one image loader.

:func:`cxr.images.load_image` hands a file here when its content is DICOM (:func:`is_dicom`:
the ``DICM`` magic at byte 128 of a DICOM file, PS3.10 section 7.1; the extension plays no
part, so the ``.dcm``-less files of archive layouts are read too). Files without the 128-byte
preamble (old ACR-NEMA) are not recognised and go to Pillow, which reports them unreadable.

Pixels (:func:`read`), in the order of the DICOM grayscale pipeline (PS3.3 C.11, PS3.4 N.2.1.1)
as pydicom implements it (``pydicom.pixels``, pinned in pyproject.toml):

1. stored values, decoded by pydicom (unused high bits masked, signed values sign-extended);
2. the modality transform: ``apply_modality_lut`` (Modality LUT Sequence, or
   ``RescaleSlope * v + RescaleIntercept``);
3. the VOI transform, unless ``voi=False``: ``apply_voi_lut`` with the first item (a VOI LUT
   Sequence before a window, pydicom's ``prefer_lut``; the first of several windows, which
   the standard orders by preference, PS3.3 C.11.2.1.2);
4. MONOCHROME1 inverted within the range of step 5 (``lo + hi - v``), so bone is bright and
   air dark as in every MONOCHROME2 and PNG image;
5. scaled to 8 bits, ``round_half_up((v - lo) * 255 / (hi - lo))``, clipped to 0..255, where
   ``[lo, hi]`` is the range the transforms give the stored range ``BitsStored`` allows
   (:func:`output_range`): after a window, pydicom's window output range (from
   ``BitsStored``, ``PixelRepresentation`` and the rescale); after a VOI LUT,
   ``0 .. 2**bits - 1`` (its descriptor's third value); without VOI, the modality transform
   of the stored range. torchxrayvision's ``read_xray_dcm`` and MONAI's ``LoadImage`` are
   the references users know: MONOCHROME1/2, ``BitsStored``, MONOCHROME1 inverted, VOI
   optional.

RGB images (``PhotometricInterpretation`` RGB) are taken as they are (scaled from
``BitsStored`` when more than 8 bits); modality and VOI transforms are for grey images only.

Refused (:class:`DicomError`, reasons :data:`REASONS`), from the header before any pixel is
decoded: no Pixel Data element, more than one frame, a photometric interpretation other than
MONOCHROME1, MONOCHROME2 and RGB, a transfer syntax no installed package decodes (the package
that would is named, from pydicom's own list), a ``BodyPartExamined`` that names no chest
part (:data:`CHEST_WORDS`; empty is accepted), a lateral ``ViewPosition``
(:data:`LATERAL_VIEWS`; empty is accepted).

The header fields :func:`header_fields` gives (patient id, age, sex, view) are the only ones
that leave this module; names, dates and the rest of the header are never read out.

This module only reads files; it writes nothing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

#: Byte offset of the ``DICM`` magic: after the 128-byte preamble (PS3.10 section 7.1).
MAGIC_OFFSET = 128
MAGIC = b"DICM"
#: Extensions DICOM files are given (when they have one; archives often give none).
SUFFIXES = (".dcm", ".dicom", ".dic")
#: The DICOMDIR index of a DICOM file set has this name (PS3.10 section 8.6); not an image.
DICOMDIR = "DICOMDIR"

#: Every :attr:`DicomError.reason` that is DICOM's own (the loader's ``"corrupt"``,
#: ``"truncated"``, ``"too small"`` and ``"decompression bomb"`` are used too).
REASONS = (
    "no pixel data",  # no (7FE0,0010) Pixel Data element (a report, a DICOMDIR, ...)
    "multi-frame",  # NumberOfFrames > 1: which frame is the radiograph is not ours to guess
    "unsupported photometric interpretation",  # colour other than RGB, e.g. YBR, PALETTE
    "no decoder",  # the transfer syntax needs a package that is not installed
    "not chest",  # BodyPartExamined names another part
    "lateral view",  # ViewPosition is a lateral
)
#: Photometric interpretations read (PS3.3 C.7.6.3.1.2).
GREY = ("MONOCHROME1", "MONOCHROME2")
PHOTOMETRIC = (*GREY, "RGB")
#: A ``BodyPartExamined`` containing one of these (upper case) is a chest; CID 4031 gives
#: ``CHEST``, archives also write ``THORAX``, ``LUNG``, ``PORTABLE CHEST``.
CHEST_WORDS = ("CHEST", "THORAX", "LUNG")
#: ``ViewPosition`` values of a lateral (PS3.3 C.8.11.5.1.1: LL, RL; archives also write these
#: words). Obliques and decubitus views are not refused.
LATERAL_VIEWS = ("LL", "RL", "LATERAL", "LAT", "LEFT LATERAL", "RIGHT LATERAL")
#: Header fields copied to the external table (:func:`header_fields`), by column.
HEADER_FIELDS = {
    "patient_id": "PatientID",
    "age": "PatientAge",
    "sex": "PatientSex",
    "view": "ViewPosition",
}
#: Days per unit of a DICOM age string (VR AS: ``nnnD``, ``nnnW``, ``nnnM``, ``nnnY``).
AGE_UNIT_DAYS = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


class DicomError(ValueError):
    """A DICOM file refused or not decodable: ``reason`` (:data:`REASONS` or one of the
    loader's), ``detail``. :mod:`cxr.images` turns it into its ``ImageError`` naming the file.
    """

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DicomImage:
    """What :func:`read` returns.

    Attributes
    ----------
    rgb : ``(H, W, 3) uint8`` C-contiguous array (grey repeated in R, G, B).
    bit_depth : int, ``BitsStored``.
    warning : ``""`` or why the range is implausible (``"flat: ..."``, ``"low range: ..."``).
    """

    rgb: np.ndarray
    bit_depth: int
    warning: str = ""


def is_dicom(path) -> bool:
    """True when ``path`` is a file whose bytes 128..131 are ``DICM`` (PS3.10 7.1).

    Reads 132 bytes; a missing or unreadable file is not DICOM (the loader reports it).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(MAGIC_OFFSET + len(MAGIC))
    except OSError:
        return False
    return head[MAGIC_OFFSET:] == MAGIC


#: What pydicom and its plug-ins raise on a malformed file or pixel data.
DECODE_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    IndexError,
    RuntimeError,
    NotImplementedError,
    OSError,
    EOFError,
    struct.error,
)


def _dcmread(path, **kwargs):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, **kwargs)
    except (InvalidDicomError, *DECODE_ERRORS) as exc:
        raise DicomError(_failure(exc), f"header: {type(exc).__name__}: {exc}") from exc


def _failure(exc: Exception) -> str:
    text = str(exc).lower()
    short = ("truncat", "end of file", "less than", "shorter", "insufficient", "doesn't match")
    return "truncated" if isinstance(exc, EOFError) or any(s in text for s in short) else "corrupt"


def age_years(text) -> float:
    """Years from a DICOM age string (VR AS, PS3.5 6.2): ``"045Y"`` -> 45.0,
    ``"006M"`` -> 0.5, ``"012W"`` -> 12 * 7 / 365.25, ``"010D"`` -> 10 / 365.25.

    Returns
    -------
    float, NaN when empty or not of the form ``nnn`` + one of D, W, M, Y (a bare number is
    taken as years).
    """
    text = str(text or "").strip().upper()
    unit = text[-1:] if text[-1:] in AGE_UNIT_DAYS else "Y"
    digits = text[:-1] if text[-1:] in AGE_UNIT_DAYS else text
    if not digits.isdigit():
        return float("nan")
    return int(digits) * AGE_UNIT_DAYS[unit] / AGE_UNIT_DAYS["Y"]


def header_fields(path) -> dict:
    """The external table's header columns of a DICOM file (:data:`HEADER_FIELDS`).

    Returns
    -------
    dict ``patient_id``, ``age``, ``sex``, ``view`` (str; ``""`` when absent). ``age`` is in
    years as ``f"{age_years(PatientAge):g}"`` (``"045Y"`` -> ``"45"``). An empty dict when
    ``path`` is not DICOM or its header cannot be read (the loader reports such a file when
    it is scored). Nothing else of the header is read (``specific_tags``).
    """
    if not is_dicom(path):
        return {}
    try:
        ds = _dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_FIELDS.values()))
    except DicomError:
        return {}
    out = {col: str(ds.get(key, "") or "").strip() for col, key in HEADER_FIELDS.items()}
    age = age_years(out["age"])
    out["age"] = "" if np.isnan(age) else f"{age:g}"
    return out


def info(path) -> dict:
    """``width``, ``height``, ``mode`` (the photometric interpretation) and ``format``
    (``"DICOM"``) from the header, without decoding pixels.

    Raises
    ------
    DicomError (``"corrupt"`` / ``"truncated"``) when the header cannot be read.
    """
    ds = _dcmread(path, stop_before_pixels=True)
    return {
        "width": int(ds.get("Columns", 0) or 0),
        "height": int(ds.get("Rows", 0) or 0),
        "mode": str(ds.get("PhotometricInterpretation", "")),
        "format": "DICOM",
    }


def decoder_problem(transfer_syntax) -> str | None:
    """Why pixel data in ``transfer_syntax`` (a UID string) cannot be decoded here, or None.

    Returns
    -------
    None when an installed pydicom plug-in decodes it; else a sentence naming the syntax and
    the packages pydicom says would decode it (``missing_dependencies``, e.g.
    ``"gdcm - requires gdcm>=3.0.10"``), or that pydicom has no decoder for it at all.
    """
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(str(transfer_syntax))
    name = f"{uid.name} ({uid})" if uid.name != str(uid) else str(uid)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"transfer syntax {name}: pydicom has no decoder for it"
    if decoder.is_available:
        return None
    needs = "; ".join(decoder.missing_dependencies) or "a pydicom pixel data plug-in"
    return f"transfer syntax {name}: no decoder installed; install one of: {needs}"


def refusal(ds) -> tuple[str, str] | None:
    """The first reason the header gives not to read the pixels, or None.

    Parameters
    ----------
    ds : a pydicom Dataset (pixels not needed).

    Returns
    -------
    ``(reason, detail)`` with reason in :data:`REASONS`, checked in their order, or None.
    """
    if "PixelData" not in ds:
        return "no pixel data", "no (7FE0,0010) Pixel Data element"
    frames = ds.get("NumberOfFrames", 1) or 1
    if int(frames) > 1:
        return "multi-frame", f"NumberOfFrames {int(frames)}; only single-frame images are read"
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in PHOTOMETRIC:
        return "unsupported photometric interpretation", (
            f"PhotometricInterpretation {photometric!r}; read: {', '.join(PHOTOMETRIC)}"
        )
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    problem = decoder_problem(syntax) if syntax else None
    if problem:
        return "no decoder", problem
    part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    if part and not any(w in part for w in CHEST_WORDS):
        return "not chest", f"BodyPartExamined {part!r}"
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    if view in LATERAL_VIEWS:
        return "lateral view", f"ViewPosition {view!r}"
    return None


def stored_range(ds) -> tuple[int, int]:
    """``(lo, hi)`` of the stored values ``BitsStored`` and ``PixelRepresentation`` allow:
    ``(0, 2**b - 1)`` unsigned, ``(-2**(b-1), 2**(b-1) - 1)`` signed."""
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0) or 0) == 0:
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def output_range(ds, voi: bool) -> tuple[float, float]:
    """``(lo, hi)``: the range the grey transforms give the stored range (module docstring,
    step 5). After a window with a negative rescale slope ``lo > hi``, as pydicom's window
    output runs from ``lo`` to ``hi``; otherwise ``lo < hi`` (higher values brighter).

    A window's range is pydicom 3's own ``apply_windowing`` output range: ``0 .. 2**n - 1``
    after a Modality LUT of ``n`` bits, else the stored range, rescaled when the header has a
    slope and intercept.
    """
    from pydicom.pixels import apply_modality_lut

    lo, hi = stored_range(ds)
    has_lut = bool(ds.get("VOILUTSequence")) and all(
        ds.VOILUTSequence[0].get(k) is not None for k in ("LUTDescriptor", "LUTData")
    )
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if voi and has_lut:
        return 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    if voi and has_window:
        if ds.get("ModalityLUTSequence"):
            lo, hi = 0, 2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
        slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        if slope is not None and intercept is not None:
            return lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
        return float(lo), float(hi)
    if ds.get("ModalityLUTSequence"):  # a table: its values over the whole stored range
        values = apply_modality_lut(np.arange(lo, hi + 1), ds)
        return float(values.min()), float(values.max())
    ends = apply_modality_lut(np.array([lo, hi]), ds).astype(np.float64)
    return float(ends.min()), float(ends.max())  # a negative slope reverses the ends


def grey_to_8bit(stored: np.ndarray, ds, voi: bool = True) -> np.ndarray:
    """Steps 2-5 of the module docstring: ``(H, W)`` stored values -> ``(H, W) uint8``.

    Raises
    ------
    DicomError ``"corrupt"`` when the output range is empty (e.g. a rescale slope of 0) or
    the VOI attributes cannot be applied.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        values = apply_modality_lut(stored, ds)
        if voi:
            values = apply_voi_lut(values, ds, index=0)
        lo, hi = output_range(ds, voi)
    except DECODE_ERRORS as exc:
        raise DicomError("corrupt", f"grey transforms: {type(exc).__name__}: {exc}") from exc
    if hi == lo or not np.isfinite([lo, hi]).all():
        raise DicomError("corrupt", f"empty output range [{lo}, {hi}]")
    values = np.asarray(values, dtype=np.float64)
    if str(ds.PhotometricInterpretation).strip() == "MONOCHROME1":
        values = lo + hi - values
    scaled = np.clip((values - lo) * (255.0 / (hi - lo)), 0.0, 255.0)
    return np.floor(scaled + 0.5).astype(np.uint8)


def _check_size(ds, min_side: int, max_pixels: int) -> None:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        int(ds.BitsStored)
    except (AttributeError, TypeError, ValueError) as exc:
        raise DicomError("corrupt", f"image header: {exc}") from exc
    if rows * cols > max_pixels:
        raise DicomError("decompression bomb", f"{cols}x{rows} exceeds max_pixels={max_pixels}")
    if min(rows, cols) < min_side:
        raise DicomError("too small", f"{cols}x{rows}, min_side={min_side}")


def read(path, *, min_side: int = 1, max_pixels: int = 50_000_000, voi: bool = True):
    """Decode a single-frame DICOM radiograph to RGB pixels (module docstring), or refuse it.

    Parameters
    ----------
    path : path-like, a DICOM file (:func:`is_dicom`).
    min_side, max_pixels : as :func:`cxr.images.load_image`, checked from ``Rows`` and
        ``Columns`` before decoding.
    voi : apply the VOI LUT or first window (step 3); False skips it.

    Returns
    -------
    :class:`DicomImage`.

    Raises
    ------
    DicomError with reason in :data:`REASONS`, or ``"corrupt"``, ``"truncated"``,
    ``"too small"``, ``"decompression bomb"``.
    """
    ds = _dcmread(path)
    refused = refusal(ds)
    if refused:
        raise DicomError(*refused)
    _check_size(ds, min_side, max_pixels)
    try:
        pixels = ds.pixel_array
    except DECODE_ERRORS as exc:
        raise DicomError(_failure(exc), f"pixel data: {type(exc).__name__}: {exc}") from exc
    bits = int(ds.BitsStored)
    if str(ds.PhotometricInterpretation).strip() == "RGB":
        if pixels.ndim != 3 or pixels.shape[-1] != 3:
            raise DicomError("corrupt", f"RGB pixel data of shape {pixels.shape}")
        full = 2**bits - 1
        rgb = pixels if full == 255 else np.floor(pixels * (255.0 / full) + 0.5)
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    else:
        if pixels.ndim != 2:
            raise DicomError("corrupt", f"grey pixel data of shape {pixels.shape}")
        grey = grey_to_8bit(pixels, ds, voi)
        rgb = np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    warning = ""
    if rgb.size and rgb.min() == rgb.max():
        warning = f"flat: every pixel decodes to {rgb.flat[0]}"
    elif rgb.size and rgb.max() < 64:
        warning = f"low range: maximum {rgb.max()} of 255 after the DICOM transforms"
    return DicomImage(rgb, bits, warning)
