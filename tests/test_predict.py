"""cxr-predict on real mirror images (read, never written) with a tiny model saved to disk.

The model is a 32 px VGG19 with random weights (cxr.model.build_model): its probabilities mean
nothing, but they must be the model's own for the same preprocessing as the pipeline's, one
line per image, with bad files reported by name and reason while the others are scored.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from cxr.model import build_model
from cxr.predict import image_files, load_for_model, main

COVID = "covid-chestxray-dataset/images"
KERMANY = "chest_xray/test/PNEUMONIA"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    keras.utils.set_random_seed(1)
    model = build_model(32, weights=None, dense_units=(8, 4))
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return path, model


@pytest.fixture
def real_images(mirror):
    covid = sorted((mirror / COVID).iterdir())[:2]
    kermany = sorted((mirror / KERMANY).glob("*.jpeg"))[:2]
    return [*covid, *kermany]


def parse(stdout: str) -> dict[str, tuple[float, str]]:
    lines = [line for line in stdout.splitlines() if line and not line.startswith(" ")]
    assert lines[0] == "path\tp_covid\tlabel"
    out = {}
    for line in lines[1:]:
        path, p, label = line.split("\t")
        out[path] = (float(p), label)
    return out


def test_console_script_scores_real_images_and_reports_a_bad_one(tiny_model, real_images, tmp_path):
    model_path, model = tiny_model
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not a JPEG")
    exe = Path(sys.executable).with_name("cxr-predict")
    args = [str(exe) if exe.is_file() else "cxr-predict", "--model", str(model_path)]
    proc = subprocess.run([*args, *map(str, real_images), str(bad)], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr  # one file failed
    scored = parse(proc.stdout)
    assert list(scored) == [str(p) for p in real_images]  # every good image, in order
    assert f"ERROR {bad}: unreadable" in proc.stderr
    assert "4 scored, 1 failed" in proc.stderr
    assert "not a diagnostic tool" in proc.stderr
    images, ok, errors = load_for_model(real_images, 32)
    expected = model.predict(images, verbose=0)[:, 1]
    for (p, label), e in zip(scored.values(), expected, strict=True):
        assert 0.0 <= p <= 1.0
        assert p == pytest.approx(e, abs=6e-5)  # printed with 4 decimals
        assert label == ("covid" if p > 0.5 else "non_covid") or abs(e - 0.5) < 1e-4
    assert errors == []


def test_folder_gradcam_overlays_and_exit_codes(tiny_model, real_images, tmp_path, capsys):
    model_path, _ = tiny_model
    folder = tmp_path / "in"
    folder.mkdir()
    for p in real_images[1:3]:
        shutil.copy(p, folder / p.name)
    (folder / "notes.txt").write_text("not an image, not even tried")
    assert main(["--model", str(model_path), "--gradcam", str(folder)]) == 0
    out = capsys.readouterr()
    assert len(parse(out.out)) == 2 and "2 scored, 0 failed" in out.err
    for p in real_images[1:3]:
        overlay = folder / (p.stem + ".gradcam.png")
        with Image.open(overlay) as im, Image.open(p) as orig:
            assert im.format == "PNG" and im.size == orig.size  # at the image's resolution
    # a second run does not score its own overlays
    assert [f.name for f in image_files([folder])] == sorted(p.name for p in real_images[1:3])
    truncated = folder / "cut.jpeg"
    truncated.write_bytes(real_images[2].read_bytes()[:2000])
    assert main(["--model", str(model_path), str(folder)]) == 1
    out = capsys.readouterr()
    assert "ERROR" in out.err and "cut.jpeg: truncated" in out.err
    assert len(parse(out.out)) == 2


def test_usage_errors(tiny_model, tmp_path):
    with pytest.raises(SystemExit) as err:
        main(["--model", str(tmp_path / "none.keras"), str(tmp_path)])
    assert err.value.code == 2
    with pytest.raises(SystemExit) as err:
        main(["--model", str(tiny_model[0]), str(tmp_path)])  # empty folder
    assert err.value.code == 2


def test_load_for_model_matches_the_store_preprocessing(real_images):
    from cxr.images import load_rgb
    from cxr.store import resize_square

    images, ok, errors = load_for_model([*real_images[:2], "/no/such/file.png"], 40)
    assert images.shape == (2, 40, 40, 3) and images.dtype == np.uint8
    assert ok == [str(p) for p in real_images[:2]]
    assert errors == [("/no/such/file.png", "missing", "no such file")]
    np.testing.assert_array_equal(images[0], resize_square(load_rgb(real_images[0]), 40))
