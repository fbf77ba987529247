"""Rule manifest: raw folders -> data/interim/manifest.csv and excluded.csv (with reasons).

A metadata table that is not UTF-8 or lacks a required column is refused (exit 1, naming the
file and the line or column); nothing is written then.
"""

import argparse
import sys

from cxr.io import InputEncodingError, write_csv
from cxr.manifest import MetadataError, build_manifest, near_duplicates

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--covid", required=True, help="acquired covid-chestxray-dataset folder")
p.add_argument("--kermany", required=True, help="acquired chest_xray folder")
p.add_argument("--nih", default="", help="acquired NIH controls folder (default: none)")
p.add_argument("--manifest", required=True)
p.add_argument("--excluded", required=True)
p.add_argument("--near_duplicates", required=True, help="near_duplicates.csv to write")
p.add_argument("--covid_findings", nargs="+", required=True)
p.add_argument("--modality", required=True)
p.add_argument("--views", nargs="+", required=True)
p.add_argument("--min_side", type=int, required=True)
p.add_argument("--max_pixels", type=int, required=True)
p.add_argument("--near_duplicate_distance", type=int, required=True, help="phash bits")
a = p.parse_args()
try:
    df, ex = build_manifest(
        a.covid,
        a.kermany,
        nih_dir=a.nih or None,
        covid_findings=a.covid_findings,
        modality=a.modality,
        views=a.views,
        min_side=a.min_side,
        max_pixels=a.max_pixels,
    )
except (InputEncodingError, MetadataError) as err:
    sys.exit(f"ERROR: {err}")
write_csv(df, a.manifest)
write_csv(ex, a.excluded)
near = near_duplicates(df, a.near_duplicate_distance)
write_csv(near, a.near_duplicates)
print(df.groupby("label").agg(images=("path", "size"), patients=("patient_id", "nunique")))
across_patients, across_labels = int((~near.same_patient).sum()), int((~near.same_label).sum())
print(
    f"near-duplicate pairs (phash distance <= {a.near_duplicate_distance}): {len(near)},"
    f" {across_patients} across patients, {across_labels} across labels"
)
print(f"excluded {len(ex)}:\n{ex['reason'].value_counts().to_string()}")
print(f"bit depths: {df['bit_depth'].value_counts().sort_index().to_dict()}")
warned = df[df["warning"] != ""]
print(f"images kept with a range warning: {len(warned)}")
for rec in warned.itertuples():
    print(f"  {rec.path}: {rec.warning}")
