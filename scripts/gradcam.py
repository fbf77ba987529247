"""Rule gradcam: Grad-CAM of model_03 on every test image; a seeded grid of correct and wrong ones.

Entry point shared by Snakemake and DVC; options named like the config keys (section
``audit``). Writes --heat (CSV: one row per test image with its share of heat in the lung box),
--summary (JSON) and --figure (PNG grid), nothing else.
"""

import argparse
import json
from pathlib import Path

from cxr.runtime import PRECISION_OPTION

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--model", required=True, help="trained model (.keras)")
p.add_argument("--store", required=True, help="test store (.npz)")
p.add_argument("--heat", required=True, help="output CSV, one row per image")
p.add_argument("--summary", required=True, help="output JSON")
p.add_argument("--figure", required=True, help="output PNG grid")
p.add_argument("--seed", type=int, required=True, help="which images the grid shows")
p.add_argument("--gradcam_correct", type=int, required=True, help="correct ones in the grid")
p.add_argument("--gradcam_wrong", type=int, required=True, help="wrong ones in the grid")
p.add_argument("--gradcam_layer", required=True, help="convolution inside the VGG19 base")
p.add_argument("--lung_box", type=float, nargs=4, required=True, metavar=("X0", "Y0", "X1", "Y1"))
p.add_argument("--batch_size", type=int, required=True)
p.add_argument("--dpi", type=int, required=True)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--precision", **PRECISION_OPTION)
a = p.parse_args()

from cxr.runtime import apply_precision, configure_threads  # noqa: E402

configure_threads(a.threads)
apply_precision(a.precision)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cxr import CLASSES  # noqa: E402
from cxr.audit_figures import gradcam_grid_figure  # noqa: E402
from cxr.figures import save_png  # noqa: E402
from cxr.gradcam import box_area, check_box, gradcam, heat_fraction, pick_sample  # noqa: E402
from cxr.io import write_json, write_table  # noqa: E402
from cxr.metrics import predicted_labels  # noqa: E402
from cxr.model import load_model  # noqa: E402
from cxr.store import load_store  # noqa: E402

box = check_box(a.lung_box)
store = load_store(a.store)
model = load_model(a.model)
heat, probs = gradcam(model, store["images"], layer=a.gradcam_layer, batch_size=a.batch_size)
p_covid = np.clip(probs[:, 1].astype(float), 0.0, 1.0)
names = np.asarray(CLASSES)
rows = pd.DataFrame(
    {
        "path": store["paths"],
        "patient_id": store["patient_ids"],
        "label": names[store["labels"].astype(int)],
        "predicted": names[predicted_labels(p_covid)],
        "p_covid": p_covid,
        "heat_in_box": heat_fraction(heat, box),
    }
)
correct = (rows["label"] == rows["predicted"]).to_numpy()
right, wrong = pick_sample(correct, a.gradcam_correct, a.gradcam_wrong, a.seed)
rows["in_grid"] = ""
rows.loc[right, "in_grid"] = "correct"
rows.loc[wrong, "in_grid"] = "wrong"
write_table(rows, a.heat)


def mean_or_none(values) -> float | None:
    values = pd.Series(values, dtype=float).dropna()
    return float(values.mean()) if len(values) else None


summary = {
    "model": Path(a.model).stem,
    "layer": a.gradcam_layer,
    "lung_box": list(box),
    "box_area_fraction": box_area(*store["images"].shape[1:3], box),
    "n_images": len(rows),
    "n_without_heat": int(rows["heat_in_box"].isna().sum()),
    "mean_heat_in_box": mean_or_none(rows["heat_in_box"]),
    "mean_heat_in_box_correct": mean_or_none(rows.loc[correct, "heat_in_box"]),
    "mean_heat_in_box_wrong": mean_or_none(rows.loc[~correct, "heat_in_box"]),
    "mean_heat_in_box_by_label": {
        c: mean_or_none(rows.loc[rows["label"] == c, "heat_in_box"]) for c in CLASSES
    },
    "grid": {"seed": a.seed, "correct": [int(i) for i in right], "wrong": [int(i) for i in wrong]},
}
write_json(summary, a.summary)
fig = gradcam_grid_figure(store["images"], heat, rows, right, wrong, box, summary["model"])
save_png(fig, a.figure, a.dpi)
print(json.dumps({k: v for k, v in summary.items() if k != "grid"}, indent=2))
