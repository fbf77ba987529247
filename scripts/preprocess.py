"""Rule preprocess: decode every split image once, resize, write data/store/{split}.npz."""

import argparse
from pathlib import Path

import pandas as pd

from cxr.split import SPLITS
from cxr.store import preprocess_rows, save_store

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--splits", required=True, help="folder with train.csv, val.csv, test.csv")
p.add_argument("--augmented", required=True, help="augmented.csv (added to train)")
p.add_argument("--outdir", required=True)
p.add_argument("--image_size", type=int, required=True)
a = p.parse_args()
for name in SPLITS:
    rows = pd.read_csv(Path(a.splits) / f"{name}.csv", dtype={"patient_id": str})
    if name == "train":
        aug = pd.read_csv(a.augmented, dtype={"patient_id": str})
        rows = pd.concat([rows, aug[rows.columns]], ignore_index=True)
    store = preprocess_rows(rows, a.image_size)
    save_store(Path(a.outdir) / f"{name}.npz", **store)
    print(f"preprocess {name}: {store['images'].shape} labels={store['labels'].sum()} covid")
