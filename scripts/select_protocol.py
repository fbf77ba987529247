"""Rule select: manifest.csv -> one protocol's selected.csv, selection_excluded.csv, counts.

(Not scripts/select.py: a script's folder comes first on sys.path, and that name would hide
the standard library's ``select`` module from everything the script imports.)

Entry point shared by Snakemake and DVC (cxr.protocols, docs/protocols.md). --definition is
the protocol's entry of config ``protocol_definitions`` as JSON. Writes --selected (the
manifest rows the protocol puts in a class, labelled by it), --excluded (every other row with
a reason), --counts (images and patients per source, class and age group, unknown ages
included) and --summary (JSON: name, description, images per class, exclusions per reason).
A protocol that cannot be used (unknown key, a class that comes out empty) exits 1 naming it.
"""

import argparse
import json
import sys

import pandas as pd

from cxr.io import write_csv, write_json
from cxr.protocols import ProtocolError, apply_protocol, count_selection, load_protocol

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--manifest", required=True, help="data/interim/manifest.csv")
p.add_argument("--protocol", required=True, help="name of the protocol")
p.add_argument("--definition", required=True, help="the protocol's definition, JSON")
p.add_argument("--selected", required=True, help="output CSV (the manifest's columns)")
p.add_argument("--excluded", required=True, help="output CSV (path, ..., reason, detail)")
p.add_argument("--counts", required=True, help="output CSV of count_selection")
p.add_argument("--summary", required=True, help="output JSON")
a = p.parse_args()
manifest = pd.read_csv(a.manifest, dtype={"patient_id": str})
try:
    protocol = load_protocol({a.protocol: json.loads(a.definition)}, a.protocol)
    selected, excluded = apply_protocol(manifest, protocol)
except ProtocolError as err:
    sys.exit(f"ERROR: {err}")
counts = count_selection(selected)
write_csv(selected, a.selected)
write_csv(excluded, a.excluded)
write_csv(counts, a.counts)
by_class = selected.groupby("label").agg(
    images=("path", "size"), patients=("patient_id", "nunique")
)
write_json(
    {
        "protocol": protocol.name,
        "description": protocol.description,
        "classes": {
            str(label): {"images": int(row.images), "patients": int(row.patients)}
            for label, row in by_class.iterrows()
        },
        "counts": json.loads(counts.to_json(orient="records")),
        "excluded": {str(k): int(v) for k, v in excluded["reason"].value_counts().items()},
    },
    a.summary,
)
print(f"protocol {protocol.name}: {len(selected)} selected, {len(excluded)} excluded")
print(counts.to_string(index=False))
print(excluded["reason"].value_counts().to_string())
