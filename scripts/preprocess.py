"""Rule preprocess: decode every split image once, resize, write data/store/{split}.npz."""

import argparse

import pandas as pd

from cxr.split import SPLITS
from cxr.store import preprocess_rows, save_store

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--splits", nargs=3, required=True, help="train.csv val.csv test.csv")
p.add_argument("--augmented", required=True, help="augmented.csv (added to train)")
p.add_argument("--out", nargs=3, required=True, help="train.npz val.npz test.npz to write")
p.add_argument("--image_size", type=int, required=True)
a = p.parse_args()
for name, csv, out in zip(SPLITS, a.splits, a.out, strict=True):
    rows = pd.read_csv(csv, dtype={"patient_id": str})
    if name == "train":
        aug = pd.read_csv(a.augmented, dtype={"patient_id": str})
        rows = pd.concat([rows, aug[rows.columns]], ignore_index=True)
    store = preprocess_rows(rows, a.image_size)
    save_store(out, **store)
    print(f"preprocess {name}: {store['images'].shape} labels={store['labels'].sum()} covid")
