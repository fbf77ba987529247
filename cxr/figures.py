"""Report figures: training curves, confusion matrices, classification report, test samples;
ROC / precision-recall curves and reliability diagrams (with intervals). The figures of the
checks (Grad-CAM, shortcut audit, tests outside the split) are in :mod:`cxr.audit_figures`.

Owned by the model half. matplotlib only, through ``matplotlib.figure.Figure`` with the Agg
canvas (no pyplot, no display, no global figure state); no TensorFlow. Each ``*_figure``
function returns a Figure; :func:`save_png` writes it to the path it is given (temporary name,
then rename). Touches nothing else.

References
----------
- matplotlib, "Embedding in a web application server" (Figure without pyplot):
  https://matplotlib.org/stable/gallery/user_interfaces/web_application_server_sgskip.html
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from cxr import CLASSES  # noqa: E402
from cxr.io import atomic_path  # noqa: E402
from cxr.metrics import format_interval  # noqa: E402

WRONG = "tab:red"
RIGHT = "tab:green"


def save_png(fig: Figure, path, dpi: int) -> None:
    """Save ``fig`` as PNG at ``dpi`` (dots per inch) to ``path``, atomically.

    Raises
    ------
    ValueError
        If ``dpi < 1``.
    """
    if dpi < 1:
        raise ValueError(f"dpi must be >= 1, got {dpi}")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")


def curves_figure(history: pd.DataFrame, title: str) -> Figure:
    """Accuracy and loss per epoch, training vs validation, side by side.

    Parameters
    ----------
    history : DataFrame with columns ``epoch, loss, accuracy, val_loss, val_accuracy``
        (a ``reports/history/*.csv``), at least one row.
    title : figure title, e.g. ``"model_01"``.

    Raises
    ------
    ValueError
        If ``history`` is empty or a column is missing.
    """
    needed = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    missing = [c for c in needed if c not in history.columns]
    if missing or history.empty:
        raise ValueError(f"history needs rows and columns {needed}; missing {missing}")
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, key, label in ((axes[0], "accuracy", "Accuracy"), (axes[1], "loss", "Loss")):
        ax.plot(history["epoch"], history[key], "o-", label="training")
        ax.plot(history["epoch"], history[f"val_{key}"], "s--", label="validation")
        ax.set_xlabel("Epoch")
        ax.set_ylabel(label + (" (categorical cross-entropy)" if key == "loss" else ""))
        ax.set_title(f"{label}: training vs validation")
        ax.set_xticks(history["epoch"])
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylim(0, 1.02)
    fig.suptitle(f"{title}: {len(history)} epoch(s)")
    return fig


def confusion_figure(metrics: dict, title: str) -> Figure:
    """Confusion matrix with counts and row percentages, class names on both axes.

    Parameters
    ----------
    metrics : a metrics dict from :func:`cxr.metrics.compute_metrics` (``confusion_matrix``
        rows true, columns predicted; ``classes``; ``accuracy``, ``sensitivity``,
        ``specificity``).
    title : e.g. ``"model_03 on test"``.
    """
    cm = np.asarray(metrics["confusion_matrix"], dtype=int)
    classes = metrics.get("classes", list(CLASSES))
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(int(cm.max()), 1))
    fig.colorbar(im, ax=ax, label="Images")
    rows = cm.sum(axis=1, keepdims=True)
    pct = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0) * 100
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            color = "white" if cm[i, j] > cm.max() / 2 else "black"
            ax.text(j, i, f"{cm[i, j]}\n({pct[i, j]:.0f}%)", ha="center", va="center", color=color)
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(f"{title} (n={int(cm.sum())})\n" + _scores_line(metrics), fontsize=10)
    return fig


def _interval_text(metrics: dict, name: str) -> str:
    """``"0.750 [0.301, 0.954]"`` from ``metrics["intervals"][name]``, else the point value."""
    entry = metrics.get("intervals", {}).get(name)
    if entry is not None:
        return format_interval(entry)
    value = metrics.get(name)
    return "n/a" if value is None else f"{value:.3f}"


def _scores_line(metrics: dict) -> str:
    """Accuracy, sensitivity and specificity, with their intervals when the metrics have them."""
    parts = [f"{k} {_interval_text(metrics, k)}" for k in ("accuracy", "sensitivity")]
    line = ", ".join(parts) + f",\nspecificity {_interval_text(metrics, 'specificity')}"
    if "confidence" in metrics:
        line += f" ({metrics['confidence']:.0%} intervals)"
    return line


def report_table_figure(metrics: dict, title: str) -> Figure:
    """The classification report as a table: precision, recall, F1, specificity, support.

    Rows: each class, macro average, weighted average, then accuracy (and ROC AUC when the
    metrics have it). ``metrics`` as in :func:`confusion_figure`.
    """
    classes = metrics.get("classes", list(CLASSES))
    columns = ["precision", "recall (sensitivity)", "f1-score", "specificity", "support"]
    cells, labels = [], []
    for name in [*classes, "macro avg", "weighted avg"]:
        row = metrics[name]
        spec = f"{row['specificity']:.3f}" if "specificity" in row else ""
        cells.append(
            [
                f"{row['precision']:.3f}",
                f"{row['recall']:.3f}",
                f"{row['f1-score']:.3f}",
                spec,
                str(int(row["support"])),
            ]
        )
        labels.append(name)
    cells.append(["", "", f"{metrics['accuracy']:.3f}", "", str(int(metrics["n"]))])
    labels.append("accuracy")
    if metrics.get("roc_auc") is not None:
        cells.append(["", "", f"{metrics['roc_auc']:.3f}", "", str(int(metrics["n"]))])
        labels.append("ROC AUC (p_covid)")
    intervals = metrics.get("intervals")
    rows_below = len(intervals) + 1 if intervals else 0
    fig = Figure(
        figsize=(8, 0.3 * (len(cells) + 1) + 0.5 + 0.3 * rows_below + 0.6 * bool(rows_below))
    )
    axes = fig.subplots(
        2 if intervals else 1,
        1,
        height_ratios=[len(cells) + 1, rows_below] if intervals else None,
        squeeze=False,
    )[:, 0]
    ax = axes[0]
    ax.axis("off")
    table = ax.table(
        cellText=cells,
        rowLabels=labels,
        colLabels=columns,
        cellLoc="center",
        bbox=[0, 0, 1, 1],
    )
    table.auto_set_font_size(False)
    table.set_fontsize(10)
    ax.set_title(f"Classification report: {title} (positive class: {classes[1]})")
    if intervals:
        _intervals_table(axes[1], metrics)
    return fig


#: Row labels of the intervals table, in order.
INTERVAL_LABELS = {
    "sensitivity": "sensitivity (recall covid)",
    "specificity": "specificity (recall non_covid)",
    "ppv": "PPV (precision covid)",
    "npv": "NPV (precision non_covid)",
    "accuracy": "accuracy",
    "roc_auc": "ROC AUC (p_covid)",
}


def _intervals_table(ax, metrics: dict) -> None:
    """Estimate, interval and counts (images and patients) per entry of
    ``metrics["intervals"]``."""
    level = f"{metrics.get('confidence', 0.95):.0%}"
    cells, labels = [], []
    for name, entry in metrics["intervals"].items():
        est = entry.get("estimate")
        lo, hi = entry.get("lower"), entry.get("upper")
        if "trials" in entry:
            basis = f"{entry['successes']} / {entry['trials']}"
            if entry.get("n_patients") is not None:
                basis += f", {entry['n_patients']} patients"
        elif entry.get("n_covid_patients") is not None:
            basis = f"{entry['n_covid_patients']} + {entry['n_non_covid_patients']} patients"
        else:
            basis = f"{entry['n_patients']} patients, {entry['n_resamples']} resamples"
        cells.append(
            [
                "n/a" if est is None else f"{est:.3f}",
                "n/a" if lo is None else f"[{lo:.3f}, {hi:.3f}]",
                basis,
            ]
        )
        labels.append(INTERVAL_LABELS.get(name, name))
    ax.axis("off")
    table = ax.table(
        cellText=cells,
        rowLabels=labels,
        colLabels=["estimate", f"{level} interval", "basis"],
        cellLoc="center",
        bbox=[0, 0, 1, 1],
    )
    table.auto_set_font_size(False)
    table.set_fontsize(10)
    ax.set_title(f"With {level} intervals (patients counted, not images)")


def samples_figure(
    images: np.ndarray, predictions: pd.DataFrame, n: int, seed: int, title: str
) -> Figure:
    """A grid of ``n`` random test images with true and predicted labels; wrong ones in red.

    Parameters
    ----------
    images : ``(N, S, S, 3) uint8`` RGB, the test store's images.
    predictions : DataFrame of ``N`` rows in store order with ``label``, ``predicted``,
        ``p_covid`` (a ``reports/predictions/*.csv``).
    n : number of images shown (all of them if the split has fewer), in up to 5 columns.
    seed : which images: ``numpy.random.default_rng(seed).choice(N, n, replace=False)``.
    title : figure title.

    Raises
    ------
    ValueError
        If ``images`` and ``predictions`` differ in length, or either is empty.
    """
    if len(images) != len(predictions) or len(images) == 0:
        raise ValueError(f"{len(images)} images but {len(predictions)} predictions")
    n = min(n, len(images))
    pick = np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))
    ncols = min(5, n)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(2.6 * ncols, 3.0 * nrows + 0.6))
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax in axes:
        ax.axis("off")
    wrong_total = 0
    for ax, i in zip(axes, pick, strict=False):
        row = predictions.iloc[i]
        wrong = row["label"] != row["predicted"]
        wrong_total += int(wrong)
        ax.imshow(images[i])
        ax.set_title(
            f"true: {row['label']}\npred: {row['predicted']} (p_covid {row['p_covid']:.2f})",
            color=WRONG if wrong else RIGHT,
            fontsize=9,
        )
    fig.suptitle(f"{title}: {n} random test images (seed {seed}), {wrong_total} wrong in red")
    return fig


def roc_pr_figure(
    roc: pd.DataFrame, pr: pd.DataFrame, metrics: dict, title: str, note: str | None = None
) -> Figure:
    """ROC curve (left) and precision-recall curve (right), AUC with its interval in the legend.

    Parameters
    ----------
    roc, pr : tables of :func:`cxr.metrics.roc_pr_curves` (``fpr, tpr``; ``recall,
        precision``); empty when the split holds one class (then the axes say so).
    metrics : an evaluation dict of :func:`cxr.metrics.evaluation_summary` (``intervals``,
        ``average_precision``, ``prevalence``, ``n``, ``n_patients``, ``confidence``).
    title : e.g. ``"model_03 on test"``.
    note : a second title line, e.g. how many listed images did not load
        (:func:`cxr.external.failure_note`); None: none.
    """
    fig = Figure(figsize=(10, 4.6))
    ax_roc, ax_pr = fig.subplots(1, 2)
    level = f"{metrics.get('confidence', 0.95):.0%}"
    auc = metrics.get("intervals", {}).get("roc_auc")
    if roc.empty:
        for ax in (ax_roc, ax_pr):
            ax.text(0.5, 0.5, "one class only: no curve", ha="center", va="center")
    else:
        ax_roc.plot(roc["fpr"], roc["tpr"], lw=2, label=f"AUC {format_interval(auc)}")
        ap = metrics.get("average_precision")
        ap_text = "n/a" if ap is None else f"{ap:.3f}"
        ax_pr.step(pr["recall"], pr["precision"], where="post", lw=2, label=f"AP {ap_text}")
    ax_roc.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    prevalence = metrics.get("prevalence")
    if prevalence is not None:
        ax_pr.axhline(prevalence, ls="--", color="grey", label=f"chance ({prevalence:.2f})")
    ax_roc.set_xlabel("False positive rate (1 - specificity)")
    ax_roc.set_ylabel("True positive rate (sensitivity)")
    ax_roc.set_title(f"ROC (AUC, {level} interval on patient counts)", fontsize=10)
    ax_pr.set_xlabel("Recall (sensitivity)")
    ax_pr.set_ylabel("Precision (PPV)")
    ax_pr.set_title("Precision-recall (AP: average precision)", fontsize=10)
    for ax in (ax_roc, ax_pr):
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is ax_roc else "lower left", fontsize=9)
    text = f"{title}: n={metrics.get('n')} images, {metrics.get('n_patients')} patients "
    if note:  # two lines: from above the axes titles upwards (save_png's bbox takes it in)
        fig.suptitle(f"{text}(covid positive)\n{note}", y=0.95, va="bottom")
    else:
        fig.suptitle(f"{text}(covid positive)")
    return fig


def reliability_figure(cal: dict, title: str) -> Figure:
    """Reliability diagram: fraction covid against mean ``p_covid`` per bin, counts on the bars.

    Parameters
    ----------
    cal : :func:`cxr.metrics.calibration` output (``bins``, ``ece``, ``brier``, ``n_bins``).
    title : e.g. ``"model_03 on test"``.
    """
    fig = Figure(figsize=(5.5, 5.2))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    xs, ys = [], []
    for b in cal["bins"]:
        if not b["count"]:
            continue
        width = b["upper"] - b["lower"]
        ax.bar(
            b["lower"],
            b["fraction_covid"],
            width=width,
            align="edge",
            alpha=0.35,
            edgecolor="tab:blue",
            color="tab:blue",
        )
        ax.text(
            b["lower"] + width / 2,
            min(b["fraction_covid"] + 0.02, 0.97),
            str(b["count"]),
            ha="center",
            fontsize=8,
        )
        xs.append(b["mean_p_covid"])
        ys.append(b["fraction_covid"])
    ax.plot(xs, ys, "o-", color="tab:blue", label="model (bin mean)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("Mean p_covid in bin")
    ax.set_ylabel("Fraction covid in bin")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    ax.set_title(
        f"{title}: reliability ({cal['n_bins']} bins)\n"
        f"ECE {cal['ece']:.3f}, Brier score {cal['brier']:.3f}",
        fontsize=10,
    )
    return fig
