"""Protocols wired into the workflow (issue 13, items 3-6): the select script on a hand-made
manifest, bad protocol configs refused at parse time, the comparison's cells, and the session's
smoke run, which holds both shipped protocols (``protocols: [seed, adult_controls]``,
tests/config/session.yaml)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from cxr.comparison import MEASURES, comparison_row
from cxr.manifest import COLUMNS

from .conftest import REPO, copy_checkout

DEFINITIONS = yaml.safe_load((REPO / "config.yaml").read_text())["protocol_definitions"]


def manifest_rows() -> pd.DataFrame:
    """Nine images: ieee8023 COVID (adult 40 y, child 12 y, unknown age), Kermany (1-5 y),
    NIH No Finding adult / child, NIH Pneumonia adult (AP) and an adult of the same patient
    in the other folder, NIH Pneumonia adult in a lateral view."""
    rows = [
        ("c1.png", "covid", "ieee8023", "ieee8023:1", "PA", "COVID-19", 40, 40),
        ("c2.png", "covid", "ieee8023", "ieee8023:2", "AP", "COVID-19, ARDS", 12, 12),
        ("c3.png", "covid", "ieee8023", "ieee8023:3", "PA", "COVID-19", None, None),
        ("k1.jpeg", "non_covid", "kermany-train", "kermany:person1", "", "viral pneumonia", 1, 5),
        ("n1.png", "non_covid", "nih", "nih:00000001", "PA", "No Finding", 30, 30),
        ("n2.png", "non_covid", "nih", "nih:00000002", "PA", "No Finding", 9, 9),
        ("n3.png", "non_covid", "nih", "nih:00000003", "AP", "Pneumonia", 70, 70),
        ("n4.png", "non_covid", "nih", "nih:00000003", "PA", "No Finding", 70, 70),
        ("n5.png", "non_covid", "nih", "nih:00000005", "LL", "Pneumonia", 50, 50),
    ]  # fmt: skip
    frame = pd.DataFrame(
        rows,
        columns=["path", "label", "source", "patient_id", "view", "finding", "age_low", "age_high"],
    )
    frame["age"] = frame["age_low"].where(frame["source"] != "kermany-train")
    for column in COLUMNS:
        if column not in frame:
            frame[column] = ""
    return frame[list(COLUMNS)]


def select(tmp_path, name: str, definition=None):
    manifest = tmp_path / "manifest.csv"
    manifest_rows().to_csv(manifest, index=False)
    out = {k: tmp_path / f"{name}_{k}" for k in ("selected", "excluded", "counts", "summary")}
    args = ["--manifest", manifest, "--protocol", name]
    args += ["--definition", json.dumps(definition or DEFINITIONS[name])]
    for key, path in out.items():
        args += [f"--{key}", path]
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts/select_protocol.py"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    return proc, out


def test_select_script_counts_by_hand(tmp_path):
    """adult_controls takes the three COVID images (unknown age kept, the child too: no age
    range) and the NIH adults in PA/AP (3 images, 2 patients); seed takes COVID + Kermany."""
    proc, out = select(tmp_path, "adult_controls")
    assert proc.returncode == 0, proc.stderr
    selected = pd.read_csv(out["selected"])
    assert selected["path"].tolist() == ["c1.png", "c2.png", "c3.png", "n1.png", "n3.png", "n4.png"]
    summary = json.loads(out["summary"].read_text())
    assert summary["classes"] == {
        "covid": {"images": 3, "patients": 3},
        "non_covid": {"images": 3, "patients": 2},
    }
    assert summary["excluded"] == {
        "not in protocol": 1,
        "outside age range": 1,
        "view not in protocol": 1,
    }
    counts = pd.read_csv(out["counts"])
    got = {(r.source, r.label, r.age_group): (r.images, r.patients) for r in counts.itertuples()}
    assert got == {
        ("ieee8023", "covid", "adult"): (1, 1),
        ("ieee8023", "covid", "child"): (1, 1),
        ("ieee8023", "covid", "unknown"): (1, 1),  # counted, not dropped
        ("nih", "non_covid", "adult"): (3, 2),
    }
    proc, out = select(tmp_path, "seed")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out["summary"].read_text())["classes"] == {
        "covid": {"images": 3, "patients": 3},
        "non_covid": {"images": 1, "patients": 1},
    }
    assert json.loads(out["summary"].read_text())["excluded"] == {"not in protocol": 5}


def test_select_script_refuses_an_empty_class_naming_it(tmp_path):
    definition = json.loads(json.dumps(DEFINITIONS["adult_controls"]))
    definition["non_covid"]["min_age"] = 90
    proc, out = select(tmp_path, "adult_controls", definition)
    assert proc.returncode == 1
    assert "protocol 'adult_controls': class 'non_covid' is empty" in proc.stderr
    assert not out["selected"].exists()


@pytest.fixture(scope="module")
def parse_checkout(tmp_path_factory):
    return copy_checkout(tmp_path_factory.mktemp("protocol-parse"))


def dry_run(root, *config, configfile=None):
    cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "1"]
    if configfile:
        cmd += ["--configfile", configfile]
    if config:
        cmd += ["--config", *config]
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True)


def test_bad_protocol_configs_are_refused_naming_the_key(parse_checkout):
    proc = dry_run(parse_checkout, "protocols=[seed,nope]")
    assert proc.returncode != 0
    assert "config 'protocols': 'nope' is not a protocol of config 'protocol_definitions'" in (
        proc.stdout + proc.stderr
    )
    bad = {
        "protocol_definitions": {
            "mine": {
                "covid": {"sources": {"ieee8023": None}, "unknown_age": "keep"},
                "non_covid": {"sources": {"chexpert": None}, "unknown_age": "keep"},
            }
        },
        "protocols": ["mine"],
    }
    (parse_checkout / "bad.yaml").write_text(yaml.safe_dump(bad))
    proc = dry_run(parse_checkout, configfile="bad.yaml")
    assert proc.returncode != 0
    assert "'chexpert' was unexpected" in proc.stdout + proc.stderr
    bad["protocol_definitions"]["mine"]["non_covid"] = {"sources": {"nih": None}, "age": 3}
    (parse_checkout / "bad.yaml").write_text(yaml.safe_dump(bad))
    proc = dry_run(parse_checkout, configfile="bad.yaml")
    assert proc.returncode != 0
    assert "'age' was unexpected" in proc.stdout + proc.stderr


def test_default_dag_acquires_no_nih_and_runs_no_comparison(parse_checkout):
    proc = dry_run(parse_checkout)
    assert proc.returncode == 0, proc.stderr
    assert "acquire_nih" not in proc.stdout and "compare_protocols" not in proc.stdout
    assert "--nih" not in proc.stdout
    proc = dry_run(parse_checkout, "protocols=[seed,adult_controls]")
    assert proc.returncode == 0, proc.stderr
    assert "--nih data/raw/nih" in proc.stdout
    assert "--out protocols/adult_controls/data/splits/train.csv" in proc.stdout


def interval(estimate, lower, upper):
    return {"estimate": estimate, "lower": lower, "upper": upper}


def test_comparison_row_by_hand():
    metrics = {
        "intervals": {
            "sensitivity": interval(0.75, 0.4, 0.9),
            "specificity": interval(1.0, 0.6, 1.0),
            "roc_auc": interval(0.9, 0.7, 1.0),
        }
    }
    baselines = {
        "thumbnail": {"roc_auc": interval(0.8, 0.6, 0.95)},
        "size_mode": {"roc_auc": interval(1.0, 1.0, 1.0)},
    }
    masked = {"roc_auc": interval(0.7, 0.5, 0.9)}
    within = {
        "n": 5,
        "intervals": {"specificity": interval(0.2, 0.04, 0.6)},
        "auc_test_covid_vs_these": interval(0.65, None, None),
        "overlap": {"n_checked": 7, "n_overlapping": 2},
    }
    frame = pd.DataFrame({"label": ["covid", "covid", "non_covid"]})
    row = comparison_row(
        protocol="p",
        seed=3,
        train=frame,
        test=frame.iloc[:1],
        metrics=metrics,
        baselines=baselines,
        masked=masked,
        within=within,
    )
    assert (row["train_covid"], row["train_non_covid"]) == (2, 1)
    assert (row["test_covid"], row["test_non_covid"]) == (1, 0)
    assert (row["within_n"], row["seed"]) == (5, 3)
    assert (row["size_mode_auc"], row["thumbnail_auc_lower"]) == (1.0, 0.6)
    assert (row["within_specificity_upper"], row["within_auc_lower"]) == (0.6, None)
    assert row["external_roc_auc"] is None  # not configured
    assert row["within_overlaps"] == 2 and "external_overlaps" not in row
    assert "selected_covid" not in row  # no selection given
    selection = {
        "counts": [
            {"label": "covid", "age_group": "adult", "images": 5},
            {"label": "covid", "age_group": "unknown", "images": 2},
            {"label": "non_covid", "age_group": "child", "images": 4},
        ]
    }
    row = comparison_row(
        protocol="p",
        seed=None,
        train=frame,
        test=frame,
        metrics=metrics,
        baselines=baselines,
        masked=masked,
        within=within,
        selection=selection,
    )
    assert (row["selected_covid"], row["selected_covid_unknown_age"]) == (7, 2)
    assert (row["selected_non_covid"], row["selected_non_covid_unknown_age"]) == (4, 0)


# --- the session run: both protocols -------------------------------------------------------


@pytest.fixture(scope="module")
def two_protocols(smoke_run):
    """The session run: both protocols in one DAG (tests/config/session.yaml)."""
    config = yaml.safe_load((smoke_run / "tests/config/session.yaml").read_text())
    assert config["protocols"] == ["seed", "adult_controls"]
    return smoke_run


def read_json(path):
    return json.loads(path.read_text())


@pytest.mark.e2e
def test_adult_controls_split_has_adult_nih_controls_only(two_protocols):
    run = two_protocols / "protocols/adult_controls"
    for split in ("train", "val", "test"):
        frame = pd.read_csv(run / f"data/splits/{split}.csv", dtype={"patient_id": str})
        controls = frame[frame["label"] == "non_covid"]
        assert set(controls["source"]) == {"nih"}, split
        assert (controls["age_low"] >= 18).all(), split
        assert set(frame.loc[frame["label"] == "covid", "source"]) == {"ieee8023"}
    seed_test = pd.read_csv(two_protocols / "data/splits/test.csv")
    assert not seed_test["source"].eq("nih").any()


@pytest.mark.e2e
def test_seed_selection_is_the_manifest_less_its_nih_rows_byte_for_byte(two_protocols):
    """With adult_controls listed the manifest holds the NIH rows; the seed's selected.csv,
    which its split reads, is exactly the manifest's other lines (so, with the same rows as
    the manifest built without NIH, the seed's split is unchanged)."""
    manifest = (two_protocols / "data/interim/manifest.csv").read_text().splitlines(True)
    selected = (two_protocols / "data/interim/selected.csv").read_text().splitlines(True)
    column = next(csv.reader([manifest[0]])).index("source")
    others = [line for line in manifest[1:] if next(csv.reader([line]))[column] != "nih"]
    assert len(others) < len(manifest) - 1  # the NIH rows are there
    assert selected == [manifest[0], *others]


@pytest.mark.e2e
def test_each_protocol_has_a_model_card_naming_its_controls(two_protocols):
    seed = (two_protocols / "reports/model_card.md").read_text()
    adult = (two_protocols / "protocols/adult_controls/reports/model_card.md").read_text()
    assert "Protocol **seed**" in seed and "children aged 1-5" in seed
    assert "Protocol **adult_controls**" in adult and "NIH ChestX-ray8" in adult
    assert "children aged 1-5" not in adult
    summary = read_json(two_protocols / "protocols/adult_controls/data/interim/selection.json")
    assert {c["source"] for c in summary["counts"]} == {"ieee8023", "nih"}
    for c in summary["counts"]:
        row = f"| {c['source']} | {c['label']} | {c['age_group']} | {c['images']} |"
        assert row in adult
    assert "## Within-source check: ieee8023 non-COVID adults" in adult


@pytest.mark.e2e
def test_comparison_cells_equal_the_run_files(two_protocols):
    table = pd.read_csv(two_protocols / "reports/protocols/comparison.csv")
    assert table["protocol"].tolist() == ["seed", "adult_controls"]
    with Image.open(two_protocols / "reports/protocols/comparison.png") as im:
        im.load()
        assert im.format == "PNG" and min(im.size) > 100, im.size
        assert np.asarray(im.convert("L")).std() > 5  # not a blank canvas
    markdown = (two_protocols / "reports/protocols/comparison.md").read_text()
    for row in table.to_dict("records"):
        run = two_protocols / ("" if row["protocol"] == "seed" else "protocols/adult_controls")
        files = {
            "metrics": read_json(run / "reports/metrics/model_03_test.json"),
            "baselines": read_json(run / "reports/audit/baselines.json"),
            "masked": read_json(run / "reports/audit/masked.json"),
            "within": read_json(run / "reports/external/ieee8023_adult.json"),
        }
        for name, (key, read) in MEASURES.items():
            if key == "external":
                assert name not in row
                continue
            entry = read(files[key]) or {}
            for suffix, field in (("", "estimate"), ("_lower", "lower"), ("_upper", "upper")):
                want, got = entry.get(field), row[name + suffix]
                assert (pd.isna(got) and want is None) or got == want, (name, suffix)
        for split in ("train", "test"):
            frame = pd.read_csv(run / f"data/splits/{split}.csv")
            for label in ("covid", "non_covid"):
                assert row[f"{split}_{label}"] == (frame["label"] == label).sum()
        assert row["within_n"] == files["within"]["n"] > 0
        assert row["within_overlaps"] == files["within"]["overlap"]["n_overlapping"]
        selection = read_json(run / "data/interim/selection.json")
        for label in ("covid", "non_covid"):
            assert row[f"selected_{label}"] == selection["classes"][label]["images"]
        unknown = sum(
            c["images"]
            for c in selection["counts"]
            if c["label"] == "covid" and c["age_group"] == "unknown"
        )
        assert row["selected_covid_unknown_age"] == unknown > 0  # 128 on the mirror
        assert f"**{row['protocol']}**" in markdown
