"""Run folders on any TensorFlow filesystem (issue 28 item 4): a run whose --model_dir is
`ram://...` (TensorFlow's in-memory filesystem, standing for gs:// or hdfs://) trains, is
stopped and resumed, evaluates and exports exactly as one in a local folder, and every file
of the run is where a local run has it."""
import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

from tests.test_training import _weights, tiny_cfg
from tfawd.core import files
from tfawd.core.run_guard import ModelDirLock
from tfawd.lm.export import export_run
from tfawd.lm.modes import evaluate
from tfawd.lm.training import open_run


def _run_in(model_dir, tiny_corpus, steps, split_at):
    first = open_run(tiny_cfg(model_dir, max_steps=split_at), tiny_corpus)
    first.run()
    del first  # the process "ends"; the next resumes from the folder alone
    resumed = open_run(tiny_cfg(model_dir, max_steps=steps), tiny_corpus)
    assert int(resumed.state.step) == split_at
    resumed.run()
    return resumed


def _untimed(history):
    """history.json without the figures of the clock (tokens/s, seconds)."""
    return [{k: v for k, v in h.items() if "per_s" not in k and "seconds" not in k}
            for h in history]


def test_a_ram_run_equals_a_local_run_bit_for_bit_and_evaluates_and_exports(tiny_corpus,
                                                                              tmp_path):
    local = _run_in(str(tmp_path / "run"), tiny_corpus, steps=20, split_at=9)
    remote_dir = "ram://tfawd-test/run"
    remote = _run_in(remote_dir, tiny_corpus, steps=20, split_at=9)
    for a, b in zip(_weights(local), _weights(remote), strict=True):
        np.testing.assert_array_equal(a, b)

    local_files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert sorted(files.listdir(remote_dir)) == local_files  # the same files, in memory
    history = files.read_json(f"{remote_dir}/history.json")
    assert _untimed(history) == _untimed(
        json.loads((tmp_path / "run" / "history.json").read_text()))
    assert files.listdir(f"{remote_dir}/ckpt") and files.listdir(f"{remote_dir}/best")

    cfg = tiny_cfg(remote_dir)
    scores = evaluate(cfg, tiny_corpus)
    assert scores["test_ppl"] == pytest.approx(evaluate(tiny_cfg(str(tmp_path / "run")),
                                                        tiny_corpus)["test_ppl"], rel=1e-6)
    assert "plain" in files.read_json(f"{remote_dir}/eval_results.json")

    export_dir = "ram://tfawd-test/exports"
    path = export_run(dataclasses.replace(cfg, export_dir=export_dir, export_name="lm"))
    assert path == f"{export_dir}/lm/1"
    assert files.exists(f"{export_dir}/models.config")
    served = tf.saved_model.load(path).signatures["next_words"]
    out = served(text=tf.constant(["a b"]), k=tf.constant(3))
    assert out["words"].shape == (1, 3)


def test_a_remote_folder_is_not_locked_but_names_its_holder(capsys):
    """gs:// and friends have no flock: the second trainer is warned, naming the first."""
    folder = "ram://tfawd-test/locked"
    files.makedirs(folder)
    files.write_text(f"{folder}/history.json", "[]")  # a run's folder
    with ModelDirLock(folder):
        assert "process" in files.read_text(f"{folder}/.lock")
        with ModelDirLock(folder):  # refused on a local folder (tests/test_run_guard.py)
            pass
    err = capsys.readouterr().err
    assert "warning:" in err and "cannot be locked" in err and "process" in err
    assert files.read_text(f"{folder}/.lock") == ""  # released
    with ModelDirLock("ram://tfawd-test/new"):  # a run that never started leaves nothing
        pass
    assert not files.exists("ram://tfawd-test/new")
