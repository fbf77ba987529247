# Shared by all rules: config validation (schema with defaults), quoting of config values
# that reach a shell, and the lists of final targets.
import os
import re
import shlex

from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")


def check_paths(config):
    """Refuse, naming the config key, paths that cannot be what they claim to be."""
    mirror, weights = config["mirror"], config["pretrained_weights"]
    if mirror and not os.path.isfile(os.path.join(mirror, "SHA256SUMS")):
        raise ValueError(
            f"config 'mirror': {mirror!r} is not a folder holding a SHA256SUMS"
        )
    if weights and not os.path.isfile(weights):
        raise ValueError(f"config 'pretrained_weights': {weights!r} is not a file")


check_paths(config)

# Jobs import the cxr package from this checkout, also under --sdm conda and on a cluster.
# (Snakemake formats the prefix too, hence the doubled braces of the shell expansion.)
shell.prefix(
    "set -euo pipefail; export PYTHONPATH="
    + shlex.quote(workflow.basedir)
    + "${{PYTHONPATH:+:$PYTHONPATH}}; "
)


def optional_arg(flag, value):
    """'--flag VALUE' (shell-quoted) when value is set, else an empty string."""
    return f"{flag} {shlex.quote(str(value))}" if value else ""


def with_resources(message):
    """A rule's message plus its threads and resources, so that a dry run (also with
    --profile profiles/slurm) shows what each job would ask a scheduler for."""
    note = "[{threads} threads, {resources.mem_mb} MB, {resources.runtime} min]"
    return f"{message} {note}"


# The split-to-report chain runs once at the top level (run = "") and, for each seed in
# config `seeds`, again under runs/seed_<N>/ with that seed as split, augment and train seed.
wildcard_constraints:
    run=r"(runs/seed_\d+/)?",


config["seeds"] = [int(seed) for seed in config["seeds"]]
SEED_RUNS = [f"runs/seed_{seed}/" for seed in config["seeds"]]


def run_seed(section):
    """Params function: config[section]["seed"], or N inside runs/seed_N/."""

    def seed(wildcards):
        match = re.fullmatch(r"runs/seed_(\d+)/", wildcards.run)
        return int(match.group(1)) if match else config[section]["seed"]

    return seed


SPLITS = ["train", "val", "test"]
PRETRAINED = "models/pretrained/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"

DATA_OUTPUTS = [
    "data/interim/manifest.csv",
    *expand("data/splits/{split}.csv", split=SPLITS),
    "data/augmented/augmented.csv",
    *expand("data/store/{split}.npz", split=SPLITS),
]
