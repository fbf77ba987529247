"""cxr.metrics against a confusion matrix counted by hand.

Ten images, covid = 1 is positive:
    y_true  1 1 1 1 0 0 0 0 0 0
    y_pred  1 1 1 0 0 0 0 0 1 1
TP = 3 (items 1-3), FN = 1 (item 4), TN = 4 (items 5-8), FP = 2 (items 9-10).
"""

import json

import numpy as np
import pandas as pd
import pytest

from cxr.metrics import (
    PREDICTION_COLUMNS,
    compute_metrics,
    predicted_labels,
    predictions_frame,
    write_metrics,
    write_predictions,
)

Y_TRUE = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
Y_PRED = [1, 1, 1, 0, 0, 0, 0, 0, 1, 1]


@pytest.fixture
def metrics():
    return compute_metrics(Y_TRUE, Y_PRED)


def test_confusion_matrix_rows_true_columns_predicted(metrics):
    # rows: true non_covid [TN, FP], true covid [FN, TP]
    assert metrics["confusion_matrix"] == [[4, 2], [1, 3]]
    assert metrics["classes"] == ["non_covid", "covid"]
    assert metrics["n"] == 10


def test_sensitivity_specificity_precision(metrics):
    assert metrics["sensitivity"] == pytest.approx(3 / 4)  # TP / (TP + FN)
    assert metrics["specificity"] == pytest.approx(4 / 6)  # TN / (TN + FP)
    assert metrics["accuracy"] == pytest.approx(7 / 10)
    covid, non = metrics["covid"], metrics["non_covid"]
    assert covid["precision"] == pytest.approx(3 / 5)  # TP / (TP + FP)
    assert covid["recall"] == pytest.approx(3 / 4)
    assert covid["f1-score"] == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))
    assert covid["support"] == 4 and non["support"] == 6
    assert covid["specificity"] == pytest.approx(4 / 6)
    assert non["precision"] == pytest.approx(4 / 5)  # TN / (TN + FN), the NPV
    assert non["recall"] == pytest.approx(4 / 6)
    assert non["specificity"] == pytest.approx(3 / 4)  # for non_covid, negatives are covid


def test_averages(metrics):
    assert metrics["macro avg"]["precision"] == pytest.approx((0.8 + 0.6) / 2)
    assert metrics["macro avg"]["recall"] == pytest.approx((4 / 6 + 3 / 4) / 2)
    assert metrics["weighted avg"]["precision"] == pytest.approx((6 * 0.8 + 4 * 0.6) / 10)
    assert metrics["weighted avg"]["support"] == 10


def test_roc_auc_by_pair_counting():
    # positives 0.9 0.8 0.7 0.4 vs negatives 0.1 0.2 0.3 0.5 0.6 0.65:
    # 0.9, 0.8, 0.7 beat all 6 negatives, 0.4 beats 3 -> 21 of 24 pairs
    p = [0.9, 0.8, 0.7, 0.4, 0.1, 0.2, 0.3, 0.5, 0.6, 0.65]
    m = compute_metrics(Y_TRUE, predicted_labels(p), p)
    assert m["roc_auc"] == pytest.approx(21 / 24)
    assert m["confusion_matrix"] == [[4, 2], [1, 3]]
    assert compute_metrics([1, 1], [1, 0], [0.7, 0.2])["roc_auc"] is None


def test_zero_division_is_zero():
    m = compute_metrics([0, 0, 1, 1], [0, 0, 0, 0])
    assert m["covid"]["precision"] == 0.0 and m["sensitivity"] == 0.0
    assert m["specificity"] == 1.0
    assert m["confusion_matrix"] == [[2, 0], [2, 0]]


def test_predicted_labels_threshold():
    np.testing.assert_array_equal(predicted_labels([0.0, 0.5, 0.5000001, 1.0]), [0, 0, 1, 1])


@pytest.mark.parametrize(
    ("y_true", "y_pred"), [([0, 1], [0]), ([], []), ([0, 2], [0, 1]), ([[0, 1]], [[0, 1]])]
)
def test_refuses_bad_labels(y_true, y_pred):
    with pytest.raises(ValueError):
        compute_metrics(y_true, y_pred)


def test_json_and_csv_round_trip(metrics, tmp_path):
    path = tmp_path / "m" / "model_01_val.json"
    write_metrics(metrics, path)
    assert json.loads(path.read_text()) == metrics
    assert not list(path.parent.glob("*.tmp"))
    with pytest.raises(ValueError):
        write_metrics({"accuracy": float("nan")}, tmp_path / "bad.json")

    store = {
        "paths": np.array(["a.png", "b.png", "c.png"]),
        "patient_ids": np.array(["007", "p2", "p3"]),
        "labels": np.array([1, 0, 0], dtype=np.int8),
    }
    frame = predictions_frame(store, np.array([0.9, 0.6, 0.1]))
    csv_path = tmp_path / "p.csv"
    write_predictions(frame, csv_path)
    back = pd.read_csv(csv_path, dtype={"patient_id": str})
    assert list(back.columns) == list(PREDICTION_COLUMNS)
    assert back["label"].tolist() == ["covid", "non_covid", "non_covid"]
    assert back["predicted"].tolist() == ["covid", "covid", "non_covid"]
    assert back["patient_id"].tolist() == ["007", "p2", "p3"]
    np.testing.assert_allclose(back["p_covid"], [0.9, 0.6, 0.1])
    with pytest.raises(ValueError):
        predictions_frame(store, np.array([0.9, 0.6]))
    with pytest.raises(ValueError):
        predictions_frame(store, np.array([0.9, 0.6, 1.5]))
