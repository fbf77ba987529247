"""Repeated runs: the split-to-report chain per seed (runs/seed_N/) and the summary."""

import json

import pandas as pd
import pytest

from cxr.summary import summarize, to_markdown

from .conftest import snakemake


def metrics(tmp_path, name, tp, fn, tn, fp, auc):
    """A metrics JSON in cxr.metrics' layout for a known confusion matrix."""
    m = {
        "n": tp + fn + tn + fp,
        "accuracy": (tp + tn) / (tp + fn + tn + fp),
        "sensitivity": tp / (tp + fn),
        "specificity": tn / (tn + fp),
        "covid": {"precision": tp / (tp + fp)},
        "non_covid": {"precision": tn / (tn + fn)},
        "roc_auc": auc,
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(m))
    return path


def test_summary_mean_and_sd_by_hand(tmp_path):
    a = metrics(tmp_path, "a", tp=30, fn=0, tn=27, fp=3, auc=0.99)  # sens 1.0, spec 0.9
    b = metrics(tmp_path, "b", tp=24, fn=6, tn=30, fp=0, auc=0.95)  # sens 0.8, spec 1.0
    runs, summary = summarize([a, b], [1, 2])
    assert runs.seed.tolist() == [1, 2] and runs.n.tolist() == [60, 60]
    s = summary.set_index("metric")
    assert s.at["sensitivity", "mean"] == pytest.approx(0.9)
    # sample sd of (1.0, 0.8): |1.0 - 0.8| / sqrt(2)
    assert s.at["sensitivity", "sd"] == pytest.approx(0.2 / 2**0.5)
    assert s.at["specificity", "min"] == pytest.approx(0.9)
    assert s.at["ppv", "max"] == pytest.approx(1.0)  # run b: 24 / 24
    assert s.at["npv", "mean"] == pytest.approx((1.0 + 30 / 36) / 2)
    assert "| 2 | 60 |" in to_markdown(runs, summary)


def test_summary_refuses_mismatched_seeds(tmp_path):
    with pytest.raises(ValueError, match="2 metrics files for 1 seeds"):
        summarize([tmp_path / "a", tmp_path / "b"], [1])


@pytest.mark.e2e
def test_two_seeds_fan_out_and_summary(smoke_run):
    proc = snakemake(smoke_run, "reports/seeds/summary.md", config=("seeds=[1,2]",))
    # separate jobs per seed: each chain step ran once per seed, not once for both
    for rule in ("split", "augment", "preprocess", "train_model_03"):
        assert proc.stdout.count(f"(Rule: {rule})") == 2, rule
    tests = {}
    for seed in (1, 2):
        run = smoke_run / f"runs/seed_{seed}"
        assert f"Splitting by patient (seed {seed})" in proc.stdout
        splits = {
            s: pd.read_csv(run / f"data/splits/{s}.csv", dtype=str) for s in ("train", "test")
        }
        assert not set(splits["train"].patient_id) & set(splits["test"].patient_id)
        tests[seed] = set(splits["test"].path)
        assert json.loads((run / "reports/metrics/model_03_test.json").read_text())["n"] == 8
    assert tests[1] != tests[2]  # another seed, another patient-level split
    summary = pd.read_csv(smoke_run / "reports/seeds/summary.csv")
    assert summary.metric.tolist() == [
        "accuracy",
        "sensitivity",
        "specificity",
        "ppv",
        "npv",
        "roc_auc",
    ]
    text = (smoke_run / "reports/seeds/summary.md").read_text()
    assert "| 1 | 8 |" in text and "| 2 | 8 |" in text
