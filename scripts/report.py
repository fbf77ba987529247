"""Rule report: the PNG figures under reports/figures/ from histories, metrics, predictions.

Entry point shared by Snakemake and DVC; options named like the config keys (section
``report``). Output paths are given one by one, paired in order with their inputs
(--histories with --curves, --metrics with --confusion and --tables). No TensorFlow.
"""

import argparse
import json
from pathlib import Path

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--histories", nargs="+", required=True, help="reports/history/*.csv")
p.add_argument("--curves", nargs="+", required=True, help="one PNG per history")
p.add_argument("--metrics", nargs="+", required=True, help="reports/metrics/*.json")
p.add_argument("--confusion", nargs="+", required=True, help="one PNG per metrics file")
p.add_argument("--tables", nargs="+", required=True, help="one PNG per metrics file")
p.add_argument("--predictions", required=True, help="test predictions CSV for the sample grid")
p.add_argument("--test_store", required=True, help="test store (.npz), same row order")
p.add_argument("--samples_figure", required=True, help="output PNG of the sample grid")
p.add_argument("--dpi", type=int, required=True)
p.add_argument("--n_samples", type=int, required=True)
p.add_argument("--seed", type=int, required=True)
a = p.parse_args()
if len(a.histories) != len(a.curves) or not len(a.metrics) == len(a.confusion) == len(a.tables):
    p.error("each input needs its output: --histories/--curves, --metrics/--confusion/--tables")

import pandas as pd  # noqa: E402

from cxr.figures import (  # noqa: E402
    confusion_figure,
    curves_figure,
    report_table_figure,
    samples_figure,
    save_png,
)
from cxr.store import load_store  # noqa: E402

for history, out in zip(a.histories, a.curves, strict=True):
    save_png(curves_figure(pd.read_csv(history), Path(history).stem), out, a.dpi)
    print(f"curves: {history} -> {out}")
for path, cm_out, table_out in zip(a.metrics, a.confusion, a.tables, strict=True):
    metrics = json.loads(Path(path).read_text())
    title = f"{metrics['model']} on {metrics['split']}"
    save_png(confusion_figure(metrics, title), cm_out, a.dpi)
    save_png(report_table_figure(metrics, title), table_out, a.dpi)
    print(f"confusion matrix and report: {path} -> {cm_out}, {table_out}")
store = load_store(a.test_store)
predictions = pd.read_csv(a.predictions, dtype={"patient_id": str, "path": str})
if list(predictions["path"]) != list(store["paths"]):
    raise SystemExit(f"{a.predictions} rows do not match {a.test_store} (paths differ)")
fig = samples_figure(store["images"], predictions, a.n_samples, a.seed, Path(a.predictions).stem)
save_png(fig, a.samples_figure, a.dpi)
print(f"samples: {a.samples_figure}")
