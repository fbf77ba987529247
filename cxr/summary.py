"""Test metrics across repeated runs (one per seed): mean and spread.

Reads the metrics JSON files that :mod:`cxr.metrics` writes (one per seed's model_03 on its
own test split) and writes a table; it touches no other file. With a different seed each run
has a different patient-level split, augmentation and initialisation, so the spread shows how
much a single run's numbers depend on those choices, on top of each run's own intervals
(:mod:`cxr.intervals`: patient-counting Wilson and Newcombe).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

#: Reported per run: name -> how to read it from a metrics JSON (cxr.metrics layout).
METRICS = {
    "accuracy": lambda m: m["accuracy"],
    "sensitivity": lambda m: m["sensitivity"],
    "specificity": lambda m: m["specificity"],
    "ppv": lambda m: m["covid"]["precision"],
    "npv": lambda m: m["non_covid"]["precision"],
    "roc_auc": lambda m: m["roc_auc"],
}


def summarize(paths: list, seeds: list[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-run metrics and their summary across runs.

    Parameters
    ----------
    paths : metrics JSON files, one per run, in the order of ``seeds``.
    seeds : the seed of each run.

    Returns
    -------
    (runs, summary) : ``runs`` has one row per seed (``seed, n`` and :data:`METRICS`);
    ``summary`` one row per metric with ``mean``, ``sd`` (sample standard deviation, ddof=1;
    NaN for a single run), ``min``, ``max`` and ``runs`` (how many runs had a value).

    Raises
    ------
    ValueError if ``paths`` and ``seeds`` differ in length.
    """
    if len(paths) != len(seeds):
        raise ValueError(f"{len(paths)} metrics files for {len(seeds)} seeds")
    rows = []
    for seed, path in zip(seeds, paths, strict=True):
        m = json.loads(Path(path).read_text())
        row = {"seed": seed, "n": m["n"]}
        for name, get in METRICS.items():
            value = get(m)
            row[name] = math.nan if value is None else float(value)
        rows.append(row)
    runs = pd.DataFrame(rows)
    values = runs[list(METRICS)]
    summary = pd.DataFrame(
        {
            "metric": list(METRICS),
            "mean": values.mean().to_numpy(),
            "sd": values.std(ddof=1).to_numpy(),
            "min": values.min().to_numpy(),
            "max": values.max().to_numpy(),
            "runs": values.notna().sum().to_numpy(),
        }
    )
    return runs, summary


def to_markdown(runs: pd.DataFrame, summary: pd.DataFrame) -> str:
    """The two tables as Markdown (3 decimals), with a one-line reading guide."""

    def table(df):
        cols = list(df.columns)
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for rec in df.itertuples(index=False):
            cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in rec]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    return (
        f"# model_03 on test, {len(runs)} seeds\n\n"
        "Each seed re-draws the patient-level split, the augmentation and the training seed. "
        "sd is the sample standard deviation across seeds.\n\n"
        f"## Per seed\n\n{table(runs)}\n\n## Across seeds\n\n{table(summary)}\n"
    )
