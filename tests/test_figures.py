"""cxr.figures: what each figure shows (data, labels, colours) and that the PNGs are real."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from PIL import Image

from cxr.figures import (
    RIGHT,
    WRONG,
    confusion_figure,
    curves_figure,
    report_table_figure,
    samples_figure,
    save_png,
)
from cxr.metrics import compute_metrics

HISTORY = pd.DataFrame(
    {
        "epoch": [1, 2, 3],
        "loss": [0.9, 0.6, 0.5],
        "accuracy": [0.5, 0.7, 0.8],
        "val_loss": [1.0, 0.8, 0.9],
        "val_accuracy": [0.4, 0.6, 0.55],
    }
)


def open_png(path):
    with Image.open(path) as im:
        im.load()
        return im.format, im.size


def test_curves_plot_the_history(tmp_path):
    fig = curves_figure(HISTORY, "model_01")
    acc, loss = fig.axes
    assert [line.get_label() for line in acc.lines] == ["training", "validation"]
    np.testing.assert_array_equal(acc.lines[0].get_ydata(), HISTORY["accuracy"])
    np.testing.assert_array_equal(acc.lines[1].get_ydata(), HISTORY["val_accuracy"])
    np.testing.assert_array_equal(loss.lines[1].get_ydata(), HISTORY["val_loss"])
    np.testing.assert_array_equal(loss.lines[0].get_xdata(), [1, 2, 3])
    assert acc.get_xlabel() == "Epoch" and acc.get_ylabel() == "Accuracy"
    assert loss.get_ylabel().startswith("Loss")
    save_png(fig, tmp_path / "c.png", dpi=50)
    fmt, (w, h) = open_png(tmp_path / "c.png")
    assert fmt == "PNG" and 300 < w < 700 and 120 < h < 300  # 10 x 4 in at 50 dpi, trimmed
    with pytest.raises(ValueError):
        curves_figure(HISTORY.drop(columns="val_loss"), "x")
    with pytest.raises(ValueError):
        save_png(fig, tmp_path / "d.png", dpi=0)


def test_confusion_figure_shows_counts_and_class_names(tmp_path):
    m = compute_metrics([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0, 1, 1])
    m.update(model="model_03", split="test")
    fig = confusion_figure(m, "model_03 on test")
    ax = fig.axes[0]
    texts = sorted(t.get_text().split("\n")[0] for t in ax.texts)
    assert texts == ["1", "2", "3", "4"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["non_covid", "covid"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["non_covid", "covid"]
    assert ax.get_xlabel() == "Predicted class" and ax.get_ylabel() == "True class"
    assert "n=10" in ax.get_title() and "sensitivity 0.750" in ax.get_title()
    # the cell at row true non_covid, column predicted covid holds FP = 2, 2 of 6 = 33 % of the row
    cell = [t.get_text() for t in ax.texts if t.get_position() == (1, 0)]
    assert cell == ["2\n(33%)"]
    save_png(fig, tmp_path / "cm.png", dpi=60)
    assert open_png(tmp_path / "cm.png")[0] == "PNG"

    table = report_table_figure(m, "model_03 on test")
    cells = table.axes[0].tables[0].get_celld()
    values = {cells[r, c].get_text().get_text() for (r, c) in cells}
    assert {"0.600", "0.750", "0.667", "10", "4", "6", "0.700", "covid", "non_covid"} <= values
    save_png(table, tmp_path / "t.png", dpi=60)
    assert open_png(tmp_path / "t.png")[0] == "PNG"


def test_samples_grid_labels_and_red_for_wrong(tmp_path):
    n = 14
    # image i is filled with value 10 * i, so the displayed pixels say which row it is
    images = np.repeat((np.arange(n) * 10).astype(np.uint8), 16 * 16 * 3).reshape(n, 16, 16, 3)
    labels = ["covid" if i % 2 else "non_covid" for i in range(n)]
    predicted = ["covid" if i % 3 else "non_covid" for i in range(n)]
    preds = pd.DataFrame({"label": labels, "predicted": predicted, "p_covid": np.linspace(0, 1, n)})
    fig = samples_figure(images, preds, n=10, seed=4, title="model_03_test")
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 10
    rows = [int(ax.images[0].get_array()[0, 0, 0]) // 10 for ax in shown]
    assert len(set(rows)) == 10
    for ax, i in zip(shown, rows, strict=True):
        title = ax.get_title()
        assert f"true: {labels[i]}" in title and f"pred: {predicted[i]}" in title
        wrong = labels[i] != predicted[i]
        assert to_rgba(ax.title.get_color()) == to_rgba(WRONG if wrong else RIGHT), i
    n_wrong = sum(labels[i] != predicted[i] for i in rows)
    assert f"{n_wrong} wrong" in fig.get_suptitle()
    again = samples_figure(images, preds, n=10, seed=4, title="x")
    assert rows == [int(ax.images[0].get_array()[0, 0, 0]) // 10 for ax in again.axes if ax.images]
    other = samples_figure(images, preds, n=10, seed=5, title="x")
    assert rows != [int(ax.images[0].get_array()[0, 0, 0]) // 10 for ax in other.axes if ax.images]
    # fewer images than asked for: all of them
    assert (
        len([ax for ax in samples_figure(images[:3], preds[:3], 10, 4, "x").axes if ax.images]) == 3
    )
    save_png(fig, tmp_path / "s.png", dpi=50)
    fmt, (w, h) = open_png(tmp_path / "s.png")
    assert fmt == "PNG" and w > 300 and h > 200
    with pytest.raises(ValueError):
        samples_figure(images, preds[:5], 10, 4, "x")
