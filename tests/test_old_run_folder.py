"""A run folder written by older code still resumes, evaluates and exports (issue 24: the long
run resumes under new code; issue 26: behaviour unchanged by the redesign).

`tests/fixtures/lm_run_e616929` is a tiny AWD-LSTM run (the tiny corpus, 50 steps, checkpoints
at 20, 40, 50) written by commit e616929, whose checkpoint layout is the one the long run
(configs/awd_lstm_wt2_long.cfg) started with. A change that breaks it breaks that run.
"""
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from tests.test_awd_training import awd_cfg
from tfawd.lm import export, modes
from tfawd.lm.training import open_run

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "lm_run_e616929")


def _cfg(run, **kw):
    return awd_cfg(run, **{"max_steps": 50, "checkpoint_every": 20, **kw})


@pytest.fixture
def old_run(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    return run


def test_the_old_run_resumes_where_it_stopped_and_trains_on(old_run, tiny_corpus):
    t = open_run(_cfg(old_run, max_steps=60), tiny_corpus)
    assert (int(t.state.step), int(t.state.epoch), int(t.state.batch)) == (50, 0, 50)
    with open(old_run / "history.json") as f:
        assert len(t.history) == len(json.load(f))
    before = [v.numpy().copy() for v in t.model.trainable_variables]
    assert t.run() == "max_steps" and int(t.state.step) == 60
    assert any(not np.array_equal(a, v.numpy())
               for a, v in zip(before, t.model.trainable_variables, strict=True))
    with open(old_run / "segments.json") as f:
        segments = json.load(f)
    assert [(s["first_step"], s["last_step"]) for s in segments][-1] == (50, 60)


def test_the_old_run_evaluates_to_its_recorded_perplexity(old_run, tiny_corpus):
    with open(old_run / "results.json") as f:
        recorded = json.load(f)
    got = modes.evaluate(_cfg(old_run), tiny_corpus)
    assert got["val_ppl"] == pytest.approx(recorded["val_ppl"], rel=1e-5)
    assert got["test_ppl"] == pytest.approx(recorded["test_ppl"], rel=1e-5)


def test_the_old_run_exports(old_run, tmp_path):
    cfg = dataclasses.replace(_cfg(old_run), export_dir=str(tmp_path / "export"))
    path = export.export_run(cfg)
    assert os.path.exists(os.path.join(path, "saved_model.pb"))
