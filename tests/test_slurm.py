"""Cluster submission: the workflow sent through ``profiles/slurm`` to a real SLURM.

The cluster is the single node that ``.ci/slurm/setup.sh`` installs and configures (munge,
slurmctld, slurmd, ``/etc/slurm/slurm.conf``, accounting off). The ``slurm_cluster`` fixture
starts the daemons that are not running yet and stops those it started, by pid. When they
cannot start here (not installed, not root, no config), the SLURM tests are skipped with the
reason; with ``CXR_REQUIRE_SLURM=1`` (CI) that is a failure instead. The dry-run tests need no
SLURM at all, only the executor plugin (the ``slurm`` extra; ``make test`` installs it).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cxr import dag

from .conftest import MIRROR, REPO, WEIGHTS, copy_checkout

# What the smoke run through SLURM builds: the smallest target whose jobs are of every kind
# the test checks (downloads kept local; data, features and training rules sent to SLURM).
# The rest of the DAG runs in the session run (tests/conftest.py smoke_run).
SMOKE_TARGETS = ("models/model_01.keras",)
# Rules the workflow keeps on the submitting machine (`localrules`): never sent to SLURM.
LOCAL_RULES = {"acquire_covid", "acquire_kermany", "acquire_weights"}
# Rules that must each become at least one SLURM job (plus every rule named train*).
CLUSTER_RULES = {"manifest", "select", "split", "augment", "preprocess", "features"}
# Small test-only resources: the test node is one small machine (no cgroups: not enforced).
TEST_MEM_MB = 1000
TEST_RUNTIME_MIN = 30
# Seconds a whole snakemake run may take before the test gives up (and cancels its jobs).
RUN_TIMEOUT_S = 1800
SLURM_CONF = Path("/etc/slurm/slurm.conf")
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.")
DAEMONS = (
    "munge",
    "unmunge",
    "munged",
    "slurmctld",
    "slurmd",
    "sbatch",
    "squeue",
    "scontrol",
    "sinfo",
    "scancel",
)

pytestmark = pytest.mark.slow


def _env(path: str | None = None) -> dict[str, str]:
    """This interpreter first on PATH (jobs call `python`), or exactly ``path`` when given."""
    bin_dir = str(Path(sys.executable).parent)
    path = path if path is not None else f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "PATH": path}


def _run(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )


def _ok(cmd: list[str]) -> bool:
    try:
        return _run(cmd, timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _snakemake(workdir: Path, *args: str, timeout: float = RUN_TIMEOUT_S, path: str | None = None):
    """``python -m snakemake ARGS`` in ``workdir``; stdout holds stdout and stderr together."""
    cmd = [sys.executable, "-m", "snakemake", *args]
    try:
        return subprocess.run(
            cmd,
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(path),
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        raise AssertionError(f"snakemake ran over {timeout} s:\n{out[-8000:]}") from exc


def _job_states(job_ids) -> dict[str, str]:
    """SLURM state of each job id, from squeue (finished jobs stay listed for MinJobAge)."""
    out = _run(["squeue", "--states=all", "--noheader", "--format=%i|%T"]).stdout
    states = dict(line.split("|", 1) for line in out.split() if "|" in line)
    return {j: states.get(j, "<not in squeue>") for j in job_ids}


def _unavailable(reason: str):
    if os.environ.get("CXR_REQUIRE_SLURM") == "1":
        pytest.fail(f"SLURM required (CXR_REQUIRE_SLURM=1) but unavailable: {reason}")
    pytest.skip(f"no SLURM cluster: {reason}")


def _require_plugin() -> None:
    """profiles/slurm needs the executor plugin, an optional extra of the project."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        _unavailable("snakemake-executor-plugin-slurm not installed: pip install -e '.[slurm]'")


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _wait_for_idle_node(procs: dict[str, subprocess.Popen], seconds: float = 60) -> str | None:
    """Wait until slurmctld answers and a node is idle; return why not, or None."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                log = Path("/var/log/slurm") / f"{name}.log"
                return f"{name} exited with {proc.returncode}: {_tail(log, 1500)}"
        states = _run(["sinfo", "--noheader", "--format=%T"]).stdout.split()
        if "idle" in states or "mixed" in states:
            return None
        time.sleep(1)
    return f"no idle node after {seconds} s (sinfo: {_run(['sinfo']).stdout.strip()})"


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running single-node SLURM: uses running daemons, else starts them (and stops them).

    Yields a dict with the default ``partition``. Skips, with the reason, when SLURM cannot run.
    """
    _require_plugin()
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        _unavailable(f"{', '.join(missing)} not installed (run .ci/slurm/setup.sh as root)")
    started: dict[str, subprocess.Popen] = {}
    try:
        if not _ok(["scontrol", "ping"]):
            if os.geteuid() != 0:
                _unavailable("daemons not running and starting them needs root")
            if not SLURM_CONF.is_file():
                _unavailable(f"no {SLURM_CONF} (run .ci/slurm/setup.sh)")
            host = socket.gethostname().split(".")[0]
            if not re.search(rf"^NodeName={re.escape(host)}\s", SLURM_CONF.read_text(), re.M):
                _unavailable(f"{SLURM_CONF} has no node {host} (rerun .ci/slurm/setup.sh)")
            if not _ok(["sh", "-c", "munge -n | unmunge"]):
                Path("/run/munge").mkdir(parents=True, exist_ok=True)
                shutil.chown("/run/munge", "munge", "munge")
                started["munged"] = subprocess.Popen(
                    ["munged", "--foreground"],
                    user="munge",
                    group="munge",
                    extra_groups=[],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for _ in range(20):
                    if _ok(["sh", "-c", "munge -n | unmunge"]):
                        break
                    time.sleep(0.5)
                else:
                    _unavailable("munged did not start")
            Path("/run/slurm").mkdir(parents=True, exist_ok=True)
            # -D: foreground, so the pid is the daemon's; -c: no jobs left from earlier runs.
            for name, cmd in (
                ("slurmctld", ["slurmctld", "-D", "-c"]),
                ("slurmd", ["slurmd", "-D"]),
            ):
                started[name] = subprocess.Popen(
                    cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                time.sleep(1)
        why = _wait_for_idle_node({k: v for k, v in started.items() if k != "munged"})
        if why:
            _unavailable(why)
        partitions = _run(["sinfo", "--noheader", "--format=%P"]).stdout.split()
        default = next((p.rstrip("*") for p in partitions if p.endswith("*")), partitions[0])
        yield {"partition": default}
    finally:
        if "slurmctld" in started and started["slurmctld"].poll() is None:
            _run(["scancel", f"--user={os.getuid()}"])  # jobs a failed test left behind
            time.sleep(2)
        for proc in reversed(list(started.values())):  # slurmd, slurmctld, munged
            if proc.poll() is None:
                os.kill(proc.pid, 15)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, 9)
                    proc.wait()


def _rule_names(workdir: Path) -> list[str]:
    """The rules of ``snakemake --list-rules``: only its lines that are names (its output also
    holds Snakemake's profile notice), each checked against the Snakefile's rules (API)."""
    listed = _snakemake(workdir, "--list-rules", "--configfile", "tests/config/smoke.yaml")
    assert listed.returncode == 0, listed.stdout[-3000:]
    names = [line for line in listed.stdout.splitlines() if re.fullmatch(r"[A-Za-z_]\w*", line)]
    rules = dag.rule_names(workdir, configfiles=["tests/config/smoke.yaml"])
    assert sorted(names) == sorted(rules), listed.stdout[-3000:]
    return names


def _slurm_args(workdir: Path, partition: str) -> list[str]:
    """The slurm profile with test-only overrides: partition, small memory and time."""
    small = [f"{rule}:mem_mb={TEST_MEM_MB}" for rule in _rule_names(workdir)]  # own mem_mb too
    return [
        "--profile",
        "profiles/slurm",
        "--slurm-init-seconds-before-status-checks",
        "5",
        "--default-resources",
        f"slurm_partition={partition}",
        f"mem_mb={TEST_MEM_MB}",
        f"runtime={TEST_RUNTIME_MIN}",
        "--set-resources",
        *small,
    ]


def _submitted(stdout: str) -> dict[str, Path]:
    """SLURM job id -> its slurm log, as the plugin reported each submission."""
    return {jid: Path(log) for jid, log in SUBMITTED.findall(stdout)}


def test_rule_names_are_rules_only(tmp_path):
    """Issue 14, item 7: the names given to --set-resources are the rules, and no word of
    Snakemake's notices ("Using workflow specific profile ...")."""
    names = _rule_names(copy_checkout(tmp_path))
    assert {"manifest", "train_model_01", "model_card", "all"} <= set(names)
    assert not {"Using", "profile", "workflow"} & set(names)


def test_slurm_profile_not_overridden_by_default_profile():
    """profiles/default is read on every run and wins over --profile: it must not disagree."""
    default = yaml.safe_load((REPO / "profiles/default/config.yaml").read_text())
    slurm = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    assert slurm["executor"] == "slurm"
    assert slurm["slurm-status-command"] == "squeue"
    clashes = {k: (default[k], slurm[k]) for k in default.keys() & slurm.keys()}
    clashes = {k: v for k, v in clashes.items() if v[0] != v[1]}
    assert not clashes, f"profiles/default would override profiles/slurm: {clashes}"
    assert "cores" not in default, "cores in profiles/default caps every cluster job's threads"


def test_dry_run_without_slurm_lists_jobs_with_resources(tmp_path):
    """`snakemake --profile profiles/slurm -n` with no SLURM command on PATH at all."""
    _require_plugin()
    work = copy_checkout(tmp_path / "work")
    bare = tmp_path / "bin"  # python, a shell and `which`: nothing of SLURM
    bare.mkdir()
    for tool in ("bash", "sh", "which", "env"):
        (bare / tool).symlink_to(shutil.which(tool))
    for name in ("python", "python3"):
        (bare / name).symlink_to(sys.executable)
    assert shutil.which("sbatch", path=str(bare)) is None
    proc = _snakemake(work, "--profile", "profiles/slurm", "-n", "--cores", "64", path=str(bare))
    assert proc.returncode == 0, proc.stdout[-5000:]
    out = proc.stdout
    assert "Using profiles profiles/slurm" in out
    stats = out.split("Job stats:", 1)[1]
    for rule in (*LOCAL_RULES, *CLUSTER_RULES, "train_model_01"):
        assert re.search(rf"^{rule}\s+\d+", stats, re.M), f"{rule} not in the job stats"
    # Profile defaults reach the jobs (shown where a rule prints its details, e.g. `all`).
    assert re.search(r"resources: .*mem_mb=2000.*runtime=60", out), out[-3000:]


def test_failing_job_is_reported_failed(tmp_path, slurm_cluster):
    """A rule that exits 3 inside its SLURM job: reported failed, SLURM says FAILED."""
    (tmp_path / "Snakefile").write_text(
        "# A rule that always fails, for tests/test_slurm.py.\n"
        "rule boom:\n"
        '    output: "boom.txt"\n'
        "    shell: \"echo 'about to fail on purpose'; exit 3\"\n"
    )
    proc = _snakemake(
        tmp_path,
        "--profile",
        str(REPO / "profiles/slurm"),
        "--cores",
        "1",
        "--retries",
        "0",
        "--slurm-init-seconds-before-status-checks",
        "3",
        "--default-resources",
        f"slurm_partition={slurm_cluster['partition']}",
        "mem_mb=100",
        "runtime=5",
        timeout=300,
    )
    out = proc.stdout
    assert proc.returncode != 0, out[-3000:]
    jobs = _submitted(out)
    assert len(jobs) == 1, out[-3000:]
    ((jid, log),) = jobs.items()
    assert f"SLURM-job '{jid}' failed" in out, out[-3000:]
    assert _job_states([jid]) == {jid: "FAILED"}
    assert log.parent == tmp_path / ".snakemake" / "slurm_logs" / "rule_boom"
    assert "about to fail on purpose" in log.read_text()
    assert not (tmp_path / "boom.txt").exists()


@pytest.mark.e2e
def test_smoke_workflow_through_slurm(tmp_path, mirror, slurm_cluster):
    """The smoke workflow up to model_01 via profiles/slurm: every compute rule ran as a SLURM
    job, the downloads locally."""
    work = copy_checkout(tmp_path)
    start = time.monotonic()
    proc = _snakemake(
        work,
        *SMOKE_TARGETS,
        *_slurm_args(work, slurm_cluster["partition"]),
        "--cores",
        "2",
        "--configfile",
        "tests/config/smoke.yaml",
        "--config",
        f"mirror={MIRROR}",
        f"pretrained_weights={WEIGHTS}",
    )
    out = proc.stdout
    logs = "".join(f"\n--- {p}\n{_tail(p)}" for p in sorted(work.glob("logs/**/*.log")))
    assert proc.returncode == 0, f"{out[-8000:]}{logs}"
    jobs = _submitted(out)
    # Each submitted job: a SLURM log under .snakemake/slurm_logs/rule_<rule>/..., kept.
    by_rule: dict[str, list[str]] = {}
    for jid, log in jobs.items():
        rel = log.relative_to(work / ".snakemake" / "slurm_logs")
        by_rule.setdefault(rel.parts[0].removeprefix("rule_"), []).append(jid)
        assert log.name == f"{jid}.log" and log.is_file(), log
    stats = out.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    train_rules = set(re.findall(r"^(train\w*)\s+\d+", stats, re.M))
    assert train_rules == {"train_model_01"}, stats
    assert CLUSTER_RULES | train_rules <= by_rule.keys(), (sorted(by_rule), out[-3000:])
    assert not LOCAL_RULES & by_rule.keys(), "download rules must run locally"
    states = _job_states(jobs)
    assert set(states.values()) == {"COMPLETED"}, states
    assert (work / "data/store/train.npz").is_file() and (work / "models/model_01.keras").is_file()
    # real-time augmentation off (smoke.yaml): the features job computed the cached features
    assert "cache_features: block5_pool from" in (work / "logs/train_model_01.log").read_text()
    print(f"{len(jobs)} SLURM jobs {sorted(by_rule)} in {time.monotonic() - start:.0f} s")
