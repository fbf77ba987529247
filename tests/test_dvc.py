"""DVC beside Snakemake: dvc.yaml is generated from the Snakemake rules (regenerated, it must
equal the committed file), and both tools agree on a real smoke run in a temporary git clone.

The end-to-end tests (marked e2e) share
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
BEFORE_SPLIT = {"acquire_covid", "acquire_kermany", "acquire_weights", "manifest@config", "select"}
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


# --- one DAG: dvc.yaml is generated from the rules ---------------------------------------


def test_committed_dvc_yaml_is_what_the_rules_generate(tmp_path):
    """`python -m cxr.dag write` on a copy of this checkout gives the committed dvc.yaml."""
    copy = copy_checkout(tmp_path)
    (copy / "dvc.yaml").unlink()
    run([sys.executable, "-m", "cxr.dag", "write"], copy)
    assert (copy / "dvc.yaml").read_text() == (REPO / "dvc.yaml").read_text(), (
        "dvc.yaml is not what the rules give: run `python -m cxr.dag write` and commit it"
    )
    checked = run([sys.executable, "-m", "cxr.dag", "write", "--check"], copy, check=False)
    assert checked.returncode == 0 and "not what the rules give" not in checked.stdout


def test_write_check_fails_when_a_rule_changes(tmp_path):
    copy = copy_checkout(tmp_path)
    rules = copy / "rules/data.smk"
    rules.write_text(
        rules.read_text().replace('"augment.target"', '"augment.target", "report.dpi"')
    )
    checked = run([sys.executable, "-m", "cxr.dag", "write", "--check"], copy, check=False)
    assert checked.returncode == 1 and "python -m cxr.dag write" in checked.stdout


def test_imported_modules_follow_imports_through_cxr():
    assert dag.imported_modules(REPO, "scripts/acquire.py") == {
        "cxr/__init__.py",
        "cxr/cli.py",
        "cxr/io.py",
        "cxr/sources.py",
    }
    through_store = dag.imported_modules(REPO, "scripts/preprocess.py")
    assert {"cxr/store.py", "cxr/images.py", "cxr/split.py"} <= through_store


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
    s["split_before"] = {n: file_hash(c1 / f"data/splits/{n}.csv") for n in ("train", "test")}
    step("exp_seed", dvc, c1, "exp", "run", "-S", "config.yaml:split.seed=3")
    s["split_after"] = {n: file_hash(c1 / f"data/splits/{n}.csv") for n in ("train", "test")}
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
        "manifest@config",
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
    data_half = (
        "acquire_covid",
        "acquire_kermany",
        "manifest",
        "select",
        "split",
        "augment",
        "preprocess",
    )
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
        "reports/external/ieee8023_adult.json",
        "data/interim/selection.json",
    }
    test = metrics["reports/metrics/model_03_test.json"]["data"]
    assert test["n"] == 8 and test["model"] == "model_03"
    # 4 + 4 test images (smoke.yaml test_per_class): accuracy is the mean of the class recalls
    # (DVC shows a metrics file's numbers, not its lists: no confusion matrix here)
    assert test["accuracy"] == pytest.approx((test["sensitivity"] + test["specificity"]) / 2)
    assert test["intervals"]["accuracy"]["successes"] == round(8 * test["accuracy"])
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
    # The stage's command follows the param: another seed, another split.
    assert scenario["split_after"]["test"] != scenario["split_before"]["test"]
    assert scenario["split_after"]["train"] != scenario["split_before"]["train"]
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
