"""Rule evaluate: one trained model on one split store -> metrics JSON, predictions, curves.

Entry point shared by Snakemake and DVC; options named like the config keys (section
``evaluate``). Loads the model once, predicts ``p_covid`` (softmax column 1) for every store
row, writes --predictions at full precision, reads that table back and computes every metric
from it: --metrics (proportions with Wilson intervals on the patient design effect's
effective sample size, ROC AUC with Newcombe's interval on patient counts, calibration;
:func:`cxr.metrics.table_summary`; the precision the model was trained and scored in) and
the plot tables --roc, --pr, --calibration (CSV). Writes only its output paths (via temporary
names).
"""

import argparse
from pathlib import Path

from cxr.runtime import PRECISION_OPTION

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--model", required=True, help="trained model (.keras)")
p.add_argument("--store", required=True, help="split store (.npz)")
p.add_argument("--metrics", required=True, help="output JSON")
p.add_argument("--predictions", required=True, help="output CSV")
p.add_argument("--roc", required=True, help="output CSV: fpr, tpr, threshold")
p.add_argument("--pr", required=True, help="output CSV: recall, precision, threshold")
p.add_argument("--calibration", required=True, help="output CSV: reliability bins")
p.add_argument("--batch_size", type=int, required=True)
p.add_argument("--bootstrap_resamples", type=int, required=True, help="for the AUC interval")
p.add_argument("--bootstrap_seed", type=int, required=True)
p.add_argument("--confidence", type=float, required=True, help="interval level, e.g. 0.95")
p.add_argument("--calibration_bins", type=int, required=True, help="equal-width p_covid bins")
p.add_argument("--threads", type=int, default=1)
p.add_argument("--precision", **PRECISION_OPTION)
a = p.parse_args()

from cxr.runtime import apply_precision, configure_threads  # noqa: E402

configure_threads(a.threads)
precision = apply_precision(a.precision)

import numpy as np  # noqa: E402

from cxr import LABEL_INDEX  # noqa: E402
from cxr.io import saved_precision  # noqa: E402
from cxr.metrics import (  # noqa: E402
    format_interval,
    predictions_frame,
    read_predictions,
    roc_pr_curves,
    table_summary,
    write_calibration,
    write_curves,
    write_metrics,
    write_predictions,
)
from cxr.model import load_model  # noqa: E402
from cxr.store import load_store  # noqa: E402

store = load_store(a.store)
model = load_model(a.model)
if tuple(model.input_shape[1:]) != store["images"].shape[1:]:
    raise SystemExit(
        f"{a.model} takes {model.input_shape[1:]}, {a.store} has {store['images'].shape[1:]}"
    )
probs = model.predict(store["images"], batch_size=a.batch_size, verbose=2)
p_covid = np.clip(probs[:, 1].astype(float), 0.0, 1.0)
# One stored table of unrounded predictions: every metric is computed from it as read back.
write_predictions(predictions_frame(store, p_covid), a.predictions)
table = read_predictions(a.predictions)
metrics = {
    "model": Path(a.model).stem,
    "split": Path(a.store).stem,
    # The dtype policy the model was trained in (recorded in its file) and scored in here.
    "precision": {"trained": saved_precision(a.model), "scored": precision},
}
metrics.update(
    table_summary(
        table,
        n_resamples=a.bootstrap_resamples,
        seed=a.bootstrap_seed,
        confidence=a.confidence,
        n_bins=a.calibration_bins,
    )
)
write_metrics(metrics, a.metrics)
roc, pr = roc_pr_curves(table["label"].map(LABEL_INDEX), table["p_covid"])
write_curves(roc, pr, a.roc, a.pr)
write_calibration(metrics["calibration"], a.calibration)
print(
    f"{metrics['model']} on {metrics['split']}: n={metrics['n']}"
    f" ({metrics['n_patients']} patients), {a.confidence:.0%} intervals:"
)
for name, entry in metrics["intervals"].items():
    print(f"  {name}: {format_interval(entry, 4)}")
print("confusion matrix (rows true, columns predicted):", metrics["confusion_matrix"])
print(
    f"calibration: ECE {metrics['calibration']['ece']:.4f},"
    f" Brier {metrics['calibration']['brier']:.4f}"
)
