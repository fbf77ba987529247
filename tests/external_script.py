"""One home for running ``scripts/external.py table`` in tests (three test modules do)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_table(tmp_path: Path, model: Path, csv: Path, *extra: str, max_pixels: int = 50_000_000):
    """Run the external script in table mode on ``csv`` against an empty run (the overlap
    guard compares with nothing); return ``(process, outputs)``, outputs a dict of the paths
    it may write (``json``, ``csv``, ``errors``, ``png``, ``overlaps``)."""
    out = {k: tmp_path / f"out.{k}" for k in ("json", "csv", "errors", "png", "overlaps")}
    split = tmp_path / "empty_split.csv"
    split.write_text("path,label,patient_id,sha256,pixel_sha256,phash\n")
    args = ["table", "--model", str(model), "--metadata", str(csv), *extra]
    args += ["--metrics", str(out["json"]), "--predictions", str(out["csv"])]
    args += ["--errors", str(out["errors"]), "--figure", str(out["png"]), "--batch_size", "2"]
    args += ["--bootstrap_resamples", "10", "--bootstrap_seed", "0", "--confidence", "0.95"]
    args += ["--calibration_bins", "5", "--dpi", "50", "--min_side", "1"]
    args += ["--max_pixels", str(max_pixels)]
    args += ["--overlaps", str(out["overlaps"]), "--splits", *[str(split)] * 3]
    args += ["--augmented", str(split), "--near_duplicate_distance", "4"]
    args += ["--keep_overlaps", "false"]
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts/external.py"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    return proc, out
