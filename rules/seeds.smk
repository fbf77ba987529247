# Repeated runs: the split-to-report chain once per seed in config `seeds`, each under
# runs/seed_<N>/ as separate jobs (the {run} wildcard of the rules), then one summary.


SEEDS_OUTPUTS = (
    ["reports/seeds/summary.csv", "reports/seeds/summary.md"] if config["seeds"] else []
)


# Mean and spread of model_03's test metrics across the seeds' runs.
rule seeds_summary:
    input:
        expand("{run}reports/metrics/model_03_test.json", run=SEED_RUNS),
    output:
        csv="reports/seeds/summary.csv",
        markdown="reports/seeds/summary.md",
    log:
        "logs/seeds_summary.log",
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
