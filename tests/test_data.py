"""The data layer on the real files, and on broken copies of them made in a temp dir."""

from __future__ import annotations

import gzip
import http.server
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from study import config, data
from study.errors import DataError

TRAIN_IMAGES = data.FILES["train_images"]
TEST_LABELS = data.FILES["test_labels"]


def rewrite(folder: Path, spec: data.IdxFile, edit) -> None:
    """Decompress a real file, apply `edit` to its bytes, and write it back gzipped."""
    path = folder / spec.filename
    raw = bytearray(gzip.decompress(path.read_bytes()))
    path.write_bytes(gzip.compress(bytes(edit(raw)), compresslevel=1))


def test_real_files_verify_and_decode(fmnist):
    assert fmnist.x_train.shape == (60000, 28, 28) and fmnist.x_train.dtype == np.uint8
    assert fmnist.x_test.shape == (10000, 28, 28)
    assert np.bincount(fmnist.y_train).tolist() == [6000] * 10
    assert np.bincount(fmnist.y_test).tolist() == [1000] * 10
    # The seed report printed the first training image: an ankle boot (label 9).
    assert fmnist.y_train[0] == 9 and fmnist.y_test[:3].tolist() == [9, 2, 1]


def test_class_names_follow_label_order():
    assert config.CLASS_NAMES[0] == "T-shirt/top" and config.CLASS_NAMES[9] == "Ankle boot"
    assert len(config.CLASS_NAMES) == 10


def expect_error(folder: Path, spec: data.IdxFile, *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        data.read_idx(folder / spec.filename, spec)
    message = str(info.value)
    assert "\n" not in message
    assert spec.filename in message and "fix" in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_truncated_gzip_file(copy_of_real):
    path = copy_of_real / TRAIN_IMAGES.filename
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    expect_error(copy_of_real, TRAIN_IMAGES, "truncated or corrupt")


def test_corrupt_file_that_is_not_gzip(copy_of_real):
    (copy_of_real / TEST_LABELS.filename).write_bytes(b"<html>404 not found</html>" * 10)
    expect_error(copy_of_real, TEST_LABELS, "not a readable gzip stream")


def test_truncated_payload_inside_valid_gzip(copy_of_real):
    rewrite(copy_of_real, TRAIN_IMAGES, lambda raw: raw[:-784])
    expect_error(copy_of_real, TRAIN_IMAGES, "payload bytes", "expected 47040000")


def test_wrong_magic_number(copy_of_real):
    def swap_magic(raw):
        raw[3] = 0x01  # 2051 -> 2049: a label file's magic on an image file
        return raw

    rewrite(copy_of_real, TRAIN_IMAGES, swap_magic)
    expect_error(copy_of_real, TRAIN_IMAGES, "magic number 2049", "expected 2051")


def test_labels_file_in_place_of_images(copy_of_real):
    labels = copy_of_real / data.FILES["train_labels"].filename
    (copy_of_real / TRAIN_IMAGES.filename).write_bytes(labels.read_bytes())
    expect_error(copy_of_real, TRAIN_IMAGES, "magic number 2049")


def test_wrong_hash_with_valid_structure(copy_of_real):
    def flip_pixel(raw):
        raw[16 + 400] ^= 0xFF
        return raw

    rewrite(copy_of_real, TRAIN_IMAGES, flip_pixel)
    expect_error(copy_of_real, TRAIN_IMAGES, "SHA-256", "not the canonical file")


def test_label_out_of_range(copy_of_real):
    def bad_label(raw):
        raw[8] = 42
        return raw

    rewrite(copy_of_real, TEST_LABELS, bad_label)
    expect_error(copy_of_real, TEST_LABELS, "label 42 outside 0..9")


def test_recompressed_file_with_canonical_content_is_accepted(copy_of_real):
    rewrite(copy_of_real, TEST_LABELS, lambda raw: raw)  # same bytes, different gzip stream
    assert data.read_idx(copy_of_real / TEST_LABELS.filename, TEST_LABELS).shape == (10000,)


def test_explicit_dir_without_files_is_an_error_not_a_fallback(tmp_path):
    with pytest.raises(DataError, match="lacks train-images-idx3-ubyte.gz"):
        data.locate(tmp_path)


def test_env_dir_is_preferred(copy_of_real, monkeypatch):
    monkeypatch.setenv(config.DATA_DIR_ENV, str(copy_of_real))
    assert data.locate() == copy_of_real


def test_cli_reports_one_line_and_exit_2(copy_of_real):
    rewrite(copy_of_real, TEST_LABELS, lambda raw: raw[:-10])
    proc = subprocess.run([sys.executable, "-m", "study", "data", "--data-dir", str(copy_of_real)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert TEST_LABELS.filename in lines[0] and "apt-get install dataset-fashion-mnist" in lines[0]


@pytest.fixture
def http_server(tmp_path):
    """A loopback HTTP server over a folder, standing in for the canonical download site."""
    root = tmp_path / "site"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_download_verifies_then_renames(real_dir, http_server, tmp_path):
    site, url = http_server
    for spec in data.FILES.values():
        (site / spec.filename).write_bytes((real_dir / spec.filename).read_bytes())
    target = tmp_path / "cache"
    assert data.download_all(target, url) == target
    assert data.has_all_files(target)
    assert sorted(p.name for p in target.iterdir()) == sorted(f.filename for f in data.FILES.values())


def test_bad_download_leaves_nothing_behind(real_dir, http_server, tmp_path):
    site, url = http_server
    for spec in data.FILES.values():
        (site / spec.filename).write_bytes((real_dir / spec.filename).read_bytes())
    good = (site / TRAIN_IMAGES.filename).read_bytes()
    (site / TRAIN_IMAGES.filename).write_bytes(good[: len(good) // 3])  # a cut connection
    target = tmp_path / "cache"
    with pytest.raises(DataError, match=TRAIN_IMAGES.filename):
        data.download_all(target, url)
    assert not (target / TRAIN_IMAGES.filename).exists()
    assert list(target.iterdir()) == []  # no half-written temporary either


def cache_missing_test_labels(real_dir, tmp_path) -> Path:
    """A download cache holding three of the four files: only t10k-labels (10,008 bytes
    decompressed) is fetched."""
    target = tmp_path / "cache"
    target.mkdir()
    for spec in data.FILES.values():
        if spec != TEST_LABELS:
            (target / spec.filename).write_bytes((real_dir / spec.filename).read_bytes())
    return target


def test_a_gzip_bomb_is_refused_after_reading_its_expected_size(real_dir, http_server,
                                                                tmp_path):
    """A 9.7 kB gzip that expands to 10 MB (1,000 times t10k-labels): refused with one line,
    having decompressed at most 10,009 bytes, and the cache holds nothing of it."""
    import tracemalloc

    site, url = http_server
    (site / TEST_LABELS.filename).write_bytes(gzip.compress(bytes(10_000_000), compresslevel=9))
    assert (site / TEST_LABELS.filename).stat().st_size <= TEST_LABELS.size  # passes the size cap
    target = cache_missing_test_labels(real_dir, tmp_path)
    before = sorted(target.iterdir())
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as refused:
            data.download_all(target, url)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # unbounded, the 10 MB it expands to were held at once
    message = str(refused.value)
    assert "\n" not in message and TEST_LABELS.filename in message
    assert f"more than the {TEST_LABELS.size} bytes" in message
    assert sorted(target.iterdir()) == before


def test_an_oversized_download_is_cut_at_its_expected_size(real_dir, tmp_path):
    """A server that sends 128 MB where 10,008 bytes belong: the download stops after
    10,009 bytes (the server manages to send no more than the loopback socket buffers hold)
    and leaves nothing in the cache."""
    sent, done = [0], threading.Event()

    class Endless(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(128):
                    self.wfile.write(bytes(1 << 20))
                    sent[0] += 1 << 20
            except OSError:  # the client hung up
                pass
            finally:
                done.set()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = cache_missing_test_labels(real_dir, tmp_path)
    before = sorted(target.iterdir())
    try:
        with pytest.raises(DataError) as refused:
            data.download_all(target, f"http://127.0.0.1:{server.server_address[1]}/")
        assert done.wait(30)
    finally:
        server.shutdown()
    assert sent[0] < 32 << 20, sent[0]
    assert f"more than {TEST_LABELS.size} bytes" in str(refused.value)
    assert "\n" not in str(refused.value)
    assert sorted(target.iterdir()) == before
