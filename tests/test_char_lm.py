"""The fused character LM (tfawd.speech.char_lm): one function whether scored whole or a
character at a time, it learns a pattern of its transcripts, it lives in the run folder, and
a run with --lm_weight scores the fused decoder beside the others (and without a joint search to
fuse into, says so)."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from pipelines.speech_features import CharVocab
from tests.test_speech_training import tiny_cfg
from tfawd.speech import char_lm
from tfawd.speech import evaluation as speech_evaluation
from tfawd.speech import training as speech_training

VOCAB = CharVocab()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def encode(text):
    return [VOCAB.tokens.index(c) for c in text] + [VOCAB.eos_id]


def test_stepping_a_character_at_a_time_gives_the_whole_sequence_scores():
    tf.keras.utils.set_random_seed(0)
    lm = char_lm.CharLM(len(VOCAB), units=12)
    seqs = [encode("one two"), encode("nine")]
    inputs, targets, mask = char_lm._batch(seqs, VOCAB.sos_id)
    whole = tf.nn.log_softmax(lm(inputs)).numpy()
    state = lm.initial_state(2)
    for t in range(inputs.shape[1]):
        logp, state = lm.step(tf.constant(inputs[:, t]), state)
        np.testing.assert_allclose(logp.numpy(), whole[:, t], atol=1e-5)
    # the mean NLL per character counts every character and <eos>, no padding
    picked = np.take_along_axis(whole, targets[..., None], -1)[..., 0]
    assert char_lm.nll_per_char(lm, seqs, VOCAB.sos_id) == pytest.approx(
        -(picked * mask).sum() / (len(seqs[0]) + len(seqs[1])), rel=1e-5)


def test_it_learns_the_spelling_of_its_transcripts_and_keeps_the_best_epoch():
    rng = np.random.default_rng(0)
    words = ["rubout", "enter", "erase", "yes", "no"]
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 4))) for _ in range(80)]
    seqs = [encode(t) for t in texts]
    lm, info = char_lm.train(seqs[:60], seqs[60:], len(VOCAB), VOCAB.sos_id, units=32,
                             epochs=15, batch_size=8, seed=1)
    assert info["valid_nll_per_char"] < 0.5 * info["uniform_nll_per_char"]
    assert info["valid_nll_per_char"] == pytest.approx(min(info["valid_curve"]), abs=1e-4)
    assert info["valid_curve"][info["best_epoch"] - 1] == min(info["valid_curve"])
    assert char_lm.nll_per_char(lm, seqs[60:], VOCAB.sos_id) == pytest.approx(
        info["valid_nll_per_char"], rel=1e-5)  # the kept weights are that epoch's
    # after "rubou" the model is sure of "t"
    state, logp = lm.initial_state(1), None
    for c in [VOCAB.sos_id] + encode("rubou")[:-1]:
        logp, state = lm.step(tf.constant([c]), state)
    assert int(np.argmax(logp[0])) == VOCAB.tokens.index("t")


def test_a_run_with_lm_weight_scores_the_fused_decoder_and_keeps_its_lm(data_dir, tmp_path,
                                                                        monkeypatch):
    cfg = tiny_cfg(data_dir, tmp_path / "run", max_steps=2, ctc_weight=0.3, lm_weight=0.3,
                   lm_length_bonus=0.5, char_lm_units=8)
    results = speech_training.train(cfg)
    assert {"valid_joint_lm", "test_joint_lm", "valid_joint"} <= set(results)
    assert 0 <= results["test_joint_lm"]["cer"]
    assert results["char_lm"]["units"] == 8 and results["char_lm"]["train_transcripts"] == 24
    for name in (char_lm.WEIGHTS, char_lm.INFO):
        assert os.path.exists(tmp_path / "run" / name)
    # evaluating the folder again reads the LM instead of training another
    monkeypatch.setattr(char_lm, "train", lambda *a, **k: pytest.fail("retrained"))
    again = speech_evaluation.evaluate(cfg)
    assert again["char_lm"] == results["char_lm"]
    assert again["valid_joint_lm"]["cer"] == results["valid_joint_lm"]["cer"]
    # the fusion grid of benchmarks/lm_fusion.py on the same folder: the no-fusion row is the
    # run's joint decoder, the chosen pair is the validation's best, test scored with it
    out = tmp_path / "fusion.json"
    subprocess.run([sys.executable, "benchmarks/lm_fusion.py", "--model=las",
                    "--dataset=spoken_digits", f"--data_dir={cfg.data_dir}",
                    f"--model_dir={cfg.model_dir}", "--train_utterances=24",
                    "--eval_utterances=12", "--max_digits=2", "--seed=5", "--beam_size=2",
                    "--max_decode_len=20", "--batch_size=8", "--char_lm_units=8",
                    "--weights=0.3", "--bonuses=0,0.5", f"--out={out}"],
                   cwd=REPO, check=True, capture_output=True)
    grid = json.loads(out.read_text())
    assert [(r["lm_weight"], r["length_bonus"]) for r in grid["valid"]] == [
        (0.0, 0.0), (0.3, 0.0), (0.3, 0.5)]
    assert grid["valid"][0]["cer"] == pytest.approx(results["valid_joint"]["cer"])
    assert grid["test"]["no_fusion"]["cer"] == pytest.approx(results["test_joint"]["cer"])
    best = min(grid["valid"], key=lambda r: (r["cer"], r["wer"], r["lm_weight"]))
    assert grid["chosen"] == {"lm_weight": best["lm_weight"], "length_bonus": best["length_bonus"]}
    assert grid["char_lm"] == results["char_lm"]
    # without the joint search there is nothing to fuse into: said before decoding
    with pytest.raises(ValueError, match="--beam_size > 1"):
        speech_evaluation.evaluate(dataclasses.replace(cfg, beam_size=1))

