"""A generated corpus of bad and awkward X-ray files, laid out as a data mirror.

:func:`make_corpus_mirror` builds a mirror folder that holds the real mirror's files (as
symbolic links: nothing is copied or written into the real mirror) plus small generated files
of every kind that breaks naive pipelines, with ``metadata.csv`` and ``SHA256SUMS`` extended
to list them. :data:`EXPECTED` says what the manifest step must do with each: the excluded
reason, or ``None`` when the image is usable, with :func:`expected_pixels` giving its array.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

#: Generated COVID file name -> the exclusion reason the manifest must give (None: taken).
EXPECTED = {
    "bad-garbage.jpg": "unreadable",
    "bad-empty.png": "empty file",
    "bad-truncated.jpg": "truncated",
    "bad-truncated.png": "truncated",
    "bad-tiny.png": "too small",
    "bad-bomb.png": "decompression bomb",
    "bad-missing.png": "missing file",
    "bad-duplicate.png": "duplicate image",
    "bad-both-classes.png": "same image in both classes",
    "ok-16bit.png": None,
    "ok-rgba.png": None,
    "ok-palette.png": None,
    "ok-cmyk.jpg": None,
    "ok-png-named.jpg": None,
    "ok-exif-rotated.jpg": None,
}
#: The Kermany copy of bad-both-classes.png (excluded too).
CROSS_CLASS_KERMANY = "chest_xray/train/PNEUMONIA/person99999_virus_1.jpeg"


def _gradient(h=200, w=160) -> np.ndarray:
    """``(h, w) uint16`` ramp 0..65535 down the rows: a known 16-bit image."""
    return np.repeat(np.linspace(0, 65535, h).round().astype(np.uint16)[:, None], w, axis=1)


def expected_pixels(name: str) -> np.ndarray | None:
    """The ``(H, W, 3) uint8`` array the loader must return for a usable generated file
    (every name of :data:`EXPECTED` whose reason is None), else None."""
    if name == "ok-16bit.png":
        v = np.floor(_gradient().astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
        return np.repeat(v[:, :, None], 3, axis=2)
    if name == "ok-rgba.png":  # alpha 255 left half, 0 right half; composited onto black
        rgb = np.full((200, 160, 3), 180, np.uint8)
        rgb[:, 80:] = 0
        return rgb
    if name == "ok-palette.png":  # palette index 1 -> (10, 20, 30)
        return np.tile(np.array([10, 20, 30], np.uint8), (200, 160, 1))
    if name == "ok-cmyk.jpg":  # CMYK (0, 50, 100, 0): R, G, B = 255 - C, 255 - M, 255 - Y (K 0)
        return np.tile(np.array([255, 205, 155], np.uint8), (200, 160, 1))
    if name == "ok-png-named.jpg":  # the noise PNG: the first draw of rng seed 0, grey
        grey = np.random.default_rng(0).integers(0, 256, (240, 200), dtype=np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if name == "ok-exif-rotated.jpg":  # 300 wide, 200 high, grey 90; shown turned: 200 x 300
        return np.full((300, 200, 3), 90, np.uint8)
    return None


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def corpus_files(real_covid_image: bytes) -> dict[str, bytes]:
    """Generated file name -> bytes (files absent from the result are missing on purpose)."""
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (240, 200), dtype=np.uint8))
    rgba = np.zeros((200, 160, 4), np.uint8)
    rgba[..., :3] = 180
    rgba[:, :80, 3] = 255
    pal = Image.new("P", (160, 200), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    big = Image.new("1", (8000, 8000))  # 64 Mpx: over max_pixels, a few kB on disk
    jpeg = _jpeg(noise)
    png = _png(noise)
    return {
        "bad-garbage.jpg": bytes(rng.integers(0, 256, 4096, dtype=np.uint8)),
        "bad-empty.png": b"",
        "bad-truncated.jpg": jpeg[: len(jpeg) // 2],
        "bad-truncated.png": png[: len(png) // 2],
        "bad-tiny.png": _png(Image.new("L", (50, 60), 128)),
        "bad-bomb.png": _png(big),
        "bad-duplicate.png": real_covid_image,
        "bad-both-classes.png": _png(Image.fromarray(rng.integers(0, 256, (220, 210), np.uint8))),
        "ok-16bit.png": _png(Image.fromarray(_gradient())),  # mode I;16
        "ok-rgba.png": _png(Image.fromarray(rgba, "RGBA")),
        "ok-palette.png": _png(pal),
        "ok-cmyk.jpg": _jpeg(Image.new("CMYK", (160, 200), (0, 50, 100, 0))),
        "ok-png-named.jpg": png,
        "ok-exif-rotated.jpg": _jpeg(Image.new("L", (300, 200), 90), exif=exif),
    }


def make_corpus_mirror(real_mirror: Path, dest: Path) -> Path:
    """Build a mirror at ``dest``: the real mirror (linked) plus the generated corpus.

    Each generated COVID file gets a ``metadata.csv`` row (COVID-19, PA, X-ray, its own
    patient); ``bad-missing.png`` gets a row but no file; ``bad-both-classes.png`` is also
    filed as a Kermany viral pneumonia image. Returns ``dest``.
    """
    real_mirror, dest = Path(real_mirror), Path(dest)
    sums = (real_mirror / "SHA256SUMS").read_text().splitlines()
    for line in sums:
        rel = line.split(maxsplit=1)[1].strip()
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(real_mirror / rel, dest / rel)
    covid = "covid-chestxray-dataset"
    # A real image the manifest takes (COVID-19, PA) whose name sorts before "bad-": the
    # generated copy is then the later path, the one excluded as a duplicate.
    meta_rows = list(
        csv.DictReader(io.StringIO((real_mirror / covid / "metadata.csv").read_text()))
    )
    real_image = next(
        r["filename"] for r in meta_rows
        if r["finding"] == "COVID-19" and r["view"] == "PA" and r["modality"] == "X-ray"
        and r["filename"] < "bad-" and (real_mirror / covid / "images" / r["filename"]).is_file()
    )  # fmt: skip
    files = corpus_files((real_mirror / covid / "images" / real_image).read_bytes())
    added = {f"{covid}/images/{name}": data for name, data in files.items()}
    added[CROSS_CLASS_KERMANY] = files["bad-both-classes.png"]
    meta = (real_mirror / covid / "metadata.csv").read_text()
    header = next(csv.reader(io.StringIO(meta)))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n")
    for i, name in enumerate(EXPECTED):
        row = {"patientid": f"corpus-{i}", "finding": "COVID-19", "view": "PA"}
        writer.writerow(row | {"modality": "X-ray", "folder": "images", "filename": name})
    os.unlink(dest / covid / "metadata.csv")
    added[f"{covid}/metadata.csv"] = (meta.rstrip("\n") + "\n" + out.getvalue()).encode()
    sums = [s for s in sums if not s.endswith(f"{covid}/metadata.csv")]
    for rel, data in added.items():
        (dest / rel).write_bytes(data)
        sums.append(f"{hashlib.sha256(data).hexdigest()}  {rel}")
    (dest / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return dest
