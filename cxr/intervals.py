"""Uncertainty of the evaluation: Wilson intervals of proportions and a patient-clustered
bootstrap interval of the ROC AUC.

Split from :mod:`cxr.metrics` (which uses both in :func:`cxr.metrics.evaluation_summary`), so
each module holds one concern: this one the statistics of intervals, ``metrics`` the counts,
curves, calibration and their files. Pure numpy / statsmodels / scikit-learn; touches no file.

- Every proportion (sensitivity, specificity, PPV, NPV, accuracy; :data:`PROPORTIONS`) gets a
  Wilson score interval (:func:`wilson_interval`, :func:`proportion_intervals`).
- ROC AUC gets a patient-clustered, class-stratified percentile bootstrap interval
  (:func:`clustered_bootstrap_auc`): patients are resampled, never images, so several images
  of one patient count as the one observation they are.

References
----------
- Wilson (1927), JASA 22:209; Brown, Cai & DasGupta (2001), Statistical Science 16:101
  (why Wilson, not the Wald interval, for small n); statsmodels ``proportion_confint``.
- Cluster (patient-level) bootstrap: Field & Welsh (2007), JRSS B 69:369; stratified
  bootstrap of the AUC as pROC's ``ci.auc`` (Robin et al. 2011, BMC Bioinformatics 12:77).
- Hanley & McNeil (1982), Radiology 143:29 (standard error of the AUC, used in the tests).
"""

from __future__ import annotations

import numpy as np

#: Proportions with a Wilson interval: name -> (numerator cells, denominator cells) of the
#: 2x2 confusion matrix, covid the positive class.
PROPORTIONS = {
    "sensitivity": (("tp",), ("tp", "fn")),
    "specificity": (("tn",), ("tn", "fp")),
    "ppv": (("tp",), ("tp", "fp")),
    "npv": (("tn",), ("tn", "fn")),
    "accuracy": (("tp", "tn"), ("tp", "tn", "fp", "fn")),
}


def check_confidence(confidence: float) -> float:
    """``confidence`` as a float; ValueError unless it is in (0, 1) (a two-sided level)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(confidence)


def wilson_interval(successes: int, trials: int, confidence: float = 0.95):
    """Wilson score interval of a binomial proportion ``successes / trials``.

    Parameters
    ----------
    successes, trials : ints, ``0 <= successes <= trials``.
    confidence : two-sided level in (0, 1), e.g. 0.95.

    Returns
    -------
    ``(lower, upper)`` floats in [0, 1], or ``(None, None)`` when ``trials == 0`` (no data,
    no interval). 30 / 30 at 0.95 gives ``(0.8865, 1.0)``.

    Raises
    ------
    ValueError
        If the counts are negative or ``successes > trials``, or ``confidence`` is not in (0, 1).
    """
    from statsmodels.stats.proportion import proportion_confint

    confidence = check_confidence(confidence)
    successes, trials = int(successes), int(trials)
    if trials < 0 or not 0 <= successes <= max(trials, 0):
        raise ValueError(f"need 0 <= successes <= trials, got {successes} / {trials}")
    if trials == 0:
        return None, None
    lower, upper = proportion_confint(successes, trials, alpha=1 - confidence, method="wilson")
    # exact ends where the formula gives them up to rounding (30/30 -> upper 1.0, not 1 - 1e-16)
    lower = 0.0 if successes == 0 else float(max(0.0, lower))
    upper = 1.0 if successes == trials else float(min(1.0, upper))
    return lower, upper


def proportion_intervals(confusion, confidence: float = 0.95) -> dict:
    """Sensitivity, specificity, PPV, NPV and accuracy with Wilson intervals.

    Parameters
    ----------
    confusion : 2x2 counts, rows true, columns predicted, in :data:`cxr.CLASSES` order
        (``[[TN, FP], [FN, TP]]``), as ``compute_metrics(...)["confusion_matrix"]``.
    confidence : two-sided level in (0, 1).

    Returns
    -------
    dict name -> ``{estimate, lower, upper, successes, trials, method}`` for each name in
    :data:`PROPORTIONS`; ``estimate``, ``lower`` and ``upper`` are None when ``trials`` is 0.
    """
    cm = np.asarray(confusion, dtype=int)
    if cm.shape != (2, 2) or (cm < 0).any():
        raise ValueError(f"confusion must be a 2x2 matrix of counts, got {cm.tolist()}")
    cells = dict(zip(("tn", "fp", "fn", "tp"), (int(v) for v in cm.ravel()), strict=True))
    out = {}
    for name, (num, den) in PROPORTIONS.items():
        k = sum(cells[c] for c in num)
        n = sum(cells[c] for c in den)
        lower, upper = wilson_interval(k, n, confidence)
        out[name] = {
            "estimate": k / n if n else None,
            "lower": lower,
            "upper": upper,
            "successes": k,
            "trials": n,
            "method": "wilson",
        }
    return out


def _strata(y_true: np.ndarray, codes: np.ndarray, n_groups: int) -> list[np.ndarray]:
    """Group codes split by class: groups whose images are all covid, all non_covid, mixed."""
    pos = np.bincount(codes, weights=y_true, minlength=n_groups)
    size = np.bincount(codes, minlength=n_groups)
    ids = np.arange(n_groups)
    return [s for s in (ids[pos == size], ids[pos == 0], ids[(pos > 0) & (pos < size)]) if len(s)]


def _weighted_auc(y: np.ndarray, level: np.ndarray, weight: np.ndarray) -> float:
    """Mann-Whitney AUC with image weights (a weight k counts the image k times).

    ``level``: the rank of each image's score among the distinct scores (ties share one), so
    ``P(score_pos > score_neg) + P(tie) / 2`` is summed per score level in O(N). Equal to
    ``roc_auc_score(y, s, sample_weight=weight)``.
    """
    n_levels = int(level.max()) + 1
    pos = np.bincount(level, weights=weight * (y == 1), minlength=n_levels)
    neg = np.bincount(level, weights=weight * (y == 0), minlength=n_levels)
    below = np.cumsum(neg) - neg  # negative weight strictly below each level
    return float((pos * (below + neg / 2)).sum() / (pos.sum() * neg.sum()))


def bootstrap_aucs(y_true, scores, groups, n_resamples: int, seed: int) -> np.ndarray:
    """The ``(n_resamples,)`` resampled AUCs behind :func:`clustered_bootstrap_auc`.

    Same resampling (patients within class strata, with replacement; images weighted by how
    often their patient was drawn); ``y_true`` must hold both classes.
    """
    y = np.asarray(y_true).astype(int)
    s = np.asarray(scores, dtype=float)
    _, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    n_groups = int(codes.max()) + 1
    strata = _strata(y, codes, n_groups)
    _, level = np.unique(s, return_inverse=True)  # rank of each image's score, ties shared
    rng = np.random.default_rng(seed)
    aucs = np.empty(n_resamples)
    for r in range(n_resamples):
        counts = np.zeros(n_groups)
        for stratum in strata:
            draw = rng.integers(0, len(stratum), len(stratum))
            counts += np.bincount(stratum[draw], minlength=n_groups)
        aucs[r] = _weighted_auc(y, level, counts[codes])
    return aucs


def clustered_bootstrap_auc(
    y_true,
    scores,
    groups,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """ROC AUC with a patient-clustered, class-stratified percentile bootstrap interval.

    Each resample draws, with replacement, as many patients as there are from each stratum
    (patients whose images are all covid; all non_covid; mixed, if any) and takes all the
    images of every drawn patient, as often as the patient was drawn (as image weights). So
    the class mix of patients is fixed, every resample has both classes, and several images of
    one patient move together: a model is not credited with more evidence than there are
    patients. The interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
    quantiles of the resampled AUCs (numpy's linear interpolation).

    Parameters
    ----------
    y_true : ``(N,)`` ints in ``{0, 1}``, 1 = covid.
    scores : ``(N,)`` floats, e.g. ``p_covid``.
    groups : ``(N,)`` patient ids (any hashable); one id per image gives the ordinary
        stratified bootstrap.
    n_resamples : int >= 1.
    seed : seed of ``numpy.random.default_rng``; the same inputs and seed give the same
        interval.
    confidence : two-sided level in (0, 1).

    Returns
    -------
    dict ``{estimate, lower, upper, method, n_resamples, seed, n_patients, n_images}``;
    ``estimate``, ``lower`` and ``upper`` are None when ``y_true`` has one class only.

    Raises
    ------
    ValueError
        If the arrays differ in length or are empty, or ``n_resamples < 1``.
    """
    from sklearn.metrics import roc_auc_score

    confidence = check_confidence(confidence)
    y = np.asarray(y_true).astype(int)
    s = np.asarray(scores, dtype=float)
    g = np.asarray(groups)
    if y.ndim != 1 or len(y) == 0 or s.shape != y.shape or g.shape != y.shape:
        raise ValueError(f"need equal-length 1-d arrays, got {y.shape}, {s.shape}, {g.shape}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    n_groups = len(np.unique(g.astype(str)))
    out = {
        "estimate": None,
        "lower": None,
        "upper": None,
        "method": "patient-clustered stratified percentile bootstrap",
        "n_resamples": int(n_resamples),
        "seed": int(seed),
        "n_patients": n_groups,
        "n_images": len(y),
    }
    if len(np.unique(y)) < 2:
        return out
    out["estimate"] = float(roc_auc_score(y, s))
    aucs = bootstrap_aucs(y, s, g, n_resamples, seed)
    lower, upper = np.quantile(aucs, [(1 - confidence) / 2, (1 + confidence) / 2])
    out["lower"], out["upper"] = float(lower), float(upper)
    return out
