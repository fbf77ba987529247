# Figures of the training and test results, and the model card of a run (intended use,
# data, split, metrics, audit, limits). Parameters from config sections report, preprocess.

REPORT_OUTPUTS = [
    *expand("reports/figures/{stage}_curves.png", stage=STAGES),
    *expand("reports/figures/{evaluation}_confusion.png", evaluation=EVALUATIONS),
    *expand("reports/figures/{evaluation}_report.png", evaluation=EVALUATIONS),
    "reports/figures/model_03_test_samples.png",
    "reports/model_card.md",
]


# Figures: curves per stage, confusion matrices and report tables, a grid of test images.
rule report:
    input:
        histories=[
            rules.train_model_01.output.history,
            rules.train_model_02.output.history,
            rules.train_model_03.output.history,
        ],
        metrics=expand(
            "{run}reports/metrics/{evaluation}.json",
            evaluation=EVALUATIONS,
            allow_missing=True,
        ),
        predictions="{run}reports/predictions/model_03_test.csv",
        test_store="{run}data/store/test.npz",
    output:
        curves=report(
            expand(
                "{run}reports/figures/{stage}_curves.png",
                stage=STAGES,
                allow_missing=True,
            ),
            caption="../report/training_curves.rst",
            category="1. Training",
        ),
        confusion=report(
            expand(
                "{run}reports/figures/{evaluation}_confusion.png",
                evaluation=EVALUATIONS,
                allow_missing=True,
            ),
            caption="../report/confusion.rst",
            category="2. Evaluation",
            subcategory="Confusion matrices",
        ),
        tables=report(
            expand(
                "{run}reports/figures/{evaluation}_report.png",
                evaluation=EVALUATIONS,
                allow_missing=True,
            ),
            caption="../report/report_table.rst",
            category="2. Evaluation",
            subcategory="Scores with intervals",
        ),
        samples=report(
            "{run}reports/figures/model_03_test_samples.png",
            caption="../report/test_samples.rst",
            category="2. Evaluation",
            subcategory="Test samples",
        ),
    log:
        "{run}logs/report.log",
    benchmark:
        "{run}benchmarks/report.tsv"
    conda:
        "../envs/cxr.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        options=config_params("report.dpi", "report.n_samples", "report.seed"),
    message:
        "Drawing the report figures"
    shell:
        "python scripts/report.py --histories {input.histories:q} --curves {output.curves:q}"
        " --metrics {input.metrics:q} --confusion {output.confusion:q} --tables {output.tables:q}"
        " --predictions {input.predictions:q} --test_store {input.test_store:q}"
        " --samples_figure {output.samples:q} {params.options} > {log:q} 2>&1"


# The model card, generated from this run: intended use, data, split, metrics, audit, limits.
rule model_card:
    input:
        manifest=selection("selected"),
        selection=selection("summary"),
        excluded="data/interim/excluded.csv",
        covid_dir=rules.acquire_covid.output[0],
        splits=expand("{run}data/splits/{split}.csv", split=SPLITS, allow_missing=True),
        augmented="{run}data/augmented/augmented.csv",
        histories=expand(
            "{run}reports/history/{stage}.csv", stage=STAGES, allow_missing=True
        ),
        metrics=expand(
            "{run}reports/metrics/{evaluation}.json",
            evaluation=EVALUATIONS,
            allow_missing=True,
        ),
        audit=rules.shortcut_audit.output.audit,
        gradcam=rules.gradcam.output.summary,
        viral=rules.evaluate_ieee8023_viral.output.metrics,
        within=rules.evaluate_ieee8023_adult.output.metrics,
        external=rules.evaluate_external.output.metrics if EXTERNAL["metadata"] else [],
        # Read by cxr.model_card (package data): an input, so editing it reruns the card.
        template="cxr/templates/model_card.md.j2",
    output:
        report(
            "{run}reports/model_card.md",
            caption="../report/model_card.rst",
            category="5. Model card",
        ),
    log:
        "{run}logs/model_card.log",
    conda:
        "../envs/cxr.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        external=lambda wildcards, input: (
            f"--external {shlex.quote(str(input.external))}" if input.external else ""
        ),
        options=config_params("preprocess.image_size"),
    message:
        "Writing the model card"
    shell:
        "python scripts/model_card.py --manifest {input.manifest:q}"
        " --excluded {input.excluded:q} --covid_dir {input.covid_dir:q}"
        " --splits {input.splits:q} --augmented {input.augmented:q}"
        " --histories {input.histories:q} --metrics {input.metrics:q}"
        " --audit {input.audit:q} --gradcam {input.gradcam:q} --viral {input.viral:q}"
        " --within {input.within:q} --selection {input.selection:q}"
        " {params.external} --out {output:q} {params.options} > {log:q} 2>&1"
