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
  --images, default the CSV's folder); figure: ROC and precision-recall curves. The images
  may be DICOM files (cxr.dicom): --dicom_voi false skips their VOI LUT or window, and their
  headers fill the CSV's empty patient_id, view, age and sex cells.

Every mode first runs the overlap guard (:mod:`cxr.overlap`): each image against the run's
--splits and --augmented images, by file sha256, pixel sha256, perceptual
hash within --near_duplicate_distance bits and patient id; matches are listed in --overlaps
and left out of the metrics (--keep_overlaps true: scored as a separate group). The metrics
are computed from the --predictions table as written (full precision), read back.

Every image is held to the training images' inclusion rules (--min_side, --max_pixels: the
manifest's, through the one loader); files that fail them or do not load are listed in
--errors (path, reason, detail, the reasons of the manifest's excluded.csv); how many is said
in the figure's title. In table mode, a CSV that is not UTF-8 (a byte-order mark is allowed)
is refused (exit 1, naming the file, the line and how to convert it), as is a CSV of which no
listed file loads (naming the CSV, the folder its relative paths were resolved against and
the first failed path); nothing is written then. Writes only --metrics (JSON), --predictions,
--errors, --overlaps (CSV) and --figure (PNG).
"""

import argparse
import sys
from pathlib import Path

from cxr.cli import boolean
from cxr.runtime import PRECISION_OPTION

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("mode", choices=["ieee8023", "ieee8023_adult", "table"])
p.add_argument("--model", required=True, help="trained model (.keras)")
p.add_argument("--metrics", required=True, help="output JSON")
p.add_argument("--predictions", required=True, help="output CSV")
p.add_argument("--errors", required=True, help="output CSV of files that did not load")
p.add_argument("--figure", required=True, help="output PNG")
p.add_argument("--overlaps", required=True, help="output CSV of images the run has seen")
p.add_argument("--splits", nargs=3, required=True, help="the run's train, val, test CSVs")
p.add_argument("--augmented", required=True, help="the run's augmented.csv")
p.add_argument("--near_duplicate_distance", type=int, required=True, help="phash bits")
p.add_argument("--keep_overlaps", type=boolean, required=True, help="score them apart")
p.add_argument("--excluded", help="ieee8023: data/interim/excluded.csv")
p.add_argument("--covid_dir", help="ieee8023: data/raw/covid-chestxray-dataset")
p.add_argument("--test_predictions", help="ieee8023: reports/predictions/model_03_test.csv")
p.add_argument("--ieee8023_viral_findings", nargs="+", help="ieee8023: findings taken")
p.add_argument("--ieee8023_adult_findings", nargs="+", help="ieee8023_adult: findings taken")
p.add_argument("--ieee8023_adult_min_age", type=float, help="ieee8023_adult: years, inclusive")
p.add_argument("--views", nargs="+", help="ieee8023: frontal views taken")
p.add_argument("--metadata", help="table: CSV path,label[,patient_id]")
p.add_argument("--images", default=None, help="table: folder of relative paths")
p.add_argument("--min_side", type=int, required=True, help="px; the manifest's inclusion rule")
p.add_argument("--max_pixels", type=int, required=True, help="the manifest's inclusion rule")
p.add_argument(
    "--dicom_voi", type=boolean, default=True, help="table: DICOM VOI LUT or window (true)"
)
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
    guarded_score,
    ieee8023_viral_summary,
    ieee8023_viral_table,
    read_labelled_table,
    require_loaded,
    summarise,
)
from cxr.figures import roc_pr_figure, save_png  # noqa: E402
from cxr.io import InputEncodingError, write_json, write_table  # noqa: E402
from cxr.manifest import read_metadata  # noqa: E402
from cxr.metrics import (  # noqa: E402
    format_interval,
    read_predictions,
    roc_pr_curves,
    write_predictions,
)
from cxr.model import load_model  # noqa: E402
from cxr.overlap import overlap_note, reference_table  # noqa: E402
from cxr.split import SPLITS  # noqa: E402


def read(path):
    return pd.read_csv(path, dtype={"patient_id": str, "path": str}, keep_default_na=False)


bootstrap = dict(
    n_resamples=a.bootstrap_resamples,
    seed=a.bootstrap_seed,
    confidence=a.confidence,
    n_bins=a.calibration_bins,
)
inclusion = dict(min_side=a.min_side, max_pixels=a.max_pixels)
reference = reference_table(
    {name: read(path) for name, path in zip(SPLITS, a.splits, strict=True)},
    read(a.augmented),
)
model = load_model(a.model)


def score(table, **load_options):
    """Guard, score, store the predictions at full precision, and read them back."""
    scored, errors, overlaps, guard = guarded_score(
        model,
        table,
        reference,
        a.near_duplicate_distance,
        a.keep_overlaps,
        a.batch_size,
        **inclusion,
        **load_options,
    )
    write_predictions(scored, a.predictions)
    return read_predictions(a.predictions), errors, overlaps, guard


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
        read_metadata(covid_dir / "metadata.csv"),
        covid_dir,
        findings,
        a.views,
        min_age=min_age,
    )
    print(f"{len(table)} ieee8023 images with findings {findings}")
    scored, errors, overlaps, guard = score(table)
    test = read_predictions(a.test_predictions)
    metrics = ieee8023_viral_summary(
        scored, errors, test, **bootstrap, name=f"ieee8023 {what}", guard=guard
    )
    main = scored[scored["group"] == "scored"] if len(scored) else scored
    spec = metrics.get("intervals", {}).get("specificity")
    notes = [n for n in (failure_note(metrics), overlap_note(guard)) if n]
    fig = p_covid_strip_figure(
        {
            "test covid\n(ieee8023)": test.loc[test["label"] == "covid", "p_covid"],
            "test non_covid\n(this run's controls)": test.loc[
                test["label"] == "non_covid", "p_covid"
            ],
            f"ieee8023 {'adult viral' if viral else 'adult non-COVID'}\n(not COVID)": main[
                "p_covid"
            ],
        },
        f"model_03: p_covid of ieee8023 {what}",
        f"specificity on them {format_interval(spec)}; on test non_covid "
        f"{format_interval(metrics['test_non_covid_specificity'])}; AUC test covid vs them "
        f"{format_interval(metrics['auc_test_covid_vs_these'])}" + "".join(f"; {n}" for n in notes),
    )
else:
    try:
        table = read_labelled_table(a.metadata, a.images)
        scored, errors, overlaps, guard = score(table, dicom_voi=a.dicom_voi)
        require_loaded(scored, errors, a.metadata, a.images)
    except (TableError, InputEncodingError) as err:
        Path(a.predictions).unlink(missing_ok=True)
        sys.exit(f"ERROR: {err}")
    metrics = summarise(scored, errors, str(a.metadata), guard, **bootstrap)
    main = scored[scored["group"] == "scored"] if len(scored) else scored
    roc, pr = roc_pr_curves(main["label"].map(LABEL_INDEX), main["p_covid"])
    note = "; ".join(n for n in (failure_note(metrics), overlap_note(guard)) if n) or None
    fig = roc_pr_figure(roc, pr, metrics, f"model_03 on {Path(a.metadata).name}", note)
metrics["model"] = Path(a.model).stem
metrics["overlaps_csv"] = Path(a.overlaps).name
write_json(metrics, a.metrics)
write_table(errors, a.errors)
write_table(overlaps, a.overlaps)
save_png(fig, a.figure, a.dpi)
print(f"scored {len(scored)}, failed {len(errors)}")
for _, row in errors.iterrows():
    print(f"ERROR {row['path']}: {row['reason']}: {row['detail']}")
print(overlap_note(guard) or f"no overlap with the run's images ({guard['n_checked']} checked)")
for _, row in overlaps.iterrows():
    conflict = " LABEL CONFLICT" if row["label_conflict"] else ""
    print(
        f"OVERLAP {row['path']} ({row['label']}) = {row['matched_path']} ({row['matched_label']},"
        f" {row['split']}) by {row['kind']}{conflict}"
    )
for name, entry in metrics.get("intervals", {}).items():
    print(f"  {name}: {format_interval(entry, 4)}")
