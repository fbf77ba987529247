"""Rule compare_protocols: one row per run (protocol, seed) -> reports/protocols/comparison.*.

Every list option holds one file per run, in the order of --protocols / --seeds (cxr.comparison).
Writes only --csv, --markdown and --figure.
"""

import argparse
import json
from pathlib import Path

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--run_protocols", nargs="+", required=True, help="protocol of each run")
p.add_argument("--run_seeds", nargs="+", required=True, help="seed of each run, '-' for none")
p.add_argument("--selections", nargs="+", required=True, help="selection.json per run")
p.add_argument("--train", nargs="+", required=True, help="data/splits/train.csv per run")
p.add_argument("--test", nargs="+", required=True, help="data/splits/test.csv per run")
p.add_argument("--metrics", nargs="+", required=True, help="model_03_test.json per run")
p.add_argument("--baselines", nargs="+", required=True, help="audit/baselines.json per run")
p.add_argument("--masked", nargs="+", required=True, help="audit/masked.json per run")
p.add_argument("--within", nargs="+", required=True, help="ieee8023_adult.json per run")
p.add_argument("--external", nargs="*", default=[], help="external.json per run (optional)")
p.add_argument("--protocols", nargs="+", required=True, help="config protocols")
p.add_argument("--dpi", type=int, required=True)
p.add_argument("--csv", required=True)
p.add_argument("--markdown", required=True)
p.add_argument("--figure", required=True)
a = p.parse_args()

import pandas as pd  # noqa: E402

from cxr.comparison import (  # noqa: E402
    comparison_figure,
    comparison_markdown,
    comparison_row,
    comparison_table,
)
from cxr.figures import save_png  # noqa: E402
from cxr.io import write_csv, write_text  # noqa: E402


def load(path):
    return json.loads(Path(path).read_text())


def table(path):
    return pd.read_csv(path, dtype={"patient_id": str})


n = len(a.run_protocols)
lists = [a.run_seeds, a.selections, a.train, a.test, a.metrics, a.baselines, a.masked, a.within]
if any(len(x) != n for x in lists) or (a.external and len(a.external) != n):
    p.error("every per-run option needs one file per run")
rows, descriptions = [], {}
for i, protocol in enumerate(a.run_protocols):
    selection = load(a.selections[i])
    descriptions[protocol] = selection["description"]
    rows.append(
        comparison_row(
            protocol=protocol,
            seed=None if a.run_seeds[i] == "-" else int(a.run_seeds[i]),
            train=table(a.train[i]),
            test=table(a.test[i]),
            metrics=load(a.metrics[i]),
            baselines=load(a.baselines[i]),
            masked=load(a.masked[i]),
            within=load(a.within[i]),
            selection=selection,
            external=load(a.external[i]) if a.external else None,
        )
    )
frame = comparison_table(rows, external=bool(a.external))
level = f"{load(a.metrics[0]).get('confidence', 0.95):.0%}"
write_csv(frame, a.csv)
text = comparison_markdown(frame, descriptions, level)
write_text(text, a.markdown)
save_png(comparison_figure(frame), a.figure, a.dpi)
print(text)
