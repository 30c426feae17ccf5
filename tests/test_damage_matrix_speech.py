"""The damage matrix (issue 27) for the recogniser's run folder: each file damaged four ways,
then resume (train) and evaluate, and export on the files it reads: a documented fallback or
one line naming the file, never a traceback, and a refusal changes no other file. See
tests/test_damage_matrix.py."""
import dataclasses

import pytest

from tests.test_damage_matrix import DAMAGES, check_damage
from tests.test_speech_training import tiny_cfg
from tfawd.speech import evaluation, export
from tfawd.speech import training as speech_training

FILES = ("model.json", "results.json", "history.json", "segments.json", "ckpt/checkpoint",
         "ckpt/DATA", "best/DATA", "best/INDEX")


@pytest.fixture(scope="module")
def speech_runs(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("speech_damage")
    speech_training.train(_cfg(data_dir, root / "run", max_steps=3))
    speech_training.train(_cfg(data_dir, root / "other", max_steps=3, listener_units=24,
                               speller_units=32))
    return root, data_dir


def _cfg(data_dir, run, **kw):
    """The tiny recogniser, scored on 4 utterances with greedy decoding (the cells' cost is
    their evaluation)."""
    return tiny_cfg(data_dir, run, **{"eval_utterances": 4, "beam_size": 1, **kw})


def _call(mode, run, data_dir, tmp_path):
    cfg = _cfg(data_dir, run, max_steps=4)
    if mode == "train":
        return speech_training.train(cfg)
    if mode == "evaluate":
        return evaluation.evaluate(cfg)
    return export.export_run(dataclasses.replace(cfg, export_dir=str(tmp_path / "export")))


@pytest.mark.parametrize("mode", ("train", "evaluate"))
@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("name", FILES)
def test_a_damaged_speech_file_gives_one_line_naming_it_or_a_documented_fallback(
        speech_runs, tmp_path, name, damage, mode):
    root, data_dir = speech_runs
    check_damage(root, tmp_path, name, damage, mode,
                 lambda run: _call(mode, run, data_dir, tmp_path))


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("name", ("model.json", "results.json", "best/DATA", "best/INDEX"))
def test_export_of_a_damaged_speech_run_gives_one_line_or_a_documented_fallback(
        speech_runs, tmp_path, name, damage):
    test_a_damaged_speech_file_gives_one_line_naming_it_or_a_documented_fallback(
        speech_runs, tmp_path, name, damage, "export")
