"""cxr.io: atomic writers (whole file or the old one, no temporary left) and the
deterministic ``.keras`` save (identical model, identical bytes; issue 14 item 9)."""

from __future__ import annotations

import json
import os
import time
import zipfile

import numpy as np
import pandas as pd
import pytest

from cxr.io import (
    ZIP_TIME,
    _renumber_shared_ids,
    atomic_path,
    publish,
    savez,
    temporary_path,
    write_csv,
    write_json,
    write_table,
    write_text,
)


def test_writers_write_whole_files_with_fixed_formatting(tmp_path):
    frame = pd.DataFrame({"name": ["a", "b"], "x": [0.1234567891, 2.0]})
    write_csv(frame, tmp_path / "new/folder/t.csv")  # folders created
    assert (tmp_path / "new/folder/t.csv").read_bytes() == b"name,x\na,0.1234567891\nb,2.0\n"
    write_table(frame, tmp_path / "r.csv")
    assert (tmp_path / "r.csv").read_bytes() == b"name,x\na,0.123457\nb,2\n"
    write_json({"a": [1, 2]}, tmp_path / "m.json")
    assert (tmp_path / "m.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}\n'
    write_text("x\r\ny\n", tmp_path / "t.md")
    assert (tmp_path / "t.md").read_bytes() == b"x\r\ny\n"  # no newline translation
    savez(tmp_path / "s.npz", a=np.arange(3, dtype=np.int8))
    with np.load(tmp_path / "s.npz", allow_pickle=False) as f:
        assert f["a"].tolist() == [0, 1, 2] and f["a"].dtype == np.int8
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "m.json",
        "new",
        "r.csv",
        "s.npz",
        "t.md",
    ]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "m.json"
    write_json({"ok": 1}, path)
    with pytest.raises(ValueError):
        write_json({"bad": float("nan")}, path)
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert json.loads(path.read_text()) == {"ok": 1}
    assert temporary_path(path) == tmp_path / "m.tmp.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_publish_copies_and_makes_the_copy_new(tmp_path):
    source = tmp_path / "best-003.keras"
    source.write_bytes(b"model")
    os.utime(source, (1_000_000, 1_000_000))
    publish(source, tmp_path / "out/m.keras")
    assert (tmp_path / "out/m.keras").read_bytes() == b"model" and source.exists()
    assert (tmp_path / "out/m.keras").stat().st_mtime > time.time() - 600


def test_shared_object_ids_are_numbered_in_order_of_appearance():
    config = (
        b'{"a": {"shared_object_id": 140247617924432}, "b": {"shared_object_id": 77},'
        b' "c": {"shared_object_id": 140247617924432}}'
    )
    assert _renumber_shared_ids(config) == (
        b'{"a": {"shared_object_id": 0}, "b": {"shared_object_id": 1},'
        b' "c": {"shared_object_id": 0}}'
    )


def test_the_same_model_saves_to_the_same_bytes(tmp_path):
    keras = pytest.importorskip("keras")
    from cxr.io import save_keras
    from cxr.model import build_model, compile_model, load_model, make_optimizer

    def model(seed):
        keras.backend.clear_session()  # the same layer names (input_layer, not input_layer_1)
        keras.utils.set_random_seed(seed)
        m = build_model(32, dense_units=(16, 8), dropout=(0.25, 0.125))
        compile_model(m, make_optimizer("rmsprop", 1e-3, 0.0, 0.0, False))
        return m

    a = model(0)
    save_keras(a, tmp_path / "a.keras")
    time.sleep(2.1)  # another second in date_saved, another zip time (2 s resolution)
    save_keras(model(0), tmp_path / "b.keras")  # other Python objects, the same model
    save_keras(model(1), tmp_path / "c.keras")
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    assert (tmp_path / "a.keras").read_bytes() != (tmp_path / "c.keras").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.keras") as z:
        assert [i.date_time for i in z.infolist()] == [ZIP_TIME] * len(z.infolist())
        assert "date_saved" not in json.loads(z.read("metadata.json"))
        assert b'"shared_object_id": 0' in z.read("config.json")
    loaded = load_model(tmp_path / "a.keras")
    for x, y in zip(a.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.keras", "b.keras", "c.keras"]
    with pytest.raises(ValueError, match=".keras"):
        save_keras(a, tmp_path / "a.h5")


def test_atomic_dir_replaces_whole_or_leaves_the_old_folder(tmp_path):
    from cxr.io import atomic_dir

    out = tmp_path / "raw"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
    with pytest.raises(RuntimeError, match="cut"), atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("half")
        raise RuntimeError("cut")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]  # the old folder, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no staging folder left
    with atomic_dir(out) as tmp:
        (tmp / "c.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == ["c.txt"]
