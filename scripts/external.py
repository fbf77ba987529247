"""Rules evaluate_ieee8023_viral and evaluate_external: model_03 on images outside the split.

Entry point shared by Snakemake and DVC; options named like the config keys (sections
``external`` and ``evaluate``). Two modes:

- ``ieee8023``: the ieee8023 adult non-COVID viral pneumonia X-rays that the manifest excluded
  as "other finding" (--ieee8023_viral_findings, frontal --views), compared with the test split
  (--test_predictions); figure: p_covid of the three groups.
- ``ieee8023_adult``: the same for the within-source check, the frontal non-COVID X-rays of
  ieee8023 whose finding names one of --ieee8023_adult_findings, of patients aged
  --ieee8023_adult_min_age years or more.
- ``table``: any labelled folder, --metadata CSV ``path,label[,patient_id]`` (paths relative to
  --images, default the CSV's folder); figure: ROC and precision-recall curves.

Files that do not load are listed in --errors (path, reason, detail); how many is said in the
figure's title. In table mode, a CSV of which no listed file loads is refused (exit 1, naming
the CSV, the folder its relative paths were resolved against and the first failed path) and
nothing is written. Writes only --metrics (JSON), --predictions, --errors (CSV) and --figure
(PNG).
"""

import argparse
import sys
from pathlib import Path

from cxr.runtime import PRECISION_OPTION

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("mode", choices=["ieee8023", "ieee8023_adult", "table"])
p.add_argument("--model", required=True, help="trained model (.keras)")
p.add_argument("--metrics", required=True, help="output JSON")
p.add_argument("--predictions", required=True, help="output CSV")
p.add_argument("--errors", required=True, help="output CSV of files that did not load")
p.add_argument("--figure", required=True, help="output PNG")
p.add_argument("--excluded", help="ieee8023: data/interim/excluded.csv")
p.add_argument("--covid_dir", help="ieee8023: data/raw/covid-chestxray-dataset")
p.add_argument("--test_predictions", help="ieee8023: reports/predictions/model_03_test.csv")
p.add_argument("--ieee8023_viral_findings", nargs="+", help="ieee8023: findings taken")
p.add_argument("--ieee8023_adult_findings", nargs="+", help="ieee8023_adult: findings taken")
p.add_argument("--ieee8023_adult_min_age", type=float, help="ieee8023_adult: years, inclusive")
p.add_argument("--views", nargs="+", help="ieee8023: frontal views taken")
p.add_argument("--metadata", help="table: CSV path,label[,patient_id]")
p.add_argument("--images", default=None, help="table: folder of relative paths")
p.add_argument("--batch_size", type=int, required=True)
p.add_argument("--bootstrap_resamples", type=int, required=True)
p.add_argument("--bootstrap_seed", type=int, required=True)
p.add_argument("--confidence", type=float, required=True)
p.add_argument("--calibration_bins", type=int, required=True)
p.add_argument("--dpi", type=int, required=True)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--precision", **PRECISION_OPTION)
a = p.parse_args()
need = {
    "ieee8023": ["excluded", "covid_dir", "test_predictions", "ieee8023_viral_findings", "views"],
    "ieee8023_adult": [
        "excluded",
        "covid_dir",
        "test_predictions",
        "ieee8023_adult_findings",
        "ieee8023_adult_min_age",
        "views",
    ],
    "table": ["metadata"],
}[a.mode]
missing = [f"--{k}" for k in need if getattr(a, k) is None]
if missing:
    p.error(f"mode {a.mode} needs {' '.join(missing)}")

from cxr.runtime import apply_precision, configure_threads  # noqa: E402

configure_threads(a.threads)
apply_precision(a.precision)

import pandas as pd  # noqa: E402

from cxr import LABEL_INDEX  # noqa: E402
from cxr.audit_figures import p_covid_strip_figure  # noqa: E402
from cxr.external import (  # noqa: E402
    TableError,
    failure_note,
    ieee8023_viral_summary,
    ieee8023_viral_table,
    read_labelled_table,
    require_loaded,
    score_table,
    summarise,
)
from cxr.figures import roc_pr_figure, save_png  # noqa: E402
from cxr.io import write_json, write_table  # noqa: E402
from cxr.metrics import format_interval, roc_pr_curves  # noqa: E402
from cxr.model import load_model  # noqa: E402

bootstrap = dict(
    n_resamples=a.bootstrap_resamples,
    seed=a.bootstrap_seed,
    confidence=a.confidence,
    n_bins=a.calibration_bins,
)
model = load_model(a.model)
if a.mode in ("ieee8023", "ieee8023_adult"):
    viral = a.mode == "ieee8023"
    findings = a.ieee8023_viral_findings if viral else a.ieee8023_adult_findings
    min_age = None if viral else a.ieee8023_adult_min_age
    what = (
        "adult non-COVID viral pneumonia"
        if viral
        else f"frontal non-COVID X-rays, age >= {min_age:g} y"
    )
    covid_dir = Path(a.covid_dir)
    table = ieee8023_viral_table(
        pd.read_csv(a.excluded, dtype=str, keep_default_na=False),
        pd.read_csv(covid_dir / "metadata.csv", dtype=str, keep_default_na=False),
        covid_dir,
        findings,
        a.views,
        min_age=min_age,
    )
    print(f"{len(table)} ieee8023 images with findings {findings}")
    scored, errors = score_table(model, table, a.batch_size)
    test = pd.read_csv(a.test_predictions, dtype={"patient_id": str, "path": str})
    metrics = ieee8023_viral_summary(scored, errors, test, **bootstrap, name=f"ieee8023 {what}")
    spec = metrics.get("intervals", {}).get("specificity")
    note = failure_note(metrics)
    fig = p_covid_strip_figure(
        {
            "test covid\n(ieee8023)": test.loc[test["label"] == "covid", "p_covid"],
            "test non_covid\n(this run's controls)": test.loc[
                test["label"] == "non_covid", "p_covid"
            ],
            f"ieee8023 {'adult viral' if viral else 'adult non-COVID'}\n(not COVID)": scored[
                "p_covid"
            ],
        },
        f"model_03: p_covid of ieee8023 {what}",
        f"specificity on them {format_interval(spec)}; on test non_covid "
        f"{format_interval(metrics['test_non_covid_specificity'])}; AUC test covid vs them "
        f"{format_interval(metrics['auc_test_covid_vs_these'])}" + (f"; {note}" if note else ""),
    )
else:
    try:
        table = read_labelled_table(a.metadata, a.images)
        scored, errors = score_table(model, table, a.batch_size)
        require_loaded(scored, errors, a.metadata, a.images)
    except TableError as err:
        sys.exit(f"ERROR: {err}")
    metrics = summarise(scored, errors, str(a.metadata), **bootstrap)
    roc, pr = roc_pr_curves(scored["label"].map(LABEL_INDEX), scored["p_covid"])
    fig = roc_pr_figure(
        roc, pr, metrics, f"model_03 on {Path(a.metadata).name}", failure_note(metrics)
    )
metrics["model"] = Path(a.model).stem
write_json(metrics, a.metrics)
write_table(scored, a.predictions)
write_table(errors, a.errors)
save_png(fig, a.figure, a.dpi)
print(f"scored {len(scored)}, failed {len(errors)}")
for _, row in errors.iterrows():
    print(f"ERROR {row['path']}: {row['reason']}: {row['detail']}")
for name, entry in metrics.get("intervals", {}).items():
    print(f"  {name}: {format_interval(entry, 4)}")
