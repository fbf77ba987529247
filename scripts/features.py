"""Rule features: the frozen part of VGG19 run once per image, for every training stage.

With the feature cache on (``--cache_features true --realtime_augmentation false``, config
``train``): computes, for each split store given, the outputs of ``cxr.model.CACHE_LAYERS``
(block3_pool, block4_pool, block5_pool) of the ImageNet VGG19 base in one forward pass per
image, and writes them with their frozen-weights digests (``cxr.features.save_features``).
Stage 1 trains the head on block5_pool, stage 2 block 5 + head on block4_pool, stage 3
blocks 4-5 + head on block3_pool (``scripts/train.py --features ...``); each stage checks the
digest against its own starting model and computes its features itself where they do not fit.

With the cache off (real-time augmentation on: every epoch sees new images), writes a small
file per store that says so, without starting TensorFlow: the rule and its outputs exist in
every configuration, so Snakemake and DVC (which has no optional stages) run the same DAG.
"""

import argparse
import sys

from cxr.cli import boolean
from cxr.runtime import PRECISION_OPTION

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--stores", nargs="+", required=True, help="split stores (.npz)")
p.add_argument("--pretrained", required=True, help="VGG19 ImageNet notop weights (.h5)")
p.add_argument("--out", nargs="+", required=True, help="one feature file (.npz) per store")
p.add_argument("--cache_features", type=boolean, required=True, help="train.cache_features")
p.add_argument(
    "--realtime_augmentation", type=boolean, required=True, help="train.realtime_augmentation"
)
p.add_argument("--layers", nargs="+", default=None, help="base layers (default: CACHE_LAYERS)")
p.add_argument("--batch_size", type=int, default=32, help="images per forward pass")
p.add_argument("--threads", type=int, default=1, help="TF thread pools")
p.add_argument("--precision", **PRECISION_OPTION)
a = p.parse_args()
if len(a.out) != len(a.stores):
    p.error(f"--out needs one path per store: {len(a.stores)} stores, {len(a.out)} paths")
sys.stdout.reconfigure(line_buffering=True)

from cxr.features import feature_cache_off, save_features  # noqa: E402

off = feature_cache_off(a.cache_features, a.realtime_augmentation)
if off is not None:
    for out in a.out:
        save_features(out, {}, [], {}, None, off=off)
        print(f"{out}: feature cache off ({off})")
    sys.exit(0)

from cxr.runtime import apply_precision, configure_threads  # noqa: E402

configure_threads(a.threads)
apply_precision(a.precision)

import time  # noqa: E402

from cxr.features import compute_features  # noqa: E402
from cxr.model import CACHE_LAYERS, base_of, build_model, frozen_digest  # noqa: E402
from cxr.sources import file_hash  # noqa: E402
from cxr.store import load_store  # noqa: E402

layers = a.layers or list(CACHE_LAYERS)
model = None
for store_path, out in zip(a.stores, a.out, strict=True):
    store = load_store(store_path)
    if model is None:  # the base is loaded once for all stores
        model = build_model(store["images"].shape[1], weights=a.pretrained)
        names = [layer.name for layer in base_of(model).layers]
        digests = {name: frozen_digest(model, names.index(name) + 1) for name in layers}
    t0 = time.perf_counter()
    features = compute_features(model, store["images"], layers, a.batch_size)
    seconds = time.perf_counter() - t0
    save_features(out, features, store["labels"], digests, file_hash(store_path))
    shapes = {name: x.shape for name, x in features.items()}
    print(f"{store_path} -> {out}: {len(store['labels'])} images, {seconds:.1f} s, {shapes}")
