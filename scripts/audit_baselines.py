"""Rule audit_baselines: blind baselines (thumbnail; width, height and mode) -> test ROC AUC.

Entry point shared by Snakemake and DVC; options named like the config keys (sections
``audit`` and ``evaluate``). Trains on the training split, scores the test split
(:func:`cxr.audit.blind_baselines`); writes only --out (JSON). No TensorFlow.
"""

import argparse

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--train_store", required=True, help="data/store/train.npz")
p.add_argument("--test_store", required=True, help="data/store/test.npz")
p.add_argument("--train", required=True, help="data/splits/train.csv")
p.add_argument("--test", required=True, help="data/splits/test.csv")
p.add_argument("--out", required=True, help="output JSON")
p.add_argument("--thumbnail_size", type=int, required=True)
p.add_argument("--bootstrap_resamples", type=int, required=True)
p.add_argument("--bootstrap_seed", type=int, required=True)
p.add_argument("--confidence", type=float, required=True)
a = p.parse_args()

import pandas as pd  # noqa: E402

from cxr.audit import blind_baselines  # noqa: E402
from cxr.io import write_json  # noqa: E402
from cxr.metrics import format_interval  # noqa: E402
from cxr.store import load_store  # noqa: E402

test_store = load_store(a.test_store)
test = pd.read_csv(a.test, dtype={"patient_id": str})
if list(test["path"]) != list(test_store["paths"]):
    raise SystemExit(f"{a.test} rows do not match {a.test_store} (paths differ)")
result = blind_baselines(
    load_store(a.train_store),
    test_store,
    pd.read_csv(a.train, dtype={"patient_id": str}),
    test,
    thumbnail_size=a.thumbnail_size,
    n_resamples=a.bootstrap_resamples,
    seed=a.bootstrap_seed,
    confidence=a.confidence,
)
write_json(result, a.out)
for name, r in result.items():
    print(f"{name}: test ROC AUC {format_interval(r['roc_auc'])} ({r['description']})")
