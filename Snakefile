# COVID-19 vs non-COVID viral pneumonia chest X-ray pipeline (research and teaching only;
# not a diagnostic tool). Data flows one way:
# raw -> manifest -> selection (per protocol) -> splits -> augmented -> store -> model_01 -> model_02 -> model_03 -> reports.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/acquire.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/audit.smk"
include: "rules/external.smk"
include: "rules/report.smk"
include: "rules/seeds.smk"
include: "rules/protocols.smk"


rule all:
    default_target: True
    input:
        SHARED_OUTPUTS,
        PROTOCOL_OUTPUTS,
        SEEDS_OUTPUTS,
        COMPARISON_OUTPUTS,
