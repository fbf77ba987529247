"""Rule evaluate: one trained model on one split store -> metrics JSON + predictions CSV.

Entry point shared by Snakemake and DVC; options named like the config keys (section
``evaluate``). Loads the model once, predicts ``p_covid`` (softmax column 1) for every store
row, writes only --metrics and --predictions (via temporary names).
"""

import argparse
from pathlib import Path

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--model", required=True, help="trained model (.keras)")
p.add_argument("--store", required=True, help="split store (.npz)")
p.add_argument("--metrics", required=True, help="output JSON")
p.add_argument("--predictions", required=True, help="output CSV")
p.add_argument("--batch_size", type=int, required=True)
p.add_argument("--threads", type=int, default=1)
a = p.parse_args()

from cxr.train import configure_threads  # noqa: E402

configure_threads(a.threads)

import numpy as np  # noqa: E402

from cxr.metrics import (  # noqa: E402
    compute_metrics,
    predicted_labels,
    predictions_frame,
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
metrics = {"model": Path(a.model).stem, "split": Path(a.store).stem}
metrics.update(compute_metrics(store["labels"], predicted_labels(p_covid), p_covid))
write_metrics(metrics, a.metrics)
write_predictions(predictions_frame(store, p_covid), a.predictions)
print(
    f"{metrics['model']} on {metrics['split']}: n={metrics['n']}"
    f" accuracy={metrics['accuracy']:.4f}"
    f" sensitivity={metrics['sensitivity']:.4f} specificity={metrics['specificity']:.4f}"
)
print("confusion matrix (rows true, columns predicted):", metrics["confusion_matrix"])
