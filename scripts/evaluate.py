"""Rule evaluate: one trained model on one split store -> metrics JSON, predictions, curves.

Entry point shared by Snakemake and DVC; options named like the config keys (section
``evaluate``). Loads the model once, predicts ``p_covid`` (softmax column 1) for every store
row, and writes only its output paths (via temporary names): --metrics (scores with Wilson
intervals, ROC AUC with a patient-clustered bootstrap interval, calibration;
:func:`cxr.metrics.evaluation_summary`; the precision the model was trained and scored in),
--predictions, and the plot tables --roc, --pr,
--calibration (CSV).
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

from cxr.io import saved_precision  # noqa: E402
from cxr.metrics import (  # noqa: E402
    evaluation_summary,
    format_interval,
    predictions_frame,
    roc_pr_curves,
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
metrics = {
    "model": Path(a.model).stem,
    "split": Path(a.store).stem,
    # The dtype policy the model was trained in (recorded in its file) and scored in here.
    "precision": {"trained": saved_precision(a.model), "scored": precision},
}
metrics.update(
    evaluation_summary(
        store["labels"],
        p_covid,
        store["patient_ids"],
        n_resamples=a.bootstrap_resamples,
        seed=a.bootstrap_seed,
        confidence=a.confidence,
        n_bins=a.calibration_bins,
    )
)
write_metrics(metrics, a.metrics)
write_predictions(predictions_frame(store, p_covid), a.predictions)
roc, pr = roc_pr_curves(store["labels"], p_covid)
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
