"""Rule manifest: raw folders -> data/interim/manifest.csv and excluded.csv (with reasons)."""

import argparse

from cxr.manifest import build_manifest, write_csv

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--covid", required=True, help="acquired covid-chestxray-dataset folder")
p.add_argument("--kermany", required=True, help="acquired chest_xray folder")
p.add_argument("--manifest", required=True)
p.add_argument("--excluded", required=True)
p.add_argument("--covid_findings", nargs="+", required=True)
p.add_argument("--modality", required=True)
p.add_argument("--views", nargs="+", required=True)
p.add_argument("--min_side", type=int, required=True)
p.add_argument("--max_pixels", type=int, required=True)
a = p.parse_args()
df, ex = build_manifest(
    a.covid,
    a.kermany,
    covid_findings=a.covid_findings,
    modality=a.modality,
    views=a.views,
    min_side=a.min_side,
    max_pixels=a.max_pixels,
)
write_csv(df, a.manifest)
write_csv(ex, a.excluded)
print(df.groupby("label").agg(images=("path", "size"), patients=("patient_id", "nunique")))
print(f"excluded {len(ex)}:\n{ex['reason'].value_counts().to_string()}")
