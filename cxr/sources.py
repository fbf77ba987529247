"""Where the raw data and pretrained weights come from: download or mirror, always checksummed.

Length: over 400 lines because it holds one acquire function per source (ieee8023,
Kermany, NIH, weights) and the download error messages they share; splitting per source
would scatter the one checksum and mirror policy.

This module only writes under the output folder it is given (``data/raw/...``,
``models/pretrained/``), the download cache and the lock files. It never writes into a mirror:
files are copied out of it.

Pins: every downloaded file is checked against a sha256 pinned in config or in the committed
lock file of its source, ``<locks>/<source>.sha256`` (:class:`UpstreamLock`); a file without
one is recorded there on its first download (trust on first use). A file that differs from its
pin stops the run, and nothing of the run is kept (:func:`fetch_pinned`,
:func:`cxr.io.atomic_dir`).

Sources
-------
- ieee8023 covid-chestxray-dataset (Cohen et al. 2020, arXiv:2003.11597), pinned to a commit:
  ``metadata.csv`` and ``images/``.
- Kermany, Zhang, Goldbaum (2018), Mendeley Data doi:10.17632/rscbjbr9sj.2: only the viral
  pneumonia files ``chest_xray/{train,test}/PNEUMONIA/personN_virus_M.jpeg``.
- NIH ChestX-ray8 adult-control candidates (Wang et al. 2017): the 500 "No Finding" and 500
  "Pneumonia" PNGs Ozturk et al. 2020 drew from it (github.com/muhammedtalo/COVID-19, folder
  ``X-Ray Image DataSet/{No_findings,Pneumonia}/``, pinned to a commit; the file names are in
  :data:`DARKCOVIDNET_FILES`), and the NIH metadata ``Data_Entry_2017_v2020.csv.gz``
  (github.com/mlmed/torchxrayvision, pinned to a commit; its sha256 is
  ``acquire.nih_metadata_sha256`` in config.yaml).
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
from urllib.parse import quote

from cxr.io import atomic_dir, atomic_path, read_input_csv, write_text

COVID_DIR = "covid-chestxray-dataset"
KERMANY_DIR = "chest_xray"
#: Kermany viral pneumonia files, relative to the archive's ``chest_xray/`` folder.
KERMANY_VIRUS = re.compile(
    r"(?:^|/)chest_xray/((?:train|test)/PNEUMONIA/person\d+_virus_\d+(?:_\d+)?\.jpeg)$"
)
#: Mirror folders (and upstream layout) of the NIH adult controls and of the NIH metadata.
DARKCOVIDNET_DIR = "darkcovidnet"
DARKCOVIDNET_FOLDER = "X-Ray Image DataSet"
NIH_METADATA_DIR = "nih-chestxray"
NIH_METADATA = "Data_Entry_2017_v2020.csv.gz"
#: The 1000 files of ``X-Ray Image DataSet/{No_findings,Pneumonia}/`` at the pinned commit,
#: one ``<folder>/<name>.png`` a line (GitHub's raw URLs cannot list a folder). Taken from the
#: mirror's SHA256SUMS; the names are upstream's (NIH image indices).
DARKCOVIDNET_FILES = Path(__file__).with_name("darkcovidnet_files.txt")
WEIGHTS_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
#: The md5 Keras checks for WEIGHTS_FILE (keras.applications.vgg19, WEIGHTS_PATH_NO_TOP).
WEIGHTS_MD5 = "253f8cb515780f3b799900260a226db6"
WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/" + WEIGHTS_FILE
LOCK_NAME = "SHA256SUMS"
#: Default folder of the committed upstream lock files, one ``<source>.sha256`` per source
#: (config ``acquire.locks``; :class:`UpstreamLock`).
LOCKS_DIR = "locks"


#: What to do when a download fails: the README's way to a local copy.
MIRROR_HINT = (
    "to use a local copy instead, set `mirror:` to a folder holding the upstream layout and a "
    "SHA256SUMS (config.yaml, or --config mirror=DIR; README: Quick start)"
)


class DownloadError(RuntimeError):
    """A download that failed, said in one line: the URL, the cause, what to do.

    Attributes
    ----------
    url : str, what was asked for.
    cause : str, short: ``"cannot resolve host 'x'"``, ``"connection refused"``,
        ``"HTTP 404 Not Found"``, ``"checksum mismatch (expected ..., got ...)"``, ...
    status : int or None, the HTTP status code when the server answered with an error.
    hint : str, what the user can do.

    ``str(err)`` is ``"<url>: <cause>; <hint>"``; the original exception is ``__cause__``.
    """

    def __init__(self, url: str, cause: str, status: int | None = None, hint: str = MIRROR_HINT):
        self.url, self.cause, self.status, self.hint = url, cause, status, hint
        super().__init__(f"{url}: {cause}; {hint}" if hint else f"{url}: {cause}")


def describe_download_error(exc: BaseException) -> tuple[str, int | None]:
    """A short cause for a failed download, and the HTTP status if there was one.

    Reads the exceptions pooch lets through: ``requests`` errors (the urllib3 reason inside
    a ``ConnectionError`` tells name resolution from a refused or reset connection) and
    pooch's ``ValueError`` for a hash mismatch.

    Returns
    -------
    (cause, status) : str, int or None.
    """
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        r = exc.response
        return f"HTTP {r.status_code} {r.reason or ''}".strip(), r.status_code
    if isinstance(exc, requests.Timeout):
        return "timed out", None
    if isinstance(exc, requests.ConnectionError):
        text = str(exc)
        host = re.search(r"host='([^']+)'", text)
        where = f" {host.group(1)!r}" if host else ""
        if re.search(r"NameResolution|Failed to resolve|Name or service|getaddrinfo", text):
            return f"cannot resolve host{where} (no network or DNS?)", None
        if re.search(r"refused", text, re.IGNORECASE):
            return f"connection refused by{where or ' the server'}", None
        return f"cannot connect{where}: {type(exc).__name__}", None
    m = re.search(r"hash of downloaded file .* expected (\S+) but got (\S+?)\.", str(exc))
    if isinstance(exc, ValueError) and m:
        return f"checksum mismatch (expected {m.group(1)}, got {m.group(2)})", None
    return f"{type(exc).__name__}: {exc}", None


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


def copy_from_mirror(mirror, prefix: str, out_dir, keep=lambda rel: True, dest=None) -> int:
    """Copy every file the mirror's ``SHA256SUMS`` lists under ``prefix/`` into ``out_dir``.

    Parameters
    ----------
    mirror : folder holding ``SHA256SUMS`` and the upstream layouts (read-only is fine).
    prefix : top folder inside the mirror, e.g. ``covid-chestxray-dataset``.
    out_dir : destination; files keep their path below ``prefix``.
    keep : predicate on the path below ``prefix``; files it rejects are not copied.
    dest : maps the path below ``prefix`` to the path below ``out_dir`` (default: the same).

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
        copy_verified(mirror / name, Path(out_dir) / (dest(rel) if dest else rel), digest)
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


class LockError(ValueError):
    """A lock file line that is not ``<sha256>  <url>``; the message names the file and line."""


class UpstreamLock:
    """The committed pins of one source's upstream files: ``<locks>/<source>.sha256``.

    One line per file, ``<sha256>  <url>`` (sha256sum's format, the URL as the name); lines
    starting with ``#`` are comments, kept when the file is rewritten. A URL listed here is
    checked on every download (:func:`fetch_pinned`): a different file stops the run. A URL
    not listed is recorded on its first download (trust on first use, as ``dvc.lock`` does):
    the user commits the file, and every later download is held to it. New pins are written
    by :meth:`save` only after the whole source was fetched and verified.

    Raises
    ------
    LockError naming the file and line of a malformed line.
    """

    def __init__(self, locks_dir, source: str):
        self.path = Path(locks_dir) / f"{source}.sha256"
        self.source = source
        self.header: list[str] = []
        self.pins: dict[str, str] = {}
        self.new: dict[str, str] = {}
        if self.path.is_file():
            for n, line in enumerate(self.path.read_text().splitlines(), 1):
                if line.startswith("#"):
                    self.header.append(line)
                    continue
                if not line.strip():
                    continue
                digest, sep, url = line.partition("  ")
                if not sep or not re.fullmatch(r"[0-9a-f]{64}", digest) or not url.strip():
                    raise LockError(f"{self.path}:{n}: expected '<sha256>  <url>', got {line!r}")
                self.pins[url.strip()] = digest

    def expected(self, url: str) -> str | None:
        """The pinned sha256 of ``url`` (hex), or None if it is not listed."""
        return self.pins.get(url)

    def record(self, url: str, sha256: str) -> None:
        """Note the sha256 of a first download of ``url``; written by :meth:`save`."""
        self.new[url] = sha256

    def save(self) -> int:
        """Add the recorded pins to the lock file (sorted by URL); returns how many were new."""
        if not self.new:
            return 0
        self.pins.update(self.new)
        header = self.header or [
            f"# Upstream pins of the source {self.source}: '<sha256>  <url>', one a line"
            " (cxr.sources.UpstreamLock; docs/pipeline.md). Commit this file."
        ]
        lines = header + [f"{digest}  {url}" for url, digest in sorted(self.pins.items())]
        write_text("\n".join(lines) + "\n", self.path)
        n, self.new = len(self.new), {}
        print(
            f"acquire: recorded {n} new pin(s) in {self.path} (trust on first use):"
            " commit it, and later downloads are checked against it"
        )
        return n


def _hex(pin: str) -> str:
    """A pin as lower-case hex (``sha256:`` prefix dropped)."""
    return pin.lower().removeprefix("sha256:")


def fetch_pinned(url: str, path, lock: UpstreamLock, pin: str | None = None) -> Path:
    """Download ``url`` to ``path`` and check it against its pin; record it if it has none.

    The pin is ``pin`` (a sha256 from config, hex, optionally ``sha256:``-prefixed) or the
    lock's entry for ``url``; pooch checks it (``known_hash``) and keeps no mismatching file.
    With neither, the file's sha256 is recorded in ``lock`` (trust on first use).

    Raises
    ------
    DownloadError naming the URL and the cause: ``checksum mismatch (expected <pin>, got
    <sha256>)`` when the upstream file is not the pinned one (``path`` is then removed, also
    an older copy left there), ``pins disagree`` when config and lock name two hashes, or the
    network cause (:func:`describe_download_error`).
    """
    listed = lock.expected(url)
    if pin and listed and _hex(pin) != listed:
        raise DownloadError(
            url,
            f"pins disagree (config sha256 {_hex(pin)}, {lock.path} {listed})",
            hint="correct the wrong one",
        )
    expected = pin or listed
    try:
        got = Path(_download(url, expected and "sha256:" + _hex(expected), path))
    except DownloadError as err:
        if not err.cause.startswith("checksum mismatch"):
            raise
        Path(path).unlink(missing_ok=True)
        where = "config" if pin else str(lock.path)
        hint = (
            f"the upstream file is not the one pinned in {where}; nothing was kept. Update the"
            f" pin only after checking the new file; {MIRROR_HINT}"
        )
        raise DownloadError(url, err.cause, err.status, hint) from err.__cause__
    if expected is None:
        lock.record(url, file_hash(got))
    return got


def _download(url: str, known_hash: str | None, path):
    """Download ``url`` to ``path`` with pooch; a wrong hash means a fresh download.

    Raises
    ------
    DownloadError naming the URL and the cause (:func:`describe_download_error`), from the
    original exception; pooch leaves no partial or mismatching file behind.
    """
    import pooch
    import requests

    path = Path(path)
    try:
        return pooch.retrieve(
            url, known_hash=known_hash, fname=path.name, path=path.parent, progressbar=False
        )
    except (requests.RequestException, ValueError) as exc:
        cause, status = describe_download_error(exc)
        raise DownloadError(url, cause, status) from exc


def acquire_covid(out_dir, *, mirror=None, base_url: str, locks=LOCKS_DIR) -> int:
    """Fetch the covid-chestxray-dataset (``metadata.csv`` + ``images/``) into ``out_dir``.

    With ``mirror``, copies ``<mirror>/covid-chestxray-dataset/`` verified against the mirror's
    ``SHA256SUMS``. Without, downloads ``metadata.csv`` and each X-ray file it names from
    ``base_url`` (a pinned commit), each checked against ``<locks>/ieee8023.sha256`` or recorded
    there on its first download (:func:`fetch_pinned`); files the upstream lacks (HTTP 404: CT
    volumes, files too large for the repository) are skipped, one line each, and later reported
    as missing by the manifest step. Writes ``out_dir/SHA256SUMS`` (the hashes of what was
    fetched). ``out_dir`` is built whole or not at all (:func:`cxr.io.atomic_dir`). Returns the
    number of files.

    Raises
    ------
    DownloadError for ``metadata.csv``, for a file that is not the pinned one, or for any image
    that fails other than by a 404 (no network, a refused connection): such a run would
    otherwise "succeed" with no images.
    cxr.io.InputEncodingError when the downloaded ``metadata.csv`` is not UTF-8.
    """
    if mirror:
        with atomic_dir(out_dir) as tmp:
            return copy_from_mirror(mirror, COVID_DIR, tmp)
    lock = UpstreamLock(locks, "ieee8023")
    with atomic_dir(out_dir) as tmp:
        fetch_pinned(base_url + "metadata.csv", tmp / "metadata.csv", lock)
        meta = read_input_csv(tmp / "metadata.csv", dtype=str)
        n = 1
        for fname in sorted(set(meta.loc[meta["modality"] == "X-ray", "filename"].dropna())):
            try:
                fetch_pinned(f"{base_url}images/{fname}", tmp / "images" / fname, lock)
                n += 1
            except DownloadError as err:
                if err.status != 404:
                    raise
                print(f"acquire: {err.url}: {err.cause}; the manifest will list it as missing")
        write_sums(tmp)
    lock.save()
    return n


def acquire_kermany(
    out_dir, *, mirror=None, url: str, sha256: str | None = None, locks=LOCKS_DIR
) -> int:
    """Fetch the Kermany viral pneumonia X-rays into ``out_dir/{train,test}/PNEUMONIA/``.

    With ``mirror``, copies the ``personN_virus_M.jpeg`` files of ``<mirror>/chest_xray/``,
    verified. Without, downloads the archive (pooch, into ``$CXR_DOWNLOADS``, default
    ``data/downloads/``), checked against ``sha256`` if given, else against
    ``<locks>/kermany.sha256`` or recorded there on first download (:func:`fetch_pinned`), and
    extracts only those files, safely (:func:`safe_extract`). ``out_dir`` is built whole or not
    at all. Returns the number of files.

    Raises
    ------
    DownloadError naming the URL and the cause (no network, HTTP status, checksum).
    """
    if mirror:
        with atomic_dir(out_dir) as tmp:
            return copy_from_mirror(
                mirror,
                KERMANY_DIR,
                tmp,
                keep=lambda rel: bool(KERMANY_VIRUS.search("chest_xray/" + rel)),
            )
    lock = UpstreamLock(locks, "kermany")
    downloads = Path(os.environ.get("CXR_DOWNLOADS", "data/downloads"))
    archive = fetch_pinned(url, downloads / "ChestXRay2017.zip", lock, pin=sha256)

    def select(name):
        m = KERMANY_VIRUS.search(name)
        return m.group(1) if m else None

    with atomic_dir(out_dir) as tmp:
        n = safe_extract(archive, tmp, select)
        write_sums(tmp)
    lock.save()
    return n


def darkcovidnet_files() -> list[str]:
    """The pinned list of NIH control files: ``["No_findings/00001280_004.png", ...]``."""
    return [line for line in DARKCOVIDNET_FILES.read_text().splitlines() if line.strip()]


def acquire_nih(
    out_dir,
    *,
    mirror=None,
    images_base_url: str,
    metadata_url: str,
    metadata_sha256: str | None = None,
    locks=LOCKS_DIR,
) -> int:
    """Fetch the NIH adult-control images and the NIH metadata into ``out_dir``.

    Layout written (no spaces in paths): ``out_dir/No_findings/*.png``,
    ``out_dir/Pneumonia/*.png``, ``out_dir/Data_Entry_2017_v2020.csv.gz`` and
    ``out_dir/SHA256SUMS`` (the hashes of what was fetched).

    With ``mirror``, copies ``<mirror>/darkcovidnet/X-Ray Image DataSet/{No_findings,Pneumonia}/``
    and ``<mirror>/nih-chestxray/Data_Entry_2017_v2020.csv.gz``, verified against the mirror's
    ``SHA256SUMS`` (the mirror's images are downscaled: its hashes, not upstream's). Without,
    downloads each file of :func:`darkcovidnet_files` from ``images_base_url`` (the repository
    root at a pinned commit; ``X-Ray Image DataSet/`` is URL-quoted), each checked against
    ``<locks>/nih.sha256`` or recorded there on first download, and the metadata from
    ``metadata_url``, checked against ``metadata_sha256`` (None: the lock, as the images).
    ``out_dir`` is built whole or not at all.

    Returns
    -------
    int, the number of files (1001: 1000 images and the metadata).

    Raises
    ------
    DownloadError naming the URL and the cause; every file is listed at the pinned commit, so
    a 404 stops the run too (a wrong pin). ChecksumError / FileNotFoundError from the mirror.
    """
    if mirror:
        wanted = set(darkcovidnet_files())
        prefix = DARKCOVIDNET_FOLDER + "/"
        keep = lambda rel: rel == NIH_METADATA  # noqa: E731
        with atomic_dir(out_dir) as tmp:
            n = copy_from_mirror(
                mirror,
                DARKCOVIDNET_DIR,
                tmp,
                keep=lambda rel: rel.removeprefix(prefix) in wanted,
                dest=lambda rel: rel.removeprefix(prefix),
            )
            return n + copy_from_mirror(mirror, NIH_METADATA_DIR, tmp, keep=keep)
    lock = UpstreamLock(locks, "nih")
    with atomic_dir(out_dir) as tmp:
        for rel in darkcovidnet_files():
            url = images_base_url + quote(f"{DARKCOVIDNET_FOLDER}/{rel}")
            fetch_pinned(url, tmp / rel, lock)
        fetch_pinned(metadata_url, tmp / NIH_METADATA, lock, pin=metadata_sha256)
        write_sums(tmp)
    lock.save()
    return len(darkcovidnet_files()) + 1


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
    FileNotFoundError if ``source`` does not exist; ChecksumError if the md5 differs;
    DownloadError if Keras' download fails.
    """
    out_path = Path(out_path)
    if source is None:
        cached = keras_cache_weights()
        if cached.is_file():
            source = cached
        else:
            from keras.utils import get_file

            try:
                source = get_file(
                    WEIGHTS_FILE, WEIGHTS_URL, cache_subdir="models", file_hash=WEIGHTS_MD5
                )
            except Exception as exc:  # keras raises a bare Exception for URL failures
                hint = "to use a local copy instead, set `pretrained_weights:` to the .h5 file"
                cause = str(exc).replace(f"URL fetch failure on {WEIGHTS_URL}: ", "")
                raise DownloadError(WEIGHTS_URL, cause, hint=hint) from exc
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: pretrained weights file not found")
    with atomic_path(out_path) as tmp:
        shutil.copyfile(source, tmp)
        actual = file_hash(tmp, "md5")
        if actual != WEIGHTS_MD5:
            raise ChecksumError(source, WEIGHTS_MD5, actual)
    return out_path
