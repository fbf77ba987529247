"""cxr.external: labelled tables, the ieee8023 adult viral selection (on the real metadata), and
scoring with failures listed rather than fatal (a stand-in model, no TensorFlow), except a table
of which nothing loads (refused, also by the script, with a tiny real model)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from cxr.external import (
    TableError,
    failure_note,
    ieee8023_viral_summary,
    ieee8023_viral_table,
    read_labelled_table,
    require_loaded,
    score_table,
    summarise,
)
from cxr.manifest import covid_candidates

from .conftest import REPO


def test_read_labelled_table(tmp_path):
    (tmp_path / "t.csv").write_text(
        "path,label,patient_id\na.png,covid,p1\n/abs/b.png,non_covid,\n"
    )
    t = read_labelled_table(tmp_path / "t.csv")
    assert t["path"].tolist() == [str(tmp_path / "a.png"), "/abs/b.png"]
    assert t["patient_id"].tolist() == ["p1", "/abs/b.png"]  # empty: the image is its patient
    t = read_labelled_table(tmp_path / "t.csv", images=tmp_path / "imgs")
    assert t["path"][0] == str(tmp_path / "imgs" / "a.png")
    (tmp_path / "nopid.csv").write_text("path,label\nx.png,covid\n")
    assert read_labelled_table(tmp_path / "nopid.csv")["patient_id"][0].endswith("x.png")
    (tmp_path / "bad.csv").write_text("path,label\nx.png,covid\ny.png,COVID-19\n")
    with pytest.raises(TableError, match="row 3: label 'COVID-19'"):
        read_labelled_table(tmp_path / "bad.csv")
    (tmp_path / "nolabel.csv").write_text("path,diagnosis\nx.png,covid\n")
    with pytest.raises(TableError, match="label"):
        read_labelled_table(tmp_path / "nolabel.csv")


def test_ieee8023_viral_images_on_the_real_metadata(mirror):
    covid_dir = mirror / "covid-chestxray-dataset"
    excluded = pd.DataFrame(
        [
            rec
            for kind, rec in covid_candidates(
                covid_dir,
                covid_findings=["COVID-19"],
                modality="X-ray",
                views=["PA", "AP", "AP Supine"],
            )
            if kind == "exclude"
        ]
    )
    metadata = pd.read_csv(covid_dir / "metadata.csv", dtype=str, keep_default_na=False)
    table = ieee8023_viral_table(
        excluded,
        metadata,
        covid_dir,
        ["SARS", "MERS", "Influenza", "Varicella"],
        ["PA", "AP", "AP Supine"],
    )
    # the 2020-06-27 snapshot: 16 SARS, 1 influenza, 4 varicella frontal X-rays, no MERS
    assert table["finding"].value_counts().to_dict() == {"SARS": 16, "Varicella": 4, "Influenza": 1}
    assert (table["label"] == "non_covid").all()
    assert table["view"].isin(["PA", "AP", "AP Supine"]).all()
    assert table["patient_id"].str.startswith("ieee8023:").all()
    assert all((covid_dir / "images" / p.split("/")[-1]).is_file() for p in table["path"])
    assert not table["finding"].str.contains("COVID").any()
    lateral = ieee8023_viral_table(excluded, metadata, covid_dir, ["Influenza"], ["L"])
    assert len(lateral) == 1  # the other influenza image is lateral


def test_within_source_adults_on_the_real_metadata(mirror):
    """min_age: the frontal non-COVID ieee8023 X-rays of patients aged 18 or more, counted
    here straight from metadata.csv (unknown ages left out; a file listed twice once; files
    missing from the folder stay listed, to be reported as failed by the scoring)."""
    covid_dir = mirror / "covid-chestxray-dataset"
    views = ["PA", "AP", "AP Supine"]
    excluded = pd.DataFrame(
        [
            rec
            for kind, rec in covid_candidates(
                covid_dir, covid_findings=["COVID-19"], modality="X-ray", views=views
            )
            if kind == "exclude"
        ]
    )
    metadata = pd.read_csv(covid_dir / "metadata.csv", dtype=str, keep_default_na=False)
    findings = yaml.safe_load((REPO / "config.yaml").read_text())["external"][
        "ieee8023_adult_findings"
    ]
    table = ieee8023_viral_table(excluded, metadata, covid_dir, findings, views, min_age=18)
    age = pd.to_numeric(metadata["age"], errors="coerce")
    want = metadata[
        (metadata["modality"] == "X-ray")
        & metadata["view"].isin(views)
        & ~metadata["finding"].str.contains("COVID-19", case=False)
        & (age >= 18)
    ].drop_duplicates("filename")
    assert sorted(Path(p).name for p in table["path"]) == sorted(want["filename"])
    assert len(table) > 80  # the config's findings list covers every non-COVID finding
    assert (pd.to_numeric(table["age"]) >= 18).all()
    younger = ieee8023_viral_table(excluded, metadata, covid_dir, findings, views, min_age=60)
    assert 0 < len(younger) < len(table)


class FakeModel:
    """Stand-in for a Keras model: p_covid = mean red value / 255 of each image."""

    input_shape = (None, 16, 16, 3)

    def predict(self, images, batch_size=None, verbose=0):
        p = images[..., 0].mean(axis=(1, 2)) / 255.0
        return np.stack([1 - p, p], axis=1)


def test_score_table_lists_bad_files_and_scores_the_rest(tmp_path):
    rows = []
    for i, (red, label) in enumerate(
        [(230, "covid"), (200, "covid"), (40, "non_covid"), (90, "non_covid")]
    ):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((20, 30, 3), red, np.uint8)).save(path)
        rows.append({"path": str(path), "label": label, "patient_id": f"p{i}"})
    (tmp_path / "bad.png").write_bytes(b"")
    rows.append({"path": str(tmp_path / "bad.png"), "label": "covid", "patient_id": "p9"})
    scored, errors = score_table(FakeModel(), pd.DataFrame(rows))
    assert len(scored) == 4 and errors["reason"].tolist() == ["empty file"]
    np.testing.assert_allclose(
        scored["p_covid"], [230 / 255, 200 / 255, 40 / 255, 90 / 255], atol=1e-6
    )
    assert scored["predicted"].tolist() == ["covid", "covid", "non_covid", "non_covid"]
    summary = summarise(scored, errors, "fake", n_resamples=50, seed=0, confidence=0.95, n_bins=5)
    assert summary["n_listed"] == 5 and summary["n_failed"] == 1
    assert summary["failed_by_reason"] == {"empty file": 1}
    assert summary["intervals"]["sensitivity"]["successes"] == 2
    assert summary["intervals"]["roc_auc"]["estimate"] == 1.0
    empty = summarise(scored[:0], errors, "none")
    assert "intervals" not in empty and empty["n_failed"] == 1


def test_ieee8023_viral_summary_by_hand():
    scored = pd.DataFrame(
        {
            "path": ["a", "b", "c", "d"],
            "label": "non_covid",
            "patient_id": ["x1", "x1", "x2", "x3"],
            "finding": ["SARS", "SARS", "SARS", "Varicella"],
            "predicted": ["covid", "covid", "non_covid", "non_covid"],
            "p_covid": [0.9, 0.8, 0.2, 0.1],
        }
    )
    test = pd.DataFrame(
        {
            "label": ["covid", "covid", "non_covid", "non_covid", "non_covid"],
            "p_covid": [0.95, 0.7, 0.1, 0.2, 0.6],
            "patient_id": ["c1", "c2", "k1", "k2", "k3"],
        }
    )
    out = ieee8023_viral_summary(
        scored, pd.DataFrame(columns=["path", "reason", "detail"]), test, n_resamples=100
    )
    spec = out["intervals"]["specificity"]
    assert (spec["successes"], spec["trials"]) == (2, 4)
    assert out["per_finding"] == {
        "SARS": {"n": 3, "predicted_covid": 2, "p_covid_mean": pytest.approx(1.9 / 3)},
        "Varicella": {"n": 1, "predicted_covid": 0, "p_covid_mean": 0.1},
    }
    kids = out["test_non_covid_specificity"]
    assert (kids["successes"], kids["trials"]) == (2, 3)
    # covid 0.95, 0.7 vs adults 0.9, 0.8, 0.2, 0.1: 0.95 beats 4, 0.7 beats 2 -> 6 / 8
    auc = out["auc_test_covid_vs_these"]
    assert auc["estimate"] == pytest.approx(6 / 8) and auc["n_patients"] == 5
    assert auc["lower"] <= auc["estimate"] <= auc["upper"]
    assert out["p_covid_mean"] == pytest.approx(0.5)


def test_failed_images_are_counted_for_the_figure_and_card(tmp_path):
    summary = {"n_listed": 7, "n_failed": 2, "failed_by_reason": {"missing": 1, "truncated": 1}}
    assert failure_note(summary) == "2 of 7 listed images did not load (1 missing, 1 truncated)"
    assert failure_note({"n_listed": 7, "n_failed": 0, "failed_by_reason": {}}) is None
    from cxr.figures import roc_pr_figure
    from cxr.metrics import roc_pr_curves

    roc, pr = roc_pr_curves([0, 1, 1], [0.2, 0.7, 0.9])
    metrics = {"n": 5, "n_patients": 5, "intervals": {}, **summary}
    fig = roc_pr_figure(roc, pr, metrics, "model_03 on x.csv", failure_note(metrics))
    assert fig.get_suptitle().splitlines() == [
        "model_03 on x.csv: n=5 images, 5 patients (covid positive)",
        "2 of 7 listed images did not load (1 missing, 1 truncated)",
    ]


def test_a_table_where_nothing_loads_is_refused(tmp_path):
    (tmp_path / "t.csv").write_text("path,label\nimgs/a.png,covid\nimgs/b.png,non_covid\n")
    table = read_labelled_table(tmp_path / "t.csv")
    scored, errors = score_table(FakeModel(), table)
    assert len(scored) == 0 and errors["reason"].tolist() == ["missing", "missing"]
    with pytest.raises(TableError) as err:
        require_loaded(scored, errors, tmp_path / "t.csv")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 't.csv'}: none of the 2 listed images loaded")
    assert f"resolved against {tmp_path} " in message
    assert f"first: {tmp_path / 'imgs' / 'a.png'} (missing)" in message
    with pytest.raises(TableError, match=f"resolved against {tmp_path / 'elsewhere'} "):
        require_loaded(scored, errors, tmp_path / "t.csv", tmp_path / "elsewhere")
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    scored, errors = score_table(FakeModel(), table)
    require_loaded(scored, errors, tmp_path / "t.csv")  # one of two loads: accepted
    assert len(scored) == 1 and len(errors) == 1


@pytest.mark.slow
def test_script_fails_when_no_listed_file_loads(tmp_path):
    """The rule's script on a CSV whose paths all miss: exit 1, the message, no outputs."""
    keras = pytest.importorskip("keras")
    from cxr.model import build_model

    from .external_script import run_table

    keras.utils.set_random_seed(0)
    model = tmp_path / "model_03.keras"
    build_model(32, dense_units=(4, 4)).save(model)
    csv = tmp_path / "labels" / "labels.csv"
    csv.parent.mkdir()
    csv.write_text("path,label\nx1.png,covid\nx2.png,non_covid\n")
    proc, out = run_table(tmp_path, model, csv, max_pixels=100)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ERROR: {csv}: none of the 2 listed images loaded (2 missing)")
    assert f"resolved against {csv.parent} " in last
    assert f"first: {csv.parent / 'x1.png'} (missing)" in last
    assert not any(p.exists() for p in out.values())
