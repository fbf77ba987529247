"""Training speed: a seed-faithful baseline against this pipeline, per stage, on real images.

Usage (from the repository root, in the project's environment)::

    python bench/benchmark.py                  # small: 32 images, 64 px, batch 8 (~2 min)
    python bench/benchmark.py --full           # full size: 64 images, 224 px, batch 32
    python bench/benchmark.py --json out.json  # also write every number as JSON

Both sides train the same model (``cxr.model.build_model``, ImageNet weights from
``--weights`` when the file exists) on the same real images (the first ``--images / 2`` COVID
images of the ieee8023 collection and viral-pneumonia images of Kermany's training set, in
file-name order, from the read-only ``--mirror``), stage by stage (frozen layers, optimiser
and learning rate of ``config.yaml``'s ``train.model_0N``), with ``--threads`` TensorFlow
threads; nothing else should run on the machine.

Sides and variants (``aug`` = real-time augmentation with ``cxr.augment.build_recipe``):

- ``baseline``: the seed's way. A Python generator opens and decodes every image from its
  original file with PIL and resizes it at every epoch (and augments the batch, with aug on);
  Keras ``fit`` on that generator (Keras 3 wraps it in ``tf.data.Dataset.from_generator``
  with ``prefetch(AUTOTUNE)``, so it runs in a tf.data thread ahead of the step); the whole
  network runs every step.
- ``ours``: this pipeline. Images decoded and resized once (the ``preprocess`` store: a
  one-time cost), batches from memory by ``cxr.batches.AugmentedBatches`` (a Keras
  ``PyDataset``: ``--threads`` worker threads build and, with aug on, augment the next batches
  while the step runs, up to 4 batches ahead). Aug off: ``cache_features`` as in
  ``train_stage``: the frozen part runs once per image (one forward pass gives block3_pool,
  block4_pool and block5_pool for all stages: a one-time cost), and each stage trains only
  its tail (``cxr.model.trainable_tail``). Aug on: the whole network on augmented batches.
- ``memory`` (aug on only): the same step as ``ours`` fed with batches augmented beforehand,
  held in memory: the speed the step has when the input pipeline costs nothing.
- ``store`` (aug off only, for reference): the store without the feature cache.

Timing: each variant runs ``--epochs`` epochs of ``--images // --batch_size`` steps (full
batches only); the first epoch includes tracing and starting threads and is reported as a
one-time cost (its excess over a steady epoch); images/s is over the later epochs. Validation,
checkpointing and early stopping are left out on both sides (the same for both; with the cache
validation also gets cheaper, which this leaves out in the baseline's favour).

FLOPs (nominal, per training image): multiply-accumulates counted per layer from the model:
Conv2D ``out_h * out_w * k_h * k_w * c_in * c_out``, Dense ``in * out`` (pooling, ReLU,
batch norm, dropout, softmax not counted); forward = 2 FLOP per MAC of every layer that runs;
backward = 2 x the forward FLOPs of the trainable layers (gradients for inputs and weights).
Achieved GFLOP/s = that x images/s, against a float32 ``tf.linalg.matmul`` of two
``--matmul`` square matrices (best of 5), measured in the same run.

Roofline: a step can also be bound by memory traffic rather than FLOPs. Bytes per training
step are counted for the weights only (activations not counted): the frozen layers' weights
read once (forward), the trainable ones 8 times (forward read, backward read and gradient
write, optimiser reads gradient, slot and weight and writes slot and weight; RMSprop and SGD
with momentum both keep one slot). Memory bandwidth: a float32 ``x + y`` of two
``--stream_mb`` MB tensors (3 x that many bytes moved, best of 5), in the same run. The bound
(images/s) is min(peak / FLOPs, bandwidth / bytes) per image; "of bound" = images/s / bound.

Projection of the full protocol (``--protocol_epochs``, default 10/15/25, on
``--protocol_images`` training images, default 1841: the full mirror's train store):
per stage epochs x images / (images/s) + its one-time costs (model build, first-epoch
excess); for ``ours`` also decoding every image once (``--protocol_store_images``, all splits)
and, aug off, the feature pass over train + validation (``--protocol_val_images``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STAGES = {  # config.yaml train.model_0N (seed protocol); learning rates matter for nothing here
    "model_01": dict(frozen_layers="all", optimizer="rmsprop", learning_rate=1e-3),
    "model_02": dict(frozen_layers=17, optimizer="rmsprop", learning_rate=1e-3),
    "model_03": dict(
        frozen_layers=12, optimizer="sgd", learning_rate=1e-4, momentum=0.9, nesterov=True
    ),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--full", action="store_true", help="full size: 224 px, 64 images, batch 32")
    p.add_argument("--images", type=int, help="half COVID, half viral; default 32 (--full: 64)")
    p.add_argument("--size", type=int, help="image side in px; default 64 (--full: 224)")
    p.add_argument("--batch_size", type=int, help="default 8 (--full: 32, the seed's)")
    p.add_argument(
        "--epochs",
        type=int,
        default=3,
        help="per variant; the first is warm-up (default %(default)s)",
    )
    p.add_argument(
        "--threads", type=int, default=2, help="TF threads and batch workers (default %(default)s)"
    )
    p.add_argument(
        "--matmul", type=int, default=4096, help="side of the peak matmul (default %(default)s)"
    )
    p.add_argument(
        "--stream_mb",
        type=int,
        default=256,
        help="tensor size of the bandwidth x+y (default %(default)s)",
    )
    p.add_argument(
        "--mirror",
        default=str(REPO.parent / "shared" / "data"),
        help="read-only data mirror (default ../shared/data beside the checkout)",
    )
    p.add_argument(
        "--weights",
        default=str(
            REPO.parent / "shared" / "weights" / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
        ),
        help="VGG19 notop .h5 (default in ../shared/weights/; random weights if missing:"
        " same speed, and it says so)",
    )
    p.add_argument(
        "--stages", nargs="+", default=list(STAGES), choices=list(STAGES), help="default: all"
    )
    p.add_argument(
        "--protocol_epochs", type=int, nargs=3, default=[10, 15, 25], help="default %(default)s"
    )
    p.add_argument(
        "--protocol_images", type=int, default=1841, help="training images (default %(default)s)"
    )
    p.add_argument(
        "--protocol_val_images",
        type=int,
        default=178,
        help="validation images (default %(default)s)",
    )
    p.add_argument(
        "--protocol_store_images",
        type=int,
        default=2079,
        help="images decoded, all splits (default %(default)s)",
    )
    p.add_argument("--json", help="write the results here too")
    a = p.parse_args(argv)
    a.images = a.images or (64 if a.full else 32)
    a.size = a.size or (224 if a.full else 64)
    a.batch_size = a.batch_size or (32 if a.full else 8)
    if a.images < a.batch_size or a.epochs < 2:
        p.error("need --images >= --batch_size and --epochs >= 2")
    return a


def real_images(mirror: Path, n: int) -> tuple[list[Path], np.ndarray]:
    """First n/2 ieee8023 COVID-collection images and n - n/2 Kermany viral ones (by name)."""
    covid = sorted((mirror / "covid-chestxray-dataset" / "images").iterdir())
    covid = [p for p in covid if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    viral = sorted((mirror / "chest_xray" / "train" / "PNEUMONIA").glob("*virus*"))
    paths = covid[: n // 2] + viral[: n - n // 2]
    labels = np.array([1] * (n // 2) + [0] * (n - n // 2))
    if len(paths) != n:
        raise SystemExit(f"only {len(paths)} images found under {mirror}")
    return paths, labels


def decode(path: Path, size: int) -> np.ndarray:
    """The seed's loader: PIL open, RGB, bilinear resize to size x size, uint8."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))


def matmul_peak(n: int, repeats: int = 5) -> float:
    """Best float32 GFLOP/s of an n x n matmul (2 n^3 FLOP) in a tf.function."""
    import tensorflow as tf

    a = tf.random.normal((n, n), dtype=tf.float32, seed=1)
    b = tf.random.normal((n, n), dtype=tf.float32, seed=2)
    f = tf.function(lambda: tf.reduce_sum(tf.linalg.matmul(a, b)))
    f().numpy()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f().numpy()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def stream_bandwidth(megabytes: int, repeats: int = 5) -> float:
    """Best GB/s of a float32 ``x + y`` on two tensors of ``megabytes`` MB each in a
    tf.function (reads both, writes the sum: 3 x the bytes), with TensorFlow's threads."""
    import tensorflow as tf

    n = megabytes * 2**20 // 4
    x = tf.random.normal((n,), dtype=tf.float32, seed=1)
    y = tf.random.normal((n,), dtype=tf.float32, seed=2)
    f = tf.function(lambda: tf.add(x, y))
    f()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        z = f()
        z.numpy()[:1]  # wait for it
        best = min(best, time.perf_counter() - t0)
    return 3 * n * 4 / best / 1e9


def weight_bytes_per_step(model) -> float:
    """Bytes of weight traffic in one training step of ``model`` (see the module docstring):
    4 bytes x (frozen weights + 8 x trainable weights), whatever the batch size."""
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    frozen = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    return 4.0 * (frozen + 8 * trainable)


def layer_macs(model) -> list[tuple[str, int, bool]]:
    """``(name, MACs per image, trainable)`` of every Conv2D / Dense layer that runs in
    ``model`` (nested models' layers included), from the layers' kernels and output shapes."""
    import keras

    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out += layer_macs(layer)
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, _ = layer.output.shape
            out.append((layer.name, int(np.prod(layer.kernel.shape)) * h * w, layer.trainable))
        elif isinstance(layer, keras.layers.Dense):
            out.append((layer.name, int(np.prod(layer.kernel.shape)), layer.trainable))
    return out


def train_flops(model) -> float:
    """Nominal FLOPs of one training image through ``model``: 2/MAC forward of every layer,
    plus 2 x the forward FLOPs of the trainable layers for the backward pass."""
    macs = layer_macs(model)
    forward = 2 * sum(m for _, m, _ in macs)
    backward = 2 * 2 * sum(m for _, m, t in macs if t)
    return float(forward + backward)


class EpochTimer:
    """Keras callback factory: wall seconds of each epoch."""

    def __new__(cls):
        import keras

        class _Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seconds = []

            def on_epoch_begin(self, epoch, logs=None):
                self._t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self._t0)

        return _Timer()


def timed_fit(model, data, epochs: int, steps: int | None = None) -> list[float]:
    timer = EpochTimer()
    model.fit(
        data, epochs=epochs, steps_per_epoch=steps, shuffle=False, verbose=0, callbacks=[timer]
    )
    return timer.seconds


def summarise(seconds: list[float], n_images: int) -> dict:
    steady = float(np.mean(seconds[1:]))
    return {
        "epoch_seconds": [round(s, 3) for s in seconds],
        "steady_epoch_s": steady,
        "images_per_s": n_images / steady,
        "warmup_s": max(0.0, seconds[0] - steady),
    }


def machine(a, argv) -> dict:
    """The machine, versions, arguments and command of this run, plus its peak references
    (float32 matmul GFLOP/s, memory bandwidth GB/s), printed as measured."""
    import keras
    import tensorflow as tf

    res = {
        "machine": {
            "cpu": cpu_name(),
            "logical_cpus": __import__("os").cpu_count(),
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "threads": a.threads,
        },
        "args": {k: v for k, v in vars(a).items() if k != "json"},
        "command": " ".join(["python", "bench/benchmark.py", *(argv or sys.argv[1:])]),
    }
    steps = a.images // a.batch_size
    n = steps * a.batch_size
    print(f"{res['machine']}\n{n} images/epoch ({steps} steps of {a.batch_size}), {a.size} px")
    res["matmul_gflops"] = matmul_peak(a.matmul)
    print(f"float32 matmul {a.matmul}^2: {res['matmul_gflops']:.0f} GFLOP/s (peak reference)")
    res["stream_gbps"] = stream_bandwidth(a.stream_mb)
    print(f"float32 x + y of {a.stream_mb} MB: {res['stream_gbps']:.1f} GB/s (memory bandwidth)")
    return res


def baseline_batches(paths, targets, a, augment: bool):
    """The seed's generator: decode from the files every epoch (Keras prefetches it)."""
    from cxr.augment import build_recipe
    from cxr.batches import batch_seed

    steps = a.images // a.batch_size
    epoch = 0
    while True:
        order = np.random.default_rng((1, epoch)).permutation(len(paths))
        for i in range(steps):
            rows = order[i * a.batch_size : (i + 1) * a.batch_size]
            x = np.stack([decode(paths[r], a.size) for r in rows])
            if augment:
                x = build_recipe(batch_seed(1, epoch, i))(images=x)
            yield x, targets[rows]
        epoch += 1


def one_time(paths, weights, a, res) -> tuple[np.ndarray, dict]:
    """Ours, one-time costs: decode + resize every image once (the preprocess store) and one
    forward pass for the three cut layers of all stages. Returns ``(store, features)``."""
    import keras

    from cxr.features import compute_features
    from cxr.model import CACHE_LAYERS, build_model

    t0 = time.perf_counter()
    store = np.stack([decode(p, a.size) for p in paths])
    res["decode_s_per_image"] = (time.perf_counter() - t0) / len(paths)
    keras.utils.set_random_seed(1)
    t0 = time.perf_counter()
    model = build_model(a.size, weights=weights)
    build_s = time.perf_counter() - t0
    compute_features(model, store[: a.batch_size], CACHE_LAYERS, a.batch_size)  # warm-up
    t0 = time.perf_counter()
    features = compute_features(model, store, CACHE_LAYERS, a.batch_size)
    res["features_s_per_image"] = (time.perf_counter() - t0) / len(store)
    res["features_gflop_per_image"] = 2 * sum(m for _, m, _ in layer_macs(model)) / 1e9
    res["build_s"] = build_s
    print(
        f"one-time: decode {res['decode_s_per_image'] * 1e3:.1f} ms/image,"
        f" features {res['features_s_per_image'] * 1e3:.1f} ms/image, model build {build_s:.1f} s"
    )
    return store, features


def pre_augment(store, a) -> dict:
    """The images augmented beforehand, one array per epoch, for the ``memory`` reference."""
    from cxr.augment import build_recipe
    from cxr.batches import batch_seed

    steps = a.images // a.batch_size
    return {
        e: np.concatenate(
            [
                build_recipe(batch_seed(1, e, i))(
                    images=store[i * a.batch_size : (i + 1) * a.batch_size]
                )
                for i in range(steps)
            ]
        )
        for e in range(a.epochs)
    }


def memory_run(model, pre_augmented, targets, a) -> list[float]:
    """Epoch seconds of ``model`` fed the batches augmented beforehand (epoch from a timer)."""
    import keras

    steps = a.images // a.batch_size
    timer = EpochTimer()

    class Memory(keras.utils.PyDataset):
        """Batches of the arrays augmented beforehand (epoch from the timer)."""

        def __init__(self, timer):
            super().__init__(workers=a.threads, use_multiprocessing=False, max_queue_size=4)
            self.timer = timer

        def __len__(self):
            return steps

        def __getitem__(self, i):
            e = min(len(self.timer.seconds), a.epochs - 1)
            sl = slice(i * a.batch_size, (i + 1) * a.batch_size)
            return pre_augmented[e][sl], targets[sl]

    model.fit(Memory(timer), epochs=a.epochs, shuffle=False, verbose=0, callbacks=[timer])
    return timer.seconds


def add_bounds(runs: dict, res: dict) -> None:
    """Add to each run its GFLOP/s, fraction of peak, and the roofline bound it reaches."""
    for r in runs.values():
        r["gflops"] = r["gflop_per_image"] * r["images_per_s"]
        r["of_peak"] = r["gflops"] / res["matmul_gflops"]
        r["bound_images_per_s"] = min(
            res["matmul_gflops"] / r["gflop_per_image"],
            res["stream_gbps"] / r["mb_per_image"] * 1e3,
        )
        r["of_bound"] = r["images_per_s"] / r["bound_images_per_s"]


def run_stage(stage, data, weights, a, res) -> dict:
    """Time every variant of one stage; ``data``: ``(paths, labels, store, features,
    pre_augmented)``. Returns ``{(side, aug): run}``."""
    import keras

    from cxr.batches import AugmentedBatches, one_hot
    from cxr.model import (
        build_model,
        compile_model,
        cut_layer,
        make_optimizer,
        set_frozen,
        trainable_tail,
    )

    paths, labels, store, features, pre_augmented = data
    n = (a.images // a.batch_size) * a.batch_size
    targets = one_hot(labels)
    cfg = STAGES[stage]
    keras.utils.set_random_seed(1)
    model = build_model(a.size, weights=weights)
    set_frozen(model, cfg["frozen_layers"])
    cut = cut_layer(model, cfg["frozen_layers"])
    tail = trainable_tail(model, cfg["frozen_layers"])
    full_cost = cost(train_flops(model), weight_bytes_per_step(model) / a.batch_size)
    tail_cost = cost(train_flops(tail), weight_bytes_per_step(tail) / a.batch_size)

    def opt():
        return make_optimizer(
            cfg["optimizer"],
            cfg["learning_rate"],
            momentum=cfg.get("momentum", 0.0),
            nesterov=cfg.get("nesterov", False),
        )

    runs = {}
    for aug in (False, True):
        compile_model(model, opt())
        s = timed_fit(model, baseline_batches(paths, targets, a, aug), a.epochs, n // a.batch_size)
        runs[("baseline", aug)] = {**summarise(s, n), **full_cost}
        compile_model(model, opt())
        batches = AugmentedBatches(store[:n], labels[:n], a.batch_size, 1, aug, workers=a.threads)
        s = timed_fit(model, batches, a.epochs)
        runs[("ours", True) if aug else ("store", False)] = {**summarise(s, n), **full_cost}
    # aug off, ours: the trainable tail on the cached cut-layer features
    compile_model(tail, opt())
    batches = AugmentedBatches(
        features[cut][:n], labels[:n], a.batch_size, 1, False, workers=a.threads
    )
    runs[("ours", False)] = {**summarise(timed_fit(tail, batches, a.epochs), n), **tail_cost}
    # aug on, memory: the same step on batches augmented beforehand, one array per epoch
    compile_model(model, opt())
    s = memory_run(model, pre_augmented, targets, a)
    runs[("memory", True)] = {**summarise(s, n), **full_cost}
    add_bounds(runs, res)
    res["stages"][stage] = {
        "cut": cut,
        "runs": {f"{side}/{'aug' if aug else 'noaug'}": r for (side, aug), r in runs.items()},
    }
    print_stage(stage, cut, runs, a)
    return runs


def main(argv=None) -> dict:
    a = parse_args(argv)
    from cxr.runtime import configure_threads

    configure_threads(a.threads)
    from cxr.io import write_text

    weights = a.weights if Path(a.weights).is_file() else None
    if weights is None:
        print(f"no weights file at {a.weights}: random VGG19 weights (the same speed)")
    paths, labels = real_images(Path(a.mirror), a.images)
    res = machine(a, argv)
    store, features = one_time(paths, weights, a, res)
    data = (paths, labels, store, features, pre_augment(store, a))
    res["stages"] = {}
    for stage in a.stages:
        run_stage(stage, data, weights, a, res)
    res["projection"] = project(res, a)
    print_projection(res["projection"], a)
    if a.json:
        write_text(json.dumps(res, indent=1), a.json)
    return res


def cost(flops: float, weight_bytes: float) -> dict:
    """Per-image work of a variant: nominal GFLOP and MB of weight traffic."""
    return {"gflop_per_image": flops / 1e9, "mb_per_image": weight_bytes / 1e6}


def print_stage(stage, cut, runs, a):
    print(f"\n{stage} (cut at {cut}), {a.size} px, batch {a.batch_size}")
    head = (
        f"{'aug':<4} {'side':<9} {'img/s':>7} {'s/epoch*':>9} {'warm-up s':>9}"
        f" {'GFLOP/img':>9} {'GFLOP/s':>8} {'of peak':>7} {'MB/img':>7} {'of bound':>8}"
        f" {'vs base':>7}"
    )
    print(head)
    for aug in (False, True):
        base = runs[("baseline", aug)]["images_per_s"]
        for side in ("baseline", "store", "ours", "memory"):
            r = runs.get((side, aug))
            if r is None:
                continue
            print(
                f"{'on' if aug else 'off':<4} {side:<9} {r['images_per_s']:7.2f}"
                f" {a.protocol_images / r['images_per_s']:9.1f} {r['warmup_s']:9.2f}"
                f" {r['gflop_per_image']:9.3f} {r['gflops']:8.1f} {r['of_peak']:7.0%}"
                f" {r['mb_per_image']:7.2f} {r['of_bound']:8.0%} {r['images_per_s'] / base:6.2f}x"
            )
    if ("memory", True) in runs:
        ours, mem = runs[("ours", True)]["images_per_s"], runs[("memory", True)]["images_per_s"]
        print(f"aug on: ours / fed from memory = {ours / mem:.3f}")
    print(f"* s/epoch projected to {a.protocol_images} training images")


def project(res, a) -> dict:
    """Full-protocol seconds per side and aug setting, from per-epoch and one-time costs."""
    out = {}
    for aug in (False, True):
        tag = "aug" if aug else "noaug"
        for side in ("baseline", "ours"):
            total, parts = 0.0, {}
            if side == "ours":
                parts["decode once"] = res["decode_s_per_image"] * a.protocol_store_images
                if not aug:
                    parts["features once"] = res["features_s_per_image"] * (
                        a.protocol_images + a.protocol_val_images
                    )
            for stage, epochs in zip(STAGES, a.protocol_epochs, strict=True):
                if stage not in res["stages"]:
                    continue
                r = res["stages"][stage]["runs"][f"{side}/{tag}"]
                parts[stage] = (
                    epochs * a.protocol_images / r["images_per_s"] + r["warmup_s"] + res["build_s"]
                )
            total = sum(parts.values())
            out[f"{side}/{tag}"] = {"seconds": total, "parts": parts}
        out[f"ratio/{tag}"] = out[f"baseline/{tag}"]["seconds"] / out[f"ours/{tag}"]["seconds"]
    return out


def print_projection(proj, a):
    print(
        f"\nfull protocol ({'/'.join(map(str, a.protocol_epochs))} epochs,"
        f" {a.protocol_images} training images; validation not included):"
    )
    for tag, name in (("noaug", "aug off"), ("aug", "aug on")):
        b, o = proj[f"baseline/{tag}"], proj[f"ours/{tag}"]
        print(
            f"  {name}: baseline {b['seconds'] / 3600:.2f} h, ours {o['seconds'] / 3600:.2f} h,"
            f" baseline / ours = {proj[f'ratio/{tag}']:.2f}x"
        )
        print("    ours: " + ", ".join(f"{k} {v:.0f} s" for k, v in o["parts"].items()))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
