# Raw images to the preprocessed split store: manifest, patient-level split, augmentation.


# One row per usable image; everything else in excluded.csv with a reason.
rule manifest:
    input:
        covid=rules.acquire_covid.output[0],
        kermany=rules.acquire_kermany.output[0],
    output:
        manifest="data/interim/manifest.csv",
        excluded="data/interim/excluded.csv",
    params:
        covid_findings=config["manifest"]["covid_findings"],
        modality=config["manifest"]["modality"],
        views=config["manifest"]["views"],
        min_side=config["manifest"]["min_side"],
        max_pixels=config["manifest"]["max_pixels"],
    log:
        "logs/manifest.log",
    benchmark:
        "benchmarks/manifest.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/cxr.yaml"
    message:
        "Building the image manifest"
    shell:
        "python scripts/manifest.py --covid {input.covid:q} --kermany {input.kermany:q}"
        " --manifest {output.manifest:q} --excluded {output.excluded:q}"
        " --covid_findings {params.covid_findings:q} --modality {params.modality:q}"
        " --views {params.views:q} --min_side {params.min_side} --max_pixels {params.max_pixels}"
        " > {log:q} 2>&1"


# Test split set aside first (test_per_class per class), then validation, rest train.
rule split:
    input:
        rules.manifest.output.manifest,
    output:
        expand("data/splits/{split}.csv", split=SPLITS),
    params:
        outdir="data/splits",
        seed=config["split"]["seed"],
        test_per_class=config["split"]["test_per_class"],
        val_fraction=config["split"]["val_fraction"],
        max_per_class=config["split"]["max_per_class"],
    log:
        "logs/split.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/cxr.yaml"
    message:
        "Splitting by patient (seed {params.seed})"
    shell:
        "python scripts/split.py --manifest {input:q} --outdir {params.outdir:q}"
        " --seed {params.seed} --test_per_class {params.test_per_class}"
        " --val_fraction {params.val_fraction} --max_per_class {params.max_per_class}"
        " > {log:q} 2>&1"


# Training COVID images grown to augment.target with the seed's imgaug recipe.
rule augment:
    input:
        "data/splits/train.csv",
    output:
        csv="data/augmented/augmented.csv",
        images=directory("data/augmented/images"),
    params:
        seed=config["augment"]["seed"],
        target=config["augment"]["target"],
    log:
        "logs/augment.log",
    benchmark:
        "benchmarks/augment.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/cxr.yaml"
    message:
        "Augmenting training COVID images to {params.target}"
    shell:
        "python scripts/augment.py --train {input:q} --images {output.images:q}"
        " --csv {output.csv:q} --seed {params.seed} --target {params.target} > {log:q} 2>&1"


# Every split image decoded once, resized to image_size, into data/store/{split}.npz.
rule preprocess:
    input:
        splits=rules.split.output,
        augmented=rules.augment.output.csv,
        augmented_images=rules.augment.output.images,
    output:
        expand("data/store/{split}.npz", split=SPLITS),
    params:
        splits="data/splits",
        outdir="data/store",
        image_size=config["preprocess"]["image_size"],
    log:
        "logs/preprocess.log",
    benchmark:
        "benchmarks/preprocess.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/cxr.yaml"
    message:
        "Preprocessing the splits to {params.image_size} px"
    shell:
        "python scripts/preprocess.py --splits {params.splits:q} --augmented {input.augmented:q}"
        " --outdir {params.outdir:q} --image_size {params.image_size} > {log:q} 2>&1"
