"""DICOM in (cxr.dicom through the one loader): files written here with pydicom from a mirror
radiograph, read back and scored.

Each well-formed file stores the mirror image ``g`` (8-bit grey, resized to 160 x 128) in a way
a hospital archive does (16 bits with a window, MONOCHROME1, 12 bits in 16 with junk in the
unused high bits, signed values, a Modality LUT, a VOI LUT beside a window, a rescale with a
window in rescaled units, a negative rescale slope, and JPEG-lossless, RLE, JPEG 2000 and
JPEG-baseline copies); the expected 8-bit values are worked out here from the DICOM formulas
(PS3.3 C.11.2.1.2.1 window, C.11.1 modality, C.11.2 VOI LUT, C.7.6.3.1.2 MONOCHROME1), not by
calling the reader, and for every lossless file but the VOI LUT one (a square-root curve)
they equal ``g`` exactly, so the file scores exactly as the PNG it came from (tolerance: the
scores agree to 1e-6; the JPEG-baseline copy, lossy, decodes within 2 grey levels of the
JPEG's own Pillow decoding and scores within 1e-3). Each malformed or refused file gets its
reason. The model is a 32 px VGG19 with random weights (its probabilities mean nothing; they
must be equal for equal pixels).
"""

from __future__ import annotations

import io
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import (  # noqa: E402
    JPEG2000MC,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from cxr.dicom import age_years, decoder_problem, header_fields, is_dicom  # noqa: E402
from cxr.images import ImageError, image_info, load_image, load_rgb  # noqa: E402
from cxr.predict import image_files, load_for_model, main, overlay_path  # noqa: E402

KERMANY = "chest_xray/test/PNEUMONIA"
SIZE = (160, 128)  # width, height: not square, so rows and columns cannot be swapped unseen


# ---------------------------------------------------------------- writing DICOM files
def dataset(pixels: np.ndarray, bits_stored: int, **attrs) -> Dataset:
    """A single-frame DX-like dataset holding ``pixels`` uncompressed (little endian)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.826.0.1.3680043.8.498.1")
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientName = "Doe^Jane"
    ds.PatientBirthDate = "19750314"
    ds.StudyDate = "20200401"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1 if pixels.ndim == 2 else 3
    ds.PhotometricInterpretation = "MONOCHROME2" if pixels.ndim == 2 else "RGB"
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def save(ds: Dataset, path) -> str:
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def jpeg_lossless_sv1(values: np.ndarray, precision: int) -> bytes:
    """A JPEG lossless (ITU T.81 Annex H, process 14, predictor 1) codestream of a 2-D array.

    Written here, so that the test has a JPEG-lossless file without an encoder package:
    one Huffman table of 17 codes, all 5 bits long, for difference categories 0..16.
    """
    rows, cols = values.shape
    x = values.astype(np.int64)
    pred = np.empty_like(x)
    pred[0, 0] = 2 ** (precision - 1)  # H.1.2.1: first sample of the first line
    pred[0, 1:] = x[0, :-1]  # first line: left
    pred[1:, 0] = x[:-1, 0]  # first sample of other lines: above
    pred[1:, 1:] = x[1:, :-1]  # predictor 1: left
    diff = (x - pred).ravel()
    diff = np.where(diff >= 2**15, diff - 2**16, np.where(diff < -(2**15), diff + 2**16, diff))
    bits = []
    for d in diff.tolist():
        ssss = int(abs(d)).bit_length()
        bits.append(format(ssss, "05b"))
        if 0 < ssss < 16:
            bits.append(format(d if d > 0 else d + 2**ssss - 1, f"0{ssss}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = bytearray()
    for i in range(0, len(stream), 8):
        byte = int(stream[i : i + 8], 2)
        data.append(byte)
        if byte == 0xFF:
            data.append(0)  # byte stuffing
    counts = [0] * 16
    counts[4] = 17
    sof = bytes([0xFF, 0xC3, 0, 11, precision]) + rows.to_bytes(2, "big")
    sof += cols.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    dht = bytes([0xFF, 0xC4]) + (2 + 1 + 16 + 17).to_bytes(2, "big") + bytes([0, *counts])
    dht += bytes(range(17))
    sos = bytes([0xFF, 0xDA, 0, 8, 1, 1, 0, 1, 0, 0])
    return b"\xff\xd8" + sof + dht + sos + bytes(data) + b"\xff\xd9"


def encapsulated(ds: Dataset, frame: bytes, syntax) -> Dataset:
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return ds


# ---------------------------------------------------------------- the expected values, by hand
def window_8bit(v, center, width, y_min, y_max):
    """PS3.3 C.11.2.1.2.1 (LINEAR) to [y_min, y_max], then 8 bits, round half up."""
    c, w = center - 0.5, width - 1
    y = ((v - c) / w + 0.5) * (y_max - y_min) + y_min
    y = np.where(v <= c - w / 2, y_min, np.where(v > c + w / 2, y_max, y))
    return np.floor((y - y_min) * 255 / (y_max - y_min) + 0.5).astype(np.uint8)


def full_range_8bit(v, lo, hi):
    v = np.asarray(v, dtype=np.float64)
    return np.floor((v - lo) * 255 / (hi - lo) + 0.5).astype(np.uint8)


@pytest.fixture(scope="module")
def grey(mirror):
    """The mirror radiograph ``g``, ``(128, 160) uint8``, and its PNG."""
    src = sorted((mirror / KERMANY).glob("*.jpeg"))[0]
    with Image.open(src) as im:
        g = np.asarray(im.convert("L").resize(SIZE, Image.Resampling.BILINEAR))
    assert g.min() < 30 and g.max() > 200  # a real radiograph's range
    return g


@pytest.fixture(scope="module")
def files(grey, tmp_path_factory):
    """``{name: (path, expected (H, W) uint8 grey)}`` of the well-formed files, and the PNG."""
    d = tmp_path_factory.mktemp("dicom")
    g = grey.astype(np.int64)
    out = {}
    Image.fromarray(grey).save(d / "source.png")
    out["png"] = (str(d / "source.png"), grey)

    # 16 bits stored, two windows: the first (centre 3040, width 4096) applies.
    s = (16 * g + 1000).astype(np.uint16)
    ds = dataset(s, 16, WindowCenter=[3040, 500], WindowWidth=[4096, 100])
    expected = window_8bit(s.astype(float), 3040, 4096, 0, 65535)
    out["mono2_window"] = (save(ds, d / "mono2_window.dcm"), expected)
    ds = dataset(s, 16, WindowCenter=[3040, 500], WindowWidth=[4096, 100])
    out["jpeg2000"] = (save(ds_j2k(ds), d / "j2k.dcm"), expected)

    # MONOCHROME1 (bone dark as stored), 12 bits in 16, no window: inverted by the reader.
    twelve = np.floor(g * 4095 / 255 + 0.5).astype(np.uint16)
    ds = dataset((4095 - twelve).astype(np.uint16), 12, PhotometricInterpretation="MONOCHROME1")
    out["mono1"] = (save(ds, d / "mono1.dcm"), full_range_8bit(twelve, 0, 4095))
    ds = dataset((4095 - twelve).astype(np.uint16), 12, PhotometricInterpretation="MONOCHROME1")
    ds.compress(RLELossless)
    out["mono1_rle"] = (save(ds, d / "mono1_rle.dcm"), full_range_8bit(twelve, 0, 4095))

    # 12 bits stored in 16 with junk in the 4 unused high bits (overlay planes of old files).
    ds = dataset(twelve | np.uint16(0xA000), 12)
    out["bits12"] = (save(ds, d / "bits12"), full_range_8bit(twelve, 0, 4095))  # no extension
    ds = dataset(twelve, 12)
    ds = encapsulated(ds, jpeg_lossless_sv1(twelve, 12), JPEGLosslessSV1)
    out["jpeg_lossless"] = (save(ds, d / "jpeg_lossless.dcm"), full_range_8bit(twelve, 0, 4095))

    # Signed 12-bit values (PixelRepresentation 1): the range is -2048..2047.
    signed = (twelve.astype(np.int16) - 2048).astype(np.int16)
    ds = dataset(signed, 12, PixelRepresentation=1)
    out["signed"] = (save(ds, d / "signed.dcm"), grey)

    # A VOI LUT (a square-root curve, 16-bit output) and a window: the LUT applies (pydicom's
    # prefer_lut), 8 bits over its 0..65535 output range.
    lut = np.floor(np.sqrt(np.arange(4096) / 4095) * 65535 + 0.5).astype(np.uint16)
    ds = dataset(twelve, 12, WindowCenter=100, WindowWidth=10)
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4096, 0, 16])
    item.add_new("LUTData", "OW", lut.tobytes())  # little endian, as the file
    ds.VOILUTSequence = [item]
    out["voi_lut"] = (save(ds, d / "voi_lut.dcm"), full_range_8bit(lut[twelve], 0, 65535))

    # A Modality LUT that stores the image reversed (v = 4095 - s, in 16-bit entries x 16):
    # no VOI, so 8 bits over the LUT's own range 0..65520.
    mlut = (16 * (4095 - np.arange(4096))).astype(np.uint16)
    ds = dataset((4095 - twelve).astype(np.uint16), 12)
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4096, 0, 16])
    item.add_new("LUTData", "OW", mlut.tobytes())
    item.ModalityLUTType = "US"  # unspecified
    ds.ModalityLUTSequence = [item]
    expected = full_range_8bit(mlut[4095 - twelve], 0, 65520)
    out["modality_lut"] = (save(ds, d / "modality_lut.dcm"), expected)

    # Rescale (slope 0.5, intercept -1000) and a window in the rescaled units.
    s = (4 * g).astype(np.uint16)
    ds = dataset(s, 12, RescaleSlope=0.5, RescaleIntercept=-1000)
    ds.WindowCenter, ds.WindowWidth = -745, 512
    expected = window_8bit(0.5 * s - 1000, -745, 512, -1000, 4095 * 0.5 - 1000)
    out["rescale_window"] = (save(ds, d / "rescale_window.dcm"), expected)

    # A negative slope (values stored reversed), no window: the range is [1023, 0].
    s = (1023 - np.floor(g * 1023 / 255 + 0.5)).astype(np.uint16)
    ds = dataset(s, 10, RescaleSlope=-1, RescaleIntercept=1023)
    out["rescale_negative"] = (save(ds, d / "rescale_negative.dcm"), grey)

    # JPEG baseline (lossy), 8 bits: the JPEG's own decoding is the reference.
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="JPEG", quality=90)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        decoded = np.asarray(im)
    ds = encapsulated(dataset(grey, 8), buf.getvalue(), JPEGBaseline8Bit)
    out["jpeg_baseline"] = (save(ds, d / "jpeg_baseline.dcm"), decoded)

    # RGB, 8 bits: as stored.
    ds = dataset(np.repeat(grey[..., None], 3, axis=2), 8)
    out["rgb"] = (save(ds, d / "rgb.dcm"), grey)
    return out


def ds_j2k(ds: Dataset) -> Dataset:
    ds.compress(JPEG2000Lossless)
    return ds


# ---------------------------------------------------------------- well-formed files
WELL_FORMED = [
    "mono2_window",
    "jpeg2000",
    "mono1",
    "mono1_rle",
    "bits12",
    "jpeg_lossless",
    "rescale_window",
    "rescale_negative",
    "signed",
    "modality_lut",
    "voi_lut",
    "jpeg_baseline",
    "rgb",
]


@pytest.mark.parametrize("name", WELL_FORMED)
def test_each_file_decodes_to_the_hand_computed_pixels(files, grey, name):
    path, expected = files[name]
    assert is_dicom(path)
    loaded = load_image(path)
    assert loaded.rgb.shape == (128, 160, 3) and loaded.rgb.dtype == np.uint8
    assert (loaded.rgb == loaded.rgb[..., :1]).all()  # grey in R, G, B
    got = loaded.rgb[..., 0].astype(int)
    if name == "jpeg_baseline":  # lossy: against the JPEG's own decoding, 2 levels
        assert np.abs(got - expected).max() <= 2
        return
    np.testing.assert_array_equal(got, expected)
    if name == "voi_lut":  # the curve brightens: the LUT, not the window, was applied
        assert (got >= grey).all() and got.mean() > grey.mean() + 20
        return
    # and the hand values are the source image itself: the transforms undo the storage
    np.testing.assert_array_equal(got, grey)
    assert loaded.bit_depth == {"mono2_window": 16, "jpeg2000": 16, "rgb": 8}.get(
        name, 10 if name == "rescale_negative" else 12
    )


def test_compressed_copies_are_what_they_claim(files):
    syntaxes = {
        "jpeg2000": JPEG2000Lossless,
        "mono1_rle": RLELossless,
        "jpeg_lossless": JPEGLosslessSV1,
        "jpeg_baseline": JPEGBaseline8Bit,
    }
    for name, uid in syntaxes.items():
        assert pydicom.dcmread(files[name][0]).file_meta.TransferSyntaxUID == uid


def test_voi_skipped_scales_the_full_stored_range(files):
    """--dicom_voi false: 16-bit values 1000..5080 over 0..65535 give a dark image."""
    path, _ = files["mono2_window"]
    s = pydicom.dcmread(path).pixel_array.astype(float)
    loaded = load_image(path, dicom_voi=False)
    np.testing.assert_array_equal(loaded.rgb[..., 0], full_range_8bit(s, 0, 65535))
    top = np.floor(s.max() * 255 / 65535 + 0.5)
    assert loaded.rgb.max() == top < 64 and loaded.warning.startswith("low range")


def test_files_score_as_the_png_they_came_from(files):
    keras = pytest.importorskip("keras")
    from cxr.model import build_model

    keras.utils.set_random_seed(3)
    model = build_model(32, weights=None, dense_units=(8, 4))
    names = ["png", *WELL_FORMED]
    images, ok, errors = load_for_model([files[n][0] for n in names], 32)
    assert errors == [] and len(ok) == len(names)
    p = model.predict(images, verbose=0)[:, 1]
    for name, score in zip(names, p, strict=True):
        if name not in ("jpeg_baseline", "voi_lut"):
            assert score == pytest.approx(p[0], abs=1e-6), name
    # the lossy copy after the resize to 32 px: within the 2 grey levels of its decoding
    jpeg = images[names.index("jpeg_baseline")].astype(int)
    assert np.abs(jpeg - images[0]).max() <= 2
    assert abs(p[names.index("jpeg_baseline")] - p[0]) < 1e-3


# ---------------------------------------------------------------- refused files
@pytest.fixture(scope="module")
def refused(grey, tmp_path_factory):
    """``{name: (path, reason, detail fragment)}``."""
    d = tmp_path_factory.mktemp("refused")
    g16 = (16 * grey.astype(np.uint16)).astype(np.uint16)
    out = {}
    ds = dataset(np.concatenate([g16, g16]), 12)
    ds.Rows, ds.NumberOfFrames = 128, 2
    out["multi_frame"] = (save(ds, d / "multi.dcm"), "multi-frame", "NumberOfFrames 2")
    ds = dataset(g16, 12)
    del ds.PixelData
    out["no_pixels"] = (save(ds, d / "nopixels.dcm"), "no pixel data", "(7FE0,0010)")
    lateral = save(dataset(g16, 12, ViewPosition="LL"), d / "lat.dcm")
    out["lateral"] = (lateral, "lateral view", "ViewPosition 'LL'")
    out["hand"] = (
        save(dataset(g16, 12, BodyPartExamined="HAND"), d / "hand.dcm"),
        "not chest",
        "HAND",
    )
    ds = dataset(g16, 12, PhotometricInterpretation="PALETTE COLOR")
    out["palette"] = (
        save(ds, d / "palette.dcm"),
        "unsupported photometric interpretation",
        "PALETTE COLOR",
    )
    ds = encapsulated(dataset(g16, 12), b"\x00" * 64, JPEG2000MC)
    out["no_decoder"] = (save(ds, d / "j2kmc.dcm"), "no decoder", "pydicom has no decoder")
    ds = dataset(g16, 12, RescaleSlope=0, RescaleIntercept=5)
    out["slope0"] = (save(ds, d / "slope0.dcm"), "corrupt", "empty output range")
    save(dataset(g16, 12), d / "whole.dcm")
    whole = (d / "whole.dcm").read_bytes()
    (d / "cut.dcm").write_bytes(whole[: len(whole) - 5000])
    out["truncated"] = (str(d / "cut.dcm"), "truncated", "pixel data")
    return out


@pytest.mark.parametrize(
    "name",
    ["multi_frame", "no_pixels", "lateral", "hand", "palette", "no_decoder", "slope0", "truncated"],
)
def test_bad_files_are_refused_with_their_reason(refused, name):
    path, reason, fragment = refused[name]
    with pytest.raises(ImageError) as err:
        load_rgb(path)
    assert err.value.reason == reason and err.value.path == path
    assert fragment in err.value.detail, err.value.detail


def test_a_missing_decoder_names_the_packages(monkeypatch):
    import pydicom.pixels

    class Missing:
        is_available = False
        missing_dependencies = ["gdcm - requires gdcm>=3.0.10", "pylibjpeg - requires ..."]

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: Missing())
    text = decoder_problem(JPEGLosslessSV1)
    assert text.startswith("transfer syntax JPEG Lossless, Non-Hierarchical, First-Order")
    assert "no decoder installed; install one of: gdcm" in text and "pylibjpeg" in text
    monkeypatch.undo()
    assert decoder_problem(JPEGLosslessSV1) is None  # pylibjpeg-libjpeg, pinned, decodes it
    assert decoder_problem(RLELossless) is None  # pydicom's own


def test_content_not_extension_decides(files, tmp_path):
    src, _ = files["mono1"]
    named_png = tmp_path / "scan.png"
    shutil.copy(src, named_png)
    np.testing.assert_array_equal(load_rgb(named_png), load_rgb(src))
    assert image_info(named_png) == {
        "width": 160,
        "height": 128,
        "mode": "MONOCHROME1",
        "format": "DICOM",
    }
    fake = tmp_path / "fake.dcm"
    fake.write_bytes(b"\0" * 200)
    assert not is_dicom(fake)
    with pytest.raises(ImageError) as err:
        load_rgb(fake)
    assert err.value.reason == "unreadable"


# ---------------------------------------------------------------- header, folders, privacy
def test_age_strings():
    assert age_years("045Y") == 45.0
    assert age_years("006M") == pytest.approx(0.5)
    assert age_years("012W") == pytest.approx(12 * 7 / 365.25)
    assert age_years("010D") == pytest.approx(10 / 365.25)
    assert np.isnan(age_years("")) and np.isnan(age_years("45 years"))


def test_header_fills_only_what_the_csv_leaves_out(grey, tmp_path):
    from cxr.external import read_labelled_table

    g16 = (16 * grey.astype(np.uint16)).astype(np.uint16)
    extra = dict(PatientID="HOSP-17", PatientAge="045Y", PatientSex="F", ViewPosition="AP")
    save(dataset(g16, 12, **extra), tmp_path / "a")
    save(dataset(g16, 12, **extra), tmp_path / "b")
    Image.fromarray(grey).save(tmp_path / "c.png")
    assert header_fields(tmp_path / "a") == {
        "patient_id": "HOSP-17",
        "age": "45",
        "sex": "F",
        "view": "AP",
    }
    assert header_fields(tmp_path / "c.png") == {}
    (tmp_path / "t.csv").write_text(
        "path,label,patient_id,age\na,covid,,\nb,covid,csv-2,50\nc.png,non_covid,,\n"
    )
    t = read_labelled_table(tmp_path / "t.csv")
    assert t.columns.tolist() == ["path", "label", "patient_id", "view", "age", "sex"]
    assert t["patient_id"].tolist() == ["HOSP-17", "csv-2", str(tmp_path / "c.png")]
    assert t["age"].tolist() == ["45", "50", ""]  # the CSV's 50 is kept
    assert t["sex"].tolist() == ["F", "F", ""] and t["view"].tolist() == ["AP", "AP", ""]


def test_folder_of_an_archive_recursive_with_errors(files, refused, tmp_path, capsys):
    pytest.importorskip("keras")
    from cxr.model import build_model

    model = tmp_path / "tiny.keras"
    build_model(32, weights=None, dense_units=(4, 4)).save(model)
    root = tmp_path / "archive"
    series = root / "PAT0001" / "STU0001" / "SER0001"
    series.mkdir(parents=True)
    shutil.copy(files["mono1"][0], series / "IM000001")
    shutil.copy(files["jpeg_lossless"][0], series / "1.2.840.99.5")
    shutil.copy(refused["lateral"][0], series / "IM000002")
    shutil.copy(files["png"][0], root / "top.png")
    save(dataset(np.zeros((4, 4), np.uint16), 12), root / "DICOMDIR")  # the index: skipped
    (series / "notes.txt").write_text("not an image")
    assert [p.name for p in image_files([root])] == ["top.png"]
    found = image_files([root], recursive=True)
    assert [p.relative_to(root).as_posix() for p in found] == [
        "PAT0001/STU0001/SER0001/1.2.840.99.5",
        "PAT0001/STU0001/SER0001/IM000001",
        "PAT0001/STU0001/SER0001/IM000002",
        "top.png",
    ]
    assert main(["--model", str(model), "--recursive", "--gradcam", str(root)]) == 1
    out = capsys.readouterr()
    scored = [line.split("\t")[0] for line in out.out.splitlines()[1:]]
    assert scored == [str(found[0]), str(found[1]), str(found[3])]
    assert f"ERROR {found[2]}: lateral view: ViewPosition 'LL'" in out.err
    assert "3 scored, 1 failed" in out.err
    assert (series / "1.2.840.99.5.gradcam.png").is_file()  # a UID name is kept whole
    assert (series / "IM000001.gradcam.png").is_file()
    assert overlay_path(series / "x.dcm") == series / "x.gradcam.png"
    # the overlays are not scored by the next run
    assert image_files([root], recursive=True) == found


@pytest.mark.slow
def test_external_script_on_dicom_writes_no_names_or_dates(grey, tmp_path):
    """The rule's script on a CSV of DICOM files: the header fills patient_id, age, sex, view;
    no patient name, birth date or study date reaches any output."""
    keras = pytest.importorskip("keras")
    from cxr.model import build_model

    keras.utils.set_random_seed(0)
    model = tmp_path / "model_03.keras"
    build_model(32, weights=None, dense_units=(4, 4)).save(model)
    g16 = (16 * grey.astype(np.uint16)).astype(np.uint16)
    rows = ["path,label"]
    for i, label in enumerate(["covid", "non_covid", "covid", "non_covid"]):
        attrs = dict(PatientID=f"P{i // 2}", PatientAge="061Y", PatientSex="M")
        save(dataset(g16, 12, **attrs), tmp_path / f"im{i}")
        rows.append(f"im{i},{label}")
    save(dataset(g16, 12, ViewPosition="RL"), tmp_path / "lat")
    rows.append("lat,covid")
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    from .external_script import run_table

    proc, out = run_table(tmp_path, model, csv, "--dicom_voi", "false")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    scored = pd.read_csv(out["csv"], dtype=str, keep_default_na=False)
    assert scored["patient_id"].tolist() == ["P0", "P0", "P1", "P1"]
    assert set(scored["age"]) == {"61"} and set(scored["sex"]) == {"M"}
    assert set(scored["view"]) == {"PA"}
    errors = pd.read_csv(out["errors"], dtype=str)
    assert errors["reason"].tolist() == ["lateral view"]
    import json

    assert json.loads(out["json"].read_text())["n_patients"] == 2
    for path in (out["json"], out["csv"], out["errors"]):
        text = path.read_text()
        for secret in ("Doe", "Jane", "1975", "19750314", "20200401"):
            assert secret not in text, (path, secret)
