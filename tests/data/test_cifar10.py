"""CIFAR-10: archive and folder reading, md5 and truncation errors, refusal of pickled code,
and the download path against a local HTTP server."""

from __future__ import annotations

import functools
import http.server
import pickle
import shutil
import tarfile
import threading

import numpy as np
import pytest
import torch
from fixture_files import (
    CIFAR_CLASSES,
    N_TEST,
    PER_BATCH,
    md5_of,
    write_cifar_archive,
    write_cifar_folder,
)

from dmae_pipeline.data import cifar10 as cifar
from dmae_pipeline.data import prepare, read_cifar10
from dmae_pipeline.data.splits import split_digest

N_TRAIN = 5 * PER_BATCH


@pytest.fixture
def cifar_archive(tmp_path):
    return write_cifar_archive(tmp_path)


def assert_matches(source, expected):
    train, test = source.splits["train"], source.splits["test"]
    assert train["images"].shape == (N_TRAIN, 3, 32, 32) and train["images"].dtype == torch.uint8
    assert test["images"].shape == (N_TEST, 3, 32, 32)
    # Row layout: the 1,024 red values, then green, then blue, each row-major.
    assert np.array_equal(train["images"].reshape(N_TRAIN, -1).numpy(), expected["train_data"])
    assert np.array_equal(test["images"].reshape(N_TEST, -1).numpy(), expected["test_data"])
    assert train["images"][0, 1, 0, 0] == expected["train_data"][0, 1024]
    assert train["labels"].dtype == torch.int64
    assert train["labels"].tolist() == expected["train_labels"].tolist()
    assert test["labels"].tolist() == expected["test_labels"].tolist()
    assert source.class_names == CIFAR_CLASSES
    assert (source.channels, source.mean, source.std) == (3, cifar.MEAN, cifar.STD)


def test_reads_the_archive_in_place(tmp_path, cifar_archive):
    archive, md5, expected = cifar_archive
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(archive, raw / cifar.ARCHIVE)
    assert_matches(read_cifar10(raw, md5=md5), expected)
    assert sorted(p.name for p in raw.iterdir()) == [cifar.ARCHIVE]  # nothing extracted


@pytest.mark.parametrize("python2", [True, False], ids=["python2-pickles", "python3-pickles"])
def test_reads_the_extracted_folder(tmp_path, python2):
    expected = write_cifar_folder(tmp_path / "raw", seed=3, python2=python2)
    assert_matches(read_cifar10(tmp_path / "raw"), expected)


def test_prepare_carves_a_seeded_validation_split_from_train(tmp_path, cifar_archive):
    archive, md5, expected = cifar_archive
    (tmp_path / "raw").mkdir()
    shutil.copy(archive, tmp_path / "raw" / cifar.ARCHIVE)
    params = {"raw_dir": tmp_path / "raw", "md5": md5, "val_fraction": 0.25}
    spec, splits = prepare("cifar10", 32, **params)
    assert spec == {
        "name": "cifar10",
        "source": "cifar10",
        "num_classes": 10,
        "class_names": CIFAR_CLASSES,
        "image_size": 32,
        "channels": 3,
        "mean": list(cifar.MEAN),
        "std": list(cifar.STD),
        "split_sizes": {"train": 15, "val": 5, "test": N_TEST},
        "split_digests": {part: split_digest(splits[part]) for part in ("train", "val", "test")},
    }
    rows = {tuple(r) for r in expected["train_data"].tolist()}
    train_rows = {tuple(r) for r in splits["train"]["images"].reshape(15, -1).tolist()}
    val_rows = {tuple(r) for r in splits["val"]["images"].reshape(5, -1).tolist()}
    assert train_rows | val_rows == rows and not train_rows & val_rows
    assert torch.equal(
        splits["test"]["images"].reshape(N_TEST, -1), torch.from_numpy(expected["test_data"])
    )
    again = prepare("cifar10", 32, **params)[1]
    assert torch.equal(again["val"]["images"], splits["val"]["images"])
    other = prepare("cifar10", 32, **params, seed=1)[1]
    assert not torch.equal(other["val"]["labels"], splits["val"]["labels"]) or not torch.equal(
        other["val"]["images"], splits["val"]["images"]
    )


class _WritesAFile:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "archive"])
def test_refuses_a_pickle_that_would_run_code(tmp_path, packed):
    raw = tmp_path / "raw"
    write_cifar_folder(raw)
    marker = tmp_path / "marker"
    crafted = pickle.dumps({b"data": _WritesAFile(marker), b"labels": []}, protocol=2)
    (raw / cifar.FOLDER / "data_batch_2").write_bytes(crafted)
    md5 = cifar.MD5
    if packed:
        with tarfile.open(raw / cifar.ARCHIVE, "w:gz") as tar:
            tar.add(raw / cifar.FOLDER, arcname=cifar.FOLDER)
        shutil.rmtree(raw / cifar.FOLDER)
        md5 = md5_of(raw / cifar.ARCHIVE)
    with pytest.raises(
        ValueError, match=r"data_batch_2 .*refused to load (__builtin__|builtins)\.exec"
    ):
        read_cifar10(raw, md5=md5)
    assert not marker.exists()
    pickle.loads(crafted)  # the same bytes through the plain unpickler do run the code
    assert marker.read_text() == "ran"


def test_wrong_md5_is_refused_and_nothing_is_written(tmp_path, cifar_archive):
    archive, _, _ = cifar_archive
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(archive, raw / cifar.ARCHIVE)
    with pytest.raises(
        ValueError, match=rf"{cifar.ARCHIVE} has md5 [0-9a-f]{{32}}, expected 0{{32}}"
    ):
        read_cifar10(raw, md5="0" * 32)
    assert [p.name for p in raw.iterdir()] == [cifar.ARCHIVE]


def test_truncated_archive_is_a_clear_error(tmp_path, cifar_archive):
    archive, md5, _ = cifar_archive
    raw = tmp_path / "raw"
    raw.mkdir()
    truncated = raw / cifar.ARCHIVE
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"has md5 \w+, expected \w+: the file is truncated"):
        read_cifar10(raw, md5=md5)
    # With the md5 of the truncated file itself, the archive reader still stops cleanly.
    with pytest.raises(ValueError, match=rf"{cifar.ARCHIVE}.*(truncated|not a readable)"):
        read_cifar10(raw, md5=md5_of(truncated))
    assert [p.name for p in raw.iterdir()] == [cifar.ARCHIVE]


def test_missing_data_names_the_paths_and_the_url(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{cifar.ARCHIVE}.*{cifar.FOLDER}.*{cifar.URL}"):
        read_cifar10(tmp_path)


def test_missing_batch_in_the_folder_is_named(tmp_path):
    write_cifar_folder(tmp_path)
    (tmp_path / cifar.FOLDER / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4 is missing"):
        read_cifar10(tmp_path)


def test_wrong_array_shape_is_refused(tmp_path):
    write_cifar_folder(tmp_path)
    bad = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    (tmp_path / cifar.FOLDER / "test_batch").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(ValueError, match=r"test_batch: 'data' must be a uint8 array \[N, 3072\]"):
        read_cifar10(tmp_path)


@pytest.fixture
def http_server(cifar_archive):
    """Serves the fixture archive's folder on 127.0.0.1 at an ephemeral port."""
    archive, _, _ = cifar_archive

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(archive.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_download_fetches_checks_and_reads(tmp_path, cifar_archive, http_server):
    archive, md5, expected = cifar_archive
    raw = tmp_path / "raw"
    source = read_cifar10(raw, download=True, url=f"{http_server}/{archive.name}", md5=md5)
    assert_matches(source, expected)
    assert [p.name for p in raw.iterdir()] == [cifar.ARCHIVE]
    assert md5_of(raw / cifar.ARCHIVE) == md5


def test_download_with_wrong_md5_writes_nothing(tmp_path, cifar_archive, http_server):
    archive, _, _ = cifar_archive
    raw = tmp_path / "raw"
    with pytest.raises(ValueError, match=r"has md5 \w+, expected f{32}; nothing was written"):
        read_cifar10(raw, download=True, url=f"{http_server}/{archive.name}", md5="f" * 32)
    assert list(raw.iterdir()) == []


def test_download_of_a_missing_file_is_a_clear_error(tmp_path, http_server):
    with pytest.raises(
        ConnectionError, match=r"could not download http://127\.0\.0\.1:\d+/nothing\.tar\.gz"
    ):
        read_cifar10(tmp_path / "raw", download=True, url=f"{http_server}/nothing.tar.gz")
    assert not (tmp_path / "raw" / cifar.ARCHIVE).exists()
