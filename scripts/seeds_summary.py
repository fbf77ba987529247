"""Rule seeds_summary: model_03 test metrics of every seed's run -> mean and spread."""

import argparse

from cxr.io import write_csv, write_text
from cxr.summary import summarize, to_markdown

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--metrics", nargs="+", required=True, help="one metrics JSON per seed")
p.add_argument("--seeds", nargs="+", type=int, required=True, help="the seeds, same order")
p.add_argument("--csv", required=True, help="summary table to write (CSV)")
p.add_argument("--markdown", required=True, help="both tables (Markdown)")
a = p.parse_args()
runs, summary = summarize(a.metrics, a.seeds)
write_csv(summary, a.csv)
write_text(to_markdown(runs, summary), a.markdown)
print(to_markdown(runs, summary))
