"""Strict inputs (issue 18, item 4): CSV files from outside the pipeline are UTF-8 or refused
with the file, the line and what to do; images outside the split are held to the training
images' inclusion rules; only decoding errors quarantine an image (MemoryError and interrupts
propagate)."""

from __future__ import annotations

import gzip
import io
import random
import struct
import subprocess
import sys
import zlib

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image, ImageFile, ImageOps

from cxr import dag
from cxr.external import TableError, read_labelled_table, score_table
from cxr.images import DECODE_ERRORS, ImageError, load_image
from cxr.io import InputEncodingError, read_input_csv
from cxr.manifest import build_manifest, read_metadata
from cxr.predict import load_for_model

from .conftest import REPO, copy_checkout

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
MIN_SIDE = CONFIG["manifest"]["min_side"]
MAX_PIXELS = CONFIG["manifest"]["max_pixels"]

# "José" in latin-1: 0xe9 is not UTF-8. Line 3, byte 4 of the line (J=1, o=2, s=3, é=4).
LATIN1 = "path,label,patient_id\na.png,covid,p1\nJosé.png,non_covid,p2\n".encode("latin-1")


class FakeModel:
    """p_covid = mean red / 255 of the image (no TensorFlow)."""

    input_shape = (None, 8, 8, 3)

    def predict(self, images, batch_size=None, verbose=0):
        p = images[..., 0].mean(axis=(1, 2)) / 255.0
        return np.stack([1 - p, p], axis=1)


def png(path, height, width, value=128):
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)
    return path


# --- CSV files: UTF-8 or a clear error ------------------------------------------------------


def test_a_latin1_external_table_is_refused_naming_file_line_and_fix(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_bytes(LATIN1)
    with pytest.raises(InputEncodingError) as err:
        read_labelled_table(csv)
    e = err.value
    assert (e.path, e.line, e.column, e.byte) == (str(csv), 3, 4, 0xE9)
    message = str(e)
    assert message.startswith(f"{csv}: not UTF-8: line 3, byte 4 of the line (0xe9)")
    assert f"iconv -f latin1 -t utf-8 '{csv}' > '{tmp_path / 'labels.utf8.csv'}'" in message
    assert "CSV UTF-8" in message
    assert not isinstance(e, UnicodeDecodeError)


def test_the_fix_the_error_names_works(tmp_path):
    """The converted file (what ``iconv -f latin1 -t utf-8`` writes) reads, names intact."""
    fixed = tmp_path / "labels.utf8.csv"
    fixed.write_bytes(LATIN1.decode("latin-1").encode("utf-8"))
    assert read_labelled_table(fixed)["path"].tolist() == [
        str(tmp_path / "a.png"),
        str(tmp_path / "José.png"),
    ]


def test_a_utf8_table_with_a_byte_order_mark_reads(tmp_path):
    csv = tmp_path / "bom.csv"
    csv.write_bytes(b"\xef\xbb\xbf" + "path,label,patient_id\nJosé.png,covid,p1\n".encode())
    table = read_labelled_table(csv)
    # view, age and sex: empty, since neither the CSV nor a DICOM header gives them
    assert table.to_dict("records") == [
        {
            "path": str(tmp_path / "José.png"),
            "label": "covid",
            "patient_id": "p1",
            **dict.fromkeys(("view", "age", "sex"), ""),
        }
    ]
    raw = read_input_csv(csv, dtype=str)
    assert list(raw.columns) == ["path", "label", "patient_id"]  # no "\ufeffpath"


def test_the_line_counts_the_bom_and_lines_of_the_file(tmp_path):
    """Byte-order mark (3 bytes, no line) and a 2-byte UTF-8 character before the bad byte:
    line 2, byte 7 (a=1, b=2, ','=3, é=4-5, x=6, 0x96=7, a Windows-1252 dash)."""
    csv = tmp_path / "t.csv"
    csv.write_bytes(b"\xef\xbb\xbfpath,label\nab,\xc3\xa9x\x96\n")
    with pytest.raises(InputEncodingError) as err:
        read_input_csv(csv)
    assert (err.value.line, err.value.column, err.value.byte) == (2, 7, 0x96)


def test_upstream_metadata_is_read_strictly_too(tmp_path):
    """ieee8023 metadata.csv (the manifest) and a gzipped NIH table: same reader, same error."""
    covid = tmp_path / "covid"
    covid.mkdir()
    rows = "patientid,finding,view,modality,filename\n1,COVID-19,PA,X-ray,a.png\n"
    (covid / "metadata.csv").write_bytes((rows + "2,Pneumonía,PA,X-ray,b.png\n").encode("latin-1"))
    # "2,Pneumon" is 9 bytes, so latin-1 "í" (0xed) is byte 10 of line 3.
    with pytest.raises(InputEncodingError, match=r"metadata.csv: not UTF-8: line 3, byte 10 "):
        build_manifest(covid, tmp_path / "kermany")
    nih = tmp_path / "Data_Entry.csv.gz"
    nih.write_bytes(gzip.compress("Image Index\nx.png\nñ.png\n".encode("latin-1")))
    with pytest.raises(InputEncodingError) as err:
        read_metadata(nih, ("Image Index",))
    assert str(err.value).startswith(f"{nih}: not UTF-8: line 3 of the decompressed text, byte 1")
    assert f"gunzip -c '{nih}' | iconv -f latin1 -t utf-8 | gzip >" in str(err.value)
    nih.write_bytes(gzip.compress("Image Index\nx.png\nñ.png\n".encode()))
    assert read_metadata(nih, ("Image Index",))["Image Index"].tolist() == ["x.png", "ñ.png"]


def test_the_real_mirror_metadata_is_utf8(mirror):
    """The shipped inputs pass the strict reader and read as pandas' own UTF-8 reading does
    (so the rule refuses nothing that ran before and changes no value)."""
    path = mirror / "covid-chestxray-dataset" / "metadata.csv"
    pd.testing.assert_frame_equal(
        read_metadata(path), pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    )


def test_the_manifest_script_refuses_latin1_metadata_in_one_line(tmp_path):
    """scripts/manifest.py: exit 1, one ERROR line naming file and line, nothing written."""
    covid, kermany = tmp_path / "covid", tmp_path / "kermany"
    covid.mkdir()
    kermany.mkdir()
    rows = "patientid,finding,view,modality,filename\n1,COVID-19,PA,X-ray,Ã.png\n"
    (covid / "metadata.csv").write_bytes(rows.encode("latin-1"))  # "Ã" is 0xc3, then "."
    out = {k: tmp_path / f"{k}.csv" for k in ("manifest", "excluded", "near_duplicates")}
    args = ["--covid", str(covid), "--kermany", str(kermany)]
    args += [a for k, path in out.items() for a in (f"--{k}", str(path))]
    args += ["--covid_findings", "COVID-19", "--modality", "X-ray", "--views", "PA"]
    args += ["--min_side", "128", "--max_pixels", "1000", "--near_duplicate_distance", "4"]
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts/manifest.py"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"ERROR: {covid / 'metadata.csv'}: not UTF-8: line 2, byte 21 of the line (0xc3) is not "
        f"valid UTF-8. Input CSV files must be UTF-8 (a byte-order mark is allowed). Convert "
        f"it from its encoding, e.g. from latin-1: iconv -f latin1 -t utf-8 "
        f"'{covid / 'metadata.csv'}' > '{covid / 'metadata.utf8.csv'}' (Windows-1252: -f "
        f"cp1252), or re-save it from a spreadsheet as 'CSV UTF-8', and use the converted file."
    ]
    assert not any(path.exists() for path in out.values())


@pytest.mark.slow
def test_the_script_refuses_a_latin1_table_in_one_line(tmp_path):
    """The rule's script: exit 1, one ERROR line naming file and line, no traceback, no
    outputs."""
    keras = pytest.importorskip("keras")
    from cxr.model import build_model

    from .external_script import run_table

    keras.utils.set_random_seed(0)
    model = tmp_path / "model_03.keras"
    build_model(32, dense_units=(4, 4)).save(model)
    csv = tmp_path / "labels.csv"
    csv.write_bytes(LATIN1)
    proc, out = run_table(tmp_path, model, csv, max_pixels=100)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "UnicodeDecodeError" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ERROR: {csv}: not UTF-8: line 3, byte 4 of the line (0xe9)")
    assert not any(p.exists() for p in out.values())


# --- images outside the split: the training images' inclusion rules -------------------------


def test_external_images_are_held_to_the_manifests_rules(tmp_path):
    """An image one pixel under config manifest.min_side is listed with the manifest's own
    reason text and not scored; one at min_side is scored (p_covid = red / 255, the fake
    model); a decompression bomb by max_pixels likewise."""
    small = png(tmp_path / "small.png", MIN_SIDE - 1, 300, value=200)
    edge = png(tmp_path / "edge.png", MIN_SIDE, MIN_SIDE, value=51)
    big = png(tmp_path / "big.png", 300, 300, value=10)
    table = pd.DataFrame(
        {
            "path": [str(small), str(edge), str(big)],
            "label": ["covid", "non_covid", "covid"],
            "patient_id": ["p1", "p2", "p3"],
        }
    )
    scored, errors = score_table(FakeModel(), table, min_side=MIN_SIDE, max_pixels=300 * 300 - 1)
    assert scored["path"].tolist() == [str(edge)]
    assert scored["p_covid"].tolist() == pytest.approx([51 / 255])
    assert errors.to_dict("records") == [
        {"path": str(small), "reason": "too small", "detail": f"300x{MIN_SIDE - 1}, "
         f"min_side={MIN_SIDE}"},
        {"path": str(big), "reason": "decompression bomb",
         "detail": f"300x300 exceeds max_pixels={300 * 300 - 1}"},
    ]  # fmt: skip
    # The manifest excludes the same file with the same reason and detail text.
    covid = tmp_path / "covid"
    (covid / "images").mkdir(parents=True)
    png(covid / "images" / "small.png", MIN_SIDE - 1, 300)
    (covid / "metadata.csv").write_text(
        "patientid,finding,view,modality,filename\n1,COVID-19,PA,X-ray,small.png\n"
    )
    _, excluded = build_manifest(covid, tmp_path / "none", min_side=MIN_SIDE)
    assert excluded["reason"].tolist() == ["too small"]
    assert (
        excluded["detail"][0]
        == f"{covid / 'images' / 'small.png'}: too small: " + (errors["detail"][0])
    )


def test_the_rules_pass_the_manifests_limits_to_every_test_outside_the_split(tmp_path):
    """evaluate_external, evaluate_ieee8023_viral and evaluate_ieee8023_adult render
    --min_side and --max_pixels from config manifest.* (an overlay's values, here)."""
    root = copy_checkout(tmp_path / "checkout")
    (root / "ext").mkdir()
    (root / "ext/labels.csv").write_text("path,label\na.png,covid\n")
    (root / "overlay.yaml").write_text(
        yaml.safe_dump(
            {
                "manifest": {"min_side": 77, "max_pixels": 123456},
                "external": {"metadata": "ext/labels.csv"},
            }
        )
    )
    overlay = ["tests/config/smoke.yaml", "overlay.yaml"]
    with dag.snakemake_dag(root, configfiles=overlay) as (_, jobs):
        cmds = {j.rule.name: j.shellcmd for j in jobs}
    for rule in (
        "manifest",
        "evaluate_external",
        "evaluate_ieee8023_viral",
        "evaluate_ieee8023_adult",
    ):
        assert "--min_side 77 --max_pixels 123456" in cmds[rule], rule


# --- image decoding: only decoding errors quarantine ----------------------------------------


def truncated_png(path):
    data = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(data, "PNG")
    path.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    return path


def raiser(exc):
    def boom(*args, **kwargs):
        raise exc

    return boom


@pytest.mark.parametrize(
    "where",
    [(Image, "open"), (ImageFile.ImageFile, "load"), (ImageOps, "exif_transpose")],
    ids=["header", "decode", "orientation"],
)
@pytest.mark.parametrize("exc", [MemoryError, KeyboardInterrupt])
def test_memory_errors_and_interrupts_propagate(tmp_path, monkeypatch, where, exc):
    good = png(tmp_path / "good.png", 20, 20)
    monkeypatch.setattr(*where, raiser(exc()))
    with pytest.raises(exc):
        load_image(good)
    with pytest.raises(exc):  # scoring an external table does not list it as a failure
        load_for_model([good], 8)


def test_a_truncated_file_is_still_quarantined_beside_a_good_one(tmp_path):
    good = png(tmp_path / "good.png", 20, 20, value=7)
    cut = truncated_png(tmp_path / "cut.png")
    images, ok, errors = load_for_model([cut, good], 8)
    assert ok == [str(good)] and images.shape == (1, 8, 8, 3) and (images == 7).all()
    assert [(p, r) for p, r, _ in errors] == [(str(cut), "truncated")]


@pytest.mark.parametrize(
    "exc",
    [
        OSError("broken data stream"),
        SyntaxError("broken PNG file"),
        ValueError("bad tile"),
        EOFError(),
        IndexError("palette"),
        TypeError("Missing dimensions"),
        struct.error("unpack requires a buffer"),
        zlib.error("Error -3 while decompressing"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_each_decoding_error_quarantines_as_corrupt(tmp_path, monkeypatch, exc):
    assert isinstance(exc, DECODE_ERRORS)
    good = png(tmp_path / "x.png", 20, 20)
    monkeypatch.setattr(ImageFile.ImageFile, "load", raiser(exc))
    with pytest.raises(ImageError) as err:
        load_image(good)
    expected = "truncated" if isinstance(exc, EOFError) else "corrupt"
    assert err.value.reason == expected and type(exc).__name__ in err.value.detail


@pytest.mark.filterwarnings("ignore:.*EXIF|Tag data|Metadata Warning|Truncated File:UserWarning")
def test_damaged_files_of_every_format_give_image_errors_only(tmp_path):
    """300 files with bytes cut or flipped (seeded), across formats and modes: each loads or
    raises ImageError; no other exception escapes the narrowed catch."""
    rng = random.Random(18)
    grey = np.random.default_rng(18).integers(0, 255, (48, 40), np.uint8)
    bases = []
    for fmt, image in [
        ("PNG", Image.fromarray(grey)),
        ("PNG", Image.fromarray(grey.astype(np.uint16) * 200)),
        ("JPEG", Image.fromarray(grey)),
        ("TIFF", Image.fromarray(grey)),
        ("GIF", Image.fromarray(grey).convert("P")),
        ("BMP", Image.fromarray(grey).convert("RGB")),
    ]:
        data = io.BytesIO()
        image.save(data, fmt)
        bases.append(data.getvalue())
    outcomes = set()
    path = tmp_path / "damaged"
    for i in range(300):
        data = bytearray(bases[i % len(bases)])
        if i % 3 == 0:
            data = data[: rng.randrange(1, len(data))]
        else:
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))
        try:
            load_image(path)
            outcomes.add("loaded")
        except ImageError as err:
            outcomes.add(err.reason)
    assert {"loaded", "truncated", "corrupt"} <= outcomes


def test_a_table_error_is_not_an_encoding_error(tmp_path):
    """A UTF-8 table with a bad label still gets its own message (row and value)."""
    (tmp_path / "t.csv").write_text("path,label\nJosé.png,COVID\n", encoding="utf-8")
    with pytest.raises(TableError, match="row 2: label 'COVID'"):
        read_labelled_table(tmp_path / "t.csv")
