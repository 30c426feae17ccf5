"""A damaged run folder (issue 27): training resumes from the newest checkpoint that reads
whole, bit-exactly, and says which one it skipped; with none left it stops with one line."""
import glob
import os

import numpy as np
import pytest

from tests.test_training import _weights, tiny_cfg
from tfawd.core.run_guard import RunError
from tfawd.lm.training import Trainer


def _data_files(run):
    return sorted(glob.glob(os.path.join(run, "ckpt", "ckpt-*.data-*")),
                  key=lambda p: int(p.split("ckpt-")[1].split(".")[0]))


@pytest.mark.parametrize("damage", ["truncate", "delete", "garbage"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before_bit_exactly(
        tiny_corpus, tmp_path, capsys, damage):
    straight = Trainer(tiny_cfg(tmp_path / "a", max_steps=30), tiny_corpus)
    straight.train()
    first = Trainer(tiny_cfg(tmp_path / "b", max_steps=16, checkpoint_every=7), tiny_corpus)
    first.train()  # checkpoints at 7, 14 and 16 (the stop)
    del first
    newest = _data_files(tmp_path / "b")[-1]
    assert "ckpt-16." in newest
    if damage == "truncate":
        with open(newest, "r+b") as f:
            f.truncate(os.path.getsize(newest) // 2)
    elif damage == "delete":
        os.remove(newest)
    else:
        with open(newest, "r+b") as f:
            f.seek(0)
            f.write(os.urandom(os.path.getsize(newest)))
    capsys.readouterr()
    resumed = Trainer(tiny_cfg(tmp_path / "b", max_steps=30, checkpoint_every=7), tiny_corpus)
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert int(resumed.state.step) == 14
    assert len(warnings) == 1 and "ckpt-16" in warnings[0]
    assert all(h["step"] <= 14 for h in resumed.history)
    resumed.train()
    for a, b in zip(_weights(straight), _weights(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_no_readable_checkpoint_stops_with_one_line_naming_the_folder(tiny_corpus, tmp_path):
    Trainer(tiny_cfg(tmp_path / "run", max_steps=10, checkpoint_every=4), tiny_corpus).train()
    for path in _data_files(tmp_path / "run"):
        with open(path, "r+b") as f:
            f.truncate(3)
    with pytest.raises(RunError) as err:
        Trainer(tiny_cfg(tmp_path / "run", max_steps=20), tiny_corpus)
    message = str(err.value)
    assert "\n" not in message and os.path.join(str(tmp_path / "run"), "ckpt") in message
