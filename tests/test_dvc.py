"""DVC beside Snakemake: dvc.yaml is the Snakefile's DAG (lockstep check), and both tools agree
on a real smoke run in a temporary git clone.

The lockstep tests run ``python -m cxr.dag check`` on this checkout and on copies with one
disagreement planted each (it must fail, naming it). The end-to-end tests (marked e2e) share
one scenario run once per module, in order, on the real mirror with the smoke overlay merged
into the clone's config.yaml (DVC reads only config.yaml; Snakemake then needs no overlay
either): ``dvc repro`` twice; ``cxr.dag sync``; Snakemake redoing the data half over DVC's
files; push to the default folder remote, fresh ``git clone``, ``dvc pull``; a report-only
param; ``dvc exp run -S config.yaml:split.seed=3``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cxr import dag
from cxr.sources import file_hash

from .conftest import REPO, WEIGHTS, copy_checkout

#: Stages a split.seed change must not rerun: nothing they read depends on the split.
BEFORE_SPLIT = {"acquire_covid", "acquire_kermany", "acquire_weights", "manifest"}
STORE = ("data/store/train.npz", "data/store/val.npz", "data/store/test.npz")


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ``cwd`` with this interpreter's tools; ``stdout`` holds stdout + stderr.

    ``PYTHONPATH`` is the clone, so DVC's stage commands import the clone's ``cxr`` (Snakemake
    rules set it themselves).
    """
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(cwd),
        "DVC_NO_ANALYTICS": "1",
    }
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-8000:]}")
    return proc


def dvc(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd, check)


def dvc_json(cwd: Path, *args: str):
    """The JSON a ``dvc ... --json`` command prints (its stderr, e.g. warnings, left out)."""
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args, "--json"],
        cwd=cwd,
        env={**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(cwd)},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def snakemake(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Plain ``snakemake`` in a clone: config.yaml alone is the config, as under DVC."""
    return run([sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd)


def stages_run(out: str) -> list[str]:
    """Stage names in ``dvc repro`` / ``dvc exp run`` output, in the order they ran."""
    return re.findall(r"Running stage '([^']+)'", out)


def planned(out: str) -> dict[str, int]:
    """Jobs per rule in a ``snakemake -n`` output (the 'Job stats' table), less ``all``."""
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1]
    rows = re.findall(r"^(\w+)\s+(\d+)$", table.split("total", 1)[0], re.M)
    return {rule: int(n) for rule, n in rows if rule != "all"}


def hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under models/ and reports/metrics/, by path."""
    return {
        p.relative_to(root).as_posix(): file_hash(p)
        for d in ("models", "reports/metrics")
        for p in sorted((root / d).rglob("*"))
        if p.is_file()
    }


def merge(base: dict, overlay: dict) -> dict:
    """``overlay`` merged into ``base`` key by key (as Snakemake merges --configfile)."""
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def write_config(path: Path, overlay: dict) -> None:
    path.write_text(
        yaml.safe_dump(merge(yaml.safe_load(path.read_text()), overlay), sort_keys=False)
    )


# --- the checker's parts ----------------------------------------------------------------


def test_normalize_command_reads_argv_as_the_scripts_do():
    # Snakemake: optional_arg leaves out --mirror when null; DVC passes the null as None.
    smk = "python s.py a --x 'A B' C --flag True  --n 2 > logs/s.log 2>&1"
    dvc_cmd = "python s.py a --n 2 --mirror 'None' --flag true --x 'A B' C"
    assert dag.normalize_command(smk) == dag.normalize_command(dvc_cmd)
    assert dag.normalize_command(smk) == (
        ("python", "s.py", "a"),
        (("--flag", ("true",)), ("--n", ("2",)), ("--x", ("A B", "C"))),
    )
    assert dag.normalize_command("python s.py --n 2") != dag.normalize_command("python s.py --n 3")
    assert dag.normalize_command("python s.py --m") != dag.normalize_command("python s.py")
    assert dag.normalize_command("python s.py --v A B") != dag.normalize_command(
        "python s.py --v B A"
    )


def test_probe_configs_change_each_key_in_its_own_probes_and_stay_valid(tmp_path):
    import jsonschema

    base = yaml.safe_load((REPO / "config.yaml").read_text())
    schema = yaml.safe_load((REPO / "schemas/config.schema.yaml").read_text())
    probes, codes = dag.probe_configs(base, schema, tmp_path)
    keys = dag.leaves(base)
    assert set(codes) == set(keys) - dag.STRUCTURAL_KEYS
    assert {"split.seed", "manifest.views", "mirror", "train.model_03.nesterov"} <= set(codes)
    assert len(set(codes.values())) == len(codes)  # every key has its own set of probes
    width = {len(code) for code in codes.values()}
    assert len(width) == 1 and width.pop() >= 2  # so a param reading two keys matches none
    for i, probe in enumerate(probes):
        jsonschema.validate(probe, schema)
        changed = {k for k, v in dag.leaves(probe).items() if v != keys[k]}
        assert changed == {k for k, code in codes.items() if i in code}


def test_imported_modules_follow_imports_through_cxr():
    assert dag.imported_modules(REPO, "scripts/acquire.py") == {"cxr/__init__.py", "cxr/sources.py"}
    through_store = dag.imported_modules(REPO, "scripts/preprocess.py")
    assert {"cxr/store.py", "cxr/images.py", "cxr/split.py"} <= through_store


# --- lockstep: Snakefile and dvc.yaml ---------------------------------------------------


def check(*roots: Path) -> tuple[int, dict[str, list[str]]]:
    """Exit status and ``{root: [differences]}`` of ``python -m cxr.dag check --json ROOTS``.

    One process for all roots: Snakemake's import (plugin discovery) is paid once.
    """
    cmd = [sys.executable, "-m", "cxr.dag", "check", "--json", *map(str, roots)]
    proc = subprocess.run(
        cmd,
        cwd=roots[0],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout.startswith("{"), proc.stdout + proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_snakefile_and_dvc_yaml_agree():
    returncode, found = check(REPO)
    assert found == {str(REPO): []} and returncode == 0


EXTRA_RULE = """

rule extra_stats:
    input:
        "data/splits/train.csv",
    output:
        "reports/extra_stats.txt",
    shell:
        "python scripts/extra_stats.py --train {input:q} --out {output:q}"
"""
EXTRA_STAGE = """
  extra_stats:
    cmd: python scripts/extra_stats.py --train data/splits/train.csv --out reports/extra.txt
    deps:
      - data/splits/train.csv
    outs:
      - reports/extra.txt
"""


def _append(path: str, text: str):
    return lambda root: (root / path).write_text((root / path).read_text() + text)


def _replace(path: str, old: str, new: str):
    def edit(root: Path) -> None:
        text = (root / path).read_text()
        assert text.count(old) == 1, f"{old!r} not once in {path}"
        (root / path).write_text(text.replace(old, new))

    return edit


#: name: (how to plant a disagreement in a copy of the checkout, what check must then say)
PLANTED = {
    "rule-only-in-snakemake": (
        _append("rules/data.smk", EXTRA_RULE),
        "rule extra_stats has no stage in dvc.yaml",
    ),
    "stage-only-in-dvc": (
        _replace("dvc.yaml", "\nplots:", EXTRA_STAGE + "\nplots:"),
        "stage extra_stats in dvc.yaml has no rule",
    ),
    # 42 for both keys in config.yaml: only the probe configs tell them apart.
    "dvc-templates-another-key": (
        _replace("dvc.yaml", "--seed ${split.seed}", "--seed ${augment.seed}"),
        "split / stage split: option --seed",
    ),
    "rule-reads-another-key": (
        _replace("rules/data.smk", 'run_seed("split")', 'run_seed("augment")'),
        "split / stage split: option --seed",
    ),
    "param-not-listed": (
        _replace("dvc.yaml", "          - split.seed\n", ""),
        "config keys read only by Snakemake ['split.seed']",
    ),
    "input-not-a-dep": (
        _replace(
            "dvc.yaml",
            "- data/splits/train.csv\n      - scripts/augment.py",
            "- scripts/augment.py",
        ),
        "augment / stage augment: inputs only in Snakemake ['data/splits/train.csv']",
    ),
    "output-not-an-out": (
        _replace("dvc.yaml", "        - reports/curves/${key}_pr.csv\n", ""),
        "outputs only in Snakemake ['reports/curves/model_01_val_pr.csv']",
    ),
    "module-not-a-dep": (
        _replace(
            "dvc.yaml",
            "report.py\n      - cxr/__init__.py\n      - cxr/figures.py\n",
            "report.py\n      - cxr/__init__.py\n",
        ),
        "stage report: code deps missing ['cxr/figures.py']",
    ),
}


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict[str, list[str]]:
    """For each PLANTED disagreement: a copy of this checkout with it, checked (one run)."""
    roots = {}
    for name, (plant, _) in PLANTED.items():
        roots[name] = copy_checkout(tmp_path_factory.mktemp(name))
        plant(roots[name])
    returncode, found = check(*roots.values())
    assert returncode == 1
    return {name: found[str(root)] for name, root in roots.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PLANTED))
def test_lockstep_check_fails_when_the_tools_disagree(planted, name):
    expected = PLANTED[name][1]
    assert [p for p in planted[name] if expected in p], planted[name]


# --- end to end: both tools on one clone --------------------------------------------------


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, mirror) -> dict:
    """Run the whole DVC scenario once, in order; each step's output (and times) by name."""
    if not WEIGHTS.is_file():
        pytest.skip(f"no VGG19 weights at {WEIGHTS}")
    top = tmp_path_factory.mktemp("dvc")
    c1, c2 = top / "c1", top / "c2"
    c1.mkdir()
    copy_checkout(c1)
    smoke = yaml.safe_load((c1 / "tests/config/smoke.yaml").read_text())
    write_config(
        c1 / "config.yaml", {**smoke, "mirror": str(mirror), "pretrained_weights": str(WEIGHTS)}
    )
    s: dict = {"c1": c1, "c2": c2, "remote": top / "cxr-dvc-remote", "seconds": {}}

    def step(name, fn, *args, **kwargs):
        t = time.monotonic()
        s[name] = fn(*args, **kwargs)
        s["seconds"][name] = round(time.monotonic() - t, 1)
        return s[name]

    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.name", "cxr tests"],
        ["git", "config", "user.email", "tests@cxr.invalid"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "smoke config"],
    ):
        run(cmd, c1)
    step("repro", dvc, c1, "repro")
    step("repro_again", dvc, c1, "repro")
    s["stages"] = dvc(c1, "stage", "list", "--name-only").stdout.split()
    s["metrics"] = dvc_json(c1, "metrics", "show")
    s["plots"] = dvc_json(c1, "plots", "show")
    step("sync", run, [sys.executable, "-m", "cxr.dag", "sync"], c1)
    step("dry_after_repro", snakemake, c1, "-n")

    # Snakemake redoes the data half over DVC's files: same bytes, so DVC sees no change.
    step("snakemake_data", snakemake, c1, "--forceall", *STORE)
    s["status_after_snakemake"] = dvc_json(c1, "status")
    run([sys.executable, "-m", "cxr.dag", "sync"], c1)

    # Push to the default remote (../cxr-dvc-remote beside the clone), fresh clone, pull.
    step("push", dvc, c1, "push")
    run(["git", "add", "dvc.lock"], c1)
    run(["git", "commit", "-qm", "smoke run"], c1)
    run(["git", "clone", "-q", str(c1), str(c2)], top)
    step("pull", dvc, c2, "pull")
    s["pushed"], s["pulled"] = hashes(c1), hashes(c2)
    s["status_after_pull"] = dvc_json(c2, "status")
    # DVC restores files in no set order: the worst order for Snakemake is every output older
    # than the outputs it was made from. Set that, then sync.
    lock = yaml.safe_load((c2 / "dvc.lock").read_text())["stages"]
    now = time.time()
    for i, stage in enumerate(stages_run(s["repro"].stdout)):
        for out in lock[stage]["outs"]:
            os.utime(c2 / out["path"], (now - 60 * i, now - 60 * i))
    step("dry_scrambled", snakemake, c2, "-n")
    step("sync_after_pull", run, [sys.executable, "-m", "cxr.dag", "sync"], c2)
    step("dry_after_pull", snakemake, c2, "-n")
    s["status_after_pull_sync"] = dvc_json(c2, "status")

    # A report-only param (report.n_samples: only rule report reads it), in both tools.
    write_config(c1 / "config.yaml", {"report": {"n_samples": 7}})
    step("dry_report", snakemake, c1, "-n")
    step("repro_report", dvc, c1, "repro")

    # split.seed: Snakemake's plan (overlay), then the DVC experiment that changes config.yaml.
    seed = top / "seed3.yaml"
    seed.write_text("split:\n  seed: 3\n")
    step("dry_seed", snakemake, c1, "-n", "--configfile", str(seed))
    step("exp_seed", dvc, c1, "exp", "run", "-S", "config.yaml:split.seed=3")
    s["params_after_seed"] = dvc_json(c1, "params", "diff")
    run([sys.executable, "-m", "cxr.dag", "sync"], c1)
    step("dry_after_seed", snakemake, c1, "-n")
    print("scenario step seconds:", s["seconds"])
    return s


@pytest.mark.e2e
def test_dvc_repro_runs_every_stage_once_then_none(scenario):
    ran = stages_run(scenario["repro"].stdout)
    assert sorted(ran) == sorted(scenario["stages"]) and len(ran) == len(set(ran))
    assert {
        "acquire_covid",
        "manifest",
        "train_model_03",
        "evaluate@model_03_test",
        "report",
    } <= set(ran)
    assert stages_run(scenario["repro_again"].stdout) == []
    assert "Data and pipelines are up to date" in scenario["repro_again"].stdout


@pytest.mark.e2e
def test_snakemake_has_nothing_to_do_after_dvc_repro(scenario):
    assert planned(scenario["dry_after_repro"].stdout) == {}


@pytest.mark.e2e
def test_snakemake_writes_the_same_data_files_as_dvc(scenario):
    data_half = ("acquire_covid", "acquire_kermany", "manifest", "split", "augment", "preprocess")
    assert planned(scenario["snakemake_data"].stdout) == dict.fromkeys(data_half, 1)
    # DVC hashed what Snakemake wrote (incl. folders it marked .snakemake_timestamp): no change.
    assert scenario["status_after_snakemake"] == {}


@pytest.mark.e2e
def test_metrics_and_plots_are_declared(scenario):
    metrics = scenario["metrics"][""]["data"]
    evaluations = ("model_01_val", "model_02_val", "model_03_val", "model_03_test")
    audit = ("baselines", "masked", "gradcam", "shortcut_audit")
    assert set(metrics) == {
        *(f"reports/metrics/{e}.json" for e in evaluations),
        *(f"reports/audit/{a}.json" for a in audit),
        "reports/external/ieee8023_viral.json",
    }
    test = metrics["reports/metrics/model_03_test.json"]["data"]
    assert test["n"] == 8 and test["model"] == "model_03" and 0.0 <= test["accuracy"] <= 1.0
    plots = scenario["plots"]["data"]
    roc = next(v for k, v in plots.items() if k.startswith("ROC"))
    rows = roc[0]["content"]["data"]["values"]
    assert {r["filename"] for r in rows} >= {"model_03_test_roc.csv"} and all(
        0 <= float(r["fpr"]) <= 1 for r in rows
    )
    assert any(k.startswith("Confusion") for k in plots) and any(
        k.startswith("Loss") for k in plots
    )


@pytest.mark.e2e
def test_push_clone_pull_restores_models_and_metrics_byte_identical(scenario):
    assert (scenario["remote"] / "files").is_dir()  # the default remote, beside the clones
    pushed = scenario["pushed"]
    assert {
        "models/model_03.keras",
        "models/pretrained/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "reports/metrics/model_03_test.json",
    } <= set(pushed)
    assert scenario["pulled"] == pushed
    assert scenario["status_after_pull"] == {}


@pytest.mark.e2e
def test_sync_after_pull_leaves_snakemake_nothing_to_do(scenario):
    # Without sync, outputs older than their inputs make Snakemake redo the pipeline ...
    assert planned(scenario["dry_scrambled"].stdout).get("manifest") == 1
    # ... after it, nothing; and DVC still sees exactly what it restored.
    assert planned(scenario["dry_after_pull"].stdout) == {}
    assert scenario["status_after_pull_sync"] == {}


@pytest.mark.e2e
def test_report_param_reruns_only_report_in_both_tools(scenario):
    assert planned(scenario["dry_report"].stdout) == {"report": 1}
    assert stages_run(scenario["repro_report"].stdout) == ["report"]


@pytest.mark.e2e
def test_split_seed_reruns_split_and_everything_after_in_both_tools(scenario):
    after_split = set(scenario["stages"]) - BEFORE_SPLIT
    assert stages_run(scenario["exp_seed"].stdout)[0] == "split"
    assert set(stages_run(scenario["exp_seed"].stdout)) == after_split
    rules = {name.split("@")[0] for name in after_split}
    plan = planned(scenario["dry_seed"].stdout)
    assert set(plan) == rules and plan["evaluate"] == 4 and plan["split"] == 1
    seed = scenario["params_after_seed"]["config.yaml"]["split.seed"]
    assert (seed["old"], seed["new"]) == (42, 3)
    assert planned(scenario["dry_after_seed"].stdout) == {}


@pytest.mark.e2e
def test_git_would_add_no_data_models_or_dvc_cache(scenario):
    # After every step above, `git add -A` takes only small text files (dvc.lock, config).
    would_add = run(["git", "add", "-A", "--dry-run"], scenario["c1"]).stdout.split("\n")
    tracked = run(["git", "ls-files"], scenario["c1"]).stdout.split()
    paths = [line.split(" ", 1)[1].strip("'") for line in would_add if line] + tracked
    assert "dvc.lock" in tracked and ".dvc/config" in tracked and ".dvcignore" in tracked
    big = ("data/", "models/", "reports/", ".dvc/cache/", ".dvc/tmp/", ".snakemake/")
    assert [p for p in paths if p.startswith(big)] == []
