# Training: store -> features -> model_01 -> model_02 -> model_03. Rules only shell out to
# scripts/ (no TensorFlow at parse time); every parameter comes from config section train
# (and runtime.precision).

STAGES = ["model_01", "model_02", "model_03"]
TRAIN = config["train"]

TRAIN_OUTPUTS = [
    *expand("models/{stage}.keras", stage=STAGES),
    *expand("reports/history/{stage}.csv", stage=STAGES),
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
        options=config_params(
            "train.cache_features",
            "train.realtime_augmentation",
            "train.batch_size",
            "runtime.precision",
        ),
    message:
        with_resources(
            "Computing the frozen VGG19 features once (cache_features"
            " {params.options.cache_features}, real-time augmentation"
            " {params.options.realtime_augmentation})"
        )
    shell:
        "python scripts/features.py --stores {input.train:q} {input.val:q}"
        " --pretrained {input.pretrained:q} --out {output.train:q} {output.val:q}"
        " {params.options} --threads {threads} > {log:q} 2>&1"


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
            options=config_params(
                "train.seed",
                "train.batch_size",
                "train.realtime_augmentation",
                "train.cache_features",
                "train.dense_units",
                "train.dropout",
                "train.early_stopping_monitor",
                "train.patience",
                "train.checkpoint_monitor",
                "train.gpus",
                f"train.{stage}.epochs",
                f"train.{stage}.frozen_layers",
                f"train.{stage}.optimizer",
                f"train.{stage}.learning_rate",
                f"train.{stage}.decay",
                f"train.{stage}.momentum",
                f"train.{stage}.nesterov",
                "runtime.precision",
            ),
        message:
            with_resources(
                f"Training {stage} ({TRAIN_STAGES[stage]['about']},"
                " up to {params.options.epochs} epochs, {resources.gpu} GPU)"
            )
        shell:
            "python scripts/train.py --train {input.train:q} --val {input.val:q}"
            " --{params.start_option} {input.start:q}"
            " --model {output.model:q} --history {output.history:q}"
            " --features {input.features:q} --threads {threads} {params.options}"
            " > {log:q} 2>&1"
