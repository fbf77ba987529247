"""cxr.audit: blind baselines and the audit table, on hand-made data with known answers."""

import numpy as np
import pandas as pd
import pytest

from cxr.audit import (
    blind_baselines,
    fit_predict,
    masked_result,
    shortcut_audit,
    size_mode_features,
    thumbnails,
)
from cxr.intervals import newcombe_auc_interval


def test_thumbnails_are_box_averaged_grey():
    images = np.zeros((2, 32, 32, 3), np.uint8)
    images[0] = 255
    images[1, :, :16] = 255  # left half white
    t = thumbnails(images, 4)
    assert t.shape == (2, 16)
    np.testing.assert_allclose(t[0], 1.0)
    np.testing.assert_allclose(t[1].reshape(4, 4), [[1, 1, 0, 0]] * 4)
    with pytest.raises(ValueError):
        thumbnails(images[0], 4)


def test_size_mode_features():
    frame = pd.DataFrame({"width": [224, 300], "height": [224, 150], "mode": ["RGB", "L"]})
    x = size_mode_features(frame, ["L", "RGB"])
    np.testing.assert_allclose(x[0], [np.log(224), np.log(224), 0.0, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(x[1], [np.log(300), np.log(150), np.log(2.0), 0.0, 1.0, 0.0])
    assert size_mode_features(frame, ["P"])[:, 4].tolist() == [0.0, 0.0]  # unseen mode
    with pytest.raises(ValueError):
        size_mode_features(frame.drop(columns="mode"), [])


def stores_and_tables(n=20, seed=0):
    """covid images bright, non_covid dark; covid files 500x400 RGB, non_covid 224x224 L."""
    rng = np.random.default_rng(seed)

    def split(k, offset):
        labels = np.r_[np.ones(k), np.zeros(k)].astype(np.int8)
        level = np.where(labels == 1, 170, 80)[:, None, None, None]
        images = np.clip(level + rng.normal(0, 20, (2 * k, 16, 16, 3)), 0, 255).astype(np.uint8)
        pids = np.array([f"p{offset + i // 2}" for i in range(2 * k)])  # two images a patient
        store = {"images": images, "labels": labels, "paths": pids, "patient_ids": pids}
        table = pd.DataFrame(
            {
                "label": np.where(labels == 1, "covid", "non_covid"),
                "patient_id": pids,
                "width": np.where(labels == 1, 500, 224),
                "height": np.where(labels == 1, 400, 224),
                "mode": np.where(labels == 1, "RGB", "L"),
            }
        )
        return store, table

    return split(n, 0), split(n // 2, 1000)


def test_blind_baselines_find_a_planted_shortcut():
    (tr_store, tr_table), (te_store, te_table) = stores_and_tables()
    out = blind_baselines(
        tr_store, te_store, tr_table, te_table, thumbnail_size=4, n_resamples=50, seed=0
    )
    assert set(out) == {"thumbnail", "size_mode"}
    for name, r in out.items():
        auc = r["roc_auc"]
        # perfect separation of 5 + 5 patients: Newcombe's lower bound on patient counts,
        # below 1 (the percentile bootstrap beside it collapses to 1)
        assert auc["estimate"] == 1.0 and auc["upper"] == 1.0, name
        assert auc["lower"] == newcombe_auc_interval(1.0, 5, 5)[0] < 0.8, name
        assert auc["bootstrap"]["lower"] == 1.0, name
        assert auc["n_patients"] == 10 and auc["n_images"] == 20
        assert r["n_test"] == 20 and len(r["p_covid"]) == 20
    assert out["thumbnail"]["n_train"] == 40
    assert "4x4" in out["thumbnail"]["description"]
    assert "L, RGB" in out["size_mode"]["description"]


def test_blind_baseline_without_signal_is_near_chance():
    rng = np.random.default_rng(3)
    x_train, x_test = rng.normal(size=(400, 5)), rng.normal(size=(400, 5))
    y_train, y_test = rng.integers(0, 2, 400), rng.integers(0, 2, 400)
    from sklearn.metrics import roc_auc_score

    assert abs(roc_auc_score(y_test, fit_predict(x_train, y_train, x_test)) - 0.5) < 0.1
    with pytest.raises(ValueError):
        fit_predict(x_train, np.zeros(400), x_test)


def auc_entry(estimate):
    return {"estimate": estimate, "lower": estimate - 0.05, "upper": min(1.0, estimate + 0.05)}


def test_shortcut_audit_flags_and_warns():
    baselines = {
        "thumbnail": {
            "description": "logistic regression on 16x16 thumbs",
            "roc_auc": auc_entry(0.99),
            "p_covid": [0.1],
        },
        "size_mode": {"description": "size", "roc_auc": auc_entry(0.70), "p_covid": [0.1]},
    }
    masked = masked_result(
        [1, 1, 0, 0], [0.9, 0.8, 0.3, 0.1], list("abcd"), (0.1, 0.1, 0.9, 0.9), n_resamples=20
    )
    assert masked["roc_auc"]["estimate"] == 1.0 and masked["lung_box"] == [0.1, 0.1, 0.9, 0.9]
    model = {"n": 60, "confidence": 0.95, "intervals": {"roc_auc": auc_entry(0.97)}}
    gc = {
        "mean_heat_in_box": 0.3,
        "box_area_fraction": 0.45,
        "n_images": 60,
        "lung_box": [0, 0, 1, 1],
    }
    audit = shortcut_audit(baselines, masked, model, gc, warn_auc=0.8)
    flags = {e["key"]: e["flagged"] for e in audit["entries"]}
    assert flags == {"thumbnail": True, "size_mode": False, "masked": True, "model": False}
    assert len(audit["warnings"]) == 3  # thumbnail, masked, Grad-CAM heat below uniform
    assert "0.990" in audit["warnings"][0] and "16x16 thumbs" in audit["warnings"][0]
    assert "unmasked: 0.970" in audit["warnings"][1]
    assert "30%" in audit["warnings"][2] and audit["gradcam"]["flagged"]
    assert all("p_covid" not in e for e in audit["entries"])
    calm = shortcut_audit(
        {k: {**v, "roc_auc": auc_entry(0.6)} for k, v in baselines.items()},
        {**masked, "roc_auc": auc_entry(0.55)},
        model,
        {**gc, "mean_heat_in_box": 0.8},
        warn_auc=0.8,
    )
    assert calm["warnings"] == [] and not any(e["flagged"] for e in calm["entries"])
