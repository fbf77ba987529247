# Scores of each model on each split (with intervals, calibration, curves) and their
# figures. Parameters from config sections evaluate and report.

# (model, split) pairs evaluated: every stage on validation, the final model also on test.
EVAL_MODELS = ["model_01", "model_02", "model_03", "model_03"]
EVAL_SPLITS = ["val", "val", "val", "test"]
EVALUATIONS = expand("{model}_{split}", zip, model=EVAL_MODELS, split=EVAL_SPLITS)

EVALUATE_OUTPUTS = [
    *expand("reports/metrics/{evaluation}.json", evaluation=EVALUATIONS),
    *expand("reports/predictions/{evaluation}.csv", evaluation=EVALUATIONS),
    *expand(
        "reports/curves/{evaluation}_{curve}.csv",
        evaluation=EVALUATIONS,
        curve=["roc", "pr", "calibration"],
    ),
    *expand("reports/figures/{evaluation}_roc_pr.png", evaluation=EVALUATIONS),
    "reports/figures/model_03_test_reliability.png",
]


# One model on one split: scores with intervals, calibration (JSON), p_covid per image (CSV),
# ROC / precision-recall / reliability tables (CSV, plots-friendly).
rule evaluate:
    input:
        model="{run}models/{model}.keras",
        store="{run}data/store/{split}.npz",
    output:
        metrics="{run}reports/metrics/{model}_{split}.json",
        predictions="{run}reports/predictions/{model}_{split}.csv",
        roc="{run}reports/curves/{model}_{split}_roc.csv",
        pr="{run}reports/curves/{model}_{split}_pr.csv",
        calibration="{run}reports/curves/{model}_{split}_calibration.csv",
    log:
        "{run}logs/evaluate/{model}_{split}.log",
    benchmark:
        "{run}benchmarks/evaluate/{model}_{split}.tsv"
    wildcard_constraints:
        model="model_0[1-3]",
        split="train|val|test",
    conda:
        "../envs/cxr.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        options=config_params(
            "evaluate.batch_size",
            *BOOTSTRAP,
            "evaluate.calibration_bins",
            "runtime.precision",
        ),
    message:
        "Evaluating {wildcards.model} on {wildcards.split}"
    shell:
        "python scripts/evaluate.py --model {input.model:q} --store {input.store:q}"
        " --metrics {output.metrics:q} --predictions {output.predictions:q}"
        " --roc {output.roc:q} --pr {output.pr:q} --calibration {output.calibration:q}"
        " --threads {threads} {params.options} > {log:q} 2>&1"


# ROC and precision-recall curves per evaluation (AUC with interval); test reliability diagram.
rule evaluation_figures:
    input:
        metrics=expand(
            "{run}reports/metrics/{evaluation}.json",
            evaluation=EVALUATIONS,
            allow_missing=True,
        ),
        roc=expand(
            "{run}reports/curves/{evaluation}_roc.csv",
            evaluation=EVALUATIONS,
            allow_missing=True,
        ),
        pr=expand(
            "{run}reports/curves/{evaluation}_pr.csv",
            evaluation=EVALUATIONS,
            allow_missing=True,
        ),
        test="{run}reports/metrics/model_03_test.json",
    output:
        roc_pr=report(
            expand(
                "{run}reports/figures/{evaluation}_roc_pr.png",
                evaluation=EVALUATIONS,
                allow_missing=True,
            ),
            caption="../report/roc_pr.rst",
            category="2. Evaluation",
            subcategory="ROC and precision-recall",
        ),
        reliability=report(
            "{run}reports/figures/model_03_test_reliability.png",
            caption="../report/reliability.rst",
            category="2. Evaluation",
            subcategory="Calibration",
        ),
    log:
        "{run}logs/evaluation_figures.log",
    conda:
        "../envs/cxr.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        options=config_params("report.dpi"),
    message:
        "Drawing ROC, precision-recall and reliability figures"
    shell:
        "python scripts/evaluation_figures.py --metrics {input.metrics:q} --roc {input.roc:q}"
        " --pr {input.pr:q} --figures {output.roc_pr:q} --calibration_metrics {input.test:q}"
        " --reliability {output.reliability:q} {params.options} > {log:q} 2>&1"
