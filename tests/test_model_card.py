"""cxr.model_card and scripts/model_card.py on small hand-made inputs.

Five images of four patients, three exclusions, a test evaluation whose intervals are written
out here: every expected line below is worked out by hand from these inputs (counts, the
interval format ``estimate [lower, upper]`` with 3 decimals, percentages without decimals).
"""

import json
import subprocess
import sys

import jinja2
import pandas as pd
import pytest

from cxr.model_card import (
    audit_context,
    context,
    data_context,
    external_context,
    markdown_table,
    metrics_context,
    render,
    viral_context,
)

from .conftest import REPO


def interval(est, lo, hi, **basis):
    return {"estimate": est, "lower": lo, "upper": hi, **basis}


TEST_INTERVALS = {
    "sensitivity": interval(0.75, 0.301, 0.954, successes=3, trials=4),
    "specificity": interval(0.5, 0.15, 0.85, successes=2, trials=4),
    "ppv": interval(0.6, 0.231, 0.882, successes=3, trials=5),
    "npv": interval(2 / 3, 0.208, 0.939, successes=2, trials=3),
    "accuracy": interval(0.625, 0.306, 0.863, successes=5, trials=8),
    "roc_auc": interval(0.875, 0.5, 1.0, n_patients=6, n_resamples=200),
}


def card_inputs() -> dict:
    """Keyword arguments of :func:`render`, made by hand."""
    covid = "data/raw/covid-chestxray-dataset/images"
    kermany = "data/raw/chest_xray/train/PNEUMONIA"
    manifest = pd.DataFrame(
        {
            "path": [
                f"{covid}/a.jpg",
                f"{covid}/b.jpg",
                f"{covid}/c.png",
                f"{kermany}/person1_virus_1.jpeg",
                f"{kermany}/person2_virus_2.jpeg",
            ],
            "label": ["covid"] * 3 + ["non_covid"] * 2,
            "source": ["ieee8023"] * 3 + ["kermany-train"] * 2,
            "patient_id": [
                "ieee8023:1",
                "ieee8023:1",
                "ieee8023:2",
                "kermany-train:person1",
                "kermany-train:person2",
            ],
        }
    )
    val = {
        "intervals": {
            "accuracy": interval(0.9, 0.8, 0.95),
            "sensitivity": interval(1.0, 0.7, 1.0),
            "specificity": {"estimate": None},
            "roc_auc": interval(0.99, None, None),
        }
    }
    test = {
        "confidence": 0.9,
        "n": 8,
        "intervals": TEST_INTERVALS,
        "calibration": {"ece": 0.12345, "brier": 0.2, "n_bins": 5},
    }
    return {
        "manifest": manifest,
        "excluded": pd.DataFrame(
            {"path": ["x", "y", "z"], "reason": ["other finding", "CT", "other finding"]}
        ),
        "metadata": pd.DataFrame(
            {
                "filename": ["a.jpg", "b.jpg", "c.png", "a.jpg"],
                "license": ["CC BY 4.0", " ", "Apache 2.0", "listed twice: first kept"],
            }
        ),
        "splits": {
            "train": manifest.iloc[[0, 1, 3]].reset_index(drop=True),
            "val": manifest.iloc[[4]].reset_index(drop=True),
            "test": manifest.iloc[[2]].reset_index(drop=True),
        },
        "n_augmented": 4,
        "histories": {
            "model_01": pd.DataFrame({"loss": [1.0, 0.5]}),
            "model_02": pd.DataFrame({"loss": [0.4, 0.3, 0.2]}),
            "model_03": pd.DataFrame({"loss": [0.1]}),
        },
        "metrics": {"model_01_val": val, "model_03_test": test, "model_02_val": val},
        "audit": {
            "warn_auc": 0.9,
            "warnings": ["thumbnails reach ROC AUC 0.95 >= 0.9"],
            "entries": [
                {
                    "name": "thumbnails",
                    "description": "16x16 grey",
                    "roc_auc": interval(0.95, 0.9, 1.0),
                    "flagged": True,
                },
                {"name": "size", "roc_auc": interval(0.7, 0.5, 0.9), "flagged": False},
            ],
        },
        "gradcam": {
            "mean_heat_in_box": 0.514,
            "n_images": 8,
            "lung_box": [0.2, 0.15, 0.8, 0.85],
            "box_area_fraction": 0.42,
        },
        "viral": {
            "n": 3,
            "n_failed": 1,
            "intervals": {"specificity": interval(1 / 3, 0.06, 0.79, successes=1, trials=3)},
            "test_non_covid_specificity": interval(0.5, 0.1, 0.9, successes=1, trials=2),
            "auc_test_covid_vs_these": interval(0.25, 0.0, 0.6, n_patients=4, n_resamples=100),
            "per_finding": {"SARS": {"n": 2}, "Varicella": {"n": 1}},
            "p_covid_mean": 0.71234,
        },
        "within": {
            "n": 4,
            "n_failed": 0,
            "intervals": {"specificity": interval(0.5, 0.15, 0.85, successes=2, trials=4)},
            "test_non_covid_specificity": interval(0.5, 0.1, 0.9, successes=1, trials=2),
            "auc_test_covid_vs_these": interval(0.75, 0.4, 1.0, n_patients=5, n_resamples=100),
            "per_finding": {"No Finding": {"n": 3}, "SARS": {"n": 1}},
            "p_covid_mean": 0.4,
            "overlap": {
                "n_checked": 6,
                "n_overlapping": 2,
                "by_kind": {
                    "file sha256": 0,
                    "pixel sha256": 1,
                    "perceptual hash": 0,
                    "patient id": 2,
                },
                "label_conflicts": 2,
                "handling": "left out of the metrics",
            },
        },
        "selection": {
            "protocol": "seed",
            "description": "The seed's data.",
            "counts": [
                {
                    "source": "ieee8023",
                    "label": "covid",
                    "age_group": "adult",
                    "images": 2,
                    "patients": 1,
                },
                {
                    "source": "ieee8023",
                    "label": "covid",
                    "age_group": "unknown",
                    "images": 1,
                    "patients": 1,
                },
                {
                    "source": "kermany-train",
                    "label": "non_covid",
                    "age_group": "child",
                    "images": 2,
                    "patients": 2,
                },
            ],
            "excluded": {"not in protocol": 7},
        },  # fmt: skip
        "external": {
            "name": "ext/labels.csv",
            "n": 5,
            "n_listed": 7,
            "n_failed": 2,
            "intervals": TEST_INTERVALS,
            "overlap": {"n_checked": 7, "n_overlapping": 0},
        },
        "image_size": 64,
    }


def section(card: str, title: str) -> str:
    """The text of one ``## title`` section, without its heading."""
    return card.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_markdown_table():
    assert markdown_table(["a", "b"], [[1, "x"], [2.5, ""]]) == (
        "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 |  |"
    )


def test_data_context_counts_by_hand():
    i = card_inputs()
    c = data_context(i["manifest"], i["excluded"], i["metadata"], i["splits"], 4)
    # covid: 3 images of ieee8023:1 (2) and ieee8023:2; all five images are in a split
    assert c["class_rows"] == [["covid", "3 (2)", "3 (2)"], ["non_covid", "2 (2)", "2 (2)"]]
    # b.jpg's license is blank -> "not stated"; a.jpg listed twice -> its first row
    assert c["license_rows"] == [
        ["ieee8023", "Apache 2.0", 1],
        ["ieee8023", "CC BY 4.0", 1],
        ["ieee8023", "not stated", 1],
        ["kermany", "CC BY 4.0", 2],
    ]
    assert (c["n_excluded"], c["excluded_reasons"]) == (3, "2 other finding, 1 CT")
    assert c["split_rows"] == [
        ["train", "2 (1)", "1 (1)", "3 (2)"],
        ["val", "0 (0)", "1 (1)", "1 (1)"],
        ["test", "1 (1)", "0 (0)", "1 (1)"],
    ]


def test_metrics_audit_viral_external_contexts():
    i = card_inputs()
    m = metrics_context(i["metrics"])
    assert m["level"] == "90%"
    assert m["test_rows"][0] == ["Sensitivity (recall, covid)", "0.750 [0.301, 0.954]", "3 / 4"]
    assert m["test_rows"][3] == ["NPV (precision, non_covid)", "0.667 [0.208, 0.939]", "2 / 3"]
    assert m["test_rows"][5] == ["ROC AUC", "0.875 [0.500, 1.000]", "6 patients, 200 resamples"]
    assert m["test_rows"][6:] == [
        ["Expected calibration error", "0.123", "5 bins"],
        ["Brier score", "0.200", "8 images"],
    ]
    row = ["0.900 [0.800, 0.950]", "1.000 [0.700, 1.000]", "n/a", "0.990"]
    assert m["validation_rows"] == [["model_01_val", *row], ["model_02_val", *row]]
    a = audit_context(i["audit"], i["gradcam"])
    assert a["audit_rows"][0][2:] == ["0.950 [0.900, 1.000]", "**WARNING**"]
    assert a["audit_rows"][1] == ["size", "", "0.700 [0.500, 0.900]", ""]
    assert a["gradcam"]["mean_heat_in_box"] == "51%" and a["gradcam"]["x1"] == 0.8
    assert audit_context(i["audit"], {"n_images": 0})["gradcam"] is None
    v = viral_context(i["viral"])
    assert v["viral_failed"] == 1 and v["viral"]["findings"] == "SARS: 2, Varicella: 1"
    assert v["viral"]["specificity"] == "0.333 [0.060, 0.790]"
    assert v["viral"]["p_covid_mean"] == "0.712"
    assert viral_context({"n": 0, "n_failed": 0}) == {
        "viral": None,
        "viral_failed": 0,
        "viral_guard": None,
    }
    assert external_context(None) == {"external": None}
    e = external_context({"name": "x.csv", "n_failed": 3})["external"]
    assert (e["n"], e["n_failed"], e["rows"]) == (0, 3, [])


def test_rendered_card_holds_the_hand_computed_values():
    card = render(**card_inputs())
    assert card.startswith("# Model card: VGG19 COVID-19 vs non-COVID viral pneumonia")
    assert card.endswith("beyond the checks above.\n") and "{{" not in card and "{%" not in card
    titles = [line[3:] for line in card.splitlines() if line.startswith("## ")]
    assert titles == [
        "Intended use",
        "Model",
        "Data",
        "Split",
        "Metrics (model_03 on the test split, 90% intervals)",
        "Shortcut audit",
        "Honesty check: adult non-COVID viral pneumonia (ieee8023)",
        "Within-source check: ieee8023 non-COVID adults",
        "External test",
        "Known limitations",
    ]
    assert "> - thumbnails reach ROC AUC 0.95 >= 0.9\n\n## Intended use" in card
    assert "input 64 x 64 RGB" in card
    assert "epochs run per stage: model_01: 2, model_02: 3, model_03: 1." in card
    data = section(card, "Data")
    assert "| class | usable images (patients) | in the split (patients) |\n|---|---|---|\n" in data
    assert "| covid | 3 (2) | 3 (2) |\n| non_covid | 2 (2) | 2 (2) |\n\n'Usable'" in data
    assert "| ieee8023 | not stated | 1 |\n| kermany | CC BY 4.0 | 2 |\n\nExcluded" in data
    assert "Excluded: 3 files, each with its reason in `data/interim/excluded.csv`" in data
    assert data.rstrip().endswith("(2 other finding, 1 CT).")
    assert "| val | 0 (0) | 1 (1) | 1 (1) |" in section(card, "Split")
    assert "\n\n4 augmented COVID images" in section(card, "Split")
    metrics = section(card, "Metrics (model_03 on the test split, 90% intervals)")
    assert "| metric | estimate [90% interval] | basis |" in metrics
    assert "| Accuracy | 0.625 [0.306, 0.863] | 5 / 8 |" in metrics
    assert "| Brier score | 0.200 | 8 images |" in metrics
    assert "| model_02_val | 0.900 [0.800, 0.950] | 1.000 [0.700, 1.000] | n/a | 0.990 |" in metrics
    audit = section(card, "Shortcut audit")
    assert "warning level 0.9):" in audit
    assert "| thumbnails | 16x16 grey | 0.950 [0.900, 1.000] | **WARNING** |" in audit
    assert (
        "on average 51% of the heat lies in the central lung box (x 0.2-0.8, y 0.15-0.85" in audit
    )
    assert "covers 42% of the image" in audit
    assert "Warnings:\n\n- thumbnails reach ROC AUC 0.95 >= 0.9\n" in audit
    viral = section(card, "Honesty check: adult non-COVID viral pneumonia (ieee8023)")
    assert viral.startswith("\n3 frontal X-rays of adults with other viral pneumonias (SARS: 2, ")
    assert "- Specificity on them: 0.333 [0.060, 0.790] (1 / 3 called non_covid); mean " in viral
    assert "mean p_covid 0.712." in viral and "children): 0.500 [0.100, 0.900]." in viral
    assert "- ROC AUC, test COVID images vs these adults: 0.250 [0.000, 0.600]." in viral
    assert "1 listed images did not load (see the errors table)." in viral
    assert data.startswith(
        "\nProtocol **seed** (config `protocol_definitions.seed`, docs/protocols.md): The"
        " seed's data.\n"
    )
    assert (
        "| ieee8023 | covid | unknown | 1 | 1 |\n| kermany-train | non_covid | child | 2 | 2 |"
        in data
    )
    assert "left out, by reason (`data/interim/selection_excluded.csv`): 7 not in protocol." in data
    # the seed protocol's controls are Kermany's children: their line, with citation and licence
    assert (
        "\n- Non-COVID viral pneumonia: Kermany, Zhang & Goldbaum (2018), Labeled Optical"
        " Coherence Tomography (OCT) and Chest X-Ray Images for Classification, Mendeley Data,"
        " doi:10.17632/rscbjbr9sj.2; children aged 1-5, one hospital (Guangzhou); CC BY 4.0.\n"
        in data
    )
    assert "NIH ChestX-ray8" not in data
    within = section(card, "Within-source check: ieee8023 non-COVID adults")
    assert within.startswith(
        "\n4 frontal X-rays of adults without COVID-19 (No Finding: 3, SARS: 1)"
    )
    assert "- Specificity on them: 0.500 [0.150, 0.850] (2 / 4 called non_covid);" in within
    assert "- ROC AUC, test COVID images vs these adults: 0.750 [0.400, 1.000]." in within
    assert (
        "Overlap guard: 2 of 6 images overlap the run's images (1 pixel sha256, 2 patient id;"
        " 2 label conflicts): left out of the metrics (`ieee8023_adult_overlaps.csv`)" in within
    )
    assert "Overlap guard" not in viral  # a file without a guard entry: no sentence
    assert "**Confounded classes.** Every non-COVID image is a child" in card
    external = section(card, "External test")
    assert "| ROC AUC | 0.875 [0.500, 1.000] | 6 patients, 200 resamples |" in external
    assert "ext/labels.csv: 5 images scored, 2 failed." in external
    assert "Overlap guard: none of the 7 images overlaps the run's images" in external


def test_card_without_warnings_heat_viral_or_external():
    i = card_inputs()
    i["audit"]["warnings"] = []
    i["gradcam"] = {"n_images": 0}
    i["viral"] = {"n": 0, "n_failed": 0}
    i["external"] = None
    card = render(**i)
    assert "warnings (this run)" not in card and "Warnings:" not in card
    assert "No value reached the warning level." in section(card, "Shortcut audit")
    assert "Grad-CAM (block5_conv4" not in card
    viral = section(card, "Honesty check: adult non-COVID viral pneumonia (ieee8023)")
    assert viral.strip() == "No such images could be scored in this run."
    assert section(card, "External test").strip() == (
        "None configured (`external.metadata` in config.yaml is null)."
    )
    i["external"] = {"name": "x.csv", "n_failed": 3}
    assert section(render(**i), "External test").strip() == (
        "x.csv: no image could be scored (3 failed)."
    )


def test_card_of_another_protocol_names_its_controls():
    """adult_controls: the NIH controls are described, Kermany is not, and the limitations
    speak of sources rather than children."""
    i = card_inputs()
    i["selection"] = {
        "protocol": "adult_controls",
        "description": "COVID against adult NIH controls.",
        "counts": [
            {"source": "ieee8023", "label": "covid", "age_group": "adult", "images": 3,
             "patients": 2},
            {"source": "nih", "label": "non_covid", "age_group": "adult", "images": 2,
             "patients": 2},
        ],
        "excluded": {},
    }  # fmt: skip
    i["splits"]["val"] = pd.DataFrame(
        {"path": ["n.png"], "label": ["non_covid"], "source": ["nih"], "patient_id": ["nih:1"]}
    )
    card = render(**i)
    data = section(card, "Data")
    assert "| nih | free use with citation (NIH Clinical Center) | 1 |" in data
    assert "Protocol **adult_controls** (config `protocol_definitions.adult_controls`" in data
    assert "NIH ChestX-ray8" in data and "children aged 1-5" not in data
    assert "| nih | non_covid | adult | 2 | 2 |" in data and "left out" not in data
    assert "**Confounded sources.** The classes come from different collections (protocol" in card
    assert "Confounded classes" not in card
    viral = section(card, "Honesty check: adult non-COVID viral pneumonia (ieee8023)")
    assert "non-COVID images: 0.500 [0.100, 0.900]." in viral and "children" not in viral


def test_missing_values_are_errors_not_blanks():
    i = card_inputs()
    del i["metrics"]["model_03_test"]
    with pytest.raises(KeyError, match="model_03_test"):
        render(**i)
    i = card_inputs()
    del i["viral"]["per_finding"]
    with pytest.raises(KeyError, match="per_finding"):
        render(**i)
    with pytest.raises(TypeError):
        context(**{k: v for k, v in card_inputs().items() if k != "image_size"})
    from cxr.model_card import template

    values = context(**card_inputs())
    del values["level"]
    with pytest.raises(jinja2.UndefinedError, match="level"):
        template().render(values)


def test_script_reads_the_run_files(tmp_path):
    """scripts/model_card.py on the same inputs written as a run's CSV and JSON files."""
    i = card_inputs()
    covid_dir = tmp_path / "data/raw/covid-chestxray-dataset"
    covid_dir.mkdir(parents=True)
    i["metadata"].to_csv(covid_dir / "metadata.csv", index=False)
    i["manifest"].to_csv(tmp_path / "manifest.csv", index=False)
    i["excluded"].to_csv(tmp_path / "excluded.csv", index=False)
    splits = []
    for name, frame in i["splits"].items():
        splits.append(tmp_path / f"{name}.csv")
        frame.to_csv(splits[-1], index=False)
    pd.DataFrame({"path": [f"aug{k}.png" for k in range(4)]}).to_csv(
        tmp_path / "augmented.csv", index=False
    )
    histories = []
    for stage, frame in i["histories"].items():
        histories.append(tmp_path / f"{stage}.csv")
        frame.to_csv(histories[-1], index=False)
    jsons = {}
    for name in ("model_01_val", "model_03_test", "model_02_val"):
        jsons[name] = tmp_path / f"{name}.json"
        jsons[name].write_text(json.dumps(i["metrics"][name]))
    for name in ("audit", "gradcam", "viral", "within", "selection", "external"):
        jsons[name] = tmp_path / f"{name}.json"
        jsons[name].write_text(json.dumps(i[name]))
    out = tmp_path / "reports" / "model_card.md"
    args = ["--manifest", tmp_path / "manifest.csv", "--excluded", tmp_path / "excluded.csv"]
    args += ["--covid_dir", covid_dir, "--splits", *splits]
    args += ["--augmented", tmp_path / "augmented.csv", "--histories", *histories]
    args += ["--metrics", jsons["model_01_val"], jsons["model_03_test"], jsons["model_02_val"]]
    args += ["--audit", jsons["audit"], "--gradcam", jsons["gradcam"], "--viral", jsons["viral"]]
    args += ["--within", jsons["within"], "--selection", jsons["selection"]]
    args += ["--external", jsons["external"], "--image_size", "64", "--out", out]
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts/model_card.py"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == render(**i)
