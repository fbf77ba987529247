"""Rule split: manifest.csv -> data/splits/{train,val,test}.csv (patient-level, seeded)."""

import argparse

import pandas as pd

from cxr.cli import optional
from cxr.io import write_csv
from cxr.split import SPLITS, split_manifest

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--manifest", required=True)
p.add_argument("--near_duplicates", required=True, help="near_duplicates.csv (links patients)")
p.add_argument("--out", nargs=3, required=True, help="train.csv val.csv test.csv to write")
p.add_argument("--seed", type=int, required=True)
p.add_argument("--test_per_class", type=int, required=True)
p.add_argument("--val_fraction", type=float, required=True)
p.add_argument("--max_per_class", type=optional(int), help="cap per class (default: none)")
a = p.parse_args()
splits = split_manifest(
    pd.read_csv(a.manifest, dtype={"patient_id": str}),
    pd.read_csv(a.near_duplicates),
    seed=a.seed,
    test_per_class=a.test_per_class,
    val_fraction=a.val_fraction,
    max_per_class=a.max_per_class,
)
for name, path in zip(SPLITS, a.out, strict=True):
    write_csv(splits[name], path)
    counts = splits[name].groupby("label")["patient_id"].agg(["size", "nunique"])
    print(f"{name}: images/patients per class\n{counts.to_string()}")
