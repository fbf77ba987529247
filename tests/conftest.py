"""Shared fixtures: the real mirror beside the checkout, and one smoke run of the workflow.

The smoke run copies the tracked files of this checkout into a temporary folder and runs
``snakemake`` there with the smoke overlay, so tests never write into the checkout or the
read-only mirror (``../shared/data``; override with ``CXR_SHARED``).
"""

from __future__ import annotations

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
    cores: int = 2,
    config: tuple[str, ...] = (),
) -> subprocess.CompletedProcess:
    """Run snakemake in ``workdir`` on the real mirror, with the smoke overlay unless told not.

    Returns the finished process; its ``stdout`` holds stdout and stderr together.
    ``args`` (targets, flags) come first: ``--configfile``/``--config`` take every word after;
    ``config`` adds ``key=value`` words to ``--config``.
    ``mirror`` is a config parameter (a change reruns acquire): by default the one this
    workdir first ran with (remembered in ``.test-mirror``), else the real mirror.
    """
    remembered = workdir / ".test-mirror"
    if mirror is None:
        mirror = Path(remembered.read_text()) if remembered.is_file() else MIRROR
    remembered.write_text(str(mirror))
    overlay = ["--configfile", "tests/config/smoke.yaml"] if smoke else []
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        *args,
        "--cores",
        str(cores),
        *overlay,
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
    """A temporary copy of the checkout where the whole smoke workflow has run once, on the
    real mirror plus the bad-input corpus (which must not crash any step)."""
    workdir = copy_checkout(tmp_path_factory.mktemp("smoke"))
    snakemake(workdir, mirror=corpus_mirror)
    return workdir
