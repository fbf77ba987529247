"""End to end: the evaluation rules of the smoke run (intervals, curves, calibration, Grad-CAM,
shortcut audit, ieee8023 adult viral check, model card), an external test folder, and
``snakemake --report``.

Uses the session's ``smoke_run`` (tests/config/smoke.yaml: 64 px, 8 test images, 100 bootstrap
resamples, 2 + 2 Grad-CAM images). File lists are written out here, not imported from the rules.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from cxr.metrics import format_interval, read_predictions
from cxr.sources import file_hash
from cxr.store import load_store

from .conftest import REPO, SESSION_OVERLAYS, snakemake

EVALUATIONS = ["model_01_val", "model_02_val", "model_03_val", "model_03_test"]
FIGURES = [
    *(f"{e}_roc_pr.png" for e in EVALUATIONS),
    "model_03_test_reliability.png",
    "model_03_test_gradcam.png",
    "shortcut_audit.png",
    "ieee8023_viral.png",
]
SMOKE = yaml.safe_load((REPO / "tests/config/smoke.yaml").read_text())
CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())


def load(path):
    return json.loads(path.read_text())


def check_png(path):
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG", path
        w, h = im.size
    assert 200 < w < 4000 and 150 < h < 4000, (path, im.size)
    assert np.asarray(Image.open(path).convert("L")).std() > 5, path


def check_interval(entry, name, defined=True):
    """An interval holding its estimate; all None exactly when not ``defined`` (no data)."""
    if not defined:
        assert entry["estimate"] is entry["lower"] is entry["upper"] is None, (name, entry)
    else:
        assert 0 <= entry["lower"] <= entry["estimate"] <= entry["upper"] <= 1, (name, entry)


def defined(confusion_matrix, name) -> bool:
    """Whether a metric of a set with both classes has a value: PPV and NPV need a prediction
    of their class."""
    (tn, fp), (fn, tp) = confusion_matrix
    return {"ppv": tp + fp > 0, "npv": tn + fn > 0}.get(name, True)


@pytest.mark.e2e
def test_metrics_carry_intervals_and_calibration(smoke_run):
    boot = SMOKE["evaluate"]["bootstrap_resamples"]
    for e in EVALUATIONS:
        m = load(smoke_run / "reports/metrics" / f"{e}.json")
        store = load_store(smoke_run / "data/store" / f"{e.split('_')[-1]}.npz")
        assert m["n_patients"] == len(set(store["patient_ids"]))
        assert m["confidence"] == 0.95
        assert set(m["intervals"]) == {
            "sensitivity",
            "specificity",
            "ppv",
            "npv",
            "accuracy",
            "roc_auc",
        }
        tn, fp, fn, tp = np.ravel(m["confusion_matrix"])
        for name, entry in m["intervals"].items():
            check_interval(entry, (e, name), defined(m["confusion_matrix"], name))
        assert (
            m["intervals"]["sensitivity"]["successes"],
            m["intervals"]["sensitivity"]["trials"],
        ) == (tp, tp + fn)
        auc = m["intervals"]["roc_auc"]
        assert auc["n_resamples"] == boot and auc["estimate"] == pytest.approx(m["roc_auc"])
        cal = m["calibration"]
        assert sum(b["count"] for b in cal["bins"]) == m["n"]
        assert 0 <= cal["brier"] <= 1
        # the stored predictions are the very numbers the metrics were computed from
        preds = read_predictions(smoke_run / "reports/predictions" / f"{e}.csv")
        y = (preds["label"] == "covid").astype(float)
        assert cal["brier"] == pytest.approx(((preds["p_covid"] - y) ** 2).mean(), rel=1e-12)
        roc = pd.read_csv(smoke_run / "reports/curves" / f"{e}_roc.csv")
        pr = pd.read_csv(smoke_run / "reports/curves" / f"{e}_pr.csv")
        assert list(roc.columns) == ["fpr", "tpr", "threshold"]
        assert list(pr.columns) == ["recall", "precision", "threshold"]
        assert roc[["fpr", "tpr"]].iloc[-1].tolist() == [1, 1]
        assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(m["roc_auc"], abs=1e-4)
        bins = pd.read_csv(smoke_run / "reports/curves" / f"{e}_calibration.csv")
        assert bins["count"].sum() == m["n"] and len(bins) == CONFIG["evaluate"]["calibration_bins"]
        # ECE: the count-weighted mean gap between mean p_covid and the COVID fraction per bin
        full = bins[bins["count"] > 0]
        gaps = (full["mean_p_covid"] - full["fraction_covid"]).abs()
        # (the CSV holds 6 significant digits)
        assert cal["ece"] == pytest.approx((full["count"] * gaps).sum() / m["n"], abs=1e-5)
    log = (smoke_run / "logs/evaluate/model_03_test.log").read_text()
    assert "roc_auc:" in log and "calibration: ECE" in log


@pytest.mark.e2e
def test_evaluation_figures_are_real_pngs(smoke_run):
    for name in FIGURES:
        check_png(smoke_run / "reports/figures" / name)


@pytest.mark.e2e
def test_gradcam_outputs(smoke_run):
    store = load_store(smoke_run / "data/store/test.npz")
    heat = pd.read_csv(
        smoke_run / "reports/audit/gradcam_heat.csv", dtype={"patient_id": str, "in_grid": str}
    )
    preds = pd.read_csv(smoke_run / "reports/predictions/model_03_test.csv")
    assert heat["path"].tolist() == list(store["paths"])
    np.testing.assert_allclose(heat["p_covid"], preds["p_covid"], atol=1e-5)  # the model's own
    assert heat["predicted"].tolist() == preds["predicted"].tolist()
    assert heat["heat_in_box"].dropna().between(0, 1).all()
    correct = heat["label"] == heat["predicted"]
    grid = heat["in_grid"].fillna("")
    audit = {**CONFIG["audit"], **SMOKE["audit"]}
    assert (grid == "correct").sum() == min(audit["gradcam_correct"], correct.sum())
    assert (grid == "wrong").sum() == min(audit["gradcam_wrong"], (~correct).sum())
    assert correct[grid == "correct"].all() and not correct[grid == "wrong"].any()
    summary = load(smoke_run / "reports/audit/gradcam.json")
    assert summary["layer"] == "block5_conv4" and summary["n_images"] == len(store["paths"])
    assert summary["mean_heat_in_box"] == pytest.approx(heat["heat_in_box"].mean())
    assert summary["lung_box"] == CONFIG["audit"]["lung_box"]
    assert summary["box_area_fraction"] == pytest.approx(0.7 * 0.65, abs=0.03)


@pytest.mark.e2e
def test_shortcut_audit(smoke_run):
    baselines = load(smoke_run / "reports/audit/baselines.json")
    test = pd.read_csv(smoke_run / "data/splits/test.csv")
    for name in ("thumbnail", "size_mode"):
        check_interval(baselines[name]["roc_auc"], name)
        assert len(baselines[name]["p_covid"]) == len(test)
    masked = load(smoke_run / "reports/audit/masked.json")
    check_interval(masked["roc_auc"], "masked")
    audit = load(smoke_run / "reports/audit/shortcut_audit.json")
    assert [e["key"] for e in audit["entries"]] == ["thumbnail", "size_mode", "masked", "model"]
    warn = CONFIG["audit"]["warn_auc"]
    log = (smoke_run / "logs/shortcut_audit.log").read_text()
    for e in audit["entries"][:3]:
        est = e["roc_auc"]["estimate"]
        assert e["flagged"] == (est is not None and est >= warn)
        assert format_interval(e["roc_auc"]) in log
    assert len(audit["warnings"]) >= sum(e["flagged"] for e in audit["entries"])
    for w in audit["warnings"]:
        assert f"WARNING: {w}" in log
    # On this data the size/mode shortcut is real: the smoke test split shows it too.
    assert baselines["size_mode"]["roc_auc"]["estimate"] >= 0.8
    assert audit["entries"][1]["flagged"] and audit["warnings"]


@pytest.mark.e2e
def test_ieee8023_adult_viral_check(smoke_run):
    viral = load(smoke_run / "reports/external/ieee8023_viral.json")
    preds = read_predictions(smoke_run / "reports/external/ieee8023_viral_predictions.csv")
    errors = pd.read_csv(smoke_run / "reports/external/ieee8023_viral_errors.csv")
    overlaps = pd.read_csv(smoke_run / "reports/external/ieee8023_viral_overlaps.csv")
    left_out = viral["overlap"]["n_overlapping"]
    assert left_out == overlaps["path"].nunique()
    # 16 SARS, 4 varicella, 1 influenza: scored, failed or left out by the overlap guard
    assert viral["n_listed"] == 21 == len(preds) + len(errors) + left_out
    assert viral["n"] == len(preds) and (preds["label"] == "non_covid").all()
    spec = viral["intervals"]["specificity"]
    assert spec["trials"] == len(preds)
    assert spec["successes"] == int((preds["p_covid"] <= 0.5).sum())
    check_interval(spec, "specificity")
    assert viral["intervals"]["sensitivity"]["estimate"] is None  # no covid image among them
    assert sum(f["n"] for f in viral["per_finding"].values()) == len(preds)
    check_interval(viral["auc_test_covid_vs_these"], "auc")
    check_interval(viral["test_non_covid_specificity"], "children")


@pytest.mark.e2e
def test_within_source_check_shares_no_patient_or_image_with_the_run(smoke_run):
    """Every within-source image that shares a patient id, file or pixels with an image of the
    run's splits or augmented images is listed in the overlaps CSV and left out; none of the
    scored ones does."""
    within = load(smoke_run / "reports/external/ieee8023_adult.json")
    preds = read_predictions(smoke_run / "reports/external/ieee8023_adult_predictions.csv")
    errors = pd.read_csv(smoke_run / "reports/external/ieee8023_adult_errors.csv")
    overlaps = pd.read_csv(
        smoke_run / "reports/external/ieee8023_adult_overlaps.csv",
        dtype={"patient_id": str, "matched_patient_id": str},
    )
    run = pd.concat(
        [
            pd.read_csv(smoke_run / f"data/splits/{s}.csv", dtype={"patient_id": str})
            for s in ("train", "val", "test")
        ]
        + [pd.read_csv(smoke_run / "data/augmented/augmented.csv", dtype={"patient_id": str})]
    )
    assert not set(preds["patient_id"]) & set(run["patient_id"])
    assert not {file_hash(smoke_run / p) for p in preds["path"]} & set(run["sha256"])
    by_patient = overlaps[overlaps["kind"] == "patient id"]
    assert (by_patient["patient_id"] == by_patient["matched_patient_id"]).all()
    assert by_patient["matched_patient_id"].isin(set(run["patient_id"])).all()
    guard = within["overlap"]
    assert guard["n_overlapping"] == overlaps["path"].nunique()
    assert within["n_listed"] == len(preds) + len(errors) + guard["n_overlapping"]
    log = (smoke_run / "logs/evaluate_ieee8023_adult.log").read_text()
    assert log.count("OVERLAP ") == len(overlaps)


@pytest.mark.e2e
def test_model_card(smoke_run):
    card = (smoke_run / "reports/model_card.md").read_text()
    for heading in [
        "## Intended use",
        "## Model",
        "## Data",
        "## Split",
        "## Metrics (model_03 on the test split, 95% intervals)",
        "## Shortcut audit",
        "## Honesty check: adult non-COVID viral pneumonia (ieee8023)",
        "## External test",
        "## Known limitations",
    ]:
        assert heading in card, heading
    assert "Not a diagnostic tool" in card and "CC BY 4.0" in card
    test = load(smoke_run / "reports/metrics/model_03_test.json")
    for name in ("sensitivity", "specificity", "accuracy", "roc_auc"):
        assert format_interval(test["intervals"][name]) in card, name
    audit = load(smoke_run / "reports/audit/shortcut_audit.json")
    for e in audit["entries"]:
        assert format_interval(e["roc_auc"]) in card
    for w in audit["warnings"]:
        assert w in card
    splits = {s: pd.read_csv(smoke_run / f"data/splits/{s}.csv") for s in ("train", "val", "test")}
    n_test_covid = (splits["test"]["label"] == "covid").sum()
    assert f"| test | {n_test_covid} (" in card
    assert "None configured" in card  # external test off by default


@pytest.mark.e2e
def test_snakemake_report_builds_html_with_every_figure(smoke_run, tmp_path):
    html = tmp_path / "report.html"
    snakemake(smoke_run, "--report", str(html))
    text = html.read_text()
    figures = sorted(p.name for p in (smoke_run / "reports/figures").glob("*.png"))
    assert len(figures) >= 20
    for name in [*figures, "model_card.md"]:
        assert name in text, name
    for caption in ["Grad-CAM (Selvaraju", "Shortcut audit: test ROC AUC", "Reliability diagram"]:
        assert caption in text, caption


@pytest.mark.e2e
def test_external_folder(smoke_run, mirror, tmp_path):
    folder = tmp_path / "external"
    folder.mkdir()
    rows = ["path,label,patient_id"]
    in_run = set()
    for s in ("train", "val", "test"):
        in_run |= set(pd.read_csv(smoke_run / f"data/splits/{s}.csv")["sha256"])

    def unseen(paths):  # the last three files (by name) that are no image of the run
        return sorted(p for p in sorted(paths, reverse=True)[:40] if file_hash(p) not in in_run)[
            -3:
        ]

    covid = unseen((mirror / "covid-chestxray-dataset/images").glob("*.jp*g"))
    kermany = unseen((mirror / "chest_xray/train/PNEUMONIA").glob("*.jpeg"))
    patients = ["c0", "c0", "c1", "k0", "k1", "k1"]  # two patients with two images each
    for p, label, pid in zip(
        [*covid, *kermany], ["covid"] * 3 + ["non_covid"] * 3, patients, strict=True
    ):
        shutil.copy(p, folder / p.name)
        rows.append(f"{p.name},{label},{pid}")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rows.append("broken.png,covid,ext9")
    # a byte copy of a training image under another name: the overlap guard leaves it out
    train = pd.read_csv(smoke_run / "data/splits/train.csv")
    seen = train["path"].iloc[0]
    copy = "copy" + Path(seen).suffix
    shutil.copy(smoke_run / seen if not seen.startswith("/") else seen, folder / copy)
    rows.append(f"{copy},{train['label'].iloc[0]},ext10")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    overlay = tmp_path / "external.yaml"
    overlay.write_text(yaml.safe_dump({"external": {"metadata": str(folder / "labels.csv")}}))
    out = snakemake(
        smoke_run, "reports/external/external.json", overlays=(*SESSION_OVERLAYS, str(overlay))
    )
    assert "evaluate_external" in out.stdout
    m = load(smoke_run / "reports/external/external.json")
    assert m["n_listed"] == 8 and m["n_failed"] == 1 and m["n"] == 6
    assert m["overlap"]["n_overlapping"] == 1 and m["overlap"]["by_kind"]["file sha256"] == 1
    overlaps = pd.read_csv(smoke_run / "reports/external/external_overlaps.csv")
    assert overlaps["path"].str.endswith(copy).all()
    assert (overlaps["matched_path"] == seen).any() and (overlaps["split"] == "train").any()
    assert m["n_patients"] == 4 and m["model"] == "model_03"
    assert np.sum(m["confusion_matrix"], axis=1).tolist() == [3, 3]  # rows: true non_covid, covid
    assert m["intervals"]["sensitivity"]["trials"] == 3
    for name, entry in m["intervals"].items():
        check_interval(entry, name, defined(m["confusion_matrix"], name))
    errors = pd.read_csv(smoke_run / "reports/external/external_errors.csv")
    assert errors["path"].str.endswith("broken.png").tolist() == [True]
    check_png(smoke_run / "reports/figures/external_roc_pr.png")
