"""Rule model_card: reports/model_card.md from this run's data tables, metrics and audit.

Entry point shared by Snakemake and DVC (:func:`cxr.model_card.render`). Writes only --out.
"""

import argparse
import json
from pathlib import Path

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--manifest", required=True, help="the protocol's data/interim/selected.csv")
p.add_argument("--excluded", required=True)
p.add_argument("--covid_dir", required=True, help="raw ieee8023 folder (metadata.csv licenses)")
p.add_argument("--splits", nargs=3, required=True, metavar=("TRAIN", "VAL", "TEST"))
p.add_argument("--augmented", required=True, help="data/augmented/augmented.csv")
p.add_argument("--histories", nargs="+", required=True, help="reports/history/*.csv")
p.add_argument("--metrics", nargs="+", required=True, help="reports/metrics/*.json")
p.add_argument("--audit", required=True, help="reports/audit/shortcut_audit.json")
p.add_argument("--gradcam", required=True, help="reports/audit/gradcam.json")
p.add_argument("--viral", required=True, help="reports/external/ieee8023_viral.json")
p.add_argument("--within", required=True, help="reports/external/ieee8023_adult.json")
p.add_argument("--selection", required=True, help="the protocol's data/interim/selection.json")
p.add_argument("--external", default=None, help="external test JSON (optional)")
p.add_argument("--image_size", type=int, required=True)
p.add_argument("--out", required=True, help="output Markdown")
a = p.parse_args()

import pandas as pd  # noqa: E402

from cxr.io import read_input_csv, write_text  # noqa: E402
from cxr.model_card import render  # noqa: E402


def load(path):
    return json.loads(Path(path).read_text())


def table(path):
    return pd.read_csv(path, dtype={"patient_id": str}, keep_default_na=False)


meta_path = Path(a.covid_dir) / "metadata.csv"
text = render(
    manifest=table(a.manifest),
    excluded=table(a.excluded),
    metadata=read_input_csv(meta_path, dtype=str, keep_default_na=False)
    if meta_path.is_file()
    else None,
    splits={
        name: table(path) for name, path in zip(("train", "val", "test"), a.splits, strict=True)
    },
    n_augmented=len(table(a.augmented)),
    histories={Path(h).stem: pd.read_csv(h) for h in a.histories},
    metrics={Path(m).stem: load(m) for m in a.metrics},
    audit=load(a.audit),
    gradcam=load(a.gradcam),
    viral=load(a.viral),
    within=load(a.within),
    selection=load(a.selection),
    external=load(a.external) if a.external else None,
    image_size=a.image_size,
)
write_text(text, a.out)
print(text)
