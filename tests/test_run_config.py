"""A run folder describes its model: evaluation, prediction and export need no architecture
flags, and conflicting ones are refused naming both values."""
import json

import pytest

from tests.test_awd_training import awd_cfg
from tfawd.core.run_dir import RunDir
from tfawd.lm import inference
from tfawd.lm.config import LMConfig
from tfawd.lm.modes import evaluate
from tfawd.lm.training import RunError, train


@pytest.fixture
def trained(tiny_corpus, tmp_path):
    cfg = awd_cfg(tmp_path / "run", max_epochs=1)
    return cfg, train(cfg, tiny_corpus)


def test_the_model_config_is_saved_with_the_weights(trained):
    cfg, _ = trained
    saved = json.load(open(RunDir(cfg.model_dir).model))
    assert saved["class"] == "AwdLstmModel"
    assert (saved["config"]["emsize"], saved["config"]["nhid"]) == (cfg.emsize, cfg.nhid)


def test_evaluate_needs_no_architecture_flags(trained, tiny_corpus):
    cfg, metrics = trained
    bare = LMConfig(model_dir=cfg.model_dir, eval_batch_size=cfg.eval_batch_size,  # as if
                    test_batch_size=cfg.test_batch_size, bptt=cfg.bptt,  # main.py had these only
                    precision="float32", explicit=("model_dir", "eval_batch_size",
                                                   "test_batch_size", "bptt", "precision"))
    assert (bare.model, bare.emsize, bare.nhid) != (cfg.model, cfg.emsize, cfg.nhid)  # defaults
    again = evaluate(bare, tiny_corpus)
    assert again["val_ppl"] == pytest.approx(metrics["val_ppl"], rel=1e-6)
    assert again["test_ppl"] == pytest.approx(metrics["test_ppl"], rel=1e-6)


def test_a_conflicting_architecture_flag_is_refused_naming_both_values(trained):
    cfg, _ = trained
    given = LMConfig(model_dir=cfg.model_dir, nhid=99, explicit=("nhid",))
    with pytest.raises(RunError, match=r"--nhid=12 \(now 99\)"):
        inference.load_trained(cfg.model_dir, given)
    same = LMConfig(model_dir=cfg.model_dir, model="awd_lstm", nhid=12, precision="float32",
                    explicit=("model", "nhid"))
    model, _ = inference.load_trained(cfg.model_dir, same)  # agreeing flags are fine
    assert model.nhid == 12
