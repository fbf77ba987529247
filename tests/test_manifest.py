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


# --- age and sex of every source; the NIH adult controls ---------------------------------------

NIH_META_COLUMNS = [
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
    "Patient Gender", "View Position",
]  # fmt: skip


@pytest.fixture
def nih(tmp_path):
    """A hand-made NIH folder: metadata for 7 images, 9 files (the expected reasons below)."""
    folder = tmp_path / "nih"
    rows = [
        ("00000001_000.png", "No Finding", "0", "1", "30", "M", "PA"),
        ("00000001_001.png", "Pneumonia|Infiltration", "1", "1", "31", "M", "AP"),
        ("00000002_000.png", "Pneumonia", "0", "2", "12", "F", "AP"),  # a child
        ("00000004_000.png", "No Finding", "0", "5", "40", "F", "PA"),  # id disagrees
        ("00000006_000.png", "Effusion", "0", "6", "50", "F", "PA"),  # not Pneumonia
        ("00000007_000.png", "No Finding", "0", "7", "414", "M", "PA"),  # age typo
        ("00000008_002.png", "No Finding", "2", "8", "60", "F", "AP"),
    ]
    folder.mkdir()
    meta = pd.DataFrame(rows, columns=NIH_META_COLUMNS)
    meta.to_csv(folder / "Data_Entry_2017_v2020.csv.gz", index=False, compression="gzip")
    files = [
        "No_findings/00000001_000.png",
        "Pneumonia/00000001_001.png",  # the same patient in the other folder
        "Pneumonia/00000002_000.png",
        "No_findings/00000003_000.png",  # not in the metadata
        "No_findings/00000004_000.png",
        "Pneumonia/00000006_000.png",
        "No_findings/00000007_000.png",
        "No_findings/00000008_002.png",
        "No_findings/scan.png",  # not an NIH name
    ]
    for i, rel in enumerate(files):
        png(folder / rel, 150 + 10 * i)
    return folder


def test_nih_rows_patient_ids_ages_and_reasons(raw, nih):
    df, ex = build_manifest(*raw, nih_dir=nih, min_side=128)
    rows = df[df.source == "nih"]
    rows = rows.set_index(rows.path.str.split("/").str[-1])
    cols = ["label", "patient_id", "view", "finding", "labels", "age", "sex"]
    got = {name: tuple(r) for name, r in rows[cols].iterrows()}
    nan = got["00000007_000.png"][5]
    assert np.isnan(nan)  # 414 "years": read as unknown, not as an age
    assert got == {
        "00000001_000.png": ("non_covid", "nih:1", "PA", "No Finding", "No Finding", 30, "M"),
        "00000001_001.png": (
            "non_covid", "nih:1", "AP", "Pneumonia", "Pneumonia|Infiltration", 31, "M",
        ),
        "00000002_000.png": ("non_covid", "nih:2", "AP", "Pneumonia", "Pneumonia", 12, "F"),
        "00000007_000.png": ("non_covid", "nih:7", "PA", "No Finding", "No Finding", nan, "M"),
        "00000008_002.png": ("non_covid", "nih:8", "AP", "No Finding", "No Finding", 60, "F"),
    }  # fmt: skip
    assert (rows.age_low.dropna() == rows.age.dropna()).all()
    reasons = {p.split("/")[-1]: r for p, r in ex[ex.source == "nih"][["path", "reason"]].values}
    assert reasons == {
        "00000003_000.png": "not in NIH metadata",
        "00000004_000.png": "metadata mismatch",
        "00000006_000.png": "folder contradicts NIH labels",
        "scan.png": "unexpected file name",
    }
    # Without the NIH folder the manifest is the seed's: no NIH row at all.
    seed, _ = build_manifest(*raw, min_side=128)
    assert not (seed.source == "nih").any() and len(seed) == len(df) - len(rows)


def test_age_and_sex_of_ieee8023_and_kermany_rows(raw):
    covid, kermany = raw
    meta = pd.read_csv(covid / "metadata.csv", dtype=str)
    meta["age"] = meta["patientid"].map({"1": "65", "2": ""})  # patient 2: no age
    meta["sex"] = meta["patientid"].map({"1": "F", "2": ""})
    meta.to_csv(covid / "metadata.csv", index=False)
    df, _ = build_manifest(covid, kermany, min_side=128)
    rows = df.set_index(df.path.str.split("/").str[-1])
    assert rows.loc["a.png", ["age", "age_low", "age_high", "sex"]].tolist() == [65, 65, 65, "F"]
    assert rows.loc["c.png", ["age", "age_low", "age_high"]].isna().all()
    assert rows.loc["c.png", "sex"] == ""
    # Kermany: no per-image age; the cohort's published range (children aged 1 to 5).
    kid = rows.loc["person1_virus_1.jpeg"]
    assert np.isnan(kid.age) and (kid.age_low, kid.age_high, kid.sex) == (1, 5, "")


def test_nih_patient_in_both_folders_stays_in_one_split(raw, nih):
    from cxr.split import split_manifest

    df, _ = build_manifest(*raw, nih_dir=nih, min_side=128)
    df = df[df.source != "kermany-train"]  # non_covid: the NIH rows and one Kermany child
    # Four more one-image COVID patients, by hand, so either class can give 2 test images.
    covid = df[df.label == "covid"].iloc[0].to_dict()
    extra = pd.DataFrame(
        [covid | {"path": f"x{i}.png", "patient_id": f"ieee8023:9{i}", "sha256": f"{i:064x}",
                  "pixel_sha256": f"{i:064x}"} for i in range(4)]
    )  # fmt: skip
    df = pd.concat([df, extra], ignore_index=True)
    both = df.path.str.endswith(("00000001_000.png", "00000001_001.png"))
    assert df[both].patient_id.tolist() == ["nih:1", "nih:1"]
    where = set()
    for seed in range(8):
        splits = split_manifest(df, seed=seed, test_per_class=2, val_fraction=0.3)
        homes = {name for name, s in splits.items() if s.patient_id.eq("nih:1").any()}
        assert len(homes) == 1, (seed, homes)
        where |= homes
    assert "test" in where  # the pair was drawn into the test split too, whole
