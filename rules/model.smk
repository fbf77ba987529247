# Model half: store -> model_01 -> model_02 -> model_03 -> metrics -> figures.
# Rules only shell out to scripts/ (no TensorFlow at parse time); every parameter comes from
# config (section train, evaluate, report) and reaches the script as an option of the same name.

STAGES = ["model_01", "model_02", "model_03"]
# (model, split) pairs evaluated: every stage on validation, the final model also on test.
EVAL_MODELS = ["model_01", "model_02", "model_03", "model_03"]
EVAL_SPLITS = ["val", "val", "val", "test"]
EVALUATIONS = expand("{model}_{split}", zip, model=EVAL_MODELS, split=EVAL_SPLITS)

TRAIN = config["train"]

MODEL_OUTPUTS = [
    *expand("models/{stage}.keras", stage=STAGES),
    *expand("reports/history/{stage}.csv", stage=STAGES),
    *expand("reports/metrics/{evaluation}.json", evaluation=EVALUATIONS),
    *expand("reports/predictions/{evaluation}.csv", evaluation=EVALUATIONS),
    *expand(
        "reports/curves/{evaluation}_{curve}.csv",
        evaluation=EVALUATIONS,
        curve=["roc", "pr", "calibration"],
    ),
    *expand("reports/figures/{stage}_curves.png", stage=STAGES),
    *expand("reports/figures/{evaluation}_confusion.png", evaluation=EVALUATIONS),
    *expand("reports/figures/{evaluation}_report.png", evaluation=EVALUATIONS),
    "reports/figures/model_03_test_samples.png",
]


# Stage 1: ImageNet VGG19 base frozen, dense head trained (RMSprop).
rule train_model_01:
    input:
        train="data/store/train.npz",
        val="data/store/val.npz",
        pretrained=rules.acquire_weights.output[0],
    output:
        model="models/model_01.keras",
        history="reports/history/model_01.csv",
    log:
        "logs/train_model_01.log",
    benchmark:
        "benchmarks/train_model_01.tsv"
    conda:
        "../envs/cxr.yaml"
    threads: 8
    resources:
        mem_mb=8000,
        runtime=360,
    params:
        seed=TRAIN["seed"],
        batch_size=TRAIN["batch_size"],
        realtime_augmentation=TRAIN["realtime_augmentation"],
        dense_units=TRAIN["dense_units"],
        dropout=TRAIN["dropout"],
        early_stopping_monitor=TRAIN["early_stopping_monitor"],
        patience=TRAIN["patience"],
        checkpoint_monitor=TRAIN["checkpoint_monitor"],
        epochs=TRAIN["model_01"]["epochs"],
        frozen_layers=TRAIN["model_01"]["frozen_layers"],
        optimizer=TRAIN["model_01"]["optimizer"],
        learning_rate=TRAIN["model_01"]["learning_rate"],
        decay=TRAIN["model_01"]["decay"],
        momentum=TRAIN["model_01"]["momentum"],
        nesterov=TRAIN["model_01"]["nesterov"],
    message:
        "Training model_01 (base frozen, up to {params.epochs} epochs)"
    shell:
        "python scripts/train.py --train {input.train:q} --val {input.val:q}"
        " --pretrained {input.pretrained:q} --model {output.model:q} --history {output.history:q}"
        " --threads {threads} --seed {params.seed} --batch_size {params.batch_size}"
        " --realtime_augmentation {params.realtime_augmentation}"
        " --dense_units {params.dense_units} --dropout {params.dropout}"
        " --early_stopping_monitor {params.early_stopping_monitor:q} --patience {params.patience}"
        " --checkpoint_monitor {params.checkpoint_monitor:q} --epochs {params.epochs}"
        " --frozen_layers {params.frozen_layers:q} --optimizer {params.optimizer:q}"
        " --learning_rate {params.learning_rate} --decay {params.decay}"
        " --momentum {params.momentum} --nesterov {params.nesterov} > {log:q} 2>&1"


# Stage 2: from model_01, block 5 of the base unfrozen (RMSprop).
rule train_model_02:
    input:
        train="data/store/train.npz",
        val="data/store/val.npz",
        init=rules.train_model_01.output.model,
    output:
        model="models/model_02.keras",
        history="reports/history/model_02.csv",
    log:
        "logs/train_model_02.log",
    benchmark:
        "benchmarks/train_model_02.tsv"
    conda:
        "../envs/cxr.yaml"
    threads: 8
    resources:
        mem_mb=8000,
        runtime=480,
    params:
        seed=TRAIN["seed"],
        batch_size=TRAIN["batch_size"],
        realtime_augmentation=TRAIN["realtime_augmentation"],
        early_stopping_monitor=TRAIN["early_stopping_monitor"],
        patience=TRAIN["patience"],
        checkpoint_monitor=TRAIN["checkpoint_monitor"],
        epochs=TRAIN["model_02"]["epochs"],
        frozen_layers=TRAIN["model_02"]["frozen_layers"],
        optimizer=TRAIN["model_02"]["optimizer"],
        learning_rate=TRAIN["model_02"]["learning_rate"],
        decay=TRAIN["model_02"]["decay"],
        momentum=TRAIN["model_02"]["momentum"],
        nesterov=TRAIN["model_02"]["nesterov"],
    message:
        "Training model_02 (block 5 unfrozen, up to {params.epochs} epochs)"
    shell:
        "python scripts/train.py --train {input.train:q} --val {input.val:q}"
        " --init {input.init:q} --model {output.model:q} --history {output.history:q}"
        " --threads {threads} --seed {params.seed} --batch_size {params.batch_size}"
        " --realtime_augmentation {params.realtime_augmentation}"
        " --early_stopping_monitor {params.early_stopping_monitor:q} --patience {params.patience}"
        " --checkpoint_monitor {params.checkpoint_monitor:q} --epochs {params.epochs}"
        " --frozen_layers {params.frozen_layers:q} --optimizer {params.optimizer:q}"
        " --learning_rate {params.learning_rate} --decay {params.decay}"
        " --momentum {params.momentum} --nesterov {params.nesterov} > {log:q} 2>&1"


# Stage 3: from model_02, blocks 4-5 unfrozen (SGD, Nesterov momentum, inverse time decay).
rule train_model_03:
    input:
        train="data/store/train.npz",
        val="data/store/val.npz",
        init=rules.train_model_02.output.model,
    output:
        model="models/model_03.keras",
        history="reports/history/model_03.csv",
    log:
        "logs/train_model_03.log",
    benchmark:
        "benchmarks/train_model_03.tsv"
    conda:
        "../envs/cxr.yaml"
    threads: 8
    resources:
        mem_mb=8000,
        runtime=720,
    params:
        seed=TRAIN["seed"],
        batch_size=TRAIN["batch_size"],
        realtime_augmentation=TRAIN["realtime_augmentation"],
        early_stopping_monitor=TRAIN["early_stopping_monitor"],
        patience=TRAIN["patience"],
        checkpoint_monitor=TRAIN["checkpoint_monitor"],
        epochs=TRAIN["model_03"]["epochs"],
        frozen_layers=TRAIN["model_03"]["frozen_layers"],
        optimizer=TRAIN["model_03"]["optimizer"],
        learning_rate=TRAIN["model_03"]["learning_rate"],
        decay=TRAIN["model_03"]["decay"],
        momentum=TRAIN["model_03"]["momentum"],
        nesterov=TRAIN["model_03"]["nesterov"],
    message:
        "Training model_03 (blocks 4-5 unfrozen, up to {params.epochs} epochs)"
    shell:
        "python scripts/train.py --train {input.train:q} --val {input.val:q}"
        " --init {input.init:q} --model {output.model:q} --history {output.history:q}"
        " --threads {threads} --seed {params.seed} --batch_size {params.batch_size}"
        " --realtime_augmentation {params.realtime_augmentation}"
        " --early_stopping_monitor {params.early_stopping_monitor:q} --patience {params.patience}"
        " --checkpoint_monitor {params.checkpoint_monitor:q} --epochs {params.epochs}"
        " --frozen_layers {params.frozen_layers:q} --optimizer {params.optimizer:q}"
        " --learning_rate {params.learning_rate} --decay {params.decay}"
        " --momentum {params.momentum} --nesterov {params.nesterov} > {log:q} 2>&1"


# One model on one split: scores with intervals, calibration (JSON), p_covid per image (CSV),
# ROC / precision-recall / reliability tables (CSV, plots-friendly).
rule evaluate:
    input:
        model="models/{model}.keras",
        store="data/store/{split}.npz",
    output:
        metrics="reports/metrics/{model}_{split}.json",
        predictions="reports/predictions/{model}_{split}.csv",
        roc="reports/curves/{model}_{split}_roc.csv",
        pr="reports/curves/{model}_{split}_pr.csv",
        calibration="reports/curves/{model}_{split}_calibration.csv",
    log:
        "logs/evaluate/{model}_{split}.log",
    benchmark:
        "benchmarks/evaluate/{model}_{split}.tsv"
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
        batch_size=config["evaluate"]["batch_size"],
        bootstrap_resamples=config["evaluate"]["bootstrap_resamples"],
        bootstrap_seed=config["evaluate"]["bootstrap_seed"],
        confidence=config["evaluate"]["confidence"],
        calibration_bins=config["evaluate"]["calibration_bins"],
    message:
        "Evaluating {wildcards.model} on {wildcards.split}"
    shell:
        "python scripts/evaluate.py --model {input.model:q} --store {input.store:q}"
        " --metrics {output.metrics:q} --predictions {output.predictions:q}"
        " --roc {output.roc:q} --pr {output.pr:q} --calibration {output.calibration:q}"
        " --batch_size {params.batch_size} --threads {threads}"
        " --bootstrap_resamples {params.bootstrap_resamples}"
        " --bootstrap_seed {params.bootstrap_seed} --confidence {params.confidence}"
        " --calibration_bins {params.calibration_bins} > {log:q} 2>&1"


# Figures: curves per stage, confusion matrices and report tables, a grid of test images.
rule report:
    input:
        histories=[
            rules.train_model_01.output.history,
            rules.train_model_02.output.history,
            rules.train_model_03.output.history,
        ],
        metrics=expand("reports/metrics/{evaluation}.json", evaluation=EVALUATIONS),
        predictions="reports/predictions/model_03_test.csv",
        test_store="data/store/test.npz",
    output:
        curves=report(
            expand("reports/figures/{stage}_curves.png", stage=STAGES),
            caption="../report/training_curves.rst",
            category="1. Training",
        ),
        confusion=report(
            expand(
                "reports/figures/{evaluation}_confusion.png", evaluation=EVALUATIONS
            ),
            caption="../report/confusion.rst",
            category="2. Evaluation",
            subcategory="Confusion matrices",
        ),
        tables=report(
            expand("reports/figures/{evaluation}_report.png", evaluation=EVALUATIONS),
            caption="../report/report_table.rst",
            category="2. Evaluation",
            subcategory="Scores with intervals",
        ),
        samples=report(
            "reports/figures/model_03_test_samples.png",
            caption="../report/test_samples.rst",
            category="2. Evaluation",
            subcategory="Test samples",
        ),
    log:
        "logs/report.log",
    benchmark:
        "benchmarks/report.tsv"
    conda:
        "../envs/cxr.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        dpi=config["report"]["dpi"],
        n_samples=config["report"]["n_samples"],
        seed=config["report"]["seed"],
    message:
        "Drawing the report figures"
    shell:
        "python scripts/report.py --histories {input.histories:q} --curves {output.curves:q}"
        " --metrics {input.metrics:q} --confusion {output.confusion:q} --tables {output.tables:q}"
        " --predictions {input.predictions:q} --test_store {input.test_store:q}"
        " --samples_figure {output.samples:q} --dpi {params.dpi} --n_samples {params.n_samples}"
        " --seed {params.seed} > {log:q} 2>&1"
