# Repeated runs: the split-to-report chain once per seed in config `seeds`, each under
# <protocol prefix>runs/seed_<N>/ as separate jobs (the {run} wildcard of the rules), then one
# summary per protocol.


SEEDS_OUTPUTS = [
    f"{prefix}reports/seeds/{name}"
    for prefix in (PROTOCOL_PREFIXES if config["seeds"] else [])
    for name in ("summary.csv", "summary.md")
]


# Mean and spread of model_03's test metrics across the seeds' runs of one protocol.
rule seeds_summary:
    input:
        lambda wildcards: [
            f"{wildcards.protocol_dir}{run}reports/metrics/model_03_test.json"
            for run in SEED_RUNS
        ],
    output:
        csv="{protocol_dir}reports/seeds/summary.csv",
        markdown="{protocol_dir}reports/seeds/summary.md",
    log:
        "{protocol_dir}logs/seeds_summary.log",
    conda:
        "../envs/cxr.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        options=config_params("seeds"),
    message:
        with_resources("Summarising test metrics over seeds {params.options.seeds}")
    shell:
        "python scripts/seeds_summary.py --metrics {input:q} {params.options}"
        " --csv {output.csv:q} --markdown {output.markdown:q} > {log:q} 2>&1"
