"""Figures of the checks: Grad-CAM overlays and grids, the shortcut audit, and p_covid strip
plots of the tests outside the split.

Split from :mod:`cxr.figures` (the training and evaluation figures, whose set-up, colours and
:func:`cxr.figures.save_png` these share) so that each module holds one family of figures.
matplotlib only (Pillow to resize heatmaps), through ``matplotlib.figure.Figure`` with the Agg
canvas, as :mod:`cxr.figures`; no TensorFlow. Each ``*_figure`` function returns a Figure;
:func:`overlay_heatmap` returns an RGB array. Touches no file.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxr.figures import RIGHT, WRONG
from cxr.metrics import format_interval


def overlay_heatmap(rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a [0, 1] heatmap (``jet`` colours) onto an ``(H, W, 3) uint8`` image.

    ``heat`` is resized (bilinear) to the image when its shape differs. Returns ``(H, W, 3)
    uint8``: ``(1 - alpha * heat) * image + alpha * heat * colour``, so cold regions keep the
    X-ray visible.
    """
    from matplotlib import colormaps
    from PIL import Image

    rgb = np.asarray(rgb, dtype=np.uint8)
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape != rgb.shape[:2]:
        heat = np.asarray(
            Image.fromarray(heat, mode="F").resize(rgb.shape[1::-1], Image.Resampling.BILINEAR)
        )
    heat = np.clip(heat, 0.0, 1.0)
    colour = colormaps["jet"](heat)[..., :3] * 255
    w = alpha * heat[..., None]
    return np.clip(np.rint((1 - w) * rgb + w * colour), 0, 255).astype(np.uint8)


def _draw_box(ax, box, size) -> None:
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = box
    h, w = size
    ax.add_patch(
        Rectangle(
            (x0 * w - 0.5, y0 * h - 0.5),
            (x1 - x0) * w,
            (y1 - y0) * h,
            fill=False,
            edgecolor="white",
            lw=1,
            ls="--",
        )
    )


def gradcam_grid_figure(
    images: np.ndarray,
    heat: np.ndarray,
    rows: pd.DataFrame,
    right: np.ndarray,
    wrong: np.ndarray,
    box,
    title: str,
) -> Figure:
    """Grad-CAM overlays: correct predictions in the top row, wrong ones in the bottom row.

    Parameters
    ----------
    images : ``(N, S, S, 3) uint8``; heat : ``(N, S, S)`` in [0, 1].
    rows : N rows with ``label``, ``predicted``, ``p_covid``, ``heat_in_box``.
    right, wrong : indices shown in each row (:func:`cxr.gradcam.pick_sample`).
    box : the lung box ``(x0, y0, x1, y1)``, drawn dashed white.
    """
    ncols = max(len(right), len(wrong), 1)
    fig = Figure(figsize=(2.5 * ncols, 2 * 3.0 + 0.7))
    axes = np.asarray(fig.subplots(2, ncols, squeeze=False))
    for ax in axes.ravel():
        ax.axis("off")
    for r, (pick, name, colour) in enumerate(((right, "correct", RIGHT), (wrong, "wrong", WRONG))):
        if not len(pick):
            axes[r, 0].text(
                0.5,
                0.5,
                f"no {name} predictions",
                ha="center",
                va="center",
                transform=axes[r, 0].transAxes,
            )
        for ax, i in zip(axes[r], pick, strict=False):
            row = rows.iloc[int(i)]
            ax.imshow(overlay_heatmap(images[i], heat[i]))
            _draw_box(ax, box, images.shape[1:3])
            frac = row["heat_in_box"]
            frac_text = "n/a" if pd.isna(frac) else f"{frac:.0%}"
            ax.set_title(
                f"true {row['label']}, pred {row['predicted']}\n"
                f"p_covid {row['p_covid']:.2f}, heat in box {frac_text}",
                color=colour,
                fontsize=8,
            )
    fig.suptitle(
        f"{title}: Grad-CAM, top row correct ({len(right)}), bottom row wrong ({len(wrong)})"
    )
    return fig


def audit_figure(audit: dict) -> Figure:
    """Test ROC AUC with intervals: blind baselines and masked model next to model_03.

    Parameters
    ----------
    audit : the shortcut audit dict (``reports/audit/shortcut_audit.json``): ``entries`` (list of
        ``{name, roc_auc: {estimate, lower, upper}, flagged}``), ``warn_auc``, ``warnings``
        (list of str, printed in red under the plot), ``confidence``.
    """
    import textwrap

    entries = audit["entries"]
    lines = [
        textwrap.fill(f"WARNING: {w}", width=105, subsequent_indent="    ")
        for w in audit["warnings"]
    ] or [f"No blind or masked value reached the warning level {audit['warn_auc']}."]
    n_text = sum(line.count("\n") + 1 for line in lines)
    plot_h = 0.9 + 0.6 * len(entries)
    text_h = 0.2 * n_text + 0.3
    fig = Figure(figsize=(10, plot_h + text_h + 0.5))
    ax = fig.add_axes(
        (
            0.22,
            (text_h + 0.45) / (plot_h + text_h + 0.5),
            0.55,
            plot_h / (plot_h + text_h + 0.5) - 0.12,
        )
    )
    ys = np.arange(len(entries))[::-1]
    for y, e in zip(ys, entries, strict=True):
        auc = e["roc_auc"]
        if auc.get("estimate") is None:
            ax.text(0.5, y, "n/a (one class)", va="center")
            continue
        colour = WRONG if e.get("flagged") else "tab:blue"
        est, lo, hi = auc["estimate"], auc["lower"], auc["upper"]
        ax.errorbar(est, y, xerr=[[est - lo], [hi - est]], fmt="o", color=colour, capsize=4)
        ax.text(
            1.03,
            y,
            format_interval(auc),
            va="center",
            fontsize=9,
            color=colour,
            transform=ax.get_yaxis_transform(),
        )
    ax.axvline(0.5, ls="--", color="grey")
    ax.axvline(audit["warn_auc"], ls=":", color=WRONG)
    ax.set_yticks(ys, [e["name"] for e in entries])
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(-0.7, len(entries) - 0.3)
    ax.set_xlabel(
        f"Test ROC AUC ({audit.get('confidence', 0.95):.0%} interval on patient counts); "
        f"dotted: warning level {audit['warn_auc']}"
    )
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Shortcut audit: how much is solved without looking at lungs", fontsize=11)
    fig.text(
        0.02,
        0.02,
        "\n".join(lines),
        ha="left",
        va="bottom",
        fontsize=8.5,
        color=WRONG if audit["warnings"] else "black",
        family="monospace",
    )
    return fig


def p_covid_strip_figure(groups: dict, title: str, subtitle: str = "") -> Figure:
    """p_covid of several image groups side by side (points jittered, seeded), with the 0.5 line.

    Parameters
    ----------
    groups : ordered ``{name: (N_g,) p_covid}``; an empty group is shown as ``n=0``.
    title, subtitle : figure title and a second line (e.g. specificity with its interval).
    """
    fig = Figure(figsize=(1.8 + 2.2 * len(groups), 4.8))
    ax = fig.subplots()
    rng = np.random.default_rng(0)
    for x, values in enumerate(groups.values()):
        values = np.asarray(values, dtype=float)
        ax.scatter(x + rng.uniform(-0.15, 0.15, len(values)), values, s=14, alpha=0.7)
        if len(values):
            ax.hlines(np.median(values), x - 0.25, x + 0.25, color="black", lw=2)
    ax.axhline(0.5, ls="--", color="grey")
    ax.set_xticks(range(len(groups)), [f"{k}\n(n={len(v)})" for k, v in groups.items()], fontsize=8)
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("p_covid (line: median; dashed: threshold 0.5)")
    ax.grid(axis="y", alpha=0.3)
    import textwrap

    head = textwrap.fill(title, width=int(20 + 30 * len(groups)))
    sub = textwrap.fill(subtitle, width=int(25 + 35 * len(groups))) if subtitle else ""
    ax.set_title(f"{head}\n{sub}" if sub else head, fontsize=9)
    return fig
