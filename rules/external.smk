# Tests outside the split: ieee8023 adult viral pneumonia and the within-source check on all
# ieee8023 non-COVID adults (always), and a labelled folder from another source (config
# external.metadata; off if null). Each passes the overlap guard first (cxr.overlap): images
# the run has seen are listed in *_overlaps.csv and left out (config external.keep_overlaps).

EXTERNAL = config["external"]

# Values the schema cannot check, refused at parse time naming the config key.
if EXTERNAL["metadata"] and not os.path.isfile(EXTERNAL["metadata"]):
    raise ValueError(
        f"config 'external.metadata': {EXTERNAL['metadata']!r} is not a file"
    )
if EXTERNAL["images"] and not os.path.isdir(EXTERNAL["images"]):
    raise ValueError(
        f"config 'external.images': {EXTERNAL['images']!r} is not a folder"
    )

EXTERNAL_OUTPUTS = [
    "reports/external/ieee8023_viral.json",
    "reports/figures/ieee8023_viral.png",
    "reports/external/ieee8023_adult.json",
    "reports/figures/ieee8023_adult.png",
    *(
        [
            "reports/external/external.json",
            "reports/external/external_predictions.csv",
            "reports/external/external_overlaps.csv",
            "reports/figures/external_roc_pr.png",
        ]
        if EXTERNAL["metadata"]
        else []
    ),
]


# Honesty check: model_03 on ieee8023 adult non-COVID viral pneumonia (same population).
rule evaluate_ieee8023_viral:
    input:
        model="{run}models/model_03.keras",
        excluded="data/interim/excluded.csv",
        covid_dir=rules.acquire_covid.output[0],
        test_predictions="{run}reports/predictions/model_03_test.csv",
        splits=expand("{run}data/splits/{split}.csv", split=SPLITS, allow_missing=True),
        augmented="{run}data/augmented/augmented.csv",
    output:
        metrics="{run}reports/external/ieee8023_viral.json",
        predictions="{run}reports/external/ieee8023_viral_predictions.csv",
        errors="{run}reports/external/ieee8023_viral_errors.csv",
        overlaps="{run}reports/external/ieee8023_viral_overlaps.csv",
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
        options=config_params(
            "external.ieee8023_viral_findings",
            "manifest.views",
            "manifest.min_side",
            "manifest.max_pixels",
            "manifest.near_duplicate_distance",
            "external.keep_overlaps",
            "evaluate.batch_size",
            *BOOTSTRAP,
            "evaluate.calibration_bins",
            "report.dpi",
            "runtime.precision",
        ),
    message:
        "Scoring ieee8023 adult non-COVID viral pneumonia with model_03"
    shell:
        "python scripts/external.py ieee8023 --model {input.model:q}"
        " --excluded {input.excluded:q} --covid_dir {input.covid_dir:q}"
        " --test_predictions {input.test_predictions:q}"
        " --metrics {output.metrics:q} --predictions {output.predictions:q}"
        " --errors {output.errors:q} --figure {output.figure:q}"
        " --overlaps {output.overlaps:q} --splits {input.splits:q}"
        " --augmented {input.augmented:q}"
        " --threads {threads} {params.options} > {log:q} 2>&1"


# Within-source check of every protocol: model_03 on the ieee8023 frontal non-COVID adults
# (No Finding, bacterial and viral pneumonias, other findings; the COVID images' own source,
# never selected by a shipped protocol); specificity and the AUC of test COVID against them.
rule evaluate_ieee8023_adult:
    input:
        model="{run}models/model_03.keras",
        excluded="data/interim/excluded.csv",
        covid_dir=rules.acquire_covid.output[0],
        test_predictions="{run}reports/predictions/model_03_test.csv",
        splits=expand("{run}data/splits/{split}.csv", split=SPLITS, allow_missing=True),
        augmented="{run}data/augmented/augmented.csv",
    output:
        metrics="{run}reports/external/ieee8023_adult.json",
        predictions="{run}reports/external/ieee8023_adult_predictions.csv",
        errors="{run}reports/external/ieee8023_adult_errors.csv",
        overlaps="{run}reports/external/ieee8023_adult_overlaps.csv",
        figure=report(
            "{run}reports/figures/ieee8023_adult.png",
            caption="../report/ieee8023_adult.rst",
            category="4. Tests outside the split",
        ),
    log:
        "{run}logs/evaluate_ieee8023_adult.log",
    conda:
        "../envs/cxr.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        options=config_params(
            "external.ieee8023_adult_findings",
            "external.ieee8023_adult_min_age",
            "manifest.views",
            "manifest.min_side",
            "manifest.max_pixels",
            "manifest.near_duplicate_distance",
            "external.keep_overlaps",
            "evaluate.batch_size",
            *BOOTSTRAP,
            "evaluate.calibration_bins",
            "report.dpi",
            "runtime.precision",
        ),
    message:
        "Within-source check: model_03 on ieee8023 non-COVID adults"
    shell:
        "python scripts/external.py ieee8023_adult --model {input.model:q}"
        " --excluded {input.excluded:q} --covid_dir {input.covid_dir:q}"
        " --test_predictions {input.test_predictions:q}"
        " --metrics {output.metrics:q} --predictions {output.predictions:q}"
        " --errors {output.errors:q} --figure {output.figure:q}"
        " --overlaps {output.overlaps:q} --splits {input.splits:q}"
        " --augmented {input.augmented:q}"
        " --threads {threads} {params.options} > {log:q} 2>&1"


# model_03 on a labelled folder from another source (config external.metadata; off if null).
rule evaluate_external:
    input:
        model="{run}models/model_03.keras",
        metadata=EXTERNAL["metadata"] or [],
        splits=expand("{run}data/splits/{split}.csv", split=SPLITS, allow_missing=True),
        augmented="{run}data/augmented/augmented.csv",
    output:
        metrics="{run}reports/external/external.json",
        predictions="{run}reports/external/external_predictions.csv",
        errors="{run}reports/external/external_errors.csv",
        overlaps="{run}reports/external/external_overlaps.csv",
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
        options=config_params(
            "external.images",
            "manifest.min_side",
            "manifest.max_pixels",
            "external.dicom_voi",
            "manifest.near_duplicate_distance",
            "external.keep_overlaps",
            "evaluate.batch_size",
            *BOOTSTRAP,
            "evaluate.calibration_bins",
            "report.dpi",
            "runtime.precision",
        ),
    message:
        "Scoring the external test set with model_03"
    shell:
        "python scripts/external.py table --model {input.model:q}"
        " --metadata {input.metadata:q}"
        " --metrics {output.metrics:q} --predictions {output.predictions:q}"
        " --errors {output.errors:q} --figure {output.figure:q}"
        " --overlaps {output.overlaps:q} --splits {input.splits:q}"
        " --augmented {input.augmented:q}"
        " --threads {threads} {params.options} > {log:q} 2>&1"
