"""Intervals and bootstrap of cxr.intervals, calibration and curves of cxr.metrics, against values
worked by hand.

Wilson: p~ = (k + z^2/2) / (n + z^2), half-width z sqrt(n p (1 - p) + z^2 / 4) / (n + z^2).
Bootstrap: a tiny set whose resampling distribution is enumerated exactly, the Hanley-McNeil
standard error on a large set, and invariance to duplicating every patient's image.
"""

import json
import math

import numpy as np
import pandas as pd
import pytest

from cxr.intervals import (
    auc_interval,
    bootstrap_aucs,
    clustered_bootstrap_auc,
    clustered_proportion,
    clustered_proportion_intervals,
    design_effect,
    newcombe_auc_interval,
    proportion_intervals,
    wilson_interval,
)
from cxr.metrics import (
    calibration,
    compute_metrics,
    evaluation_summary,
    format_interval,
    roc_pr_curves,
    write_calibration,
    write_curves,
    write_metrics,
)

Z95 = 1.959963984540054


def wilson_by_hand(k, n, z=Z95):
    p = k / n
    centre = (k + z * z / 2) / (n + z * z)
    half = z * math.sqrt(n * p * (1 - p) + z * z / 4) / (n + z * z)
    return centre - half, centre + half


def test_wilson_30_of_30_lower_bound_is_0_886():
    lower, upper = wilson_interval(30, 30)
    assert round(lower, 3) == 0.886 and upper == 1.0
    assert lower == pytest.approx(wilson_by_hand(30, 30)[0])
    lower, upper = wilson_interval(0, 30)
    assert lower == 0.0 and round(upper, 3) == 0.114


@pytest.mark.parametrize(("k", "n"), [(3, 4), (4, 6), (1, 2), (7, 10), (55, 60), (1, 1)])
def test_wilson_matches_the_formula_and_contains_the_estimate(k, n):
    lower, upper = wilson_interval(k, n)
    assert (lower, upper) == pytest.approx(wilson_by_hand(k, n))
    assert lower <= k / n <= upper
    narrow = wilson_interval(k, n, confidence=0.5)
    # a lower level narrows both ends, except the upper end at k == n, which stays at 1
    assert lower < narrow[0] <= k / n <= narrow[1]
    assert narrow[1] < upper if k < n else narrow[1] == upper == 1.0


def test_wilson_edge_cases():
    assert wilson_interval(0, 0) == (None, None)
    for bad in [(3, 2), (-1, 2)]:
        with pytest.raises(ValueError):
            wilson_interval(*bad)
    with pytest.raises(ValueError):
        wilson_interval(1, 2, confidence=1.0)


def test_proportion_intervals_of_a_confusion_matrix():
    # [[TN, FP], [FN, TP]] = [[4, 2], [1, 3]]
    out = proportion_intervals([[4, 2], [1, 3]])
    expected = {
        "sensitivity": (3, 4),
        "specificity": (4, 6),
        "ppv": (3, 5),
        "npv": (4, 5),
        "accuracy": (7, 10),
    }
    assert list(out) == list(expected)
    for name, (k, n) in expected.items():
        entry = out[name]
        assert (entry["successes"], entry["trials"]) == (k, n), name
        assert entry["estimate"] == pytest.approx(k / n)
        assert (entry["lower"], entry["upper"]) == pytest.approx(wilson_by_hand(k, n))
        assert entry["lower"] <= entry["estimate"] <= entry["upper"]
        assert entry["method"] == "wilson"
    # nothing called covid: PPV undefined, not 0
    none = proportion_intervals([[4, 0], [4, 0]])["ppv"]
    assert none["estimate"] is None and none["lower"] is None and none["trials"] == 0
    assert format_interval(none) == "n/a"
    lower, upper = wilson_by_hand(3, 4)
    assert format_interval(out["sensitivity"]) == f"0.750 [{lower:.3f}, {upper:.3f}]"


def test_bootstrap_distribution_of_a_hand_made_set():
    """Patients a, b (covid; scores 0.9, 0.4) and c, d (non_covid; 0.5, 0.1).

    Each class's two patients are drawn twice with replacement: {a,a} 1/4, {b,b} 1/4, {a,b}
    1/2 (and so for c, d). AUC of each pair of draws: aa -> 1; bb with cc 0, dd 1, cd 0.5;
    ab with cc 0.5, dd 1, cd 0.75. So P(0) = 1/16, P(0.5) = 1/4, P(0.75) = 1/4,
    P(1) = 7/16, mean 0.75 (= the AUC). 50 % interval: the 25 % and 75 % quantiles, 0.5 and 1.
    """
    y = [1, 1, 0, 0]
    s = [0.9, 0.4, 0.5, 0.1]
    patients = ["a", "b", "c", "d"]
    aucs = bootstrap_aucs(y, s, patients, n_resamples=20000, seed=1)
    freq = {v: np.mean(aucs == v) for v in (0.0, 0.5, 0.75, 1.0)}
    assert sum(freq.values()) == pytest.approx(1.0)
    assert freq == pytest.approx({0.0: 1 / 16, 0.5: 1 / 4, 0.75: 1 / 4, 1.0: 7 / 16}, abs=0.01)
    out = clustered_bootstrap_auc(y, s, patients, n_resamples=20000, seed=1, confidence=0.5)
    assert out["estimate"] == pytest.approx(0.75)
    assert (out["lower"], out["upper"]) == (0.5, 1.0)


def test_bootstrap_matches_hanley_mcneil_on_a_large_set():
    rng = np.random.default_rng(0)
    n = 400
    y = np.r_[np.ones(n), np.zeros(n)].astype(int)
    s = np.r_[rng.normal(1.0, 1.0, n), rng.normal(0.0, 1.0, n)]
    out = clustered_bootstrap_auc(y, s, np.arange(2 * n), n_resamples=2000, seed=3)
    a = out["estimate"]
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = math.sqrt((a * (1 - a) + (n - 1) * (q1 - a * a) + (n - 1) * (q2 - a * a)) / (n * n))
    assert out["lower"] == pytest.approx(a - Z95 * se, abs=0.01)
    assert out["upper"] == pytest.approx(a + Z95 * se, abs=0.01)
    assert out["lower"] < a < out["upper"]


def test_bootstrap_resamples_patients_not_images():
    """Five identical images per patient: the same information as one image per patient."""
    rng = np.random.default_rng(1)
    n = 40
    y = np.r_[np.ones(n), np.zeros(n)].astype(int)
    s = np.r_[rng.normal(0.8, 1.0, n), rng.normal(0.0, 1.0, n)]
    one = clustered_bootstrap_auc(y, s, np.arange(2 * n), n_resamples=500, seed=7)
    k = 5
    y5, s5, g5 = np.repeat(y, k), np.repeat(s, k), np.repeat(np.arange(2 * n), k)
    clustered = clustered_bootstrap_auc(y5, s5, g5, n_resamples=500, seed=7)
    assert clustered["estimate"] == pytest.approx(one["estimate"])
    assert (clustered["lower"], clustered["upper"]) == pytest.approx((one["lower"], one["upper"]))
    assert clustered["n_patients"] == 2 * n and clustered["n_images"] == 2 * n * k
    # treating each image as its own patient claims ~sqrt(5) times too narrow an interval
    naive = clustered_bootstrap_auc(y5, s5, np.arange(len(y5)), n_resamples=500, seed=7)
    width = clustered["upper"] - clustered["lower"]
    assert naive["upper"] - naive["lower"] < 0.6 * width


def test_bootstrap_seeded_and_edge_cases():
    y, s, g = [1, 1, 1, 0, 0, 0], [0.9, 0.6, 0.3, 0.5, 0.2, 0.1], list("abcdef")
    first = clustered_bootstrap_auc(y, s, g, n_resamples=200, seed=5)
    assert first == clustered_bootstrap_auc(y, s, g, n_resamples=200, seed=5)
    assert first != clustered_bootstrap_auc(y, s, g, n_resamples=200, seed=6)
    assert first["lower"] <= first["estimate"] <= first["upper"]
    perfect = clustered_bootstrap_auc([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1], list("abcd"), 100, 0)
    assert (perfect["estimate"], perfect["lower"], perfect["upper"]) == (1.0, 1.0, 1.0)
    single = clustered_bootstrap_auc([1, 1], [0.9, 0.8], ["a", "b"], 100, 0)
    assert single["estimate"] is None and single["lower"] is None
    with pytest.raises(ValueError):
        clustered_bootstrap_auc([1, 0], [0.5], ["a", "b"], 10, 0)
    with pytest.raises(ValueError):
        clustered_bootstrap_auc([1, 0], [0.5, 0.2], ["a", "b"], 0, 0)


def test_calibration_by_hand():
    # two bins [0, 0.5) and [0.5, 1]: p 0.1 0.2 0.3 | 0.8 0.9 0.6, y 0 0 1 | 1 1 0
    # bin 0: mean p 0.2, covid 1/3, gap 2/15; bin 1: mean p 2.3/3, covid 2/3, gap 0.1
    cal = calibration([0, 0, 1, 1, 1, 0], [0.1, 0.2, 0.3, 0.8, 0.9, 0.6], n_bins=2)
    assert cal["ece"] == pytest.approx(0.5 * 2 / 15 + 0.5 * 0.1)
    assert cal["brier"] == pytest.approx((0.01 + 0.04 + 0.49 + 0.04 + 0.01 + 0.36) / 6)
    assert [b["count"] for b in cal["bins"]] == [3, 3]
    assert cal["bins"][0]["mean_p_covid"] == pytest.approx(0.2)
    assert cal["bins"][1]["fraction_covid"] == pytest.approx(2 / 3)
    assert (cal["bins"][1]["lower"], cal["bins"][1]["upper"]) == (0.5, 1.0)
    # perfectly calibrated: four images at 0.25, one covid; 1.0 falls in the last bin
    fair = calibration([1, 0, 0, 0], [0.25] * 4, n_bins=10)
    assert fair["ece"] == pytest.approx(0.0)
    assert fair["brier"] == pytest.approx((0.75**2 + 3 * 0.25**2) / 4)
    assert fair["bins"][2]["count"] == 4 and fair["bins"][0]["mean_p_covid"] is None
    assert calibration([1], [1.0], n_bins=10)["bins"][9]["count"] == 1
    for bad in [([1, 0], [0.5, 1.5]), ([], []), ([1], [0.5, 0.5])]:
        with pytest.raises(ValueError):
            calibration(*bad)


def test_roc_pr_curves_and_their_csv(tmp_path):
    y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    p = [0.9, 0.8, 0.7, 0.4, 0.1, 0.2, 0.3, 0.5, 0.6, 0.65]
    roc, pr = roc_pr_curves(y, p)
    assert list(roc.columns) == ["fpr", "tpr", "threshold"]
    assert list(pr.columns) == ["recall", "precision", "threshold"]
    assert roc.iloc[0][["fpr", "tpr"]].tolist() == [0, 0] and np.isinf(roc["threshold"][0])
    assert roc.iloc[-1][["fpr", "tpr"]].tolist() == [1, 1]
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(21 / 24)
    assert pr.iloc[-1][["recall", "precision"]].tolist() == [0, 1]
    assert pr["precision"].iloc[0] == pytest.approx(0.4)  # everything called covid
    write_curves(roc, pr, tmp_path / "c" / "roc.csv", tmp_path / "c" / "pr.csv")
    back = pd.read_csv(tmp_path / "c" / "roc.csv")
    np.testing.assert_allclose(back[["fpr", "tpr"]], roc[["fpr", "tpr"]], atol=1e-6)
    assert np.isinf(back["threshold"][0])
    one_class = roc_pr_curves([0, 0], [0.2, 0.3])
    assert one_class[0].empty and one_class[1].empty


def test_evaluation_summary_intervals_contain_their_estimates(tmp_path):
    y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    p = [0.9, 0.8, 0.7, 0.4, 0.1, 0.2, 0.3, 0.5, 0.6, 0.65]
    patients = ["p1", "p1", "p2", "p3", "q1", "q2", "q3", "q3", "q4", "q5"]
    m = evaluation_summary(y, p, patients, n_resamples=300, seed=2, n_bins=5)
    base = compute_metrics(y, [int(v > 0.5) for v in p], p)
    assert {k: m[k] for k in base} == base
    assert m["n_patients"] == 8 and m["prevalence"] == pytest.approx(0.4)
    assert m["confidence"] == 0.95 and m["calibration"]["n_bins"] == 5
    assert set(m["intervals"]) == {
        "sensitivity",
        "specificity",
        "ppv",
        "npv",
        "accuracy",
        "roc_auc",
    }
    for name, entry in m["intervals"].items():
        assert 0 <= entry["lower"] <= entry["estimate"] <= entry["upper"] <= 1, name
    assert m["intervals"]["roc_auc"]["estimate"] == pytest.approx(21 / 24)
    assert m["intervals"]["sensitivity"]["estimate"] == m["sensitivity"]
    assert 0 < m["average_precision"] <= 1
    write_metrics(m, tmp_path / "m.json")
    assert json.loads((tmp_path / "m.json").read_text()) == m
    write_calibration(m["calibration"], tmp_path / "cal.csv")
    cal = pd.read_csv(tmp_path / "cal.csv")
    assert list(cal.columns) == ["bin", "lower", "upper", "count", "mean_p_covid", "fraction_covid"]
    assert cal["count"].sum() == 10


# --- intervals that account for patients, and stay honest at 0 %, 100 % and separation ----


def wilson_on(p, n_eff, z=Z95):
    """Wilson interval of a proportion p on a (fractional) sample size n_eff, by the formula."""
    centre = (p + z * z / (2 * n_eff)) / (1 + z * z / n_eff)
    half = z / (1 + z * z / n_eff) * math.sqrt(p * (1 - p) / n_eff + z * z / (4 * n_eff**2))
    return centre - half, centre + half


def test_repeated_patients_widen_a_proportion_interval():
    """13 images of 5 patients: P1 5 right, P2 5 wrong, P3 1 right, P4 1 right, P5 1 wrong.

    p = 7/13. Per patient x_i - p n_i = 30/13, -35/13, 6/13, 6/13, -7/13; their squares sum to
    2246/169, so the ratio-estimator variance is 2246/169/169 and the binomial one
    p(1-p)/n = 42/2197: deff = 2246/546 = 4.1136, n_eff = 13/deff = 3.1603. Wilson on it
    (z^2 = 3.8415, z^2/n_eff = 1.2155): centre (0.53846 + 0.60777) / 2.21554 = 0.51736,
    half-width 0.88464 sqrt(0.078639 + 0.096157) = 0.36986, so [0.1475, 0.8872], against the
    independent Wilson interval of 7/13, [0.2914, 0.7679].
    """
    outcomes = [1] * 5 + [0] * 5 + [1, 1, 0]
    groups = ["P1"] * 5 + ["P2"] * 5 + ["P3", "P4", "P5"]
    deff = design_effect(outcomes, groups)
    assert deff == pytest.approx(2246 / 546)
    out = clustered_proportion(outcomes, groups)
    assert out["estimate"] == pytest.approx(7 / 13) and out["n_patients"] == 5
    assert out["effective_n"] == pytest.approx(13 * 546 / 2246)
    assert (out["lower"], out["upper"]) == pytest.approx(wilson_on(7 / 13, 13 * 546 / 2246))
    assert (out["lower"], out["upper"]) == pytest.approx((0.1475, 0.8872), abs=5e-4)
    independent = wilson_interval(7, 13)
    assert independent == pytest.approx((0.2914, 0.7679), abs=5e-4)
    assert (out["independent_lower"], out["independent_upper"]) == independent
    assert out["lower"] < independent[0] and out["upper"] > independent[1]


def test_one_image_per_patient_gives_the_independent_wilson_interval():
    outcomes = [1] * 20 + [0] * 7
    out = clustered_proportion(outcomes, range(27))
    assert out["design_effect"] == 1.0
    assert (out["lower"], out["upper"]) == pytest.approx(wilson_interval(20, 27))
    # a design effect below 1 (patients more alike across than within) is clamped at 1
    alternating = [1, 0] * 10
    out = clustered_proportion(alternating, np.repeat(np.arange(10), 2))
    assert out["design_effect"] == 1.0
    assert (out["lower"], out["upper"]) == pytest.approx(wilson_interval(10, 20))


def test_all_right_counts_each_patient_once():
    """30/30 images of 19 patients: no variance to measure the clustering by, so the worst
    case: n_eff = 19 patients, Wilson 19/19 (lower 0.832, against 0.886 for 30 images)."""
    groups = [f"p{i % 19}" for i in range(30)]
    out = clustered_proportion([1] * 30, groups)
    assert out["design_effect"] == pytest.approx(30 / 19) and out["effective_n"] == 19
    assert out["lower"] == pytest.approx(wilson_interval(19, 19)[0]) and out["upper"] == 1.0
    assert round(out["lower"], 3) == 0.832 and round(out["independent_lower"], 3) == 0.886
    nothing = clustered_proportion([0] * 30, groups)
    assert nothing["lower"] == 0.0 and nothing["upper"] == pytest.approx(1 - out["lower"])
    empty = clustered_proportion([], [])
    assert empty["estimate"] is None and empty["lower"] is None and empty["trials"] == 0


def test_clustered_proportion_intervals_of_each_proportion():
    y = [1, 1, 1, 0, 0, 0, 0]
    yhat = [1, 1, 0, 0, 0, 1, 1]
    g = ["a", "a", "b", "c", "c", "d", "e"]
    out = clustered_proportion_intervals(y, yhat, g)
    counts = {name: (e["successes"], e["trials"]) for name, e in out.items()}
    assert counts == {
        "sensitivity": (2, 3),
        "specificity": (2, 4),
        "ppv": (2, 4),
        "npv": (2, 3),
        "accuracy": (4, 7),
    }
    assert out["sensitivity"]["n_patients"] == 2 and out["ppv"]["n_patients"] == 3


def newcombe_by_polynomial(theta, m, n, z=Z95):
    """Newcombe (2006) Method 5 bounds as the real roots in [0, 1] of the quartic
    mn (t - theta)^2 (2 - t)(1 + t) = z^2 t (1 - t) [(2 - t)(1 + t) + N (1 - t)(1 + t)
    + N t (2 - t)], N = (m + n)/2 - 1, multiplied out with numpy's polynomial algebra."""
    P = np.polynomial.Polynomial
    t = P([0, 1])
    nstar = (m + n) / 2 - 1
    left = m * n * (t - theta) ** 2 * (2 - t) * (1 + t)
    right = z * z * t * (1 - t) * ((2 - t) * (1 + t) + nstar * (1 - t) * (1 + t))
    right = right + z * z * t * (1 - t) * nstar * t * (2 - t)
    roots = (left - right).roots()
    real = sorted(r.real for r in roots if abs(r.imag) < 1e-9 and -1e-9 <= r.real <= 1 + 1e-9)
    return real


def test_perfect_separation_on_30_plus_30_has_a_lower_bound_below_1():
    """The percentile bootstrap collapses to [1, 1]; Newcombe's interval gives 0.933."""
    y = np.r_[np.ones(30), np.zeros(30)].astype(int)
    s = np.r_[np.linspace(0.6, 0.99, 30), np.linspace(0.01, 0.4, 30)]
    out = auc_interval(y, s, np.arange(60), n_resamples=500, seed=0)
    assert out["estimate"] == 1.0 and out["upper"] == 1.0
    assert out["lower"] < 1 and round(out["lower"], 3) == 0.933
    roots = newcombe_by_polynomial(1.0, 30, 30)  # 1.0 itself is a root, the bound below it
    assert out["lower"] == pytest.approx(max(r for r in roots if r < 0.999), abs=1e-9)
    assert (out["bootstrap"]["lower"], out["bootstrap"]["upper"]) == (1.0, 1.0)
    # 3 images per patient: 30 + 30 patients, the same interval; as images it would be narrower
    g3 = np.repeat(np.arange(60), 3)
    three = auc_interval(np.repeat(y, 3), np.repeat(s, 3), g3, n_resamples=100, seed=0)
    assert (three["n_covid_patients"], three["n_non_covid_patients"]) == (30, 30)
    assert three["lower"] == pytest.approx(out["lower"])
    assert newcombe_auc_interval(1.0, 90, 90)[0] > out["lower"]


@pytest.mark.parametrize(("theta", "m", "n"), [(0.75, 10, 12), (0.5, 5, 5), (0.9, 30, 19)])
def test_newcombe_interval_solves_its_quartic(theta, m, n):
    lower, upper = newcombe_auc_interval(theta, m, n)
    roots = newcombe_by_polynomial(theta, m, n)
    assert lower == pytest.approx(max(r for r in roots if r < theta), abs=1e-9)
    assert upper == pytest.approx(min(r for r in roots if r > theta), abs=1e-9)
    assert newcombe_auc_interval(0.0, m, n) == pytest.approx(
        (0.0, 1 - newcombe_auc_interval(1.0, n, m)[0])
    )


def test_predictions_are_stored_at_full_precision(tmp_path):
    from cxr.metrics import read_predictions, table_summary, write_predictions

    p = np.array([1 / 3, 0.1 + 0.2, 0.123456789012345678, 1e-17, 1 - 1e-16, 0.5, 0.7])
    frame = pd.DataFrame(
        {
            "path": [f"x{i}.png" for i in range(7)],
            "patient_id": ["007", "007", "b", "c", "d", "e", "f"],
            "label": ["covid", "covid", "covid", "non_covid", "non_covid", "covid", "non_covid"],
            "predicted": "covid",
            "p_covid": p,
        }
    )
    write_predictions(frame, tmp_path / "p.csv")
    back = read_predictions(tmp_path / "p.csv")
    assert back["p_covid"].to_numpy().tobytes() == p.tobytes()  # bit for bit
    assert back["patient_id"].tolist()[:2] == ["007", "007"]  # ids stay strings
    a = table_summary(frame, n_resamples=20, seed=0)
    assert table_summary(back, n_resamples=20, seed=0) == a
