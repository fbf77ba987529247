# Raw images to the preprocessed split store: manifest, protocol selection, patient-level
# split, augmentation.


# One row per usable image; everything else in excluded.csv with a reason. The NIH controls
# only when a protocol in config `protocols` uses them.
NIH = "nih" in PROTOCOL_SOURCES


rule manifest:
    input:
        covid=rules.acquire_covid.output[0],
        kermany=rules.acquire_kermany.output[0],
        nih=rules.acquire_nih.output[0] if NIH else [],
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
        nih=lambda wildcards, input: (
            f"--nih {shlex.quote(str(input.nih))}" if input.nih else ""
        ),
        options=config_params(
            "manifest.covid_findings",
            "manifest.modality",
            "manifest.views",
            "manifest.min_side",
            "manifest.max_pixels",
            "manifest.near_duplicate_distance",
        ),
    message:
        with_resources("Building the image manifest")
    shell:
        "python scripts/manifest.py --covid {input.covid:q} --kermany {input.kermany:q}"
        " --manifest {output.manifest:q} --excluded {output.excluded:q}"
        " --near_duplicates {output.near_duplicates:q} {params.nih} {params.options}"
        " > {log:q} 2>&1"


# The manifest rows of one protocol (config `protocols`, docs/protocols.md), labelled by its
# classes; every other row in selection_excluded.csv with a reason; counts per source, class
# and age group (unknown ages counted). One job per protocol, under its folder.
rule select:
    input:
        manifest=rules.manifest.output.manifest,
    output:
        selected="{protocol_dir}data/interim/selected.csv",
        excluded="{protocol_dir}data/interim/selection_excluded.csv",
        counts="{protocol_dir}data/interim/selection_counts.csv",
        summary="{protocol_dir}data/interim/selection.json",
    log:
        "{protocol_dir}logs/select.log",
    conda:
        "../envs/cxr.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        protocol=lambda wildcards: run_protocol(wildcards.protocol_dir),
        # The protocol's definition as JSON (a param: a changed definition reruns the job).
        definition=lambda wildcards: json.dumps(
            config["protocol_definitions"][run_protocol(wildcards.protocol_dir)],
            sort_keys=True,
        ),
    message:
        with_resources("Selecting the images of protocol {params.protocol}")
    shell:
        "python scripts/select_protocol.py --manifest {input.manifest:q}"
        " --protocol {params.protocol:q} --definition {params.definition:q}"
        " --selected {output.selected:q} --excluded {output.excluded:q}"
        " --counts {output.counts:q} --summary {output.summary:q} > {log:q} 2>&1"


# Test split set aside first (test_per_class per class), then validation, rest train;
# patients linked by a near-duplicate image stay together.
rule split:
    input:
        manifest=selection("selected"),
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
        options=config_params(
            "split.seed",
            "split.test_per_class",
            "split.val_fraction",
            "split.max_per_class",
        ),
    message:
        with_resources("Splitting by patient (seed {params.options.seed})")
    shell:
        "python scripts/split.py --manifest {input.manifest:q}"
        " --near_duplicates {input.near_duplicates:q}"
        " --out {output.train:q} {output.val:q} {output.test:q} {params.options}"
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
        options=config_params("augment.seed", "augment.target"),
    message:
        with_resources("Augmenting training COVID images to {params.options.target}")
    shell:
        "python scripts/augment.py --train {input:q} --images {output.images:q}"
        " --csv {output.csv:q} {params.options} > {log:q} 2>&1"


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
        options=config_params("preprocess.image_size"),
    message:
        with_resources("Preprocessing the splits to {params.options.image_size} px")
    shell:
        "python scripts/preprocess.py --splits {input.train:q} {input.val:q} {input.test:q}"
        " --augmented {input.augmented:q} --out {output.train:q} {output.val:q} {output.test:q}"
        " {params.options} > {log:q} 2>&1"
