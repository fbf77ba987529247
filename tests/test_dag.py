"""The DAG as Snakemake builds it (its Python API, no job run): each rule's config options
(rules/common.smk ``config_params``), their DVC form (cxr.dag), and the per-run chains of
config ``seeds``. dvc.yaml itself is tested in tests/test_dvc.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from cxr import dag

from .conftest import REPO, copy_checkout

SCHEMA = yaml.safe_load((REPO / "schemas/config.schema.yaml").read_text())


def leaves(config: dict, prefix: str = "") -> dict:
    """``{'a.b': value}`` for every value that is not a mapping."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def options_of(job) -> dict:
    """``{config key: value}`` of a job's config_params (empty when it has none)."""
    return next(
        (dict(v.keys) for _, v in job.params.items() if isinstance(v, str) and hasattr(v, "keys")),
        {},
    )


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A copy of this checkout with an external test set (one CSV, one image folder) and an
    overlay naming it, with two seeds."""
    root = copy_checkout(tmp_path_factory.mktemp("dag"))
    (root / "external").mkdir()
    (root / "external/labels.csv").write_text("path,label\na.png,covid\nb.png,non_covid\n")
    (root / "seeds_external.yaml").write_text(
        yaml.safe_dump(
            {
                "seeds": [3, 5],
                "external": {"metadata": "external/labels.csv", "images": "external"},
            }
        )
    )
    return root


# --- config options -----------------------------------------------------------------------


def test_dvc_options_template_each_kind_of_value():
    keys = {
        "split.seed": 42,  # a number
        "train.early_stopping_monitor": "loss",  # a string: quoted
        "split.max_per_class": None,  # a null: quoted, the script reads 'None' as unset
        "train.model_03.nesterov": True,  # a boolean: DVC writes true
        "train.dropout": [0.5, 0.3],  # fixed length in the schema: indexed
        "manifest.views": ["PA", "AP", "AP Supine"],  # any length: through ${item}
        "external.ieee8023_viral_findings": ["SARS"],
    }
    lists = {}
    assert dag.dvc_options(keys, SCHEMA, lists) == (
        "--seed ${split.seed} --early_stopping_monitor '${train.early_stopping_monitor}'"
        " --max_per_class '${split.max_per_class}' --nesterov ${train.model_03.nesterov}"
        " --dropout ${train.dropout[0]} ${train.dropout[1]} ${item}"
    )
    assert lists == {
        "views": "${manifest.views}",
        "ieee8023_viral_findings": "${external.ieee8023_viral_findings}",
    }


def test_snakemake_renders_options_by_config_value(checkout):
    """None left out, booleans true/false, lists as words (shell-quoted), seeds per run."""
    smoke = ["tests/config/smoke.yaml", "seeds_external.yaml"]
    with dag.snakemake_dag(checkout, configfiles=smoke) as (_, jobs):
        cmds = {(j.rule.name, j.wildcards_dict.get("run", "")): j.shellcmd for j in jobs}
    split = cmds[("split", "")]
    assert "--seed 42 --test_per_class 4 --val_fraction 0.25 --max_per_class 20 " in split
    assert "--seed 5 " in cmds[("split", "runs/seed_5/")]
    assert "--seed 3 " in cmds[("train_model_02", "runs/seed_3/")]
    assert "--nesterov true" in cmds[("train_model_03", "")]
    assert "--views PA AP 'AP Supine'" in cmds[("manifest", "")]
    assert "--mirror" not in cmds[("acquire_covid", "")]  # mirror: null in config.yaml
    with dag.snakemake_dag(checkout) as (_, jobs):
        split = next(j.shellcmd for j in jobs if j.rule.name == "split")
    assert "--max_per_class" not in split  # null in config.yaml


def test_every_config_key_is_read_and_every_option_is_a_script_argument(checkout):
    """Each key of config.yaml reaches some rule (external.metadata as an input file; a
    protocol's definition as the select job's JSON param), and each option a rule renders is
    an argparse option of the script it runs."""
    (checkout / "protocols.yaml").write_text(
        yaml.safe_dump({"protocols": ["seed", "adult_controls"]})
    )
    overlay = ["tests/config/smoke.yaml", "seeds_external.yaml", "protocols.yaml"]
    config = leaves(yaml.safe_load((REPO / "config.yaml").read_text()))
    read = set()
    with dag.snakemake_dag(checkout, configfiles=overlay) as (_, jobs):
        for job in jobs:
            keys = options_of(job)
            read |= set(keys)
            if job.rule.name == "select":
                prefix = f"protocol_definitions.{job.params.protocol}."
                read |= {key for key in config if key.startswith(prefix)}
            script = re.search(r"python (scripts/\S+\.py)", job.shellcmd or "")
            if not keys:
                continue
            source = (checkout / script.group(1)).read_text()
            for key in keys:
                option = key.rsplit(".", 1)[-1]
                assert f'"--{option}"' in source, (job.rule.name, key, script.group(1))
    assert set(config) - read == {"external.metadata"}


# --- per-run outputs ------------------------------------------------------------------------


def test_each_seed_run_depends_on_its_own_files_only(checkout):
    """Issue 14, item 4: with seeds and an external set, no job of runs/seed_N/ reads an
    output of the top-level run or of another seed (shared steps before the split have no
    run wildcard); the model card of a seed quotes that seed's external result."""
    targets = ["all", *(f"runs/seed_{n}/reports/model_card.md" for n in (3, 5))]
    overlay = ["tests/config/smoke.yaml", "seeds_external.yaml"]
    crossing = []
    with dag.snakemake_dag(checkout, targets=targets, configfiles=overlay) as (workflow, jobs):
        for job in jobs:
            run = job.wildcards_dict.get("run")
            if not run:
                continue
            for dep, files in workflow.dag.dependencies[job].items():
                if dep.wildcards_dict.get("run", run) != run:
                    crossing.append((job.rule.name, run, sorted(map(str, files))))
        cards = {
            job.wildcards_dict["run"]: list(map(str, job.input))
            for job in jobs
            if job.rule.name == "model_card"
        }
    assert crossing == []
    assert set(cards) == {"", "runs/seed_3/", "runs/seed_5/"}
    for run, inputs in cards.items():
        assert f"{run}reports/external/external.json" in inputs


def test_optional_reads_a_dvc_null_as_unset():
    import argparse

    from cxr.cli import optional

    p = argparse.ArgumentParser()
    p.add_argument("--max_per_class", type=optional(int))
    assert p.parse_args([]).max_per_class is None  # Snakemake leaves a null out
    assert p.parse_args(["--max_per_class", "None"]).max_per_class is None  # DVC: 'None'
    assert p.parse_args(["--max_per_class", "20"]).max_per_class == 20
    with pytest.raises(SystemExit):
        p.parse_args(["--max_per_class", "twenty"])
