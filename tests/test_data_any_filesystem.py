"""Data folders on any TensorFlow filesystem (issue 28 item 4): `--data_dir=ram://...`
(TensorFlow's in-memory filesystem, standing for gs:// or hdfs://) gives the same corpora,
utterances and features as the local folder it was copied from, and a missing file there is
the same one-line error as locally. Real-data tests skip when the data is absent."""
import os

import numpy as np
import pytest
import tensorflow as tf

from pipelines import an4, corpus_files, speech_sources, spoken_digits
from pipelines.corpus_files import DataError, open_data
from pipelines.lm_corpus import load_corpus
from tfawd.core import files


def _need(data_dir, folder):
    if not os.path.isdir(os.path.join(data_dir, folder)):
        pytest.skip(f"no {folder} under {data_dir}")


def test_open_data_reads_as_open_does_wherever_the_file_is(tmp_path):
    text = "a b\r\nc\rd\n\ne \u2028f\x0cg\n"  # Windows, old-Mac, Unicode separators
    local = tmp_path / "f.txt"
    local.write_bytes(text.encode("utf-8"))
    remote = "ram://tfawd-data-test/open/f.txt"
    tf.io.gfile.makedirs(os.path.dirname(remote))
    tf.io.gfile.copy(str(local), remote, overwrite=True)
    with open(local, encoding="utf-8") as f:
        expected = list(f)
    for path in (str(local), remote):
        with open_data(path) as f:
            assert list(f) == expected  # universal newlines only, as a local open()
        with open_data(path, "rb") as f:
            assert f.read() == text.encode("utf-8")
    for missing in (str(tmp_path / "none.txt"), "ram://tfawd-data-test/open/none.txt"):
        with pytest.raises(FileNotFoundError):
            open_data(missing)
    with pytest.raises(ValueError, match="reads"):
        open_data(remote, "w")


def test_wikitext2_from_ram_equals_the_local_corpus(data_dir, wt2, tmp_path):
    remote = "ram://tfawd-data-test/lm"
    files.copytree(os.path.join(data_dir, "wikitext-2"), f"{remote}/wikitext-2")
    paths = corpus_files.corpus_files("wikitext2", remote)  # verified by sha256 there
    assert all(p.startswith(remote) for p in paths.values())
    corpus = load_corpus("wikitext2", remote, str(tmp_path / "tfds"))
    assert corpus.vocab.words == wt2.vocab.words
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(corpus.ids[split], wt2.ids[split])


def test_a_damaged_remote_token_file_is_refused_by_its_hash(data_dir):
    remote = "ram://tfawd-data-test/damaged"
    files.copytree(os.path.join(data_dir, "wikitext-2"), f"{remote}/wikitext-2")
    with tf.io.gfile.GFile(f"{remote}/wikitext-2/wiki.valid.tokens", "w") as f:
        f.write("not the corpus\n")
    with pytest.raises(DataError, match=r"wiki\.valid\.tokens is corrupted"):
        corpus_files.corpus_files("wikitext2", remote)


def test_an4_from_ram_equals_the_local_release(data_dir):
    _need(data_dir, "an4")
    remote = "ram://tfawd-data-test/speech"
    files.copytree(os.path.join(data_dir, "an4"), f"{remote}/an4")
    for split in an4.SPLITS:
        here, there = (an4.list_utterances(d, split) for d in (data_dir, remote))
        assert [(u.utterance, u.speaker, u.text) for u in here] == \
               [(u.utterance, u.speaker, u.text) for u in there]
        assert all(u.path.startswith(remote) for u in there)
    np.testing.assert_array_equal(an4.read_mfc(here[0].path), an4.read_mfc(there[0].path))
    tf.io.gfile.remove(there[1].path)
    with pytest.raises(DataError, match=f"{there[1].path} not found"):
        an4.list_utterances(remote, split)


def test_spoken_digits_and_a_manifest_from_ram(data_dir):
    _need(data_dir, "fsdd")
    remote = "ram://tfawd-data-test/digits"
    local_dir = os.path.join(data_dir, "fsdd", "recordings")
    files.makedirs(f"{remote}/fsdd/recordings")
    for name in os.listdir(local_dir):
        if "_jackson_" in name:  # one speaker: 500 recordings
            files.copy(os.path.join(local_dir, name), f"{remote}/fsdd/recordings/{name}")
    found = spoken_digits.list_recordings(remote)
    assert len(found) == 500 and {r[1] for r in found} == {"jackson"}
    local = {r[:3]: r[3] for r in spoken_digits.list_recordings(data_dir)}
    np.testing.assert_array_equal(spoken_digits.read_wav(found[0][3]),
                                  spoken_digits.read_wav(local[found[0][:3]]))
    manifest = f"{remote}/manifest.tsv"
    with tf.io.gfile.GFile(manifest, "w") as f:
        f.write(f"fsdd/recordings/{os.path.basename(found[0][3])}\tZero\n")
    assert speech_sources.read_manifest(manifest) == [(found[0][3], "zero")]
    example = next(iter(speech_sources.manifest_dataset(manifest)))
    assert int(example["sample_rate"]) == spoken_digits.SAMPLE_RATE
    with pytest.raises(DataError, match="fsdd/recordings"):
        spoken_digits.list_recordings("ram://tfawd-data-test/nothing-here")
