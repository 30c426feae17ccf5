"""Finding, verifying and downloading corpus files; failing fast and clearly when offline."""
import dataclasses
import functools
import http.server
import threading
import time
import zipfile

import pytest

from pipelines import corpus_files
from pipelines.corpus_files import CORPORA, SPLITS, DataError


def test_real_files_verify(data_dir):
    paths = corpus_files.corpus_files("wikitext2", data_dir)
    assert sorted(paths) == ["test", "train", "valid"]


@pytest.fixture
def tiny_wikitext(tmp_path, monkeypatch):
    """A WikiText-2-shaped folder of three tiny token files, with CORPORA's wikitext2 entry
    expecting their hashes: the checks need files of that layout, not the real ones."""
    folder = tmp_path / "data" / "wikitext-2"
    folder.mkdir(parents=True)
    sha256 = {}
    for split in SPLITS:
        path = folder / f"wiki.{split}.tokens"
        path.write_text(f" \n = Tiny {split} = \n \n the {split} split , with the word the \n")
        sha256[split] = corpus_files.sha256_of(path)
    monkeypatch.setitem(CORPORA, "wikitext2",
                        dataclasses.replace(CORPORA["wikitext2"], sha256=sha256))
    return folder


def test_corrupted_file_is_refused_with_expected_and_actual_hash(tiny_wikitext):
    data_dir = str(tiny_wikitext.parent)
    assert sorted(corpus_files.corpus_files("wikitext2", data_dir)) == sorted(SPLITS)
    valid = tiny_wikitext / "wiki.valid.tokens"
    valid.write_bytes(valid.read_bytes().replace(b"the", b"teh", 1))
    with pytest.raises(DataError) as e:
        corpus_files.corpus_files("wikitext2", data_dir)
    msg = str(e.value)
    assert CORPORA["wikitext2"].sha256["valid"] in msg
    assert corpus_files.sha256_of(valid) in msg
    assert "--data_dir" in msg


@pytest.fixture
def unreachable(monkeypatch):
    """Points the download at a closed loopback port, as an offline machine would see it."""
    spec = dataclasses.replace(CORPORA["wikitext2"], url="https://127.0.0.1:9/wikitext-2-v1.zip")
    monkeypatch.setitem(CORPORA, "wikitext2", spec)


def test_offline_without_files_fails_within_seconds_naming_the_flag(unreachable, tmp_path):
    start = time.perf_counter()
    with pytest.raises(DataError, match="--data_dir"):
        corpus_files.corpus_files("wikitext2", str(tmp_path))
    assert time.perf_counter() - start < 5


def test_offline_tfds_builder_fails_fast_too(unreachable, tmp_path):
    from pipelines.lm_corpus import load_corpus
    start = time.perf_counter()
    with pytest.raises(DataError, match="--data_dir"):
        load_corpus("wikitext2", str(tmp_path / "data"), str(tmp_path / "tfds"))
    assert time.perf_counter() - start < 10


def test_unknown_dataset_is_named():
    with pytest.raises(DataError, match="unknown dataset 'wt3'"):
        corpus_files.corpus_files("wt3", "/nonexistent")


def test_missing_files_are_downloaded_extracted_and_verified(tiny_wikitext, tmp_path,
                                                             monkeypatch):
    """The official archive's layout, served from loopback, ends up verified in --data_dir."""
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "wikitext-2-v1.zip", "w") as z:
        for split in ("train", "valid", "test"):
            z.write(tiny_wikitext / f"wiki.{split}.tokens", f"wikitext-2/wiki.{split}.tokens")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/wikitext-2-v1.zip"
        monkeypatch.setitem(CORPORA, "wikitext2",
                            dataclasses.replace(CORPORA["wikitext2"], url=url))
        paths = corpus_files.corpus_files("wikitext2", str(tmp_path / "cache"))
    finally:
        server.shutdown()
    assert paths["train"] == str(tmp_path / "cache" / "wikitext-2" / "wiki.train.tokens")
    assert corpus_files.sha256_of(paths["test"]) == CORPORA["wikitext2"].sha256["test"]
    for split in SPLITS:  # each split's member went to its own file
        assert open(paths[split], "rb").read() == (tiny_wikitext / f"wiki.{split}.tokens"
                                                   ).read_bytes()
