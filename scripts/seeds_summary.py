"""Rule seeds_summary: model_03 test metrics of every seed's run -> mean and spread."""

import argparse
from pathlib import Path

from cxr.summary import summarize, to_markdown

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--metrics", nargs="+", required=True, help="one metrics JSON per seed")
p.add_argument("--seeds", nargs="+", type=int, required=True, help="the seeds, same order")
p.add_argument("--csv", required=True, help="summary table to write (CSV)")
p.add_argument("--markdown", required=True, help="both tables (Markdown)")
a = p.parse_args()
runs, summary = summarize(a.metrics, a.seeds)
Path(a.csv).parent.mkdir(parents=True, exist_ok=True)
summary.to_csv(a.csv, index=False, lineterminator="\n")
Path(a.markdown).write_text(to_markdown(runs, summary))
print(to_markdown(runs, summary))
