# Raw inputs, checksummed: downloaded from the pinned upstreams, or copied from `mirror:`.


localrules:
    acquire_covid,
    acquire_kermany,
    acquire_weights,


# ieee8023 covid-chestxray-dataset: metadata.csv and images/.
rule acquire_covid:
    output:
        directory("data/raw/covid-chestxray-dataset"),
    log:
        "logs/acquire_covid.log",
    conda:
        "../envs/cxr.yaml"
    params:
        url=config["acquire"]["covid_base_url"],
        mirror=optional_arg("--mirror", config["mirror"]),
    message:
        "Acquiring the covid-chestxray-dataset"
    shell:
        "python scripts/acquire.py covid --out {output:q} --url {params.url:q} {params.mirror} > {log:q} 2>&1"


# Kermany et al. 2018: the viral pneumonia files only.
rule acquire_kermany:
    output:
        directory("data/raw/chest_xray"),
    log:
        "logs/acquire_kermany.log",
    conda:
        "../envs/cxr.yaml"
    params:
        url=config["acquire"]["kermany_url"],
        sha256=optional_arg("--sha256", config["acquire"].get("kermany_sha256")),
        mirror=optional_arg("--mirror", config["mirror"]),
    message:
        "Acquiring the Kermany viral pneumonia X-rays"
    shell:
        "python scripts/acquire.py kermany --out {output:q} --url {params.url:q} {params.sha256} {params.mirror} > {log:q} 2>&1"


# Keras VGG19 ImageNet notop weights, md5-checked.
rule acquire_weights:
    output:
        PRETRAINED,
    log:
        "logs/acquire_weights.log",
    conda:
        "../envs/cxr.yaml"
    params:
        weights=optional_arg("--weights", config["pretrained_weights"]),
    message:
        "Fetching the VGG19 ImageNet weights"
    shell:
        "python scripts/acquire.py weights --out {output:q} {params.weights} > {log:q} 2>&1"
