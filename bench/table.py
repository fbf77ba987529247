"""The Markdown tables of docs/performance.md from a results file of ``benchmark.py --json``.

Usage (from the repository root)::

    python bench/table.py bench/results/full-224px-2026-11-29-2144.json

Prints the one-time costs, the per-stage table (images/s, seconds per epoch projected to the
full training split, GFLOP/s and share of the matmul peak, weight traffic and share of the
roofline bound, ratio to the baseline) and the projected protocol, every number read from the
file (``benchmark.py``'s docstring says how each was measured).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SIDES = ("baseline", "store", "ours", "memory")


def tables(res: dict) -> str:
    """Markdown for one results dict (the JSON ``benchmark.main`` returns and writes)."""
    args = res["args"]
    n = args["protocol_images"]
    lines = [
        f"Matmul peak (float32 {args['matmul']}²): **{res['matmul_gflops']:.0f} GFLOP/s**;"
        f" memory bandwidth (float32 x + y, {args['stream_mb']} MB):"
        f" **{res['stream_gbps']:.1f} GB/s**. One-time: decoding"
        f" {res['decode_s_per_image'] * 1e3:.1f} ms/image; feature pass"
        f" {res['features_s_per_image'] * 1e3:.0f} ms/image"
        f" ({res['features_gflop_per_image']:.1f} GFLOP,"
        f" {res['features_gflop_per_image'] / res['features_s_per_image']:.0f} GFLOP/s);"
        f" model build + weights {res['build_s']:.1f} s per stage.",
        "",
        f"| stage | aug | side | images/s | s/epoch ({n} img) | first-epoch extra s"
        " | GFLOP/img | GFLOP/s | of peak | MB/img | of bound | vs baseline |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for stage, entry in res["stages"].items():
        runs = entry["runs"]
        for aug in ("noaug", "aug"):
            base = runs[f"baseline/{aug}"]["images_per_s"]
            for side in SIDES:
                r = runs.get(f"{side}/{aug}")
                if r is None:
                    continue
                lines.append(
                    f"| {stage} | {'on' if aug == 'aug' else 'off'} | {side}"
                    f" | {r['images_per_s']:.2f} | {n / r['images_per_s']:.0f}"
                    f" | {r['warmup_s']:.1f} | {r['gflop_per_image']:.2f} | {r['gflops']:.0f}"
                    f" | {r['of_peak']:.0%} | {r['mb_per_image']:.1f} | {r['of_bound']:.0%}"
                    f" | {r['images_per_s'] / base:.2f}x |"
                )
    proj = res["projection"]
    epochs = "/".join(map(str, args["protocol_epochs"]))
    lines += [
        "",
        f"| full protocol ({epochs} epochs, {n} images) | baseline | ours | baseline / ours |",
        "|---|---:|---:|---:|",
    ]
    for aug, label in (("noaug", "aug off"), ("aug", "aug on")):
        b, o = proj[f"baseline/{aug}"]["seconds"], proj[f"ours/{aug}"]["seconds"]
        lines.append(f"| {label} | {b / 3600:.2f} h | {o / 3600:.2f} h | {b / o:.2f}x |")
    lines.append("")
    for key in ("baseline/noaug", "ours/noaug", "baseline/aug", "ours/aug"):
        parts = ", ".join(f"{k} {v:.0f} s" for k, v in proj[key]["parts"].items())
        lines.append(f"{key}: {parts}  ")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("results", help="JSON written by benchmark.py --json")
    a = p.parse_args(argv)
    print(tables(json.loads(Path(a.results).read_text())))


if __name__ == "__main__":
    main()
