"""Manifest rules on a hand-made raw folder: what is taken, and why the rest is excluded."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.manifest import MetadataError, build_manifest, near_duplicates, read_metadata

META_COLUMNS = ["patientid", "offset", "finding", "view", "modality", "folder", "filename"]


def png(path, value, size=(160, 200), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path, format="PNG")


@pytest.fixture
def raw(tmp_path):
    covid = tmp_path / "covid-chestxray-dataset"
    rows = [
        ("1", "COVID-19", "PA", "X-ray", "a.png"),
        ("1", "COVID-19", "AP Supine", "X-ray", "b.png"),
        ("2", "COVID-19, ARDS", "AP", "X-ray", "c.png"),
        ("2", "COVID-19", "L", "X-ray", "lat.png"),  # lateral
        ("3", "COVID-19", "Axial", "CT", "ct.png"),  # CT
        ("4", "SARS", "PA", "X-ray", "sars.png"),  # other finding
        ("5", "COVID-19", "PA", "X-ray", "gone.png"),  # no file
        ("6", "COVID-19", "PA", "X-ray", "tiny.png"),  # too small
        ("7", "COVID-19", "PA", "X-ray", "copy.png"),  # same bytes as a.png
        ("1", "COVID-19", "PA", "X-ray", "a.png"),  # listed twice
    ]
    meta = pd.DataFrame(
        [(p, "0", f, v, m, "images", fn) for p, f, v, m, fn in rows], columns=META_COLUMNS
    )
    (covid / "images").mkdir(parents=True)
    meta.to_csv(covid / "metadata.csv", index=False)
    for i, name in enumerate(["a", "b", "c", "lat", "ct", "sars"]):
        png(covid / "images" / f"{name}.png", 10 * i)
    png(covid / "images/tiny.png", 99, size=(64, 64))
    (covid / "images/copy.png").write_bytes((covid / "images/a.png").read_bytes())
    kermany = tmp_path / "chest_xray"
    # person1 exists in both Kermany splits: two different children.
    for rel, v in [
        ("train/PNEUMONIA/person1_virus_1.jpeg", 100),
        ("train/PNEUMONIA/person1_virus_2.jpeg", 110),
        ("test/PNEUMONIA/person1_virus_5.jpeg", 120),
        ("train/PNEUMONIA/person2_virus_3_1.jpeg", 130),
        ("train/PNEUMONIA/person3_bacteria_4.jpeg", 140),  # bacterial: not taken
    ]:
        p = kermany / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (200, 180), v).save(p, format="JPEG")
    return covid, kermany


def test_manifest_takes_and_excludes_with_reasons(raw):
    df, ex = build_manifest(*raw, min_side=128)
    got = {
        p.split("/")[-1]: (lab, pid) for p, lab, pid in df[["path", "label", "patient_id"]].values
    }
    assert got == {
        "a.png": ("covid", "ieee8023:1"),
        "b.png": ("covid", "ieee8023:1"),
        "c.png": ("covid", "ieee8023:2"),
        "person1_virus_1.jpeg": ("non_covid", "kermany-train:person1"),
        "person1_virus_2.jpeg": ("non_covid", "kermany-train:person1"),
        "person1_virus_5.jpeg": ("non_covid", "kermany-test:person1"),
        "person2_virus_3_1.jpeg": ("non_covid", "kermany-train:person2"),
    }
    reasons = {(p.split("/")[-1], r) for p, r in ex[["path", "reason"]].values}
    assert reasons == {
        ("lat.png", "not frontal view"),
        ("ct.png", "not X-ray"),
        ("sars.png", "other finding"),
        ("gone.png", "missing file"),
        ("tiny.png", "too small"),
        ("copy.png", "duplicate image"),
        ("a.png", "duplicate row"),
    }
    row = df[df.path.str.endswith("a.png")].iloc[0]
    assert (row.width, row.height, row["mode"], row.format) == (160, 200, "L", "PNG")


def test_same_pixels_other_bytes_is_a_duplicate(raw):
    covid, kermany = raw
    # c.png re-encoded as JPEG-named PNG with identical pixels: another file, same image.
    arr = np.asarray(Image.open(covid / "images/c.png"))
    meta = pd.read_csv(covid / "metadata.csv", dtype=str)
    meta.loc[len(meta)] = ["9", "0", "COVID-19", "PA", "X-ray", "images", "reenc.png"]
    meta.to_csv(covid / "metadata.csv", index=False)
    Image.fromarray(arr).save(covid / "images/reenc.png", format="PNG", compress_level=1)
    assert (covid / "images/reenc.png").read_bytes() != (covid / "images/c.png").read_bytes()
    df, ex = build_manifest(covid, kermany, min_side=128)
    dup = ex[ex.path.str.endswith("reenc.png")]
    assert dup.reason.tolist() == ["duplicate image"] and "same pixels" in dup.detail.iloc[0]


def test_image_in_both_classes_is_dropped_from_both(raw):
    covid, kermany = raw
    (kermany / "train/PNEUMONIA/person9_virus_9.jpeg").write_bytes(
        (covid / "images/c.png").read_bytes()
    )
    df, ex = build_manifest(covid, kermany, min_side=128)
    both = ex[ex.reason == "same image in both classes"]
    assert sorted(p.split("/")[-1] for p in both.path) == ["c.png", "person9_virus_9.jpeg"]
    assert not df.path.str.endswith(("c.png", "person9_virus_9.jpeg")).any()


def test_same_pixels_other_bytes_in_both_classes_dropped_from_both(raw):
    covid, kermany = raw
    # c.png's pixels saved again with another compression level, under the other class: the
    # bytes differ, the picture does not. Neither copy may keep a label.
    twin = kermany / "train/PNEUMONIA/person9_virus_9.jpeg"
    Image.open(covid / "images/c.png").save(twin, format="PNG", compress_level=1)
    assert twin.read_bytes() != (covid / "images/c.png").read_bytes()
    df, ex = build_manifest(covid, kermany, min_side=128)
    both = ex[ex.reason == "same image in both classes"].set_index("path")
    c_path, twin_path = (covid / "images/c.png").as_posix(), twin.as_posix()
    assert sorted(both.index) == sorted([c_path, twin_path])
    assert both.loc[c_path, "detail"] == f"same pixels as {twin_path}"
    assert both.loc[twin_path, "detail"] == f"same pixels as {c_path}"
    assert not df.path.isin([c_path, twin_path]).any()
    assert ex.path.isin([c_path, twin_path]).sum() == 2  # not also a "duplicate image"


def test_manifest_records_bit_depth_and_range_warning(raw):
    covid, kermany = raw
    # A 12-bit X-ray in a 16-bit PNG (values 0..4095, no sBIT), and a flat 8-bit image.
    ramp = np.linspace(0, 4095, 160 * 200).round().astype(np.uint16).reshape(200, 160)
    Image.fromarray(ramp).save(covid / "images/b.png", format="PNG")
    df, _ = build_manifest(covid, kermany, min_side=128)
    rows = df.set_index(df.path.str.split("/").str[-1])
    assert rows.loc["b.png", "bit_depth"] == 12 and rows.loc["b.png", "warning"] == ""
    assert rows.loc["c.png", "bit_depth"] == 8  # fixture images are flat 8-bit greys
    assert rows.loc["c.png", "warning"] == "flat: every pixel decodes to 20"


def test_metadata_missing_column_names_it(tmp_path):
    p = tmp_path / "metadata.csv"
    pd.DataFrame(columns=["patient_id", "finding", "view", "modality", "filename"]).to_csv(p)
    with pytest.raises(MetadataError, match=r"metadata.csv: .*'patientid' \(found 'patient_id'\)"):
        read_metadata(p)


def test_near_duplicates_by_hamming_distance():
    # 64-bit hashes with known Hamming distances: a^b = 0b1 (1 bit), a^c = 0xFF (8 bits)
    m = pd.DataFrame(
        {"path": ["a", "b", "c"], "patient_id": ["p1", "p2", "p1"],
         "label": ["covid", "covid", "non_covid"],
         "phash": ["0000000000000000", "0000000000000001", "00000000000000ff"]}
    )  # fmt: skip
    got = near_duplicates(m, max_distance=7)
    assert got.values.tolist() == [["a", "b", 1, False, True], ["b", "c", 7, False, False]]
    assert len(near_duplicates(m, max_distance=0)) == 0
