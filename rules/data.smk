# Raw images to the preprocessed split store: manifest, patient-level split, augmentation.


# One row per usable image; everything else in excluded.csv with a reason.
rule manifest:
    input:
        covid=rules.acquire_covid.output[0],
        kermany=rules.acquire_kermany.output[0],
    output:
        manifest="data/interim/manifest.csv",
        excluded="data/interim/excluded.csv",
        near_duplicates="data/interim/near_duplicates.csv",
    log:
        "logs/manifest.log",
    benchmark:
        "benchmarks/manifest.tsv"
    conda:
        "../envs/cxr.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        covid_findings=config["manifest"]["covid_findings"],
        modality=config["manifest"]["modality"],
        views=config["manifest"]["views"],
        min_side=config["manifest"]["min_side"],
        max_pixels=config["manifest"]["max_pixels"],
        near_duplicate_distance=config["manifest"]["near_duplicate_distance"],
    message:
        with_resources("Building the image manifest")
    shell:
        "python scripts/manifest.py --covid {input.covid:q} --kermany {input.kermany:q}"
        " --manifest {output.manifest:q} --excluded {output.excluded:q}"
        " --near_duplicates {output.near_duplicates:q}"
        " --near_duplicate_distance {params.near_duplicate_distance}"
        " --covid_findings {params.covid_findings:q} --modality {params.modality:q}"
        " --views {params.views:q} --min_side {params.min_side} --max_pixels {params.max_pixels}"
        " > {log:q} 2>&1"


# Test split set aside first (test_per_class per class), then validation, rest train;
# patients linked by a near-duplicate image stay together.
rule split:
    input:
        manifest=rules.manifest.output.manifest,
        near_duplicates=rules.manifest.output.near_duplicates,
    output:
        train="{run}data/splits/train.csv",
        val="{run}data/splits/val.csv",
        test="{run}data/splits/test.csv",
    log:
        "{run}logs/split.log",
    conda:
        "../envs/cxr.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        seed=run_seed("split"),
        test_per_class=config["split"]["test_per_class"],
        val_fraction=config["split"]["val_fraction"],
        max_per_class=config["split"]["max_per_class"],
    message:
        with_resources("Splitting by patient (seed {params.seed})")
    shell:
        "python scripts/split.py --manifest {input.manifest:q}"
        " --near_duplicates {input.near_duplicates:q}"
        " --out {output.train:q} {output.val:q} {output.test:q}"
        " --seed {params.seed} --test_per_class {params.test_per_class}"
        " --val_fraction {params.val_fraction} --max_per_class {params.max_per_class}"
        " > {log:q} 2>&1"


# Training COVID images grown to augment.target with the seed's imgaug recipe.
rule augment:
    input:
        rules.split.output.train,
    output:
        csv="{run}data/augmented/augmented.csv",
        images=directory("{run}data/augmented/images"),
    log:
        "{run}logs/augment.log",
    benchmark:
        "{run}benchmarks/augment.tsv"
    conda:
        "../envs/cxr.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        seed=run_seed("augment"),
        target=config["augment"]["target"],
    message:
        with_resources("Augmenting training COVID images to {params.target}")
    shell:
        "python scripts/augment.py --train {input:q} --images {output.images:q}"
        " --csv {output.csv:q} --seed {params.seed} --target {params.target} > {log:q} 2>&1"


# Every split image decoded once, resized to image_size, into data/store/{split}.npz.
rule preprocess:
    input:
        train=rules.split.output.train,
        val=rules.split.output.val,
        test=rules.split.output.test,
        augmented=rules.augment.output.csv,
        augmented_images=rules.augment.output.images,
    output:
        train="{run}data/store/train.npz",
        val="{run}data/store/val.npz",
        test="{run}data/store/test.npz",
    log:
        "{run}logs/preprocess.log",
    benchmark:
        "{run}benchmarks/preprocess.tsv"
    conda:
        "../envs/cxr.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        image_size=config["preprocess"]["image_size"],
    message:
        with_resources("Preprocessing the splits to {params.image_size} px")
    shell:
        "python scripts/preprocess.py --splits {input.train:q} {input.val:q} {input.test:q}"
        " --augmented {input.augmented:q} --out {output.train:q} {output.val:q} {output.test:q}"
        " --image_size {params.image_size} > {log:q} 2>&1"
