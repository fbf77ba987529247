"""Score image files with a trained model: p(COVID) per image (library + ``cxr-predict``).

**Research and teaching only, not a diagnostic tool.** Every file goes through the one loader
(:func:`cxr.images.load_rgb`) and the store's resize (:func:`cxr.store.resize_square`) to the
model's input size, exactly as the pipeline's images do; a file that does not load is reported
with its reason (:class:`cxr.images.ImageError`) and the others are still scored.

Console script (``pyproject.toml``: ``cxr-predict = "cxr.predict:main"``)::

    cxr-predict --model models/model_03.keras IMAGE_OR_FOLDER [...] [--recursive] [--gradcam]

prints one tab-separated line per scored image, ``path  p_covid  label`` (label ``covid``
when ``p_covid > 0.5``, as everywhere in the pipeline), after a header line; each failure goes
to stderr as ``ERROR <path>: <reason>: <detail>``. A folder contributes the files in it
(``--recursive``: and in its subfolders) whose extension Pillow registers as an image or whose
content is DICOM (:func:`cxr.dicom.is_dicom`, any name, as archives lay them out; not the
``DICOMDIR`` index), sorted by path, except earlier ``*.gradcam.png`` overlays. DICOM files
are read by :mod:`cxr.dicom` (``--dicom_voi false`` skips their VOI LUT or window); the ones
it refuses (multi-frame, colour, lateral, ...) get an ``ERROR`` line with the reason.
``--gradcam`` writes ``<name>.gradcam.png`` next to each scored
image (``<file name>.gradcam.png`` when the extension is not an image's, e.g. DICOM files
named by UID): the Grad-CAM heatmap of the predicted class (:func:`cxr.gradcam.gradcam`) at the
image's own resolution, over the image. Exit status: 0 when every file was scored, 1 when any
failed, 2 on a usage error (no such model, no files).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from cxr import CLASSES
from cxr.runtime import PRECISION_OPTION, apply_precision

OVERLAY_SUFFIX = ".gradcam.png"


def image_files(paths, recursive: bool = False) -> list[Path]:
    """Expand folders to the image files in them (sorted by path); keep explicit files as given.

    Explicit files are kept whatever their extension (a bad one is reported when loaded);
    in a folder (with ``recursive``, its subfolders too) only files with an image extension
    Pillow registers or with DICOM content (:func:`cxr.dicom.is_dicom`, whatever the name)
    are taken, and never the ``DICOMDIR`` index nor ``*.gradcam.png`` overlays written by an
    earlier run.
    """
    from PIL import Image

    from cxr.dicom import DICOMDIR, is_dicom

    extensions = set(Image.registered_extensions())

    def wanted(f: Path) -> bool:
        if not f.is_file() or f.name.endswith(OVERLAY_SUFFIX) or f.name == DICOMDIR:
            return False
        return f.suffix.lower() in extensions or is_dicom(f)

    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(filter(wanted, p.rglob("*") if recursive else p.iterdir()))
        else:
            out.append(p)
    return out


def load_for_model(
    paths,
    size: int,
    *,
    min_side: int = 1,
    max_pixels: int = 50_000_000,
    dicom_voi: bool = True,
):
    """Load and resize image files for the model, collecting failures instead of raising.

    ``dicom_voi``: apply DICOM files' VOI LUT or first window (:func:`cxr.images.load_image`).

    Returns
    -------
    images : ``(M, size, size, 3) uint8`` for the M files that loaded, in order.
    ok : list of the M paths (str) that loaded.
    errors : list of ``(path, reason, detail)`` for the others (:class:`cxr.images.ImageError`
        reasons).
    """
    from cxr.images import ImageError, load_rgb
    from cxr.store import resize_square

    images, ok, errors = [], [], []
    for path in paths:
        try:
            rgb = load_rgb(path, min_side=min_side, max_pixels=max_pixels, dicom_voi=dicom_voi)
        except ImageError as err:
            errors.append((str(path), err.reason, err.detail))
            continue
        images.append(resize_square(rgb, size))
        ok.append(str(path))
    stack = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return stack, ok, errors


def predict_p_covid(model, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """``(N,)`` p_covid (softmax column 1, clipped to [0, 1]) of ``(N, S, S, 3) uint8`` images."""
    if len(images) == 0:
        return np.zeros(0)
    probs = model.predict(images, batch_size=batch_size, verbose=0)
    return np.clip(probs[:, 1].astype(float), 0.0, 1.0)


def model_size(model) -> int:
    """Side S of the model's square ``(S, S, 3)`` input."""
    shape = tuple(model.input_shape[1:])
    if len(shape) != 3 or shape[0] != shape[1] or shape[2] != 3:
        raise ValueError(f"model input must be (S, S, 3), got {shape}")
    return int(shape[0])


def overlay_path(path) -> Path:
    """``x.jpg`` -> ``x.gradcam.png``, ``x.dcm`` -> ``x.gradcam.png``; a name whose extension
    is no image's keeps it whole (``1.2.840.5`` -> ``1.2.840.5.gradcam.png``), so DICOM files
    named by UID do not share an overlay."""
    from PIL import Image

    from cxr.dicom import SUFFIXES

    path = Path(path)
    known = path.suffix.lower() in (*Image.registered_extensions(), *SUFFIXES)
    return path.with_name((path.stem if known else path.name) + OVERLAY_SUFFIX)


def write_overlay(path, heat: np.ndarray, dicom_voi: bool = True) -> Path:
    """Write :func:`overlay_path` of ``path``: heat over the image, as loaded for the model."""
    from PIL import Image

    from cxr.audit_figures import overlay_heatmap
    from cxr.images import load_rgb
    from cxr.io import atomic_path

    out = overlay_path(path)
    with atomic_path(out) as tmp:
        rgb = load_rgb(path, dicom_voi=dicom_voi)
        Image.fromarray(overlay_heatmap(rgb, heat)).save(tmp, format="PNG")
    return out


def main(argv=None) -> int:
    """Entry point of ``cxr-predict`` (see the module docstring); returns the exit status."""
    p = argparse.ArgumentParser(
        prog="cxr-predict",
        description="p(COVID) per chest X-ray image with a trained cxr model. Research and "
        "teaching only: NOT a diagnostic tool.",
    )
    p.add_argument("paths", nargs="+", help="image files (PNG, JPEG, DICOM, ...) and/or folders")
    p.add_argument("--recursive", action="store_true", help="also the folders' subfolders")
    p.add_argument(
        "--dicom_voi",
        choices=["true", "false"],
        default="true",
        help="apply DICOM files' VOI LUT or first window (default true)",
    )
    p.add_argument("--model", required=True, help="trained model (.keras), e.g. model_03")
    p.add_argument("--gradcam", action="store_true", help="write <name>.gradcam.png beside each")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="TensorFlow threads (default: all)")
    p.add_argument("--precision", **PRECISION_OPTION)
    a = p.parse_args(argv)
    if not Path(a.model).is_file():
        p.error(f"no model file at {a.model}")
    files = image_files(a.paths, recursive=a.recursive)
    voi = a.dicom_voi == "true"
    if not files:
        p.error("no image files found in " + ", ".join(a.paths))
    print("cxr-predict: research and teaching only, not a diagnostic tool", file=sys.stderr)

    if a.threads:
        from cxr.runtime import configure_threads

        configure_threads(a.threads)
    apply_precision(a.precision, stream=sys.stderr)
    from cxr.model import load_model

    model = load_model(a.model)
    images, ok, errors = load_for_model(files, model_size(model), dicom_voi=voi)
    heat = None
    if a.gradcam and len(images):
        from cxr.gradcam import gradcam

        heat, probs = gradcam(model, images, batch_size=a.batch_size)
        p_covid = np.clip(probs[:, 1].astype(float), 0.0, 1.0)
    else:
        p_covid = predict_p_covid(model, images, a.batch_size)
    print("path\tp_covid\tlabel")
    for i, (path, p_c) in enumerate(zip(ok, p_covid, strict=True)):
        print(f"{path}\t{p_c:.4f}\t{CLASSES[int(p_c > 0.5)]}", flush=True)
        if heat is not None:
            try:
                out = write_overlay(path, heat[i], dicom_voi=voi)
                print(f"  Grad-CAM overlay: {out}", file=sys.stderr)
            except OSError as exc:
                errors.append((path, "overlay not written", str(exc)))
    for path, reason, detail in errors:
        print(f"ERROR {path}: {reason}" + (f": {detail}" if detail else ""), file=sys.stderr)
    print(f"{len(ok)} scored, {len(errors)} failed", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
