# Protocols (config `protocols`, docs/protocols.md): every run's targets, and the comparison of
# the runs when more than one protocol, or seeds, are listed.

COMPARE = len(config["protocols"]) > 1 or bool(config["seeds"])
COMPARISON_OUTPUTS = (
    [
        "reports/protocols/comparison.md",
        "reports/protocols/comparison.csv",
        "reports/protocols/comparison.png",
    ]
    if COMPARE
    else []
)
# The shared steps before the selection, and each protocol's chain under its prefix.
SHARED_OUTPUTS = ["data/interim/manifest.csv"]
PROTOCOL_OUTPUTS = [
    prefix + path
    for prefix in PROTOCOL_PREFIXES
    for path in [
        *DATA_OUTPUTS,
        *TRAIN_OUTPUTS,
        *EVALUATE_OUTPUTS,
        *AUDIT_OUTPUTS,
        *EXTERNAL_OUTPUTS,
        *REPORT_OUTPUTS,
    ]
    if path not in SHARED_OUTPUTS
]


# One row per run: counts, test metrics, blind baselines, lungs masked, within-source check
# (and the external test when configured), with their intervals; a sentence per protocol.
rule compare_protocols:
    input:
        selections=[
            protocol_prefix(run_protocol(run)) + "data/interim/selection.json"
            for run in RUNS
        ],
        train=per_run("data/splits/train.csv"),
        test=per_run("data/splits/test.csv"),
        metrics=per_run("reports/metrics/model_03_test.json"),
        baselines=per_run("reports/audit/baselines.json"),
        masked=per_run("reports/audit/masked.json"),
        within=per_run("reports/external/ieee8023_adult.json"),
        external=(
            per_run("reports/external/external.json") if EXTERNAL["metadata"] else []
        ),
    output:
        markdown="reports/protocols/comparison.md",
        csv="reports/protocols/comparison.csv",
        figure=report(
            "reports/protocols/comparison.png",
            caption="../report/comparison.rst",
            category="6. Protocols compared",
        ),
    log:
        "logs/compare_protocols.log",
    conda:
        "../envs/cxr.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        run_protocols=[run_protocol(run) for run in RUNS],
        run_seeds=["-" if run_seed(run) is None else str(run_seed(run)) for run in RUNS],
        external=lambda wildcards, input: (
            f"--external {shlex.join(input.external)}" if input.external else ""
        ),
        options=config_params("protocols", "report.dpi"),
    message:
        with_resources("Comparing protocols {params.options.protocols}")
    shell:
        "python scripts/compare_protocols.py --run_protocols {params.run_protocols:q}"
        " --run_seeds {params.run_seeds:q} --selections {input.selections:q}"
        " --train {input.train:q} --test {input.test:q} --metrics {input.metrics:q}"
        " --baselines {input.baselines:q} --masked {input.masked:q}"
        " --within {input.within:q} {params.external} {params.options}"
        " --csv {output.csv:q} --markdown {output.markdown:q} --figure {output.figure:q}"
        " > {log:q} 2>&1"
