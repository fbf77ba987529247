# Raw inputs, checksummed: downloaded from the pinned upstreams (each file checked against
# its pin in acquire.locks, or recorded there on first download), or copied from `mirror:`.
# A failed download is one line in the log (URL, cause, what to do); its traceback goes to
# logs/acquire_<what>.traceback, not declared as a log, so that --show-failed-logs prints
# the one line only.


localrules:
    acquire_covid,
    acquire_kermany,
    acquire_nih,
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
        options=config_params("acquire.covid_base_url", "acquire.locks", "mirror"),
    message:
        "Acquiring the covid-chestxray-dataset"
    shell:
        "python scripts/acquire.py covid --out {output:q} {params.options}"
        " --traceback logs/acquire_covid.traceback > {log:q} 2>&1"


# Kermany et al. 2018: the viral pneumonia files only.
rule acquire_kermany:
    output:
        directory("data/raw/chest_xray"),
    log:
        "logs/acquire_kermany.log",
    conda:
        "../envs/cxr.yaml"
    params:
        options=config_params(
            "acquire.kermany_url", "acquire.kermany_sha256", "acquire.locks", "mirror"
        ),
    message:
        "Acquiring the Kermany viral pneumonia X-rays"
    shell:
        "python scripts/acquire.py kermany --out {output:q} {params.options}"
        " --traceback logs/acquire_kermany.traceback > {log:q} 2>&1"


# NIH ChestX-ray8 controls (docs/protocols.md): No_findings/, Pneumonia/ and the NIH metadata.
# Needed only when a protocol in config `protocols` uses the source nih.
rule acquire_nih:
    output:
        directory("data/raw/nih"),
    log:
        "logs/acquire_nih.log",
    conda:
        "../envs/cxr.yaml"
    params:
        options=config_params(
            "acquire.nih_images_base_url",
            "acquire.nih_metadata_url",
            "acquire.nih_metadata_sha256",
            "acquire.locks",
            "mirror",
        ),
    message:
        "Acquiring the NIH ChestX-ray8 controls"
    shell:
        "python scripts/acquire.py nih --out {output:q} {params.options}"
        " --traceback logs/acquire_nih.traceback > {log:q} 2>&1"


# Keras VGG19 ImageNet notop weights, md5-checked.
rule acquire_weights:
    output:
        PRETRAINED,
    log:
        "logs/acquire_weights.log",
    conda:
        "../envs/cxr.yaml"
    params:
        options=config_params("pretrained_weights"),
    message:
        "Fetching the VGG19 ImageNet weights"
    shell:
        "python scripts/acquire.py weights --out {output:q} {params.options}"
        " --traceback logs/acquire_weights.traceback > {log:q} 2>&1"
