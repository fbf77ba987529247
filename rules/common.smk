# Shared by all rules: config validation (schema with defaults), the config options each
# rule passes to its script, and the lists of final targets.
import json
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


def with_resources(message):
    """A rule's message plus its threads and resources, so that a dry run (also with
    --profile profiles/slurm) shows what each job would ask a scheduler for."""
    note = "[{threads} threads, {resources.mem_mb} MB, {resources.runtime} min]"
    return f"{message} {note}"


# The split-to-report chain runs once per protocol in config `protocols` (docs/protocols.md):
# `seed` at the top level (prefix ""), any other protocol P under protocols/P/. For each seed
# in config `seeds` it runs again under <prefix>runs/seed_<N>/ with N as the value of
# RUN_SEED_KEYS. {run} is the whole run prefix, {protocol_dir} the protocol's part of it.
wildcard_constraints:
    run=r"(protocols/[A-Za-z0-9_-]+/)?(runs/seed_\d+/)?",
    protocol_dir=r"(protocols/[A-Za-z0-9_-]+/)?",


def check_protocols(config):
    """Refuse, naming the config key, a listed protocol that is not defined."""
    defined = config.get("protocol_definitions", {})
    for name in config["protocols"]:
        if name not in defined:
            raise ValueError(
                f"config 'protocols': {name!r} is not a protocol of config"
                f" 'protocol_definitions' (defined: {', '.join(sorted(defined))})"
            )


check_protocols(config)


def protocol_prefix(name):
    """The folder prefix of a protocol's runs: "" for `seed`, protocols/<name>/ otherwise."""
    return "" if name == "seed" else f"protocols/{name}/"


def run_protocol(run):
    """The protocol name of a run prefix ("" or runs/seed_N/: seed; protocols/P/...: P)."""
    match = re.match(r"protocols/([^/]+)/", run)
    return match.group(1) if match else "seed"


def run_seed(run):
    """The seed N of a run prefix ending in runs/seed_N/, else None."""
    match = re.search(r"(?:^|/)runs/seed_(\d+)/$", run)
    return int(match.group(1)) if match else None


config["seeds"] = [int(seed) for seed in config["seeds"]]
SEED_RUNS = [f"runs/seed_{seed}/" for seed in config["seeds"]]
RUN_SEED_KEYS = ("split.seed", "augment.seed", "train.seed")
PROTOCOL_PREFIXES = [protocol_prefix(name) for name in config["protocols"]]
# Every run: per protocol, its top-level run and one per seed.
RUNS = [prefix + seed for prefix in PROTOCOL_PREFIXES for seed in ["", *SEED_RUNS]]
# The protocols' sources (cxr.protocols.SOURCES): the NIH controls are acquired only if used.
PROTOCOL_SOURCES = {
    source
    for name in config["protocols"]
    for cls in ("covid", "non_covid")
    for source in config["protocol_definitions"][name][cls]["sources"]
}


def selection(name):
    """Input function: a select output of the run's protocol."""
    return (
        lambda wildcards: protocol_prefix(run_protocol(wildcards.run))
        + {
            "selected": "data/interim/selected.csv",
            "summary": "data/interim/selection.json",
            "counts": "data/interim/selection_counts.csv",
        }[name]
    )


def per_run(path):
    """The file ``path`` of every run (RUNS order: per protocol, top level then seeds)."""
    return [run + path for run in RUNS]


class ConfigOptions(str):
    """The options ``--<last key part> <value>`` of some config keys, as one shell string.

    A str (Snakemake records it as a param, so a changed value reruns the job); ``.keys``
    maps each config key to its value (cxr.dag renders them as DVC templates and params);
    ``.<option>`` is a value, for messages. None is left out, booleans are true/false,
    lists are several words.
    """

    def __new__(cls, keys):
        words = []
        for key, value in keys.items():
            if value is None:
                continue
            values = value if isinstance(value, list) else [value]
            words.append(f"--{key.rsplit('.', 1)[-1]}")
            words += [str(v).lower() if isinstance(v, bool) else str(v) for v in values]
        self = super().__new__(cls, shlex.join(words))
        self.keys = dict(keys)
        return self

    def __getattr__(self, option):
        for key, value in self.__dict__.get("keys", {}).items():
            if key.rsplit(".", 1)[-1] == option:
                return value
        raise AttributeError(option)


def config_value(key):
    value = config
    for part in key.split("."):
        value = value[part]
    return value


def config_params(*keys):
    """Params function: the ConfigOptions of config ``keys`` (dotted, e.g. "split.seed").

    Each option is named for the key's last part (the script's argparse name). Inside
    [protocols/P/]runs/seed_N/, the keys of RUN_SEED_KEYS are N.
    """
    names = [key.rsplit(".", 1)[-1] for key in keys]
    if len(set(names)) < len(names):
        raise ValueError(f"config_params{keys}: two keys give the same option name")

    def options(wildcards):
        seed = run_seed(wildcards.get("run", ""))
        return ConfigOptions(
            {
                key: (
                    seed
                    if seed is not None and key in RUN_SEED_KEYS
                    else config_value(key)
                )
                for key in keys
            }
        )

    return options


# The ROC AUC interval of every scored set (evaluate.smk, audit.smk, external.smk).
BOOTSTRAP = (
    "evaluate.bootstrap_resamples",
    "evaluate.bootstrap_seed",
    "evaluate.confidence",
)

SPLITS = ["train", "val", "test"]
PRETRAINED = "models/pretrained/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"

DATA_OUTPUTS = [
    "data/interim/manifest.csv",
    "data/interim/selected.csv",
    *expand("data/splits/{split}.csv", split=SPLITS),
    "data/augmented/augmented.csv",
    *expand("data/store/{split}.npz", split=SPLITS),
]
