# What every rule shares: config validation (schema with defaults), quoting of config values
# that reach a shell, and the lists of final targets.
import os
import shlex

from snakemake.utils import validate


validate(config, schema="../schemas/config.schema.yaml")

# Jobs import the cxr package from this checkout, also under --sdm conda and on a cluster.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (workflow.basedir, os.environ.get("PYTHONPATH", "")) if p
)


def optional_arg(flag, value):
    """'--flag VALUE' (shell-quoted) when value is set, else an empty string."""
    return f"{flag} {shlex.quote(str(value))}" if value else ""


# Where data comes from is not a parameter of the result: switching from download to mirror
# must not rerun the pipeline, so these are formatted into the command, not tracked as params.
MIRROR_ARG = optional_arg("--mirror", config["mirror"])
WEIGHTS_ARG = optional_arg("--weights", config["pretrained_weights"])

SPLITS = ["train", "val", "test"]
PRETRAINED = "models/pretrained/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"

DATA_OUTPUTS = [
    "data/interim/manifest.csv",
    *expand("data/splits/{split}.csv", split=SPLITS),
    "data/augmented/augmented.csv",
    *expand("data/store/{split}.npz", split=SPLITS),
]
