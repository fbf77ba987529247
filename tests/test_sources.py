"""Acquire: mirror copies verified by checksum, safe archive extraction, weights md5."""

import hashlib
import os
import re
import socket
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cxr import sources

REPO = Path(__file__).resolve().parents[1]


def make_mirror(root, files: dict[str, bytes], corrupt: str | None = None):
    lines = []
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        lines.append(f"{hashlib.sha256(data).hexdigest()}  {rel}")
    (root / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    if corrupt:
        (root / corrupt).write_bytes(b"flipped")
    return root


def test_mirror_copy_verifies_and_writes_lock(tmp_path):
    files = {
        "covid-chestxray-dataset/metadata.csv": b"a,b\n",
        "covid-chestxray-dataset/images/x.jpg": b"\x01\x02",
        "chest_xray/train/PNEUMONIA/person1_virus_1.jpeg": b"v",
    }
    mirror = make_mirror(tmp_path / "m", files)
    out = tmp_path / "out"
    assert sources.copy_from_mirror(mirror, "covid-chestxray-dataset", out) == 2
    assert (out / "images/x.jpg").read_bytes() == b"\x01\x02"
    lock = sources.read_sums(out / "SHA256SUMS")
    assert lock == {
        "images/x.jpg": hashlib.sha256(b"\x01\x02").hexdigest(),
        "metadata.csv": hashlib.sha256(b"a,b\n").hexdigest(),
    }


def test_mirror_checksum_mismatch_names_the_file(tmp_path):
    files = {"chest_xray/train/PNEUMONIA/person1_virus_1.jpeg": b"good"}
    mirror = make_mirror(tmp_path / "m", files, corrupt=next(iter(files)))
    with pytest.raises(sources.ChecksumError, match="person1_virus_1.jpeg: checksum mismatch"):
        sources.copy_from_mirror(mirror, "chest_xray", tmp_path / "out")
    assert not (tmp_path / "out/train/PNEUMONIA/person1_virus_1.jpeg").exists()


def test_kermany_mirror_takes_only_viral_files(tmp_path):
    files = {
        "chest_xray/train/PNEUMONIA/person1_virus_1.jpeg": b"v1",
        "chest_xray/train/PNEUMONIA/person1_bacteria_2.jpeg": b"b",
        "chest_xray/train/NORMAL/IM-0001.jpeg": b"n",
        "chest_xray/test/PNEUMONIA/person1_virus_9.jpeg": b"v2",
    }
    mirror = make_mirror(tmp_path / "m", files)
    out = tmp_path / "k"
    assert sources.acquire_kermany(out, mirror=mirror, url="unused") == 2
    got = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpeg"))
    assert got == ["test/PNEUMONIA/person1_virus_9.jpeg", "train/PNEUMONIA/person1_virus_1.jpeg"]


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            if isinstance(data, zipfile.ZipInfo):
                zf.writestr(data, b"target")
            else:
                zf.writestr(name, data)
    return path


@pytest.mark.parametrize("bad", ["../evil.jpeg", "/abs/evil.jpeg", "a/../../evil.jpeg"])
def test_safe_extract_refuses_traversal(tmp_path, bad):
    z = _zip(tmp_path / "a.zip", [("chest_xray/ok.jpeg", b"x"), (bad, b"y")])
    with pytest.raises(ValueError, match="unsafe member"):
        sources.safe_extract(z, tmp_path / "out", lambda n: n)
    assert not (tmp_path / "evil.jpeg").exists()


def test_safe_extract_refuses_symlink(tmp_path):
    info = zipfile.ZipInfo("chest_xray/link.jpeg")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    z = _zip(tmp_path / "a.zip", [("x", info)])
    with pytest.raises(ValueError, match="symbolic link"):
        sources.safe_extract(z, tmp_path / "out", lambda n: n)


def test_safe_extract_selects_and_strips_prefix(tmp_path):
    z = _zip(
        tmp_path / "a.zip",
        [
            ("ZhangLabData/chest_xray/train/PNEUMONIA/person3_virus_7.jpeg", b"v"),
            ("ZhangLabData/chest_xray/train/PNEUMONIA/person3_bacteria_8.jpeg", b"b"),
        ],
    )

    def select(name):
        m = sources.KERMANY_VIRUS.search(name)
        return m.group(1) if m else None

    assert sources.safe_extract(z, tmp_path / "out", select) == 1
    assert (tmp_path / "out/train/PNEUMONIA/person3_virus_7.jpeg").read_bytes() == b"v"


def test_weights_md5_mismatch_is_refused(tmp_path):
    fake = tmp_path / "fake.h5"
    fake.write_bytes(b"not weights")
    out = tmp_path / "models/pretrained" / sources.WEIGHTS_FILE
    with pytest.raises(sources.ChecksumError, match="fake.h5: checksum mismatch"):
        sources.acquire_weights(out, source=fake)
    assert not out.exists() and not os.listdir(out.parent)


def test_weights_from_keras_cache(tmp_path, monkeypatch, mirror):
    # The real file, found where Keras keeps it ($KERAS_HOME/models/), copied and md5-checked.
    real = mirror.parent / "weights" / sources.WEIGHTS_FILE
    (tmp_path / "keras/models").mkdir(parents=True)
    os.symlink(real, tmp_path / "keras/models" / sources.WEIGHTS_FILE)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    out = sources.acquire_weights(tmp_path / "w.h5")
    assert sources.file_hash(out, "md5") == sources.WEIGHTS_MD5


def test_file_hash_known_bytes(tmp_path):
    (tmp_path / "abc.bin").write_bytes(b"abc")
    # FIPS 180-2 test vector for "abc"
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sources.file_hash(tmp_path / "abc.bin") == expected
    big = os.urandom(3 * (1 << 20) + 17)  # spans several read chunks
    (tmp_path / "big.bin").write_bytes(big)
    assert sources.file_hash(tmp_path / "big.bin") == hashlib.sha256(big).hexdigest()
    assert sources.file_hash(tmp_path / "abc.bin", "md5") == hashlib.md5(b"abc").hexdigest()


@pytest.fixture
def http_server(tmp_path):
    """A loopback HTTP server over tmp_path/www; yields (base_url, folder). Stopped after."""
    import functools
    import http.server
    import threading

    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", www
    server.shutdown()
    thread.join(5)


def test_download_cut_short_is_fetched_again(http_server, tmp_path):
    url, www = http_server
    data = os.urandom(50_000)
    (www / "a.zip").write_bytes(data)
    dest = tmp_path / "dl" / "a.zip"
    dest.parent.mkdir()
    dest.write_bytes(data[:1000])  # an earlier download cut short
    sources._download(url + "a.zip", "sha256:" + hashlib.sha256(data).hexdigest(), dest)
    assert dest.read_bytes() == data


def test_download_with_wrong_checksum_is_refused(http_server, tmp_path):
    url, www = http_server
    (www / "a.zip").write_bytes(b"tampered")
    with pytest.raises(sources.DownloadError, match="checksum mismatch"):
        sources._download(url + "a.zip", "sha256:" + "0" * 64, tmp_path / "a.zip")
    assert not (tmp_path / "a.zip").exists()


# --- a failed download: one line naming the URL, the cause and what to do ---------------------


def _acquire(tmp_path, *args):
    """Run scripts/acquire.py as the rule does (stdout and stderr together, as in its log)."""
    cmd = [sys.executable, str(REPO / "scripts/acquire.py"), *args]
    cmd += ["--traceback", str(tmp_path / "traceback.txt")]
    env = {**os.environ, "CXR_DOWNLOADS": str(tmp_path / "dl"), "NO_PROXY": "127.0.0.1"}
    env["no_proxy"] = env["NO_PROXY"]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return proc.returncode, proc.stdout


def _closed_port() -> int:
    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_failure_line(out: str, url: str, cause: str):
    assert "Traceback" not in out and 'File "' not in out, out
    failed = [line for line in out.splitlines() if "failed" in line]
    assert len(failed) == 1, out
    assert url in failed[0] and cause in failed[0] and "mirror:" in failed[0], failed[0]


def test_unreachable_host_is_one_line_naming_url_and_cause(tmp_path):
    base = f"http://127.0.0.1:{_closed_port()}/"
    rc, out = _acquire(tmp_path, "covid", "--out", str(tmp_path / "raw"), "--covid_base_url", base)
    assert rc == 1
    _one_failure_line(out, base + "metadata.csv", "connection refused")
    assert "ConnectionRefusedError" in (tmp_path / "traceback.txt").read_text()


def test_http_404_is_one_line_naming_url_and_status(http_server, tmp_path):
    url, _ = http_server
    out_dir = str(tmp_path / "raw")
    rc, out = _acquire(
        tmp_path, "kermany", "--out", out_dir, "--kermany_url", url + "ChestXRay2017.zip"
    )
    assert rc == 1
    _one_failure_line(out, url + "ChestXRay2017.zip", "HTTP 404 File not found")
    assert "HTTPError" in (tmp_path / "traceback.txt").read_text()


def test_checksum_mismatch_is_one_line_naming_url_and_both_hashes(http_server, tmp_path):
    url, www = http_server
    (www / "k.zip").write_bytes(b"not the archive")
    got = hashlib.sha256(b"not the archive").hexdigest()
    args = ["kermany", "--out", str(tmp_path / "raw"), "--kermany_url", url + "k.zip"]
    rc, out = _acquire(tmp_path, *args, "--kermany_sha256", "sha256:" + "0" * 64)
    assert rc == 1
    _one_failure_line(
        out, url + "k.zip", f"checksum mismatch (expected sha256:{'0' * 64}, got {got})"
    )
    assert not (tmp_path / "dl/ChestXRay2017.zip").exists()


def test_covid_image_missing_upstream_is_skipped_with_its_url(http_server, tmp_path):
    # A 404 for one image is a manifest row later (the upstream lacks some files); the rest
    # downloads and the run succeeds.
    url, www = http_server
    (www / "images").mkdir()
    (www / "metadata.csv").write_text("modality,filename\nX-ray,a.png\nX-ray,gone.png\nCT,ct.nii\n")
    (www / "images/a.png").write_bytes(b"png bytes")
    rc, out = _acquire(tmp_path, "covid", "--out", str(tmp_path / "raw"), "--covid_base_url", url)
    assert rc == 0, out
    assert f"{url}images/gone.png: HTTP 404 File not found; the manifest will list it" in out
    assert (tmp_path / "raw/images/a.png").read_bytes() == b"png bytes"
    assert set(sources.read_sums(tmp_path / "raw/SHA256SUMS")) == {"metadata.csv", "images/a.png"}


def test_name_resolution_cause_from_the_requests_error():
    import requests

    # The text requests 2.32 / urllib3 2 give when DNS fails (no network needed to build it).
    err = requests.ConnectionError(
        "HTTPSConnectionPool(host='github.com', port=443): Max retries exceeded with url: /x "
        '(Caused by NameResolutionError("<urllib3.connection.HTTPSConnection object>: Failed '
        "to resolve 'github.com' ([Errno -3] Temporary failure in name resolution)\"))"
    )
    cause, status = sources.describe_download_error(err)
    assert (cause, status) == ("cannot resolve host 'github.com' (no network or DNS?)", None)


# --- NIH adult controls (darkcovidnet folder + NIH metadata) ---------------------------------


def test_nih_file_list_is_500_no_finding_and_500_pneumonia_nih_names():
    names = sources.darkcovidnet_files()
    folders = [n.split("/")[0] for n in names]
    assert folders.count("No_findings") == 500 and folders.count("Pneumonia") == 500
    assert all(re.fullmatch(r"(No_findings|Pneumonia)/\d{8}_\d{3}\.png", n) for n in names)
    assert len(set(names)) == 1000


def test_nih_mirror_copy_flattens_the_spaced_folder(tmp_path, monkeypatch):
    listed = tmp_path / "files.txt"
    listed.write_text("No_findings/00000001_000.png\nPneumonia/00000002_001.png\n")
    monkeypatch.setattr(sources, "DARKCOVIDNET_FILES", listed)
    files = {
        "darkcovidnet/X-Ray Image DataSet/No_findings/00000001_000.png": b"n1",
        "darkcovidnet/X-Ray Image DataSet/Pneumonia/00000002_001.png": b"p2",
        "darkcovidnet/X-Ray Image DataSet/Covid-19/x.png": b"left out upstream copy",
        "nih-chestxray/Data_Entry_2017_v2020.csv.gz": b"meta",
    }
    mirror = make_mirror(tmp_path / "m", files)
    out = tmp_path / "nih"
    n = sources.acquire_nih(out, mirror=mirror, images_base_url="unused", metadata_url="unused")
    assert n == 3
    lock = sources.read_sums(out / "SHA256SUMS")
    assert lock == {
        "No_findings/00000001_000.png": hashlib.sha256(b"n1").hexdigest(),
        "Pneumonia/00000002_001.png": hashlib.sha256(b"p2").hexdigest(),
        "Data_Entry_2017_v2020.csv.gz": hashlib.sha256(b"meta").hexdigest(),
    }


def test_nih_download_quotes_the_folder_and_checks_the_metadata(http_server, tmp_path, monkeypatch):
    url, www = http_server
    listed = tmp_path / "files.txt"
    listed.write_text("No_findings/00000001_000.png\nPneumonia/00000001_001.png\n")
    monkeypatch.setattr(sources, "DARKCOVIDNET_FILES", listed)
    for rel, data in [("No_findings/00000001_000.png", b"a"), ("Pneumonia/00000001_001.png", b"b")]:
        p = www / "X-Ray Image DataSet" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (www / "meta.csv.gz").write_bytes(b"metadata bytes")
    good = hashlib.sha256(b"metadata bytes").hexdigest()
    out = tmp_path / "nih"
    kw = {"images_base_url": url, "metadata_url": url + "meta.csv.gz", "locks": tmp_path / "locks"}
    assert sources.acquire_nih(out, metadata_sha256=good, **kw) == 3
    assert (out / "Pneumonia/00000001_001.png").read_bytes() == b"b"
    assert sources.read_sums(out / "SHA256SUMS")["Data_Entry_2017_v2020.csv.gz"] == good
    with pytest.raises(sources.DownloadError, match="checksum mismatch"):
        sources.acquire_nih(tmp_path / "nih2", metadata_sha256="0" * 64, **kw)
    # A file listed at the pinned commit but absent upstream: a wrong pin, the run stops.
    (www / "X-Ray Image DataSet/Pneumonia/00000001_001.png").unlink()
    with pytest.raises(sources.DownloadError, match="X-Ray%20Image%20DataSet/Pneumonia.*404"):
        sources.acquire_nih(tmp_path / "nih3", metadata_sha256=good, **kw)


# --- every download pinned: committed lock files (trust on first use), tampering stops -------


def _serve_covid(www, image: bytes = b"png bytes") -> dict[str, bytes]:
    files = {"metadata.csv": b"modality,filename\nX-ray,a.png\n", "images/a.png": image}
    for rel, data in files.items():
        (www / rel).parent.mkdir(parents=True, exist_ok=True)
        (www / rel).write_bytes(data)
    return files


def test_first_download_records_pins_and_later_ones_are_held_to_them(http_server, tmp_path):
    url, www = http_server
    files = _serve_covid(www)
    locks = tmp_path / "locks"
    assert sources.acquire_covid(tmp_path / "raw", base_url=url, locks=locks) == 2
    lock = sources.UpstreamLock(locks, "ieee8023")
    assert lock.pins == {url + rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
    text = (locks / "ieee8023.sha256").read_text()
    assert text.startswith("# Upstream pins of the source ieee8023")
    assert f"{hashlib.sha256(b'png bytes').hexdigest()}  {url}images/a.png\n" in text
    # The same files again: checked against the lock, which stays as it was.
    assert sources.acquire_covid(tmp_path / "raw2", base_url=url, locks=locks) == 2
    assert (locks / "ieee8023.sha256").read_text() == text


def test_tampered_upstream_file_stops_the_run_and_keeps_nothing(http_server, tmp_path):
    url, www = http_server
    good = b"png bytes"
    _serve_covid(www, image=good)
    locks = tmp_path / "locks"
    sources.acquire_covid(tmp_path / "first", base_url=url, locks=locks)
    lock_text = (locks / "ieee8023.sha256").read_text()
    (www / "images/a.png").write_bytes(b"tampered")  # upstream changed after it was pinned
    out = tmp_path / "raw"
    rc, log = _acquire(
        tmp_path, "covid", "--out", str(out), "--covid_base_url", url, "--locks", str(locks)
    )
    assert rc == 1
    expected = hashlib.sha256(good).hexdigest()
    got = hashlib.sha256(b"tampered").hexdigest()
    _one_failure_line(
        log, url + "images/a.png", f"checksum mismatch (expected sha256:{expected}, got {got})"
    )
    assert f"not the one pinned in {locks / 'ieee8023.sha256'}" in log
    # Nothing kept: no output folder, no staging folder, no stray file; the lock unchanged.
    assert not out.exists() and not (tmp_path / "raw.tmp").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["www", "locks", "first", "traceback.txt"]
    )
    assert (locks / "ieee8023.sha256").read_text() == lock_text


def test_a_failed_run_records_no_pin(http_server, tmp_path):
    # metadata.csv is new (would be recorded), the image then fails: nothing is written.
    url, www = http_server
    (www / "metadata.csv").write_bytes(b"modality,filename\nX-ray,a.png\n")
    (www / "images").mkdir()
    (www / "images/a.png").write_bytes(b"x")
    locks = tmp_path / "locks"
    locks.mkdir()
    (locks / "ieee8023.sha256").write_text(f"{'0' * 64}  {url}images/a.png\n")
    with pytest.raises(sources.DownloadError, match="images/a.png: checksum mismatch"):
        sources.acquire_covid(tmp_path / "raw", base_url=url, locks=locks)
    assert (locks / "ieee8023.sha256").read_text() == f"{'0' * 64}  {url}images/a.png\n"
    assert not (tmp_path / "raw").exists() and not (tmp_path / "raw.tmp").exists()


def test_kermany_archive_pinned_on_first_download(http_server, tmp_path, monkeypatch):
    url, www = http_server
    z = _zip(www / "k.zip", [("chest_xray/train/PNEUMONIA/person1_virus_2.jpeg", b"v")])
    digest = hashlib.sha256(z.read_bytes()).hexdigest()
    monkeypatch.setenv("CXR_DOWNLOADS", str(tmp_path / "dl"))
    locks = tmp_path / "locks"
    assert sources.acquire_kermany(tmp_path / "k1", url=url + "k.zip", locks=locks) == 1
    assert sources.UpstreamLock(locks, "kermany").pins == {url + "k.zip": digest}
    # A new archive upstream: refused, and the cached old copy is not reused or kept either.
    _zip(www / "k.zip", [("chest_xray/train/PNEUMONIA/person9_virus_9.jpeg", b"w")])
    (tmp_path / "dl/ChestXRay2017.zip").write_bytes(b"an older, cut-short copy")
    with pytest.raises(sources.DownloadError, match=f"expected sha256:{digest}, got"):
        sources.acquire_kermany(tmp_path / "k2", url=url + "k.zip", locks=locks)
    assert not (tmp_path / "k2").exists() and not (tmp_path / "dl/ChestXRay2017.zip").exists()


def test_config_pin_and_lock_pin_must_agree(tmp_path):
    locks = tmp_path / "locks"
    locks.mkdir()
    (locks / "kermany.sha256").write_text(f"{'a' * 64}  http://127.0.0.1:9/k.zip\n")
    with pytest.raises(sources.DownloadError, match="pins disagree"):
        sources.acquire_kermany(
            tmp_path / "k", url="http://127.0.0.1:9/k.zip", sha256="b" * 64, locks=locks
        )


def test_malformed_lock_line_names_file_and_line(tmp_path):
    (tmp_path / "nih.sha256").write_text("# header\n" + "a" * 64 + "  http://x/y\nnot a pin\n")
    with pytest.raises(sources.LockError, match=r"nih.sha256:3: expected '<sha256>  <url>'"):
        sources.UpstreamLock(tmp_path, "nih")


def test_committed_known_pins_are_the_mirror_files_it_kept_unchanged(mirror):
    # The ieee8023 pins known in advance: metadata.csv, and the images under 640 px (the
    # mirror downscaled only larger ones, so these bytes are upstream's).
    from PIL import Image

    lock = sources.UpstreamLock(REPO / "locks", "ieee8023")
    sums = sources.read_sums(mirror / "SHA256SUMS")
    import yaml

    base = yaml.safe_load((REPO / "config.yaml").read_text())["acquire"]["covid_base_url"]
    assert lock.pins[base + "metadata.csv"] == sums["covid-chestxray-dataset/metadata.csv"]
    images = {u.removeprefix(base) for u in lock.pins} - {"metadata.csv"}
    assert len(images) == 116
    for rel in images:
        name = f"{sources.COVID_DIR}/{rel}"
        assert lock.pins[base + rel] == sums[name]
        with Image.open(mirror / name) as im:
            assert max(im.size) < 640, name
    for source in ("kermany", "nih"):  # nothing known in advance: trust on first use
        assert sources.UpstreamLock(REPO / "locks", source).pins == {}
