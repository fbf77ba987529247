"""Protocols: class selection on a hand-made manifest, exclusions with reasons, bad configs."""

import copy
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cxr.protocols import (
    ProtocolError,
    age_place,
    apply_protocol,
    count_selection,
    load_protocol,
)

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "schemas/config.schema.yaml"
CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
NAN = math.nan

# path, source, patient_id, view, finding, age_low, age_high (the manifest's columns)
ROWS = [
    ("c1.png", "ieee8023", "ieee8023:1", "PA", "COVID-19", 65, 65),
    ("c2.png", "ieee8023", "ieee8023:2", "AP", "COVID-19", NAN, NAN),  # no age
    ("c3.png", "ieee8023", "ieee8023:3", "AP Supine", "COVID-19", 12, 12),  # a child
    ("c4.png", "ieee8023", "ieee8023:1", "PA", "COVID-19, ARDS", 65, 65),
    ("k1.jpeg", "kermany-train", "kermany-train:person1", "", "viral pneumonia", 1, 5),
    ("k2.jpeg", "kermany-train", "kermany-train:person1", "", "viral pneumonia", 1, 5),
    ("k3.jpeg", "kermany-test", "kermany-test:person1", "", "viral pneumonia", 1, 5),
    ("n1.png", "nih", "nih:1", "PA", "No Finding", 30, 30),
    ("n2.png", "nih", "nih:1", "AP", "Pneumonia", 31, 31),  # nih:1 in both folders
    ("n3.png", "nih", "nih:2", "AP", "Pneumonia", 12, 12),  # a child
    ("n4.png", "nih", "nih:7", "PA", "No Finding", NAN, NAN),  # no age
    ("n5.png", "nih", "nih:8", "AP", "No Finding", 60, 60),
    ("n6.png", "nih", "nih:9", "LL", "Pneumonia", 45, 45),  # lateral
]


def manifest(rows=ROWS) -> pd.DataFrame:
    """A manifest as cxr.manifest writes it (label: covid for ieee8023, else non_covid)."""
    df = pd.DataFrame(
        rows, columns=["path", "source", "patient_id", "view", "finding", "age_low", "age_high"]
    )
    df.insert(1, "label", ["covid" if s == "ieee8023" else "non_covid" for s in df.source])
    df["age"] = df["age_low"].where(df["age_low"] == df["age_high"])
    df["sha256"] = [f"{i:064x}" for i in range(len(df))]
    return df


def names(frame, label=None):
    rows = frame if label is None else frame[frame.label == label]
    return sorted(rows.path)


def shipped(name):
    return load_protocol(CONFIG["protocol_definitions"], name)


def test_seed_protocol_takes_the_seed_manifest_unchanged():
    m = manifest()
    seed_rows = m[m.source != "nih"]
    sel, ex = apply_protocol(seed_rows, shipped("seed"))
    assert sel.equals(seed_rows.sort_values("path", ignore_index=True)) and ex.empty
    # With the NIH rows present, they are the only ones left out: not in the protocol.
    sel, ex = apply_protocol(m, shipped("seed"))
    assert names(sel, "covid") == ["c1.png", "c2.png", "c3.png", "c4.png"]
    assert names(sel, "non_covid") == ["k1.jpeg", "k2.jpeg", "k3.jpeg"]
    assert set(ex.reason) == {"not in protocol"} and names(ex) == [f"n{i}.png" for i in range(1, 7)]


def test_adult_controls_counts_and_reasons():
    sel, ex = apply_protocol(manifest(), shipped("adult_controls"))
    # COVID: every ieee8023 COVID-19 row, the child and the unknown age kept (no age range).
    assert names(sel, "covid") == ["c1.png", "c2.png", "c3.png", "c4.png"]
    assert names(sel, "non_covid") == ["n1.png", "n2.png", "n5.png"]
    got = dict(zip(ex.path, zip(ex.label, ex.reason, ex.detail, strict=True), strict=True))
    assert got == {
        "k1.jpeg": ("", "not in protocol", "source kermany-train, finding 'viral pneumonia'"),
        "k2.jpeg": ("", "not in protocol", "source kermany-train, finding 'viral pneumonia'"),
        "k3.jpeg": ("", "not in protocol", "source kermany-test, finding 'viral pneumonia'"),
        "n3.png": ("non_covid", "outside age range", "age 12 y, range [18, ] y"),
        "n4.png": ("non_covid", "unknown age", "no age, range [18, ] y"),
        "n6.png": ("non_covid", "view not in protocol", "view 'LL'"),
    }
    # nih:1 (No Finding and Pneumonia folders) is one patient of one class.
    assert sel[sel.patient_id == "nih:1"].label.tolist() == ["non_covid", "non_covid"]
    counts = count_selection(sel)
    assert counts.values.tolist() == [
        ["ieee8023", "covid", "adult", 2, 1],
        ["ieee8023", "covid", "child", 1, 1],
        ["ieee8023", "covid", "unknown", 1, 1],
        ["nih", "non_covid", "adult", 3, 2],
    ]


def _defs(**protocols):
    return copy.deepcopy(CONFIG["protocol_definitions"]) | protocols


def test_a_protocol_defined_in_config_alone():
    adults = {
        "covid": {"sources": {"ieee8023": ["COVID-19"]}, "min_age": 18, "unknown_age": "exclude"},
        "non_covid": {"sources": {"nih": None, "kermany": None}, "unknown_age": "keep",
                      "max_age": 40},
    }  # fmt: skip
    sel, ex = apply_protocol(manifest(), load_protocol(_defs(adults=adults), "adults"))
    assert names(sel, "covid") == ["c1.png", "c4.png"]
    # Kermany children (1-5 y) and the NIH rows aged up to 40 or of unknown age.
    assert names(sel, "non_covid") == [
        "k1.jpeg", "k2.jpeg", "k3.jpeg", "n1.png", "n2.png", "n3.png", "n4.png",
    ]  # fmt: skip
    assert ex.set_index("path").reason.to_dict() == {
        "c2.png": "unknown age",
        "c3.png": "outside age range",
        "n5.png": "outside age range",
        "n6.png": "outside age range",
    }


@pytest.mark.parametrize(
    "low, high, lo, hi, place",
    [
        (1, 5, 18, None, "outside"),  # Kermany's cohort range, adults only
        (1, 5, None, 17, "inside"),
        (1, 5, 3, 10, "unknown"),  # the range straddles a bound: cannot place the row
        (NAN, NAN, 18, None, "unknown"),
        (NAN, NAN, None, None, "inside"),  # no bound: nothing to place
        (18, 18, 18, 18, "inside"),  # bounds are inclusive
        ("", "", 0, 120, "unknown"),  # an empty CSV cell
    ],
)
def test_age_place(low, high, lo, hi, place):
    assert age_place(low, high, lo, hi) == place


def test_empty_class_names_protocol_and_class():
    old = {
        "covid": {"sources": {"ieee8023": None}, "unknown_age": "keep"},
        "non_covid": {"sources": {"nih": None}, "min_age": 90, "unknown_age": "exclude"},
    }
    protocol = load_protocol(_defs(elderly=old), "elderly")
    with pytest.raises(ProtocolError, match=r"protocol 'elderly': class 'non_covid' is empty") as e:
        apply_protocol(manifest(), protocol)
    assert "'outside age range': 5" in str(e.value) and "'unknown age': 1" in str(e.value)
    # A source with no row in the manifest at all.
    seed_only = manifest()[lambda d: d.source != "nih"]
    with pytest.raises(ProtocolError, match="'adult_controls': class 'non_covid' is empty"):
        apply_protocol(seed_only, shipped("adult_controls"))


def test_row_in_both_classes_and_patient_in_both_classes_are_refused():
    both = {
        "covid": {"sources": {"nih": ["Pneumonia"]}, "unknown_age": "keep"},
        "non_covid": {"sources": {"nih": ["pneumonia"]}, "unknown_age": "keep"},
    }
    with pytest.raises(ProtocolError, match=r"'both': .*n2.png .* matches both classes"):
        apply_protocol(manifest(), load_protocol(_defs(both=both), "both"))
    split = {
        "covid": {"sources": {"nih": ["Pneumonia"]}, "unknown_age": "keep"},
        "non_covid": {"sources": {"nih": ["No Finding"]}, "unknown_age": "keep"},
    }
    with pytest.raises(ProtocolError, match=r"'split': patient\(s\) \['nih:1'\] have images in"):
        apply_protocol(manifest(), load_protocol(_defs(split=split), "split"))


# --- bad configs: the schema refuses them at parse time, naming the key -----------------------


def _config_with(protocol: dict) -> dict:
    config = copy.deepcopy(CONFIG)
    config["protocol_definitions"]["mine"] = protocol
    return config


GOOD = {
    "covid": {"sources": {"ieee8023": ["COVID-19"]}, "unknown_age": "keep"},
    "non_covid": {"sources": {"nih": None}, "min_age": 18, "unknown_age": "exclude"},
}


def _bad(path: list, value):
    protocol = copy.deepcopy(GOOD)
    node = protocol
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return protocol


BAD = [
    # (where, value, what the schema says, what load_protocol says)
    (["non_covid", "sources", "chexpert"], None, "'chexpert' was unexpected",
     r"non_covid.sources: unknown source\(s\) \['chexpert'\]"),
    (["covid", "age_range"], [18, 90], "'age_range' was unexpected",
     r"covid: unknown key\(s\) \['age_range'\]"),
    (["controls"], {}, "'controls' was unexpected", r"mine: unknown key\(s\) \['controls'\]"),
    (["covid", "unknown_age"], "drop", "'drop' is not one of",
     r"covid.unknown_age: 'drop' is not one of"),
    (["covid", "unknown_age"], KeyError, "'unknown_age' is a required property",
     "covid: missing key 'unknown_age'"),
    (["non_covid"], KeyError, "'non_covid' is a required property", "missing class 'non_covid'"),
]  # fmt: skip


@pytest.mark.parametrize("path, value, schema_says, loader_says", BAD)
def test_bad_protocol_refused_naming_the_key(path, value, schema_says, loader_says):
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    validate(_config_with(GOOD), str(SCHEMA))  # the good one passes
    bad = _bad(path, value)
    with pytest.raises(WorkflowError, match=schema_says):
        validate(_config_with(bad), str(SCHEMA))
    with pytest.raises(ProtocolError, match=loader_says):
        load_protocol({"mine": bad}, "mine")


def test_unknown_protocol_name_lists_the_defined_ones():
    with pytest.raises(ProtocolError, match=r"unknown protocol 'adult'.*'adult_controls', 'seed'"):
        load_protocol(CONFIG["protocol_definitions"], "adult")


def test_one_finding_may_be_a_string():
    from snakemake.utils import validate

    one = copy.deepcopy(GOOD)
    one["non_covid"]["sources"] = {"nih": "Pneumonia"}
    validate(_config_with(one), str(SCHEMA))
    protocol = load_protocol({"mine": one}, "mine")
    assert protocol.non_covid.sources == (("nih", ("Pneumonia",)),)  # not 9 letters
    sel, _ = apply_protocol(manifest(), protocol)
    # Pneumonia: n2, n3 (a child: out), n6 (45 y; its view LL is kept: no views listed).
    assert names(sel, "non_covid") == ["n2.png", "n6.png"]
