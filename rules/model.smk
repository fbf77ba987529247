# Model half: store -> features -> model_01 -> model_02 -> model_03 -> metrics -> figures.
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


# The frozen part of VGG19 (ImageNet weights), run once per train and validation image, for
# all three stages: block5_pool (stage 1), block4_pool (stage 2), block3_pool (stage 3). Used
# with real-time augmentation off and train.cache_features on; otherwise the script writes
# a small file saying the cache is off (no TensorFlow), so the DAG is the same in every
# configuration and in DVC. float32: about 1.3 MB per image at 224 px (2.6 GB, full mirror).
rule features:
    input:
        train="{run}data/store/train.npz",
        val="{run}data/store/val.npz",
        pretrained=rules.acquire_weights.output[0],
    output:
        train="{run}data/features/train.npz",
        val="{run}data/features/val.npz",
    log:
        "{run}logs/features.log",
    benchmark:
        "{run}benchmarks/features.tsv"
    conda:
        "../envs/cxr.yaml"
    threads: 8
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        cache_features=TRAIN["cache_features"],
        realtime_augmentation=TRAIN["realtime_augmentation"],
        batch_size=TRAIN["batch_size"],
    message:
        with_resources(
            "Computing the frozen VGG19 features once (cache_features {params.cache_features},"
            " real-time augmentation {params.realtime_augmentation})"
        )
    shell:
        "python scripts/features.py --stores {input.train:q} {input.val:q}"
        " --pretrained {input.pretrained:q} --out {output.train:q} {output.val:q}"
        " --cache_features {params.cache_features}"
        " --realtime_augmentation {params.realtime_augmentation}"
        " --batch_size {params.batch_size} --threads {threads} > {log:q} 2>&1"


# Training, one rule per stage (train_model_01, train_model_02, train_model_03), made in one
# loop: they differ in what they start from (stage 1: the ImageNet VGG19 weights, given as
# --pretrained; later stages: the previous stage's model, as --init), their config section
# train.model_0N and their wall time. All get the head sizes: stage 1 builds that head, later
# stages check that the model they load has it. The command is the same for all (a shell
# command in a loop may not use loop variables: Snakemake evaluates it when the job runs).
# A killed job (kill -9, time limit, preemption) resumes when rerun: the script keeps a backup
# in models/.backup/model_0N/ after every epoch (not an output, so Snakemake leaves it when a
# job fails) and removes it once both outputs are in place.
# GPUs: `gpu` is the SLURM executor plugin's resource (-> sbatch --gpus=N), from config
# train.gpus; 0 (default) asks for none, so CPU-only clusters work. Add a model with
# `--set-resources train_model_01:gpu_model=a100` (-> --gpus=a100:N) or in the profile's
# set-resources. Local runs ignore it. The script trains on every GPU the job sees
# (CUDA_VISIBLE_DEVICES): several -> MirroredStrategy, train.batch_size stays the global batch.
TRAIN_STAGES = {
    "model_01": {"about": "base frozen", "runtime": 360},
    "model_02": {"about": "block 5 unfrozen", "runtime": 480},
    "model_03": {"about": "blocks 4-5 unfrozen", "runtime": 720},
}

for stage, previous in zip(STAGES, [None, *STAGES]):

    rule:
        name:
            f"train_{stage}"
        input:
            train="{run}data/store/train.npz",
            val="{run}data/store/val.npz",
            features=rules.features.output,
            start=(
                rules.acquire_weights.output[0]
                if previous is None
                else getattr(rules, f"train_{previous}").output.model
            ),
        output:
            model=f"{{run}}models/{stage}.keras",
            history=f"{{run}}reports/history/{stage}.csv",
        log:
            f"{{run}}logs/train_{stage}.log",
        benchmark:
            f"{{run}}benchmarks/train_{stage}.tsv"
        conda:
            "../envs/cxr.yaml"
        threads: 8
        resources:
            mem_mb=8000,
            runtime=TRAIN_STAGES[stage]["runtime"],
            gpu=TRAIN["gpus"],
        params:
            start_option="pretrained" if previous is None else "init",
            seed=run_seed("train"),
            batch_size=TRAIN["batch_size"],
            realtime_augmentation=TRAIN["realtime_augmentation"],
            cache_features=TRAIN["cache_features"],
            dense_units=TRAIN["dense_units"],
            dropout=TRAIN["dropout"],
            early_stopping_monitor=TRAIN["early_stopping_monitor"],
            patience=TRAIN["patience"],
            checkpoint_monitor=TRAIN["checkpoint_monitor"],
            gpus=TRAIN["gpus"],
            epochs=TRAIN[stage]["epochs"],
            frozen_layers=TRAIN[stage]["frozen_layers"],
            optimizer=TRAIN[stage]["optimizer"],
            learning_rate=TRAIN[stage]["learning_rate"],
            decay=TRAIN[stage]["decay"],
            momentum=TRAIN[stage]["momentum"],
            nesterov=TRAIN[stage]["nesterov"],
        message:
            with_resources(
                f"Training {stage} ({TRAIN_STAGES[stage]['about']},"
                " up to {params.epochs} epochs, {resources.gpu} GPU)"
            )
        shell:
            "python scripts/train.py --train {input.train:q} --val {input.val:q}"
            " --{params.start_option} {input.start:q}"
            " --model {output.model:q} --history {output.history:q}"
            " --threads {threads} --seed {params.seed} --batch_size {params.batch_size}"
            " --realtime_augmentation {params.realtime_augmentation}"
            " --cache_features {params.cache_features} --features {input.features:q}"
            " --dense_units {params.dense_units} --dropout {params.dropout}"
            " --early_stopping_monitor {params.early_stopping_monitor:q}"
            " --patience {params.patience}"
            " --checkpoint_monitor {params.checkpoint_monitor:q} --epochs {params.epochs}"
            " --frozen_layers {params.frozen_layers:q} --optimizer {params.optimizer:q}"
            " --learning_rate {params.learning_rate} --decay {params.decay}"
            " --momentum {params.momentum} --nesterov {params.nesterov}"
            " --gpus {params.gpus} > {log:q} 2>&1"


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
