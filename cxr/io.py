"""File input and output: every output of the pipeline is written here, whole or not at all,
and every CSV file from outside the pipeline is read here (:func:`read_input_csv`).

Each writer writes to a temporary file in the destination's own folder (so the final rename
stays on one filesystem), named ``<stem>.tmp<suffix>`` (the suffix kept, since Keras, NumPy
and Matplotlib choose the format from it; a rerun overwrites a leftover of a killed run), and
then renames it onto the destination with ``os.replace``, which POSIX makes atomic: a reader,
Snakemake or DVC sees the old file or the new one, never a half-written one.

fsync policy (one, for every writer): the temporary file's data is flushed to disk with
``os.fsync`` before the rename, because on ext4/XFS a rename can reach the disk before the
data it names, and a power loss could then leave a complete-looking but empty file (the
resumable training state relies on that order). The folder itself is not fsynced: after a
crash the rename may be lost, which leaves the previous file, not a broken one. The cost is
one flush per output file, small next to producing any of them.

A ``.keras`` model is saved by :func:`save_keras` only, which also makes the file's bytes a
function of the model alone, and a float32 model whatever precision it ran in (see there).

Input CSV files (a user's external test table, the upstream metadata of ieee8023 and NIH) are
read by :func:`read_input_csv` only: as UTF-8, a leading byte-order mark allowed, and
anything else refused with :class:`InputEncodingError`, which names the file, the line of the
first byte that is not UTF-8 and how to convert the file. Nothing is guessed: a latin-1 or
Windows-1252 file often decodes without error as another 8-bit encoding, into wrong names.

References: POSIX ``rename(2)``; "Ensuring data reaches disk", https://lwn.net/Articles/457667/;
the Unicode Standard, 3.10 (UTF-8) and 23.8 (the byte-order mark U+FEFF at the start of UTF-8
text).
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import json
import os
import re
import shutil
import zipfile
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

#: Files whose name ends so are gzip-compressed; :func:`read_input_csv` decompresses them.
GZIP_SUFFIX = ".gz"

#: Zip entry time of every entry of a saved ``.keras`` file: 1980-01-01 00:00:00, the
#: earliest the zip format holds (what Keras already uses for its JSON entries).
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class InputEncodingError(ValueError):
    """An input text file that is not UTF-8.

    Attributes
    ----------
    path : str, the file.
    line : int, 1-based line of the first byte that is not UTF-8 (of the decompressed text
        for a ``.gz`` file).
    column : int, 1-based byte position of that byte in its line.
    byte : int, its value (0-255).

    ``str(err)`` names the file, the line and what to do. The exception pickles.
    """

    def __init__(self, path, line: int, column: int, byte: int):
        super().__init__(str(path), line, column, byte)
        self.path, self.line, self.column, self.byte = str(path), line, column, byte

    def __str__(self) -> str:
        path = Path(self.path)
        gz = path.name.endswith(GZIP_SUFFIX)
        stem = path.name.removesuffix(GZIP_SUFFIX) if gz else path.name
        base, dot, ext = stem.rpartition(".")
        out = path.with_name(f"{base}.utf8.{ext}" if dot else f"{stem}.utf8")
        convert = (
            f"gunzip -c '{path}' | iconv -f latin1 -t utf-8 | gzip > '{out}.gz'"
            if gz
            else f"iconv -f latin1 -t utf-8 '{path}' > '{out}'"
        )
        return (
            f"{path}: not UTF-8: line {self.line}"
            + (" of the decompressed text" if gz else "")
            + f", byte {self.column} of the line (0x{self.byte:02x}) is not valid UTF-8. "
            "Input CSV files must be UTF-8 (a byte-order mark is allowed). Convert it from "
            f"its encoding, e.g. from latin-1: {convert} (Windows-1252: -f cp1252), or "
            "re-save it from a spreadsheet as 'CSV UTF-8', and use the converted file."
        )


def decode_utf8(data: bytes, path="<bytes>") -> str:
    """Decode ``data`` as UTF-8, strictly; a leading UTF-8 byte-order mark is dropped.

    Raises
    ------
    InputEncodingError naming ``path`` and the line and byte of the first invalid byte.
    """
    body = data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = body.rfind(b"\n", 0, exc.start) + 1
        line = body.count(b"\n", 0, exc.start) + 1
        raise InputEncodingError(path, line, exc.start - line_start + 1, body[exc.start]) from None


def read_input_csv(path, **read_csv_options):
    """Read a CSV file from outside the pipeline: UTF-8 (a byte-order mark allowed), or refused.

    The one reader of every CSV file the pipeline does not write itself: the external test
    table (config ``external.metadata``), ieee8023 ``metadata.csv`` and the NIH
    ``Data_Entry_2017_v2020.csv.gz`` (mirror or download). The bytes are decoded by
    :func:`decode_utf8` before pandas parses them, so no encoding is guessed.

    Parameters
    ----------
    path : path-like; a name ending in ``.gz`` is gunzipped first.
    **read_csv_options : passed to ``pandas.read_csv`` (e.g. ``dtype=str``,
        ``keep_default_na=False``); not ``encoding``.

    Returns
    -------
    pandas.DataFrame.

    Raises
    ------
    InputEncodingError naming the file, the line and how to convert it, when the file is
    not UTF-8; FileNotFoundError when it does not exist; pandas' ``ParserError`` for
    malformed CSV.
    """
    import pandas as pd

    if "encoding" in read_csv_options:
        raise TypeError("read_input_csv reads UTF-8 only; do not pass encoding")
    path = Path(path)
    opener = gzip.open if path.name.endswith(GZIP_SUFFIX) else open
    with opener(path, "rb") as f:
        text = decode_utf8(f.read(), path)
    return pd.read_csv(StringIO(text), **read_csv_options)


def temporary_path(path) -> Path:
    """The temporary name :func:`atomic_path` writes ``path`` under: ``<stem>.tmp<suffix>``
    beside it (e.g. ``models/m.keras`` -> ``models/m.tmp.keras``)."""
    path = Path(path)
    return path.with_name(path.stem + ".tmp" + path.suffix)


def commit(tmp, path) -> None:
    """Flush ``tmp`` to disk (``os.fsync``), then rename it onto ``path`` (atomic).

    Raises
    ------
    OSError
        If ``tmp`` cannot be opened or renamed (e.g. another filesystem).
    """
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Context manager yielding the temporary path to write ``path`` through.

    The folder of ``path`` is created. On a normal exit the temporary file is committed
    (:func:`commit`); on an exception it is removed and ``path`` is left as it was.

    Examples
    --------
    >>> with atomic_path("out/fig.png") as tmp:  # doctest: +SKIP
    ...     fig.savefig(tmp, format="png")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path) -> Iterator[Path]:
    """Context manager yielding a fresh temporary folder to build the folder ``path`` in.

    The temporary folder is ``<name>.tmp`` beside ``path`` (emptied first: a leftover of a
    killed run). On a normal exit ``path`` (if any) is removed and the temporary folder renamed
    onto it; on an exception the temporary folder is removed and ``path`` is left as it was, so
    a failed step keeps nothing of what it fetched. The rename of a folder onto a removed one is
    two steps, not one: a crash between them leaves no ``path`` (a rerun rebuilds it), never a
    half-filled one.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes(data: bytes, path) -> None:
    """Write ``data`` to ``path`` atomically; the folder is created."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(text: str, path) -> None:
    """Write ``text`` (UTF-8, line ends as given: no newline translation) atomically."""
    write_bytes(text.encode("utf-8"), path)


def write_json(obj, path, indent: int = 2) -> None:
    """Write a JSON-ready object, indented, with a final newline, atomically.

    Raises
    ------
    ValueError
        If a value is NaN or infinite (not valid JSON).
    TypeError
        If a value is not JSON-serialisable.
    """
    write_text(json.dumps(obj, indent=indent, allow_nan=False) + "\n", path)


def write_csv(frame, path, float_format: str | None = None) -> None:
    """Write a DataFrame as CSV (no index, ``\\n`` line ends), atomically.

    Parameters
    ----------
    frame : pandas.DataFrame.
    float_format : printf format of floats (e.g. ``"%.6g"``); None: pandas' shortest
        round-trip repr (the tables of the data steps, whose values are read back).
    """
    write_text(frame.to_csv(index=False, lineterminator="\n", float_format=float_format), path)


def write_table(frame, path) -> None:
    """Write a DataFrame of results as CSV, floats to 6 significant digits, atomically."""
    write_csv(frame, path, float_format="%.6g")


def savez(path, **arrays) -> None:
    """``numpy.savez`` (uncompressed; loads with ``allow_pickle=False`` unless an array holds
    objects) to ``path`` atomically. ``path`` is written as named (no ``.npz`` added)."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def publish(source, path) -> None:
    """Put a copy of ``source`` at ``path`` atomically, leaving ``source`` in place.

    A hard link to the temporary name (a copy where the filesystem has none: another
    filesystem, FAT, some network mounts), committed by :func:`commit`; the file's mtime is
    then set to now, so it is as new as the job (a link keeps the source's time).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    commit(tmp, path)
    os.utime(path)


_SHARED_ID = re.compile(rb'"shared_object_id": (\d+)')


def _renumber_shared_ids(config: bytes) -> bytes:
    """Replace ``shared_object_id`` values (Python ``id()``s: memory addresses) by 0, 1, ...
    in order of first appearance; equal ids stay equal, which is all Keras uses them for."""
    numbers: dict[bytes, int] = {}

    def number(match: re.Match) -> bytes:
        value = numbers.setdefault(match.group(1), len(numbers))
        return b'"shared_object_id": %d' % value

    return _SHARED_ID.sub(number, config)


#: A mixed dtype policy in a saved config.json (Keras 3 ``DTypePolicy`` serialisation).
_MIXED_POLICY = re.compile(rb'("class_name": "DTypePolicy", "config": \{"name": ")mixed_b?float16"')
#: The dtype of a tensor that a mixed-precision layer outputs, in a node of a saved config.
_HALF_TENSOR = re.compile(rb'"dtype": "b?float16", "keras_history"')


def _float32_policies(config: bytes) -> bytes:
    """config.json with every mixed dtype policy (``mixed_bfloat16``, ``mixed_float16``) made
    ``float32``, and the 16-bit tensors between layers float32: the config of the same model
    built under ``float32`` (its variables are float32 under every policy)."""
    config = _MIXED_POLICY.sub(rb'\1float32"', config)
    return _HALF_TENSOR.sub(b'"dtype": "float32", "keras_history"', config)


#: Key of ``metadata.json`` recording the dtype policy a saved model ran in (Keras ignores it).
PRECISION_KEY = "cxr_precision"


def _drop_date_saved(metadata: bytes, precision: str | None = None) -> bytes:
    """``metadata.json`` without ``date_saved`` (the save time; Keras does not read it), with
    :data:`PRECISION_KEY` set to ``precision`` when given."""
    record = json.loads(metadata)
    record.pop("date_saved", None)
    if precision is not None:
        record[PRECISION_KEY] = precision
    return json.dumps(record).encode()


def saved_precision(path) -> str:
    """The dtype policy a ``.keras`` file's model ran in when :func:`save_keras` saved it
    (e.g. the precision it was trained in): :data:`PRECISION_KEY` of its ``metadata.json``;
    ``"float32"`` for files saved before it was recorded (always float32 then).

    Raises
    ------
    OSError, zipfile.BadZipFile, KeyError
        If ``path`` cannot be read, is not a zip, or lacks ``metadata.json``.
    """
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("metadata.json")).get(PRECISION_KEY, "float32")


def normalise_keras(source, path, precision: str | None = None) -> None:
    """Copy a Keras ``.keras`` zip from ``source`` to ``path`` with its run-dependent bytes
    made fixed: ``shared_object_id`` values renumbered in order of appearance
    (config.json), no ``date_saved`` (metadata.json), every entry's time :data:`ZIP_TIME`.
    Entry names, order and compression are kept; the weights entry is copied unchanged.
    With ``precision`` (a dtype-policy name), config.json's policies are made float32
    (:func:`_float32_policies`) and metadata.json records ``precision``
    (:data:`PRECISION_KEY`)."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            entry = zipfile.ZipInfo(info.filename, date_time=ZIP_TIME)
            entry.compress_type = info.compress_type
            entry.external_attr = info.external_attr
            if info.filename == "config.json":
                config = _renumber_shared_ids(src.read(info))
                if precision is not None:
                    config = _float32_policies(config)
                dst.writestr(entry, config)
            elif info.filename == "metadata.json":
                dst.writestr(entry, _drop_date_saved(src.read(info), precision))
            else:
                big = info.file_size >= zipfile.ZIP64_LIMIT
                with src.open(info) as f, dst.open(entry, "w", force_zip64=big) as g:
                    shutil.copyfileobj(f, g, 1 << 20)


def save_keras(model, path) -> None:
    """Save a Keras model (``model.save``: architecture, weights, optimiser) to ``path``
    (``.keras``) atomically, as bytes that depend only on the model: the same architecture,
    weights and optimiser state give the same file (see :func:`normalise_keras`), so a
    checksum (DVC's md5) compares models. The file loads with ``keras.saving.load_model``
    as Keras' own does.

    Precision: the file is the float32 model (its layers' dtype policies set to ``float32``:
    plain ``keras.models.load_model`` gives a model that computes in float32, whatever policy
    ``model`` ran in); the policy it ran in, ``model.dtype_policy.name`` (e.g.
    ``mixed_bfloat16`` when trained so), is recorded in ``metadata.json``
    (:func:`saved_precision`).

    Raises
    ------
    ValueError
        If ``path`` does not end in ``.keras``.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"{path}: a model is saved as .keras")
    raw = path.with_name(path.stem + ".raw" + path.suffix)
    with atomic_path(path) as tmp:
        try:
            model.save(raw)
            normalise_keras(raw, tmp, precision=model.dtype_policy.name)
        finally:
            raw.unlink(missing_ok=True)
