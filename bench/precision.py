"""Throughput of float32 against mixed precision, per training stage and for inference.

Usage (from the repository root, in the project's environment)::

    python bench/precision.py                      # 224 px, batch 16, 2 warm-up + 4 timed steps
    python bench/precision.py --image_size 64 --steps 2 --json out.json

Prints which policy ``auto`` picks here (:func:`cxr.runtime.resolve_precision`, with its
reason), then measures ``float32`` and that policy (or ``--mixed``, when ``auto`` picks
float32 or to compare another) in one invocation, each policy in a fresh Python process
(TensorFlow's thread pools and the dtype policy are process-wide), one after the other, with
``--threads`` TensorFlow threads; nothing else should run on the machine (wall time).

What is timed, per policy, on ``--batch_size`` random uint8 images (speed does not depend on
the pixels) with the VGG19 ImageNet weights of ``--weights`` when the file exists:

- ``model_01`` .. ``model_03``: ``train_on_batch`` of the whole classifier
  (``cxr.model.build_model``), frozen and optimised as config.yaml's ``train.model_0N``
  (real-time augmentation on, the default: the whole network runs every step);
- ``features``: the feature cache's forward pass (``cxr.model.feature_extractor`` of
  ``CACHE_LAYERS``), ``predict_on_batch``;
- ``inference``: ``predict_on_batch`` of the classifier (evaluation, external scoring,
  ``cxr-predict``).

FLOPs per image are counted as in ``bench/benchmark.py`` (``train_flops``, ``layer_macs``:
2 per multiply-accumulate forward, twice that backward for the trainable layers); achieved
GFLOP/s = that x images/s. The peak of each policy is a ``tf.linalg.matmul`` of two
``--matmul`` square matrices in its compute dtype (float32; bfloat16 for ``mixed_bfloat16``,
float16 for ``mixed_float16``), best of 5, measured in the same process: the FLOP roofline's
line for that precision.

Each runs ``--warmup`` untimed steps (tracing, oneDNN kernel selection) and then ``--steps``
timed ones; images/s = batch x steps / seconds. The ratio is mixed / float32 images/s of the
same task, both measured in this run. Short runs on a shared machine give upper bounds on
the time (lower bounds on the speed); ``docs/performance.md`` has the numbers and the
roofline.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASKS = ("model_01", "model_02", "model_03", "features", "inference")


def measure(policy: str, a) -> dict:
    """Images/s of every task of :data:`TASKS` under ``policy`` (in this process)."""
    import numpy as np
    import yaml

    from cxr.runtime import configure_threads

    configure_threads(a.threads)
    import keras

    from cxr.model import (
        CACHE_LAYERS,
        build_model,
        compile_model,
        feature_extractor,
        make_optimizer,
        set_frozen,
    )

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchmark import layer_macs, train_flops

    from cxr.model import base_of

    train = yaml.safe_load((REPO / "config.yaml").read_text())["train"]
    weights = a.weights if a.weights and Path(a.weights).is_file() else None
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (a.batch_size, a.image_size, a.image_size, 3), dtype=np.uint8)
    y = np.eye(2, dtype="float32")[np.arange(a.batch_size) % 2]

    def rate(step) -> float:
        for _ in range(a.warmup):
            step()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            step()
        return a.batch_size * a.steps / (time.perf_counter() - t0)

    out, flops = {}, {}
    for stage in TASKS[:3]:
        s = train[stage]
        keras.backend.clear_session()
        keras.config.set_dtype_policy(policy)
        model = build_model(a.image_size, weights=weights)
        set_frozen(model, s["frozen_layers"])
        opt = make_optimizer(
            s["optimizer"], s["learning_rate"], s["decay"], s["momentum"], s["nesterov"]
        )
        compile_model(model, opt)
        out[stage] = rate(lambda m=model: m.train_on_batch(x, y))
        flops[stage] = train_flops(model)
        print(f"  {policy} {stage}: {out[stage]:.2f} img/s", file=sys.stderr, flush=True)
    extractor = feature_extractor(model, CACHE_LAYERS)
    out["features"] = rate(lambda: extractor.predict_on_batch(x))
    out["inference"] = rate(lambda: model.predict_on_batch(x))
    flops["features"] = 2.0 * sum(m for _, m, _ in layer_macs(base_of(model)))
    flops["inference"] = 2.0 * sum(m for _, m, _ in layer_macs(model))
    probs = model.predict_on_batch(x)
    out["output_dtype"] = str(np.asarray(probs).dtype)
    out["gflop_per_image"] = {task: f / 1e9 for task, f in flops.items()}
    compute = keras.DTypePolicy(policy).compute_dtype
    out["matmul_gflops"] = matmul_peak(a.matmul, compute)
    out["matmul_dtype"] = compute
    return out


def matmul_peak(n: int, dtype: str, repeats: int = 5) -> float:
    """Best GFLOP/s of an n x n ``tf.linalg.matmul`` (2 n^3 FLOP) in ``dtype``, in a
    tf.function (as ``bench/benchmark.py``'s float32 peak)."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal((n, n), seed=1), dtype)
    b = tf.cast(tf.random.normal((n, n), seed=2), dtype)
    f = tf.function(lambda: tf.reduce_sum(tf.cast(tf.linalg.matmul(a, b), tf.float32)))
    f().numpy()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f().numpy()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per task")
    p.add_argument("--steps", type=int, default=4, help="timed steps per task")
    p.add_argument("--threads", type=int, default=2, help="TensorFlow threads")
    p.add_argument(
        "--weights",
        default=str(
            REPO.parent / "shared" / "weights" / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
        ),
        help="VGG19 notop .h5 (random weights when the file does not exist)",
    )
    p.add_argument("--matmul", type=int, default=4096, help="side of the peak matmul")
    p.add_argument("--mixed", default=None, help="policy to compare (default: what auto picks)")
    p.add_argument("--json", default=None, help="also write every number here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one policy, JSON out
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(measure(a.child, a)))
        return 0

    from cxr.runtime import resolve_precision

    auto, reason = resolve_precision("auto")
    print(f"auto picks {auto} ({reason})")
    mixed = a.mixed or (auto if auto != "float32" else "mixed_bfloat16")
    rates = {}
    for policy in ("float32", mixed):
        args = [f"--{k}={v}" for k, v in vars(a).items() if v is not None and k != "json"]
        cmd = [sys.executable, __file__, *args, f"--child={policy}"]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode:
            sys.stderr.write(run.stderr[-4000:])
            return run.returncode
        rates[policy] = json.loads(run.stdout.strip().splitlines()[-1])
    print(
        f"VGG19 at {a.image_size} px, batch {a.batch_size}, {a.threads} threads,"
        f" {a.warmup} warm-up + {a.steps} timed steps per task; {platform.machine()}"
    )
    peaks = {policy: r["matmul_gflops"] for policy, r in rates.items()}
    for policy, r in rates.items():
        print(
            f"matmul peak ({r['matmul_dtype']} {a.matmul}^2, {policy}): {peaks[policy]:.0f} GFLOP/s"
        )
    head = f"{'task':<10} {'GFLOP/img':>9} {'float32 img/s':>14} {'of peak':>8}"
    print(f"{head} {mixed + ' img/s':>21} {'of peak':>8} {'ratio':>7}")
    for task in TASKS:
        gflop = rates["float32"]["gflop_per_image"][task]
        f32, mix = rates["float32"][task], rates[mixed][task]
        of = [f32 * gflop / peaks["float32"], mix * gflop / peaks[mixed]]
        print(
            f"{task:<10} {gflop:>9.2f} {f32:>14.2f} {of[0]:>8.0%} {mix:>21.2f} {of[1]:>8.0%}"
            f" {mix / f32:>6.2f}x"
        )
    print("output dtype:", {k: v["output_dtype"] for k, v in rates.items()})
    if a.json:
        record = {"auto": auto, "reason": reason, "mixed": mixed, "settings": vars(a)}
        Path(a.json).write_text(json.dumps({**record, "images_per_s": rates}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
