"""Uncertainty of the evaluation: intervals of proportions and of the ROC AUC that account for
several images per patient, and stay honest at 0 %, 100 % and perfect separation.

Split from :mod:`cxr.metrics` (which uses both in :func:`cxr.metrics.evaluation_summary`), so
each module holds one concern: this one the statistics of intervals, ``metrics`` the counts,
curves, calibration and their files. Pure numpy / scipy / statsmodels / scikit-learn; touches
no file.

- Every proportion (sensitivity, specificity, PPV, NPV, accuracy; :data:`PROPORTIONS`) gets a
  Wilson score interval on the Kish effective sample size ``n / deff``
  (:func:`clustered_proportion`, :func:`clustered_proportion_intervals`): ``deff`` is the
  design effect of the patient clusters, the variance of the proportion as a ratio estimator
  over patients divided by its binomial variance (Rao & Scott 1992), never below 1 (so the
  interval is never narrower than the independent Wilson interval, :func:`wilson_interval`;
  one image per patient gives exactly that interval). When the proportion is 0 or 1 the
  variance says nothing about clustering, so the worst case is taken: every patient counts
  once (``deff = n / patients``; Kish's ``1 + (m - 1) rho`` at ``rho = 1``).
- ROC AUC gets Newcombe's (2006) score interval (his Method 5: the Hanley-McNeil variance
  with both sample sizes replaced by their mean, inverted as a score interval), on the
  numbers of *patients* of each class, not images (:func:`newcombe_auc_interval`,
  :func:`auc_interval`). Unlike a percentile bootstrap, it does not collapse to [1, 1] at
  perfect separation: 30 + 30 perfectly separated patients give a lower bound of 0.933.
  The patient-clustered, class-stratified percentile bootstrap
  (:func:`clustered_bootstrap_auc`) is kept beside it as a cross-check.

References
----------
- Wilson (1927), JASA 22:209; Brown, Cai & DasGupta (2001), Statistical Science 16:101
  (why Wilson, not the Wald interval, for small n); statsmodels ``proportion_confint``.
- Kish (1965), Survey Sampling, Wiley, sections 5.4 and 8.2 (design effect, effective sample
  size); Rao & Scott (1992), Biometrics 48:577, "A simple method for the analysis of
  clustered binary data" (divide successes and trials by the design effect of the ratio
  estimator); Korn & Graubard (1998), Survey Methodology 24:193 (intervals of proportions on
  the effective sample size).
- Newcombe (2006), Statistics in Medicine 25:559-573, "Confidence intervals for an effect size
  measure based on the Mann-Whitney statistic. Part 2: asymptotic methods and evaluation",
  Methods 4 and 5; Hanley & McNeil (1982), Radiology 143:29 (the variance it modifies).
- Cluster (patient-level) bootstrap: Field & Welsh (2007), JRSS B 69:369; stratified
  bootstrap of the AUC as pROC's ``ci.auc`` (Robin et al. 2011, BMC Bioinformatics 12:77).
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


def _group_codes(groups) -> np.ndarray:
    """Integer codes ``0..G-1`` of patient ids (compared as strings)."""
    return np.unique(np.asarray(groups).astype(str), return_inverse=True)[1].reshape(-1)


def design_effect(outcomes, groups) -> float:
    """Design effect of a proportion over patient clusters (Kish 1965; Rao & Scott 1992).

    Parameters
    ----------
    outcomes : ``(n,)`` 0/1 ints or bools, one per image in the proportion's denominator.
    groups : ``(n,)`` patient ids.

    Returns
    -------
    float >= 1. With ``p = k / n``, ``x_i`` successes and ``n_i`` images of patient ``i``: the
    ratio-estimator variance ``sum_i (x_i - p n_i)^2 / n^2`` divided by the binomial variance
    ``p (1 - p) / n``, clamped at 1 (so an interval on ``n / deff`` is never narrower than the
    independent one; one image per patient gives exactly 1). When ``p`` is 0 or 1 (no
    variance to measure the clustering by): ``n / patients``, each patient counted once.

    Raises
    ------
    ValueError on empty or unequal inputs, or outcomes other than 0 / 1.
    """
    x = np.asarray(outcomes).astype(int)
    if x.ndim != 1 or len(x) == 0 or np.asarray(groups).shape != x.shape:
        raise ValueError(f"need equal-length non-empty 1-d outcomes and groups, got {x.shape}")
    if not np.isin(x, (0, 1)).all():
        raise ValueError("outcomes must be 0 or 1")
    codes = _group_codes(groups)
    n, k = len(x), int(x.sum())
    n_groups = int(codes.max()) + 1
    if k in (0, n):
        return n / n_groups
    p = k / n
    xi = np.bincount(codes, weights=x, minlength=n_groups)
    ni = np.bincount(codes, minlength=n_groups)
    var_cluster = float(((xi - p * ni) ** 2).sum()) / n**2
    return max(1.0, var_cluster / (p * (1 - p) / n))


def clustered_proportion(outcomes, groups, confidence: float = 0.95) -> dict:
    """A proportion with a Wilson interval on the Kish effective sample size.

    Parameters
    ----------
    outcomes : ``(n,)`` 0/1, one per image of the denominator (e.g. for sensitivity: 1 where
        a covid image was called covid); may be empty.
    groups : ``(n,)`` patient ids of those images.
    confidence : two-sided level in (0, 1).

    Returns
    -------
    dict ``{estimate, lower, upper, successes, trials, n_patients, design_effect,
    effective_n, independent_lower, independent_upper, method}``: ``lower, upper`` the
    Wilson interval of ``p = successes / trials`` on ``effective_n = trials /
    design_effect`` (:func:`design_effect`) effective images; ``independent_*`` the Wilson
    interval treating every image as independent (:func:`wilson_interval`). Estimates and
    bounds are None when ``trials`` is 0.
    """
    from statsmodels.stats.proportion import proportion_confint

    confidence = check_confidence(confidence)
    x = np.asarray(outcomes).astype(int).reshape(-1)
    g = np.asarray(groups).reshape(-1)
    k, n = int(x.sum()), len(x)
    out = {
        "estimate": None,
        "lower": None,
        "upper": None,
        "successes": k,
        "trials": n,
        "n_patients": int(len(np.unique(g.astype(str)))),
        "design_effect": None,
        "effective_n": None,
        "independent_lower": None,
        "independent_upper": None,
        "method": "wilson on the effective sample size (patient design effect)",
    }
    if n == 0:
        return out
    deff = design_effect(x, g)
    n_eff = n / deff
    p = k / n
    lower, upper = proportion_confint(p * n_eff, n_eff, alpha=1 - confidence, method="wilson")
    ind = wilson_interval(k, n, confidence)
    out.update(
        estimate=p,
        lower=0.0 if k == 0 else float(max(0.0, lower)),
        upper=1.0 if k == n else float(min(1.0, upper)),
        design_effect=float(deff),
        effective_n=float(n_eff),
        independent_lower=ind[0],
        independent_upper=ind[1],
    )
    return out


def clustered_proportion_intervals(y_true, y_pred, groups, confidence: float = 0.95) -> dict:
    """Sensitivity, specificity, PPV, NPV and accuracy, each with :func:`clustered_proportion`.

    Parameters
    ----------
    y_true, y_pred : ``(N,)`` ints in ``{0, 1}``, 1 = covid (the positive class).
    groups : ``(N,)`` patient ids.
    confidence : two-sided level in (0, 1).

    Returns
    -------
    dict name -> :func:`clustered_proportion` dict, for each name in :data:`PROPORTIONS`
    (sensitivity over the covid images, PPV over the images called covid, ...).
    """
    y = np.asarray(y_true).astype(int)
    yhat = np.asarray(y_pred).astype(int)
    g = np.asarray(groups)
    if y.shape != yhat.shape or g.shape != y.shape or y.ndim != 1:
        raise ValueError(f"need equal-length 1-d arrays, got {y.shape}, {yhat.shape}, {g.shape}")
    correct = y == yhat
    rows = {
        "sensitivity": y == 1,
        "specificity": y == 0,
        "ppv": yhat == 1,
        "npv": yhat == 0,
        "accuracy": np.ones_like(correct),
    }
    return {
        name: clustered_proportion(correct[rows[name]], g[rows[name]], confidence)
        for name in PROPORTIONS
    }


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


def newcombe_auc_interval(theta: float, m: float, n: float, confidence: float = 0.95):
    """Newcombe's (2006) Method 5 score interval of an AUC (a Mann-Whitney probability).

    The interval is every ``t`` with ``(t - theta)^2 <= z^2 V(t)``, ``V`` the Hanley-McNeil
    variance with both sample sizes replaced by their mean (Newcombe's Method 4):
    ``V(t) = t (1 - t) [1 + (N - 1)((1 - t) / (2 - t) + t / (1 + t))] / (m n)``,
    ``N = (m + n) / 2``. The roots are bracketed on a grid and refined with
    ``scipy.optimize.brentq``. At ``theta = 1`` the upper bound is 1 and the lower bound is
    below 1 (30 + 30: 0.933), unlike a percentile bootstrap.

    Parameters
    ----------
    theta : the AUC estimate, in [0, 1].
    m, n : sample sizes of the two classes (here: patients), each >= 1.
    confidence : two-sided level in (0, 1).

    Returns
    -------
    ``(lower, upper)`` floats in [0, 1].

    Raises
    ------
    ValueError if ``theta`` is outside [0, 1] or a sample size is below 1.
    """
    from scipy.optimize import brentq
    from scipy.stats import norm

    confidence = check_confidence(confidence)
    if not 0 <= theta <= 1 or m < 1 or n < 1:
        raise ValueError(f"need 0 <= theta <= 1 and m, n >= 1, got {theta}, {m}, {n}")
    z2 = norm.ppf((1 + confidence) / 2) ** 2
    nstar = (m + n) / 2 - 1

    def f(t):
        var = t * (1 - t) * (1 + nstar * (1 - t) / (2 - t) + nstar * t / (1 + t)) / (m * n)
        return (t - theta) ** 2 - z2 * var

    grid = np.linspace(0.0, 1.0, 4001)
    values = np.array([f(t) for t in grid])
    lower = upper = theta
    below = np.flatnonzero((grid[:-1] < theta) & (values[:-1] > 0) & (values[1:] <= 0))
    if theta > 0 and len(below):
        i = below[-1]
        lower = brentq(f, grid[i], grid[i + 1]) if values[i + 1] < 0 else grid[i + 1]
    elif theta > 0:
        lower = 0.0
    above = np.flatnonzero((grid[1:] > theta) & (values[:-1] <= 0) & (values[1:] > 0))
    if theta < 1 and len(above):
        j = above[0]
        upper = brentq(f, grid[j], grid[j + 1]) if values[j] < 0 else grid[j]
    elif theta < 1:
        upper = 1.0
    return float(min(lower, theta)), float(max(upper, theta))


def auc_interval(
    y_true,
    scores,
    groups,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """ROC AUC with Newcombe's score interval on patient counts, and the bootstrap beside it.

    The estimate is the image-level AUC (``roc_auc_score``). The interval is
    :func:`newcombe_auc_interval` with ``m``, ``n`` the numbers of distinct patients among the
    covid and the non_covid images: several images of one patient count as one observation
    (a patient with images in both classes counts in both). ``bootstrap`` holds the
    :func:`clustered_bootstrap_auc` interval as a cross-check (it collapses to [1, 1] at
    perfect separation; this interval does not).

    Parameters
    ----------
    As :func:`clustered_bootstrap_auc`.

    Returns
    -------
    dict ``{estimate, lower, upper, method, n_patients, n_covid_patients,
    n_non_covid_patients, n_images, n_resamples, seed, bootstrap: {lower, upper, method}}``;
    estimate and bounds None when ``y_true`` has one class only.
    """
    boot = clustered_bootstrap_auc(y_true, scores, groups, n_resamples, seed, confidence)
    y = np.asarray(y_true).astype(int)
    g = np.asarray(groups).astype(str)
    m, n = len(np.unique(g[y == 1])), len(np.unique(g[y == 0]))
    out = {
        "estimate": boot["estimate"],
        "lower": None,
        "upper": None,
        "method": "Newcombe (2006) score interval on patient counts",
        "n_patients": boot["n_patients"],
        "n_covid_patients": int(m),
        "n_non_covid_patients": int(n),
        "n_images": boot["n_images"],
        "n_resamples": boot["n_resamples"],
        "seed": boot["seed"],
        "bootstrap": {k: boot[k] for k in ("lower", "upper", "method")},
    }
    if boot["estimate"] is not None:
        out["lower"], out["upper"] = newcombe_auc_interval(boot["estimate"], m, n, confidence)
    return out
