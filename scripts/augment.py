"""Rule augment: grow the training COVID images to augment.target with the imgaug recipe."""

import argparse
from pathlib import Path

import pandas as pd
from PIL import Image

from cxr.augment import augment_one, plan
from cxr.images import load_rgb
from cxr.io import atomic_path, write_csv
from cxr.manifest import COLUMNS, describe_image

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--train", required=True, help="data/splits/train.csv")
p.add_argument("--images", required=True, help="folder for the augmented PNGs")
p.add_argument("--csv", required=True, help="augmented.csv to write")
p.add_argument("--seed", type=int, required=True)
p.add_argument("--target", type=int, required=True)
a = p.parse_args()
train = pd.read_csv(a.train, dtype={"patient_id": str})
covid = train[train["label"] == "covid"].set_index("path")
out = Path(a.images)
out.mkdir(parents=True, exist_ok=True)
rows = []
for index, parent, seed in plan(list(covid.index), a.target, a.seed):
    img = augment_one(load_rgb(parent), seed)
    path = out / f"aug_{index:05d}_{Path(parent).stem}.png"
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp)
    rec = covid.loc[parent]
    # Hashes, size and depth of the augmented file itself (not its parent's): read back
    # through the one loader, as the manifest describes every image.
    keep = {k: rec[k] for k in ("label", "patient_id", "view", "finding")}
    # The parent's age, sex and labels, where its row has them (cxr.manifest.COLUMNS).
    extra = {k: rec[k] for k in ("labels", "age", "age_low", "age_high", "sex") if k in rec}
    row = describe_image(path, source="augmented", **keep, **extra)
    rows.append({**row, "parent": parent, "seed": seed})
write_csv(pd.DataFrame(rows, columns=COLUMNS + ["parent", "seed"]), a.csv)
n_covid, n_aug = len(covid), len(rows)
print(f"augment: {n_covid} training COVID images + {n_aug} augmented = {n_covid + n_aug}")
