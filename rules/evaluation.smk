# Honest evaluation: ROC / PR / reliability figures, Grad-CAM, the shortcut audit, tests
# outside the split (ieee8023 adult viral pneumonia; an optional external folder), the model
# card. Every output under reports/; parameters from config (evaluate, report, audit, external).

AUDIT = config["audit"]
EXTERNAL = config["external"]
EVALUATE = config["evaluate"]


# Values the schema cannot check, refused at parse time naming the config key.
if not (
    AUDIT["lung_box"][0] < AUDIT["lung_box"][2]
    and AUDIT["lung_box"][1] < AUDIT["lung_box"][3]
):
    raise ValueError(
        f"config 'audit.lung_box': {AUDIT['lung_box']} needs x0 < x1 and y0 < y1"
    )
if EXTERNAL["metadata"] and not os.path.isfile(EXTERNAL["metadata"]):
    raise ValueError(
        f"config 'external.metadata': {EXTERNAL['metadata']!r} is not a file"
    )
if EXTERNAL["images"] and not os.path.isdir(EXTERNAL["images"]):
    raise ValueError(
        f"config 'external.images': {EXTERNAL['images']!r} is not a folder"
    )

LUNG_BOX = " ".join(str(v) for v in AUDIT["lung_box"])
EXTERNAL_OUTPUTS = (
    [
        "reports/external/external.json",
        "reports/external/external_predictions.csv",
        "reports/figures/external_roc_pr.png",
    ]
    if EXTERNAL["metadata"]
    else []
)

EVALUATION_OUTPUTS = [
    *expand("reports/figures/{evaluation}_roc_pr.png", evaluation=EVALUATIONS),
    "reports/figures/model_03_test_reliability.png",
    "reports/figures/model_03_test_gradcam.png",
    "reports/audit/gradcam.json",
    "reports/audit/shortcut_audit.json",
    "reports/figures/shortcut_audit.png",
    "reports/external/ieee8023_viral.json",
    "reports/figures/ieee8023_viral.png",
    *EXTERNAL_OUTPUTS,
    "reports/model_card.md",
]


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
        dpi=config["report"]["dpi"],
    message:
        "Drawing ROC, precision-recall and reliability figures"
    shell:
        "python scripts/evaluation_figures.py --metrics {input.metrics:q} --roc {input.roc:q}"
        " --pr {input.pr:q} --figures {output.roc_pr:q} --calibration_metrics {input.test:q}"
        " --reliability {output.reliability:q} --dpi {params.dpi} > {log:q} 2>&1"


# Grad-CAM (last VGG19 convolution) on every test image: heat share in the lung box; a grid.
rule gradcam:
    input:
        model="{run}models/model_03.keras",
        store="{run}data/store/test.npz",
    output:
        heat="{run}reports/audit/gradcam_heat.csv",
        summary="{run}reports/audit/gradcam.json",
        figure=report(
            "{run}reports/figures/model_03_test_gradcam.png",
            caption="../report/gradcam.rst",
            category="3. Grad-CAM and shortcut audit",
        ),
    log:
        "{run}logs/gradcam.log",
    benchmark:
        "{run}benchmarks/gradcam.tsv"
    conda:
        "../envs/cxr.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        seed=AUDIT["seed"],
        gradcam_correct=AUDIT["gradcam_correct"],
        gradcam_wrong=AUDIT["gradcam_wrong"],
        gradcam_layer=AUDIT["gradcam_layer"],
        lung_box=LUNG_BOX,
        batch_size=EVALUATE["batch_size"],
        dpi=config["report"]["dpi"],
    message:
        "Grad-CAM of model_03 on the test split"
    shell:
        "python scripts/gradcam.py --model {input.model:q} --store {input.store:q}"
        " --heat {output.heat:q} --summary {output.summary:q} --figure {output.figure:q}"
        " --seed {params.seed} --gradcam_correct {params.gradcam_correct}"
        " --gradcam_wrong {params.gradcam_wrong} --gradcam_layer {params.gradcam_layer:q}"
        " --lung_box {params.lung_box} --batch_size {params.batch_size} --dpi {params.dpi}"
        " --threads {threads} > {log:q} 2>&1"


# Blind baselines trained on train, scored on test: thumbnails; width, height and mode alone.
rule audit_baselines:
    input:
        train_store="{run}data/store/train.npz",
        test_store="{run}data/store/test.npz",
        train="{run}data/splits/train.csv",
        test="{run}data/splits/test.csv",
    output:
        "{run}reports/audit/baselines.json",
    log:
        "{run}logs/audit_baselines.log",
    conda:
        "../envs/cxr.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        thumbnail_size=AUDIT["thumbnail_size"],
        bootstrap_resamples=EVALUATE["bootstrap_resamples"],
        bootstrap_seed=EVALUATE["bootstrap_seed"],
        confidence=EVALUATE["confidence"],
    message:
        "Shortcut audit: blind baselines"
    shell:
        "python scripts/audit_baselines.py --train_store {input.train_store:q}"
        " --test_store {input.test_store:q} --train {input.train:q} --test {input.test:q}"
        " --out {output:q} --thumbnail_size {params.thumbnail_size}"
        " --bootstrap_resamples {params.bootstrap_resamples}"
        " --bootstrap_seed {params.bootstrap_seed} --confidence {params.confidence}"
        " > {log:q} 2>&1"


# model_03 on the test images with the central lung box masked out.
rule audit_masked:
    input:
        model="{run}models/model_03.keras",
        store="{run}data/store/test.npz",
    output:
        "{run}reports/audit/masked.json",
    log:
        "{run}logs/audit_masked.log",
    conda:
        "../envs/cxr.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        lung_box=LUNG_BOX,
        batch_size=EVALUATE["batch_size"],
        bootstrap_resamples=EVALUATE["bootstrap_resamples"],
        bootstrap_seed=EVALUATE["bootstrap_seed"],
        confidence=EVALUATE["confidence"],
    message:
        "Shortcut audit: model_03 with the lungs masked"
    shell:
        "python scripts/audit_masked.py --model {input.model:q} --store {input.store:q}"
        " --out {output:q} --lung_box {params.lung_box} --batch_size {params.batch_size}"
        " --bootstrap_resamples {params.bootstrap_resamples}"
        " --bootstrap_seed {params.bootstrap_seed} --confidence {params.confidence}"
        " --threads {threads} > {log:q} 2>&1"


# The audit table and figure; large blind / masked AUCs become printed warnings.
rule shortcut_audit:
    input:
        baselines=rules.audit_baselines.output[0],
        masked=rules.audit_masked.output[0],
        metrics="{run}reports/metrics/model_03_test.json",
        gradcam=rules.gradcam.output.summary,
    output:
        audit="{run}reports/audit/shortcut_audit.json",
        figure=report(
            "{run}reports/figures/shortcut_audit.png",
            caption="../report/shortcut_audit.rst",
            category="3. Grad-CAM and shortcut audit",
        ),
    log:
        "{run}logs/shortcut_audit.log",
    conda:
        "../envs/cxr.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        warn_auc=AUDIT["warn_auc"],
        dpi=config["report"]["dpi"],
    message:
        "Shortcut audit: table, figure, warnings"
    shell:
        "python scripts/shortcut_audit.py --baselines {input.baselines:q}"
        " --masked {input.masked:q} --metrics {input.metrics:q} --gradcam {input.gradcam:q}"
        " --out {output.audit:q} --figure {output.figure:q} --warn_auc {params.warn_auc}"
        " --dpi {params.dpi} > {log:q} 2>&1"


# Honesty check: model_03 on ieee8023 adult non-COVID viral pneumonia (same population).
rule evaluate_ieee8023_viral:
    input:
        model="{run}models/model_03.keras",
        excluded="data/interim/excluded.csv",
        covid_dir=rules.acquire_covid.output[0],
        test_predictions="{run}reports/predictions/model_03_test.csv",
    output:
        metrics="{run}reports/external/ieee8023_viral.json",
        predictions="{run}reports/external/ieee8023_viral_predictions.csv",
        errors="{run}reports/external/ieee8023_viral_errors.csv",
        figure=report(
            "{run}reports/figures/ieee8023_viral.png",
            caption="../report/ieee8023_viral.rst",
            category="4. Tests outside the split",
        ),
    log:
        "{run}logs/evaluate_ieee8023_viral.log",
    conda:
        "../envs/cxr.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        findings=EXTERNAL["ieee8023_viral_findings"],
        views=config["manifest"]["views"],
        batch_size=EVALUATE["batch_size"],
        bootstrap_resamples=EVALUATE["bootstrap_resamples"],
        bootstrap_seed=EVALUATE["bootstrap_seed"],
        confidence=EVALUATE["confidence"],
        calibration_bins=EVALUATE["calibration_bins"],
        dpi=config["report"]["dpi"],
    message:
        "Scoring ieee8023 adult non-COVID viral pneumonia with model_03"
    shell:
        "python scripts/external.py ieee8023 --model {input.model:q}"
        " --excluded {input.excluded:q} --covid_dir {input.covid_dir:q}"
        " --test_predictions {input.test_predictions:q}"
        " --ieee8023_viral_findings {params.findings:q} --views {params.views:q}"
        " --metrics {output.metrics:q} --predictions {output.predictions:q}"
        " --errors {output.errors:q} --figure {output.figure:q}"
        " --batch_size {params.batch_size} --bootstrap_resamples {params.bootstrap_resamples}"
        " --bootstrap_seed {params.bootstrap_seed} --confidence {params.confidence}"
        " --calibration_bins {params.calibration_bins} --dpi {params.dpi}"
        " --threads {threads} > {log:q} 2>&1"


# model_03 on a labelled folder from another source (config external.metadata; off if null).
rule evaluate_external:
    input:
        model="{run}models/model_03.keras",
        metadata=EXTERNAL["metadata"] or [],
    output:
        metrics="{run}reports/external/external.json",
        predictions="{run}reports/external/external_predictions.csv",
        errors="{run}reports/external/external_errors.csv",
        figure=report(
            "{run}reports/figures/external_roc_pr.png",
            caption="../report/external.rst",
            category="4. Tests outside the split",
        ),
    log:
        "{run}logs/evaluate_external.log",
    conda:
        "../envs/cxr.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        images=optional_arg("--images", EXTERNAL["images"]),
        batch_size=EVALUATE["batch_size"],
        bootstrap_resamples=EVALUATE["bootstrap_resamples"],
        bootstrap_seed=EVALUATE["bootstrap_seed"],
        confidence=EVALUATE["confidence"],
        calibration_bins=EVALUATE["calibration_bins"],
        dpi=config["report"]["dpi"],
    message:
        "Scoring the external test set with model_03"
    shell:
        "python scripts/external.py table --model {input.model:q}"
        " --metadata {input.metadata:q} {params.images}"
        " --metrics {output.metrics:q} --predictions {output.predictions:q}"
        " --errors {output.errors:q} --figure {output.figure:q}"
        " --batch_size {params.batch_size} --bootstrap_resamples {params.bootstrap_resamples}"
        " --bootstrap_seed {params.bootstrap_seed} --confidence {params.confidence}"
        " --calibration_bins {params.calibration_bins} --dpi {params.dpi}"
        " --threads {threads} > {log:q} 2>&1"


# The model card, generated from this run: intended use, data, split, metrics, audit, limits.
rule model_card:
    input:
        manifest="data/interim/manifest.csv",
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
        external=EXTERNAL_OUTPUTS[:1],
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
        image_size=config["preprocess"]["image_size"],
        external=optional_arg(
            "--external", EXTERNAL_OUTPUTS[0] if EXTERNAL_OUTPUTS else None
        ),
    message:
        "Writing the model card"
    shell:
        "python scripts/model_card.py --manifest {input.manifest:q}"
        " --excluded {input.excluded:q} --covid_dir {input.covid_dir:q}"
        " --splits {input.splits:q} --augmented {input.augmented:q}"
        " --histories {input.histories:q} --metrics {input.metrics:q}"
        " --audit {input.audit:q} --gradcam {input.gradcam:q} --viral {input.viral:q}"
        " {params.external} --image_size {params.image_size} --out {output:q} > {log:q} 2>&1"
