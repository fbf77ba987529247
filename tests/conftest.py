"""Shared fixtures: the real mirror beside the checkout, and one session run of the workflow.

``smoke_run`` is the one end-to-end run that the e2e tests share (docs/testing.md): a copy of
the tracked files of this checkout in a temporary folder where ``snakemake`` ran the whole
DAG once with :data:`SESSION_OVERLAYS` (tests/config/smoke.yaml: tiny, cached features;
tests/config/session.yaml: both shipped protocols) on the real mirror plus the bad-input
corpus. Tests never write into the checkout or the read-only mirror (``../shared/data``;
override with ``CXR_SHARED``). A test that needs more from it asks :func:`snakemake` for a
target in that folder (with the same config unless it adds some); a test that needs other
settings for the shared steps makes its own, smallest possible run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CXR_SHARED", REPO.parent / "shared")).resolve()
MIRROR = SHARED / "data"
WEIGHTS = SHARED / "weights" / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
#: The overlays of the shared session run (smoke_run), in order.
SESSION_OVERLAYS = ("tests/config/smoke.yaml", "tests/config/session.yaml")


def copy_checkout(dest: Path) -> Path:
    """Copy the files git tracks or would track (not ignored) into ``dest``; return it."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def snakemake(
    workdir: Path,
    *args: str,
    smoke: bool = True,
    check: bool = True,
    mirror: Path | None = None,
    overlays: tuple[str, ...] | None = None,
    cores: int = 2,
    config: tuple[str, ...] = (),
) -> subprocess.CompletedProcess:
    """Run snakemake in ``workdir`` on the real mirror, with the smoke overlay unless told not.

    Returns the finished process; its ``stdout`` holds stdout and stderr together.
    ``args`` (targets, flags) come first: ``--configfile``/``--config`` take every word after;
    ``config`` adds ``key=value`` words to ``--config``.
    ``mirror`` and ``overlays`` (config files, relative to ``workdir`` or absolute) are what
    this workdir first ran with (remembered in ``.test-run.json``), unless given: by default
    the real mirror and tests/config/smoke.yaml (none with ``smoke=False``). So every later
    call in the session run's folder has its config, and a changed mirror or overlay (which
    would rerun the jobs that read them) is always explicit.
    """
    remembered = workdir / ".test-run.json"
    first = json.loads(remembered.read_text()) if remembered.is_file() else {}
    mirror = Path(mirror or first.get("mirror") or MIRROR)
    if overlays is None:
        default = ["tests/config/smoke.yaml"] if smoke else []
        overlays = tuple(first.get("overlays", default))
    if not first:
        remembered.write_text(json.dumps({"mirror": str(mirror), "overlays": list(overlays)}))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        *args,
        "--cores",
        str(cores),
        *(["--configfile", *overlays] if overlays else []),
        "--config",
        f"mirror={mirror}",
        f"pretrained_weights={WEIGHTS}",
        *config,
    ]
    # Rules call `python`: make it this interpreter, whatever PATH the test runner had.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    if check and proc.returncode != 0:
        logs = (
            "".join(
                f"\n--- {p}\n{p.read_text()[-3000:]}"
                for p in sorted((workdir / "logs").glob("*.log"))
            )
            if (workdir / "logs").is_dir()
            else ""
        )
        raise AssertionError(f"snakemake failed:\n{proc.stdout[-8000:]}{logs}")
    return proc


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The real data mirror; skips (never passes) when it is not beside the checkout."""
    if not (MIRROR / "SHA256SUMS").is_file():
        pytest.skip(f"no data mirror at {MIRROR} (set CXR_SHARED)")
    return MIRROR


@pytest.fixture(scope="session")
def corpus_mirror(tmp_path_factory, mirror) -> Path:
    """The real mirror plus the generated bad-input corpus (tests/corpus.py), as a mirror."""
    from .corpus import make_corpus_mirror

    return make_corpus_mirror(mirror, tmp_path_factory.mktemp("corpus-mirror"))


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, corpus_mirror) -> Path:
    """The shared session run: a temporary copy of the checkout where the whole workflow ran
    once (target ``all``) with :data:`SESSION_OVERLAYS`, on the real mirror plus the
    bad-input corpus (which must not crash any step).

    What it holds: the seed protocol's chain at the top level and adult_controls' under
    ``protocols/adult_controls/`` (each: splits, stores, ``data/features/``, three models,
    four evaluations, audit, within-source check, model card), the shared manifest (with the
    NIH rows), and ``reports/protocols/comparison.*``. ``snakemake(smoke_run, target, ...)``
    builds more in it with the same config (plus ``config`` words or extra ``overlays``);
    ``.test-session.log`` holds the run's output (its job stats, for one).
    """
    workdir = copy_checkout(tmp_path_factory.mktemp("smoke"))
    proc = snakemake(workdir, mirror=corpus_mirror, overlays=SESSION_OVERLAYS)
    (workdir / ".test-session.log").write_text(proc.stdout)
    return workdir
