"""AN4 (CMU Census) as Sphinx cepstra: the release's counts, speaker-disjoint splits, damaged
.mfc files and missing entries as one-line errors, the legacy DCT and its inverse, training
statistics, and the dataset's elements. Real-data tests skip when an4/ is absent."""
import os
import pathlib
import shutil

import numpy as np
import pytest

from pipelines import an4
from pipelines.corpus_files import DataError
from pipelines.speech_features import CHARACTERS

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir():
    path = os.environ.get("TFAWD_DATA_DIR") or str(REPO.parent / "shared" / "data")
    if not os.path.isdir(os.path.join(path, "an4", "etc")):
        pytest.skip(f"no AN4 under {path} (an4/etc missing); set TFAWD_DATA_DIR")
    return path


@pytest.fixture(scope="module")
def splits(data_dir):
    return {s: an4.list_utterances(data_dir, s) for s in an4.SPLITS}


def one_line_naming(excinfo, path):
    message = str(excinfo.value)
    assert "\n" not in message and str(path) in message, message
    return message


# --- the release ---------------------------------------------------------------------------

def test_counts_match_the_release(splits):
    train_part = splits["train"] + splits["valid"]
    assert an4.text_counts(train_part) == {"utterances": 948, "speakers": 74,
                                           "words": 5442, "characters": 17854}
    # the figures for the 130 test utterances: 773 words, 2,565 characters with one
    # space between words
    assert an4.text_counts(splits["test"]) == {"utterances": 130, "speakers": 10,
                                               "words": 773, "characters": 2565}


def test_transcripts_are_in_the_vocabulary_and_match_their_files(splits):
    rows = [r for s in an4.SPLITS for r in splits[s]]
    assert all(set(r.text) <= set(CHARACTERS) for r in rows)
    assert all(r.text == " ".join(r.text.split()) for r in rows)
    assert all(os.path.basename(r.path) == r.utterance + ".mfc" for r in rows)
    assert all(f"/{r.speaker}/" in r.path and f"-{r.speaker}-" in r.utterance for r in rows)
    first = next(r for r in splits["test"] if r.utterance == "an406-fcaw-b")
    assert first.text == "rubout g m e f three nine"


def test_splits_are_speaker_disjoint_and_deterministic(data_dir, splits):
    speakers = {s: {r.speaker for r in splits[s]} for s in an4.SPLITS}
    assert not speakers["train"] & speakers["valid"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["valid"] & speakers["test"]
    assert (len(speakers["train"]), len(speakers["valid"]), len(speakers["test"])) == (66, 8, 10)
    assert (len(splits["train"]), len(splits["valid"])) == (846, 102)
    # female and male speakers in proportion (21 of 74 are female: 2 of 8)
    assert sum(s.startswith("f") for s in speakers["valid"]) == 2
    assert sorted(speakers["valid"]) == ["flmm2", "ftal", "mcfl", "mcsc", "meht", "mewl",
                                         "mmdg", "mnjl"]
    assert an4.list_utterances(data_dir, "valid") == splits["valid"]
    other = {r.speaker for r in an4.list_utterances(data_dir, "valid", seed=1)}
    assert len(other) == 8 and other != speakers["valid"]
    assert an4.list_utterances(data_dir, "valid", valid_speakers=0) == []
    with pytest.raises(ValueError, match="valid_speakers"):
        an4.list_utterances(data_dir, "valid", valid_speakers=74)


# --- damaged files and missing entries -----------------------------------------------------

def write_mfc(path, frames, count=None, order=">"):
    frames = np.asarray(frames, np.float32).ravel()
    count = len(frames) if count is None else count
    path.write_bytes(np.array([count], f"{order}i4").tobytes() + frames.astype(
        f"{order}f4").tobytes())
    return path


def test_read_mfc_of_a_good_file(tmp_path, splits):
    frames = np.arange(26, dtype=np.float32).reshape(2, 13)
    got = an4.read_mfc(str(write_mfc(tmp_path / "ok.mfc", frames)))
    assert got.dtype == np.float32 and np.array_equal(got, frames)
    real = splits["test"][0].path
    cepstra = an4.read_mfc(real)
    assert cepstra.shape == ((os.path.getsize(real) - 4) // 52, 13)
    assert cepstra.dtype == np.float32 and np.isfinite(cepstra).all()


DAMAGES = {
    "truncated": (lambda p, raw: p.write_bytes(raw[:-3]), "truncated or damaged"),
    "missing frames": (lambda p, raw: p.write_bytes(raw[:-52]), "truncated or damaged"),
    "trailing bytes": (lambda p, raw: p.write_bytes(raw + b"\0" * 8), "truncated or damaged"),
    "empty": (lambda p, raw: p.write_bytes(b""), "0 bytes"),
    "header cut": (lambda p, raw: p.write_bytes(raw[:3]), "3 bytes"),
    "header only": (lambda p, raw: write_mfc(p, []), "no frames"),
    "not whole frames": (lambda p, raw: write_mfc(p, np.ones(14)), "whole number"),
    "little-endian": (lambda p, raw: write_mfc(p, np.ones(26), order="<"), "little-endian"),
    "nan": (lambda p, raw: write_mfc(p, np.r_[np.ones(13), np.nan, np.ones(12)]), "frame 1"),
    "unreadable": (lambda p, raw: p.mkdir(), "cannot read"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_mfc_is_a_one_line_error_naming_the_file(tmp_path, damage):
    raw = np.array([26], ">i4").tobytes() + np.ones(26, ">f4").tobytes()
    path = tmp_path / "an406-fcaw-b.mfc"
    apply, expected = DAMAGES[damage]
    apply(path, raw)
    with pytest.raises(DataError) as excinfo:
        an4.read_mfc(str(path))
    assert expected in one_line_naming(excinfo, path)


def test_transcription_lines(tmp_path):
    path = tmp_path / "t.transcription"
    path.write_text("<s> YES </s> (an1-fx-b)\n\nRUBOUT  G  M   (an2-fx-b)\n")
    assert an4.read_transcripts(str(path)) == {"an1-fx-b": "yes", "an2-fx-b": "rubout g m"}
    for body, expected in [("YES\n", "expected"), ("YES (a)\nNO (a)\n", "twice"),
                           ("YES (a)\nTWO 2 (b)\n", "'2'"), ("<s> </s> (a)\n", "empty")]:
        path.write_text(body)
        with pytest.raises(DataError, match=expected) as excinfo:
            an4.read_transcripts(str(path))
        line = body.count("\n")
        one_line_naming(excinfo, f"{path}:{line}")


def copy_an4(data_dir, tmp_path):
    """A writable AN4: etc/ copied, each speaker folder a folder of links to the real files."""
    src, dst = pathlib.Path(data_dir) / "an4", tmp_path / "an4"
    shutil.copytree(src / "etc", dst / "etc")
    for speaker_dir in (src / "feat").glob("*/*"):
        target = dst / "feat" / speaker_dir.parent.name / speaker_dir.name
        target.mkdir(parents=True)
        for f in speaker_dir.iterdir():
            (target / f.name).symlink_to(f)
    return dst


def test_a_missing_transcript_or_file_is_an_error(data_dir, tmp_path):
    root = copy_an4(data_dir, tmp_path)
    an4.list_utterances(str(tmp_path), "train")  # the intact copy reads
    mfc = root / "feat" / "an4test_clstk" / "fcaw" / "an407-fcaw-b.mfc"
    mfc.unlink()
    with pytest.raises(DataError, match="not found") as excinfo:
        an4.list_utterances(str(tmp_path), "test")
    one_line_naming(excinfo, mfc)

    trans = root / "etc" / "an4_train.transcription"
    lines = trans.read_text().splitlines(keepends=True)
    trans.write_text("".join(line for line in lines if "(an253-fash-b)" not in line))
    with pytest.raises(DataError, match="no transcript for 'an253-fash-b'") as excinfo:
        an4.list_utterances(str(tmp_path), "valid")
    one_line_naming(excinfo, root / "etc" / "an4_train.fileids")

    # a whole utterance gone from both lists is still caught, by the release's counts
    fileids = root / "etc" / "an4_train.fileids"
    fileids.write_text("".join(line for line in fileids.read_text().splitlines(True)
                               if "an253-fash-b" not in line))
    with pytest.raises(DataError, match="947 utterances of 74 speakers") as excinfo:
        an4.list_utterances(str(tmp_path), "train")
    one_line_naming(excinfo, fileids)


def test_no_an4_folder_names_the_flag_and_variable(tmp_path):
    with pytest.raises(DataError) as excinfo:
        an4.dataset(str(tmp_path), "train")
    message = one_line_naming(excinfo, tmp_path / "an4")
    assert "--data_dir" in message and "TFAWD_DATA_DIR" in message


# --- the DCT -------------------------------------------------------------------------------

def sphinx_legacy_dct(logmel):
    """sphinxbase fe_sigproc.c, fe_spec2cep, written out loop by loop."""
    n = len(logmel)
    out = np.zeros(13)
    out[0] = (logmel[0] / 2 + logmel[1:].sum()) / n
    for i in range(1, 13):
        for j in range(n):
            out[i] += logmel[j] * np.cos(np.pi / n * i * (j + 0.5)) * (1 if j == 0 else 2)
        out[i] /= n * 2
    return out


def test_dct_is_sphinx_legacy_and_its_inverse_round_trips():
    rng = np.random.default_rng(0)
    spectrum = rng.normal(10, 3, size=40)
    np.testing.assert_allclose(an4.to_cepstra(spectrum[None])[0], sphinx_legacy_dct(spectrum),
                               rtol=1e-5, atol=1e-5)
    assert an4.CEPSTRA_TO_LOGMEL.shape == (13, 40)
    # a smooth spectrum: a sum of the first 13 cosines over the 40 filters
    j = np.arange(40)
    smooth = np.stack([sum(a * np.cos(np.pi * i * (j + 0.5) / 40)
                           for i, a in enumerate(rng.normal(0, 2, size=13))) + 9
                       for _ in range(5)])
    np.testing.assert_allclose(an4.to_logmel(an4.to_cepstra(smooth)), smooth, atol=1e-4)


def test_logmel_of_a_real_file_is_smooth_and_finite(splits):
    cepstra = an4.read_mfc(splits["test"][0].path)
    logmel = an4.to_logmel(cepstra)
    assert logmel.shape == (len(cepstra), 40) and np.isfinite(logmel).all()
    assert -10 < logmel.min() and logmel.max() < 30  # natural-log mel energies
    np.testing.assert_allclose(an4.to_cepstra(logmel), cepstra, atol=1e-4)
    # smooth: nothing above the 13th coefficient of an orthonormal DCT-II over the bands
    j, k = np.arange(40), np.arange(40)[:, None]
    dct = np.cos(np.pi * k * (j + 0.5) / 40) * np.where(k == 0, np.sqrt(1 / 40), np.sqrt(2 / 40))
    coefficients = logmel @ dct.T
    assert np.abs(coefficients[:, 13:]).max() < 1e-3 * np.abs(coefficients).max()


# --- statistics and the dataset ------------------------------------------------------------

def test_feature_stats_normalise_train_to_zero_mean_unit_std(splits):
    train = an4.load_features(splits["train"], "logmel")
    mean, std = an4.feature_stats(train)
    assert mean.shape == std.shape == (40,) and mean.dtype == np.float32
    frames = np.concatenate([an4.apply_stats(f, (mean, std)) for f in train])
    np.testing.assert_allclose(frames.mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(frames.std(0), 1, atol=1e-3)
    # the same statistics hold up, roughly, on speakers they were not computed on
    held = np.concatenate([an4.apply_stats(f, (mean, std))
                           for f in an4.load_features(splits["valid"], "logmel")])
    assert np.abs(held.mean(0)).max() < 0.3 and np.abs(held.std(0) - 1).max() < 0.2
    with pytest.raises(ValueError):
        an4.feature_stats([])


@pytest.mark.parametrize("features,width", [("cepstra", 13), ("logmel", 40)])
def test_dataset_elements(data_dir, splits, features, width):
    import tensorflow as tf
    ds = an4.dataset(data_dir, "valid", features=features)
    spec = ds.element_spec
    assert spec["features"].shape.as_list() == [None, width]
    assert spec["features"].dtype == tf.float32
    assert all(spec[k].dtype == tf.string for k in ("transcript", "speaker", "utterance"))
    elements = list(ds.as_numpy_iterator())
    assert [e["utterance"].decode() for e in elements] == [r.utterance for r in splits["valid"]]
    assert [e["transcript"].decode() for e in elements] == [r.text for r in splits["valid"]]
    assert all(e["features"].shape[1] == width and len(e["features"]) > 0 for e in elements)
    stats = an4.feature_stats(ds)
    normalised = next(iter(an4.dataset(data_dir, "valid", features, stats=stats)))
    expected = (elements[0]["features"] - stats[0]) / stats[1]
    np.testing.assert_allclose(normalised["features"].numpy(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="features"):
        an4.dataset(data_dir, "valid", features="mfcc")
