# Shortcut audit: Grad-CAM, blind baselines, model_03 with the lungs masked, and the audit
# table. Parameters from config section audit (and evaluate, report).

AUDIT = config["audit"]

# Values the schema cannot check, refused at parse time naming the config key.
if not (
    AUDIT["lung_box"][0] < AUDIT["lung_box"][2]
    and AUDIT["lung_box"][1] < AUDIT["lung_box"][3]
):
    raise ValueError(
        f"config 'audit.lung_box': {AUDIT['lung_box']} needs x0 < x1 and y0 < y1"
    )

AUDIT_OUTPUTS = [
    "reports/figures/model_03_test_gradcam.png",
    "reports/audit/gradcam.json",
    "reports/audit/shortcut_audit.json",
    "reports/figures/shortcut_audit.png",
]


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
        options=config_params(
            "audit.seed",
            "audit.gradcam_correct",
            "audit.gradcam_wrong",
            "audit.gradcam_layer",
            "audit.lung_box",
            "evaluate.batch_size",
            "report.dpi",
            "runtime.precision",
        ),
    message:
        "Grad-CAM of model_03 on the test split"
    shell:
        "python scripts/gradcam.py --model {input.model:q} --store {input.store:q}"
        " --heat {output.heat:q} --summary {output.summary:q} --figure {output.figure:q}"
        " --threads {threads} {params.options} > {log:q} 2>&1"


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
        options=config_params("audit.thumbnail_size", *BOOTSTRAP),
    message:
        "Shortcut audit: blind baselines"
    shell:
        "python scripts/audit_baselines.py --train_store {input.train_store:q}"
        " --test_store {input.test_store:q} --train {input.train:q} --test {input.test:q}"
        " --out {output:q} {params.options} > {log:q} 2>&1"


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
        options=config_params(
            "audit.lung_box", "evaluate.batch_size", *BOOTSTRAP, "runtime.precision"
        ),
    message:
        "Shortcut audit: model_03 with the lungs masked"
    shell:
        "python scripts/audit_masked.py --model {input.model:q} --store {input.store:q}"
        " --out {output:q} --threads {threads} {params.options} > {log:q} 2>&1"


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
        options=config_params("audit.warn_auc", "report.dpi"),
    message:
        "Shortcut audit: table, figure, warnings"
    shell:
        "python scripts/shortcut_audit.py --baselines {input.baselines:q}"
        " --masked {input.masked:q} --metrics {input.metrics:q} --gradcam {input.gradcam:q}"
        " --out {output.audit:q} --figure {output.figure:q} {params.options} > {log:q} 2>&1"
