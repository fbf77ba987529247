"""Rule evaluation_figures: ROC / precision-recall figures per evaluation, test reliability diagram.

Entry point shared by Snakemake and DVC. --metrics, --roc, --pr and --figures are paired in
order (one evaluation each); --calibration_metrics is the evaluation whose reliability diagram
goes to --reliability. No TensorFlow.
"""

import argparse
import json
from pathlib import Path

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--metrics", nargs="+", required=True, help="reports/metrics/*.json")
p.add_argument("--roc", nargs="+", required=True, help="reports/curves/*_roc.csv, same order")
p.add_argument("--pr", nargs="+", required=True, help="reports/curves/*_pr.csv, same order")
p.add_argument("--figures", nargs="+", required=True, help="output PNG per evaluation")
p.add_argument("--calibration_metrics", required=True, help="metrics JSON for the reliability")
p.add_argument("--reliability", required=True, help="output PNG")
p.add_argument("--dpi", type=int, required=True)
a = p.parse_args()
if not len(a.metrics) == len(a.roc) == len(a.pr) == len(a.figures):
    p.error("--metrics, --roc, --pr and --figures need one entry per evaluation each")

import pandas as pd  # noqa: E402

from cxr.figures import reliability_figure, roc_pr_figure, save_png  # noqa: E402

for metrics_path, roc, pr, out in zip(a.metrics, a.roc, a.pr, a.figures, strict=True):
    metrics = json.loads(Path(metrics_path).read_text())
    title = f"{metrics['model']} on {metrics['split']}"
    fig = roc_pr_figure(pd.read_csv(roc), pd.read_csv(pr), metrics, title)
    save_png(fig, out, a.dpi)
    print(f"ROC / PR: {metrics_path} -> {out}")
metrics = json.loads(Path(a.calibration_metrics).read_text())
title = f"{metrics['model']} on {metrics['split']}"
save_png(reliability_figure(metrics["calibration"], title), a.reliability, a.dpi)
print(f"reliability: {a.calibration_metrics} -> {a.reliability}")
