"""Rule train_model_0N: train one stage of the VGG19 classifier on the split store.

Entry point shared by Snakemake and DVC: every parameter is a command-line option named like
its config key (config.yaml, section ``train`` and ``train.model_0N``). Writes --model and
--history (via temporary names) and, while training, a backup beside the model
(``<model dir>/.backup/<model stem>/``, removed at the end). Stage 1 starts from --pretrained
(the VGG19 ImageNet notop .h5), later stages from --init (the previous stage's .keras).

Killed at any point (``kill -9``, a SLURM time limit or preemption), the same command run
again resumes after the last completed epoch (``cxr.train.train_stage``); with another
--precision (config ``runtime.precision``, ``auto`` resolved and logged here) or --threads it
refuses, naming both. Trains on every GPU
it sees (``--devices auto``): several -> ``MirroredStrategy``, the global --batch_size split
evenly over them.

With ``--realtime_augmentation false --cache_features true`` the frozen part of the network runs
once per image and only the trainable part is trained, on its outputs (``--features``: the
caches of ``scripts/features.py``; without it they are computed here, in memory); equal to
training the whole network within float rounding. ``--cache_features`` defaults to false.
"""

import argparse
import os
import sys

from cxr.cli import boolean, optional
from cxr.runtime import PRECISION_OPTION


def frozen(text: str) -> int | str:
    """'all' or an int: how many base layers to freeze."""
    return "all" if text == "all" else int(text)


def device_list(text: str) -> str | list[str]:
    """'auto', or comma-separated TensorFlow device names ('/gpu:0,/gpu:1')."""
    if text == "auto":
        return text
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected 'auto' or device names, got {text!r}")
    return names


p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--train", required=True, help="train store (.npz)")
p.add_argument("--val", required=True, help="validation store (.npz)")
start = p.add_mutually_exclusive_group(required=True)
start.add_argument("--pretrained", help="VGG19 ImageNet notop weights (.h5), stage 1")
start.add_argument("--init", help="previous stage's model (.keras), stages 2-3")
p.add_argument("--model", required=True, help="output .keras (best checkpoint)")
p.add_argument("--history", required=True, help="output per-epoch CSV")
p.add_argument("--threads", type=int, default=1, help="TF thread pools and batch workers")
p.add_argument("--seed", type=int, required=True)
p.add_argument("--batch_size", type=int, required=True)
p.add_argument("--realtime_augmentation", type=boolean, required=True)
p.add_argument(
    "--dense_units",
    type=int,
    nargs=2,
    default=[1024, 512],
    help="head: built with these (--pretrained), or --init's head must have them",
)
p.add_argument("--dropout", type=float, nargs=2, default=[0.5, 0.3], help="as --dense_units")
p.add_argument("--early_stopping_monitor", required=True)
p.add_argument("--patience", type=optional(int), help="epochs; not given: no early stopping")
p.add_argument("--checkpoint_monitor", required=True)
p.add_argument("--epochs", type=int, required=True)
p.add_argument("--frozen_layers", type=frozen, required=True, help="'all' or an int")
p.add_argument("--optimizer", choices=["rmsprop", "sgd"], required=True)
p.add_argument("--learning_rate", type=float, required=True)
p.add_argument("--decay", type=float, required=True)
p.add_argument("--momentum", type=float, required=True)
p.add_argument("--nesterov", type=boolean, required=True)
p.add_argument(
    "--devices",
    type=device_list,
    default="auto",
    help="'auto' (every visible GPU; MirroredStrategy when several) or device names",
)
p.add_argument(
    "--gpus",
    type=int,
    default=0,
    help="GPUs the job asked the scheduler for (train.gpus): a warning when fewer are visible",
)
p.add_argument(
    "--cache_features",
    type=boolean,
    default=False,
    help="with --realtime_augmentation false: train only the trainable part on the frozen"
    " part's outputs, computed once (train.cache_features)",
)
p.add_argument(
    "--features",
    nargs=2,
    default=None,
    metavar=("TRAIN", "VAL"),
    help="feature caches of the features rule (scripts/features.py) for --cache_features;"
    " default, or when they do not fit this stage: computed here",
)
p.add_argument("--precision", **PRECISION_OPTION)
a = p.parse_args()
# One line at a time into the log, so a killed job's log shows how far it got.
sys.stdout.reconfigure(line_buffering=True)

# Thread pools first: TensorFlow fixes them when its runtime starts.
from cxr.runtime import apply_precision, configure_threads  # noqa: E402

configure_threads(a.threads)
a.precision = apply_precision(a.precision)

import tensorflow as tf  # noqa: E402

from cxr.train import TrainSettings, train_stage  # noqa: E402

print(f"train {a.model}: {vars(a)}", flush=True)
visible = tf.config.list_physical_devices("GPU")
print(f"GPUs visible: {len(visible)} ({os.environ.get('CUDA_VISIBLE_DEVICES', 'all')})")
if a.gpus > len(visible):
    print(f"WARNING: asked for {a.gpus} GPU(s) (train.gpus), {len(visible)} visible", flush=True)
train_stage(
    a.train,
    a.val,
    a.model,
    a.history,
    TrainSettings.from_args(a),
    pretrained=a.pretrained,
    init=a.init,
    features=a.features,
)
