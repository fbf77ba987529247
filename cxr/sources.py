"""Where the raw data and pretrained weights come from: download or mirror, always checksummed.

This module only writes under the output folder it is given (``data/raw/...``,
``models/pretrained/``). It never writes into a mirror: files are copied out of it.

Sources
-------
- ieee8023 covid-chestxray-dataset (Cohen et al. 2020, arXiv:2003.11597), pinned to a commit:
  ``metadata.csv`` and ``images/``.
- Kermany, Zhang, Goldbaum (2018), Mendeley Data doi:10.17632/rscbjbr9sj.2: only the viral
  pneumonia files ``chest_xray/{train,test}/PNEUMONIA/personN_virus_M.jpeg``.
- Keras VGG19 ImageNet notop weights (Simonyan & Zisserman 2014, arXiv:1409.1556); md5 as
  published in ``keras/src/applications/vgg19.py``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import zipfile
from pathlib import Path, PurePosixPath

import pandas as pd

from cxr.io import atomic_path, write_text

COVID_DIR = "covid-chestxray-dataset"
KERMANY_DIR = "chest_xray"
#: Kermany viral pneumonia files, relative to the archive's ``chest_xray/`` folder.
KERMANY_VIRUS = re.compile(
    r"(?:^|/)chest_xray/((?:train|test)/PNEUMONIA/person\d+_virus_\d+(?:_\d+)?\.jpeg)$"
)
WEIGHTS_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
#: The md5 Keras checks for WEIGHTS_FILE (keras.applications.vgg19, WEIGHTS_PATH_NO_TOP).
WEIGHTS_MD5 = "253f8cb515780f3b799900260a226db6"
WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/" + WEIGHTS_FILE
LOCK_NAME = "SHA256SUMS"


class ChecksumError(RuntimeError):
    """A file's checksum does not match the expected one. ``path`` names the file."""

    def __init__(self, path, expected: str, actual: str):
        self.path = str(path)
        super().__init__(f"{path}: checksum mismatch (expected {expected}, got {actual})")


def file_hash(path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (``sha256`` or ``md5``), read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_sums(path) -> dict[str, str]:
    """Parse a ``sha256sum``-style file into ``{relative path: hex digest}``."""
    sums = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.lstrip("*").strip()] = digest.lower()
    return sums


def write_sums(folder) -> Path:
    """Write ``folder/SHA256SUMS`` for every file below ``folder`` (sorted; the lock file)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != LOCK_NAME)
    lines = [f"{file_hash(p)}  {p.relative_to(folder).as_posix()}" for p in files]
    lock = folder / LOCK_NAME
    write_text("\n".join(lines) + "\n", lock)
    return lock


def copy_verified(src, dst, sha256: str) -> None:
    """Copy ``src`` to ``dst`` (never link or move) and check the copy's sha256.

    Raises
    ------
    ChecksumError naming ``src`` if the bytes do not match; the bad copy is removed.
    """
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
        actual = file_hash(tmp)
        if actual != sha256:
            raise ChecksumError(src, sha256, actual)


def copy_from_mirror(mirror, prefix: str, out_dir, keep=lambda rel: True) -> int:
    """Copy every file the mirror's ``SHA256SUMS`` lists under ``prefix/`` into ``out_dir``.

    Parameters
    ----------
    mirror : folder holding ``SHA256SUMS`` and the upstream layouts (read-only is fine).
    prefix : top folder inside the mirror, e.g. ``covid-chestxray-dataset``.
    out_dir : destination; files keep their path below ``prefix``.
    keep : predicate on the path below ``prefix``; files it rejects are not copied.

    Returns the number of files copied. Raises ChecksumError on a mismatch, FileNotFoundError
    if the mirror has no ``SHA256SUMS`` or a listed file is absent.
    """
    mirror = Path(mirror)
    sums_path = mirror / LOCK_NAME
    if not sums_path.is_file():
        raise FileNotFoundError(f"{sums_path}: mirror has no SHA256SUMS to verify against")
    n = 0
    for name, digest in sorted(read_sums(sums_path).items()):
        head, _, rel = name.partition("/")
        if head != prefix or not keep(rel):
            continue
        copy_verified(mirror / name, Path(out_dir) / rel, digest)
        n += 1
    write_sums(out_dir)
    return n


def safe_extract(zip_path, out_dir, select) -> int:
    """Extract the members of a zip archive that ``select`` maps to a relative path.

    ``select(member_name)`` returns the destination path below ``out_dir`` or None to skip.
    Members with absolute paths, ``..`` components or symbolic links are refused.

    Raises
    ------
    ValueError naming the archive and member for an unsafe member.
    """
    out_dir = Path(out_dir).resolve()
    n = 0
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            name = info.filename
            parts = PurePosixPath(name).parts
            is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
            if name.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", name):
                raise ValueError(f"{zip_path}: unsafe member {name!r} (absolute or '..' path)")
            if is_link:
                raise ValueError(f"{zip_path}: unsafe member {name!r} (symbolic link)")
            rel = select(name)
            if rel is None or info.is_dir():
                continue
            dest = (out_dir / rel).resolve()
            if out_dir not in dest.parents:
                raise ValueError(f"{zip_path}: member {name!r} would land outside {out_dir}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst)
            n += 1
    return n


def _download(url: str, known_hash: str | None, path):
    """Download ``url`` to ``path`` with pooch; a wrong hash means a fresh download."""
    import pooch

    path = Path(path)
    return pooch.retrieve(
        url, known_hash=known_hash, fname=path.name, path=path.parent, progressbar=False
    )


def acquire_covid(out_dir, *, mirror=None, base_url: str) -> int:
    """Fetch the covid-chestxray-dataset (``metadata.csv`` + ``images/``) into ``out_dir``.

    With ``mirror``, copies ``<mirror>/covid-chestxray-dataset/`` verified against the mirror's
    ``SHA256SUMS``. Without, downloads ``metadata.csv`` and each X-ray file it names from
    ``base_url`` (a pinned commit); files the upstream lacks (CT volumes, files too large for
    the repository) are skipped and later reported as missing by the manifest step. Writes
    ``out_dir/SHA256SUMS`` (the hashes of what was fetched). Returns the number of files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if mirror:
        return copy_from_mirror(mirror, COVID_DIR, out_dir)
    _download(base_url + "metadata.csv", None, out_dir / "metadata.csv")
    meta = pd.read_csv(out_dir / "metadata.csv", dtype=str)
    n = 1
    for fname in sorted(set(meta.loc[meta["modality"] == "X-ray", "filename"].dropna())):
        try:
            _download(f"{base_url}images/{fname}", None, out_dir / "images" / fname)
            n += 1
        except Exception as err:  # noqa: BLE001 - a missing upstream file is a manifest row
            print(f"acquire: {fname}: not downloaded ({err}); the manifest will list it as missing")
    write_sums(out_dir)
    return n


def acquire_kermany(out_dir, *, mirror=None, url: str, sha256: str | None = None) -> int:
    """Fetch the Kermany viral pneumonia X-rays into ``out_dir/{train,test}/PNEUMONIA/``.

    With ``mirror``, copies the ``personN_virus_M.jpeg`` files of ``<mirror>/chest_xray/``,
    verified. Without, downloads the archive (pooch; ``sha256`` checked if given) and extracts
    only those files, safely (:func:`safe_extract`). Returns the number of files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if mirror:
        return copy_from_mirror(
            mirror,
            KERMANY_DIR,
            out_dir,
            keep=lambda rel: bool(KERMANY_VIRUS.search("chest_xray/" + rel)),
        )
    archive = _download(
        url, sha256, Path(os.environ.get("CXR_DOWNLOADS", "data/downloads")) / "ChestXRay2017.zip"
    )

    def select(name):
        m = KERMANY_VIRUS.search(name)
        return m.group(1) if m else None

    n = safe_extract(archive, out_dir, select)
    write_sums(out_dir)
    return n


def keras_cache_weights() -> Path:
    """Where Keras keeps the VGG19 weights: ``$KERAS_HOME/models/`` (default ``~/.keras``)."""
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return Path(home) / "models" / WEIGHTS_FILE


def acquire_weights(out_path, *, source=None) -> Path:
    """Put the VGG19 ImageNet notop weights at ``out_path`` and check Keras' md5.

    ``source``: a local ``.h5`` file to copy. None: the Keras cache if the file is there,
    else Keras' own download (``keras.utils.get_file`` with the published md5).

    Raises
    ------
    FileNotFoundError if ``source`` does not exist; ChecksumError if the md5 differs.
    """
    out_path = Path(out_path)
    if source is None:
        cached = keras_cache_weights()
        if cached.is_file():
            source = cached
        else:
            from keras.utils import get_file

            source = get_file(
                WEIGHTS_FILE, WEIGHTS_URL, cache_subdir="models", file_hash=WEIGHTS_MD5
            )
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: pretrained weights file not found")
    with atomic_path(out_path) as tmp:
        shutil.copyfile(source, tmp)
        actual = file_hash(tmp, "md5")
        if actual != WEIGHTS_MD5:
            raise ChecksumError(source, WEIGHTS_MD5, actual)
    return out_path
