"""Prediction and generation: loading a trained run, next-word scores, greedy / sampled /
beam-searched continuations checked against the model run directly on whole sequences."""
import json
import logging
import os
import shutil
import types

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import make_tiny_corpus
from tests.test_training import tiny_cfg
from tfawd.lm import inference
from tfawd.lm.models import build_model
from tfawd.lm.training import RunError, train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny LSTM trained for a few epochs on the synthetic corpus, loaded back."""
    corpus = make_tiny_corpus()
    cfg = tiny_cfg(tmp_path_factory.mktemp("inference") / "run", max_epochs=6, lr=5.0)
    metrics = train(cfg, corpus)
    model, vocab = inference.load_trained(cfg.model_dir, cfg)
    return types.SimpleNamespace(cfg=cfg, corpus=corpus, metrics=metrics, model=model,
                                 vocab=vocab)


def prompts(run, lengths=(5, 3, 8)):
    """Prompts of the given lengths cut from the validation split."""
    ids, starts = run.corpus.ids["valid"], (0, 40, 100, 160)
    return [ids[s:s + n] for s, n in zip(starts, lengths)]


def full_logits(model, seq):
    """The model's float32 logits [T, V] over a whole sequence read at once from zero."""
    logits, _ = model(tf.constant([seq], tf.int32), model.initial_state(1))
    return tf.cast(logits[0], tf.float32).numpy()


def argmax_decode(model, prompt, num_tokens, banned=()):
    """Greedy decoding the slow way: re-run the model on the growing sequence each step."""
    seq = list(prompt)
    for _ in range(num_tokens):
        last = full_logits(model, seq)[-1]
        last[list(banned)] = -np.inf
        seq.append(int(np.argmax(last)))
    return np.array(seq[len(prompt):])


def log_softmax(x):
    return x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(
        -1, keepdims=True))


def sequence_logprobs(model, prompt, continuation):
    """Log-probabilities of `continuation`'s tokens after `prompt`, from one full-sequence run."""
    seq = np.concatenate([prompt, continuation])
    logp = log_softmax(full_logits(model, seq))[len(prompt) - 1:-1]
    return logp[np.arange(len(continuation)), continuation]


# -- loading --------------------------------------------------------------------------------
def test_load_trained_restores_the_best_weights_with_their_validation_score(run):
    from tfawd.lm.evaluation import Evaluator
    assert run.vocab.words == run.corpus.vocab.words
    nll = Evaluator(run.model).evaluate(run.corpus.ids["valid"], run.cfg.eval_batch_size,
                                        run.cfg.bptt)["nll"]
    assert nll == pytest.approx(run.metrics["val_nll"], rel=1e-6)


def test_load_trained_falls_back_to_the_latest_training_checkpoint(run, tmp_path):
    model_dir = tmp_path / "copy"
    shutil.copytree(run.cfg.model_dir, model_dir)
    shutil.rmtree(model_dir / "best")
    model, _ = inference.load_trained(str(model_dir), run.cfg)
    reader = tf.train.load_checkpoint(str(model_dir / "ckpt"))
    for i, v in enumerate(model.variables):
        saved = reader.get_tensor(f"model/variables/{i}/.ATTRIBUTES/VARIABLE_VALUE")
        np.testing.assert_array_equal(v.numpy(), saved)


def test_load_trained_without_a_run_says_so_naming_model_dir(run, tmp_path):
    with pytest.raises(RunError, match="no trained model in --model_dir"):
        inference.load_trained(str(tmp_path), run.cfg)


def test_load_trained_with_other_architecture_flags_names_them(run):
    cfg = tiny_cfg(run.cfg.model_dir, nhid=32)
    with pytest.raises(RunError, match=r"--nhid=16 \(now 32\)"):
        inference.load_trained(run.cfg.model_dir, cfg)


# -- prediction -----------------------------------------------------------------------------
def test_next_word_scores_are_the_models_logits_at_each_contexts_last_position(run):
    contexts = prompts(run, (5, 1, 9))  # different lengths in one call
    scores = inference.next_word_scores(run.model, contexts, batch_size=2)
    assert scores.shape == (3, len(run.vocab)) and scores.dtype == np.float32
    for row, context in zip(scores, contexts):
        np.testing.assert_allclose(row, full_logits(run.model, context)[-1], atol=1e-5)


def test_prediction_nll_is_the_mean_cross_entropy_of_the_targets(run):
    scores = inference.next_word_scores(run.model, prompts(run))
    targets = np.array([3, 7, 1])
    expected = -np.mean(log_softmax(scores.astype(np.float64))[np.arange(3), targets])
    assert inference.prediction_nll(scores, targets) == pytest.approx(expected, rel=1e-9)
    # the tiny corpus's next word is mostly the successor: far better than uniform
    ids = run.corpus.ids["valid"]
    contexts, targets = [ids[i:i + 6] for i in range(0, 300, 7)], ids[6:306:7]
    nll = inference.prediction_nll(inference.next_word_scores(run.model, contexts), targets)
    assert nll < np.log(len(run.vocab)) - 1  # uniform scores log(32) = 3.47


def test_contexts_are_read_from_npy_rows_and_from_text_lines_without_eos(run, tmp_path, caplog):
    ids = np.array([[1, 2, 3], [4, 5, 6]])
    np.save(tmp_path / "c.npy", ids)
    rows = inference.read_contexts(str(tmp_path / "c.npy"), run.vocab)
    np.testing.assert_array_equal(np.stack(rows), ids)
    (tmp_path / "c.txt").write_text("w1 w2 w3\n\nw4 zebra\n")
    with caplog.at_level(logging.WARNING):
        rows = inference.read_contexts(str(tmp_path / "c.txt"), run.vocab)
    assert [list(r) for r in rows] == [list(run.vocab.encode(["w1", "w2", "w3"])),
                                       [run.vocab.index["w4"], run.vocab.unk_id]]
    assert "zebra" in caplog.text and "<unk>" in caplog.text
    with pytest.raises(ValueError, match="zebra.*strict=False"):
        inference.read_contexts(str(tmp_path / "c.txt"), run.vocab, strict=True)


# -- generation -----------------------------------------------------------------------------
def test_greedy_generation_equals_step_by_step_argmax_decoding(run):
    ps = prompts(run)  # of different lengths: each row's state stops at its own last token
    ids, logprobs = inference.generate(run.model, ps, 12)
    assert ids.shape == logprobs.shape == (3, 12)
    for row, prompt in zip(ids, ps):
        np.testing.assert_array_equal(row, argmax_decode(run.model, prompt, 12))


def test_generated_logprobs_are_the_models_log_softmax_at_those_positions(run):
    ps = prompts(run, (4, 4, 4))
    ids, logprobs = inference.generate(run.model, np.stack(ps), 15, "sample", temperature=2.0,
                                       top_k=5, top_p=0.9, seed=7)
    for prompt, row, lp in zip(ps, ids, logprobs):
        np.testing.assert_allclose(lp, sequence_logprobs(run.model, prompt, row), atol=1e-4)
        # and every sampled token was among the 5 most likely there
        logits = full_logits(run.model, np.concatenate([prompt, row]))[len(prompt) - 1:-1]
        rank = (logits > logits[np.arange(len(row)), row][:, None]).sum(-1)
        assert rank.max() < 5


def test_beam_size_1_equals_greedy_in_ids_and_log_probability(run):
    ps = prompts(run)
    greedy, logprobs = inference.generate(run.model, ps, 10)
    beam, total = inference.beam_search(run.model, ps, 10, beam_size=1)
    np.testing.assert_array_equal(beam, greedy)
    np.testing.assert_allclose(total, logprobs.sum(axis=1), rtol=1e-6)


def test_beam_search_returns_its_sequences_log_probability_at_least_greedys(run):
    ps = prompts(run)
    best, total = inference.beam_search(run.model, ps, 10, beam_size=3)
    _, greedy = inference.generate(run.model, ps, 10)
    assert np.all(total >= greedy.sum(axis=1) - 1e-5)
    for prompt, row, score in zip(ps, best, total):
        assert score == pytest.approx(sequence_logprobs(run.model, prompt, row).sum(), abs=1e-4)


def test_same_seed_gives_the_same_sample_and_other_seeds_other_samples(run):
    ps = prompts(run, (4, 4, 4))
    samples = [inference.generate(run.model, ps, 20, "sample", temperature=2.0, seed=s)[0]
               for s in (5, 5, 6, 7, 8)]
    np.testing.assert_array_equal(samples[0], samples[1])
    assert len({s.tobytes() for s in samples}) == 4


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (4, 1.0), (0, 0.7), (6, 0.8)])
def test_samples_follow_the_tempered_softmax_cut_to_top_k_then_the_nucleus(run, top_k, top_p):
    prompt, n = prompts(run, (3,))[0], 4000
    ids, _ = inference.generate(run.model, [prompt] * n, 1, "sample", temperature=2.0,
                                top_k=top_k, top_p=top_p, seed=11)
    probs = np.exp(log_softmax(full_logits(run.model, prompt)[-1].astype(np.float64) / 2.0))
    order = np.argsort(-probs)
    keep = order[:top_k or len(probs)]
    kept = probs[keep] / probs[keep].sum()
    keep = keep[np.cumsum(kept) - kept < top_p]  # smallest set reaching top_p
    expected = np.zeros_like(probs)
    expected[keep] = probs[keep] / probs[keep].sum()
    observed = np.bincount(ids[:, 0], minlength=len(probs)) / n
    assert np.all(observed[expected == 0] == 0)
    assert 0.5 * np.abs(observed - expected).sum() < 0.04  # total variation


def test_top_k_1_and_a_tiny_top_p_sample_the_greedy_continuation(run):
    ps = prompts(run)
    greedy, _ = inference.generate(run.model, ps, 10)
    for kw in (dict(top_k=1), dict(top_p=1e-6)):
        sampled, _ = inference.generate(run.model, ps, 10, "sample", temperature=3.0, seed=2, **kw)
        np.testing.assert_array_equal(sampled, greedy)


def test_banned_ids_are_never_generated(run):
    ps = prompts(run)
    eos, unk = run.vocab.index["<eos>"], run.vocab.unk_id
    usual, _ = inference.generate(run.model, ps, 24)
    banned = (eos, unk, int(usual[0, 0]))  # the first word greedy would have chosen
    greedy, _ = inference.generate(run.model, ps, 24, banned_ids=banned)
    np.testing.assert_array_equal(greedy[0], argmax_decode(run.model, ps[0], 24, banned))
    sampled, _ = inference.generate(run.model, ps, 40, "sample", temperature=5.0,
                                    banned_ids=banned)
    beam, _ = inference.beam_search(run.model, ps, 12, 3, banned_ids=banned)
    for out in (greedy, sampled, beam):
        assert not np.isin(out, banned).any()


def test_generate_text_continues_prompts_rendering_eos_as_a_line_break(run):
    results = inference.generate_text(run.model, run.vocab, ["w3 w4 w5", "w10"], 14)
    first = results[0]
    assert first["prompt"] == "w3 w4 w5" and first["tokens"][:3] == ["w6", "w7", "w8"]
    assert first["continuation"] == inference.render(first["tokens"])
    assert inference.render(["a", "<eos>", "b", "c"]) == "a\nb c"
    assert inference.render(["a", "<eos>", "b"], eos=" <eos> ") == "a <eos> b"
    _, logprobs = inference.generate(run.model, [run.vocab.encode(["w10"])], 14)
    assert results[1]["mean_nll"] == pytest.approx(-logprobs.mean(), rel=1e-6)
    beams = inference.generate_text(run.model, run.vocab, ["w3 w4 w5"], 14, "beam", beam_size=2)
    assert beams[0]["mean_nll"] <= first["mean_nll"] + 1e-6


def test_generation_is_traced_once_whatever_the_prompts_and_settings(run):
    for ps, n in ((prompts(run), 3), (prompts(run, (2, 2)), 7), (prompts(run, (9,)), 5)):
        inference.generate(run.model, ps, n, "sample", top_k=n, top_p=0.5, seed=n)
        inference.beam_search(run.model, ps, n, beam_size=n % 3 + 1)
    assert inference._compiled(run.model, "sample").experimental_get_tracing_count() == 1
    assert inference._compiled(run.model, "beam").experimental_get_tracing_count() == 1


def test_awd_lstm_generation_equals_step_by_step_decoding(tmp_path):
    from tests.test_awd_training import awd_cfg
    model = build_model(awd_cfg(tmp_path, emsize=8, nhid=12), 30)
    ps = [np.array([1, 2, 3, 4]), np.array([5, 6])]
    ids, logprobs = inference.generate(model, ps, 6)
    for prompt, row, lp in zip(ps, ids, logprobs):
        np.testing.assert_array_equal(row, argmax_decode(model, prompt, 6))
        np.testing.assert_allclose(lp, sequence_logprobs(model, prompt, row), atol=1e-5)
    beam, _ = inference.beam_search(model, ps, 6, beam_size=1)
    np.testing.assert_array_equal(beam, ids)


# -- validation -----------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, name", [
    (dict(prompt_ids=[]), "prompt_ids"),
    (dict(prompt_ids=[[]]), "prompt_ids"),
    (dict(prompt_ids=[1, 2]), "prompt_ids"),
    (dict(prompt_ids=[[1, 99]]), "prompt_ids"),
    (dict(num_tokens=0), "num_tokens"),
    (dict(method="nucleus"), "method"),
    (dict(temperature=0.0), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=10_000), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(banned_ids=[-1]), "banned_ids"),
    (dict(banned_ids=range(32)), "banned_ids"),
])
def test_bad_generation_arguments_raise_value_errors_naming_the_parameter(run, kwargs, name):
    args = {**dict(prompt_ids=[[1, 2]], num_tokens=3, method="sample"), **kwargs}
    with pytest.raises(ValueError, match=name):
        inference.generate(run.model, **args)


@pytest.mark.parametrize("kwargs, name", [
    (dict(beam_size=0), "beam_size"), (dict(beam_size=len(make_tiny_corpus().vocab) + 1),
                                       "beam_size"),
    (dict(num_tokens=-2), "num_tokens"), (dict(prompt_ids=[[]]), "prompt_ids"),
])
def test_bad_beam_search_arguments_raise_value_errors_naming_the_parameter(run, kwargs, name):
    args = {**dict(prompt_ids=[[1, 2]], num_tokens=3, beam_size=2), **kwargs}
    with pytest.raises(ValueError, match=name):
        inference.beam_search(run.model, **args)


def test_bad_text_prompts_raise_value_errors(run):
    with pytest.raises(ValueError, match="prompts"):
        inference.generate_text(run.model, run.vocab, ["w1", "  "], 3)
    with pytest.raises(ValueError, match="strict=False"):
        inference.generate_text(run.model, run.vocab, ["w1 zebra"], 3, strict=True)
    with pytest.raises(ValueError, match="targets"):
        inference.prediction_nll(np.zeros([2, 5]), [1])


def test_predict_and_generate_modes_write_their_files_and_record_the_nll(run, tmp_path):
    from tfawd.lm.config import InferenceConfig
    from tfawd.lm.modes import generate as generate_mode
    from tfawd.lm.modes import predict as predict_mode
    valid = run.corpus.ids["valid"]
    np.save(tmp_path / "ctx.npy", np.stack([valid[i:i + 6] for i in (0, 10, 20)]))
    np.save(tmp_path / "tgt.npy", np.array([valid[i + 6] for i in (0, 10, 20)]))
    out = predict_mode(run.cfg, InferenceConfig(contexts=str(tmp_path / "ctx.npy"),
                                                targets=str(tmp_path / "tgt.npy"),
                                                output=str(tmp_path / "scores.npy")))
    scores = np.load(tmp_path / "scores.npy")
    assert scores.shape == (3, len(run.vocab)) and out["mean_nll"] == pytest.approx(
        inference.prediction_nll(scores, np.load(tmp_path / "tgt.npy")))
    words = run.vocab.decode(valid[:4])
    (tmp_path / "prompts.txt").write_text(" ".join(words[:2]) + "\n" + " ".join(words) + "\n")
    results = generate_mode(run.cfg, InferenceConfig(
        prompts_file=str(tmp_path / "prompts.txt"), output=str(tmp_path / "gen.txt"),
        num_tokens=7, method="sample", sample_seed=3, allow_eos=False))
    lines = (tmp_path / "gen.txt").read_text().splitlines()
    assert len(lines) == 2 and all(len(line.split()) == 7 for line in lines)
    assert all("<eos>" not in line and "<unk>" not in line for line in lines)
    recorded = json.load(open(os.path.join(run.cfg.model_dir, "eval_results.json")))
    assert recorded["generate"]["mean_nll"] == pytest.approx(
        np.mean([r["mean_nll"] for r in results]))
    with pytest.raises(RunError, match="exactly one of --prompt and --prompts_file"):
        generate_mode(run.cfg, InferenceConfig())


def test_load_gives_python_callers_the_trained_model(run):
    from tfawd import lm
    api = lm.load(run.cfg.model_dir)  # no flags: the architecture comes from model.json
    assert len(api.model.weights) == len(run.model.weights) > 0  # no weight left out
    for a, b in zip(api.model.weights, run.model.weights, strict=True):
        assert a.path.split("/", 1)[1] == b.path.split("/", 1)[1]  # the model's name aside
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    prompt = " ".join(run.vocab.words[:3])
    assert api.generate([prompt], num_tokens=4)[0]["tokens"] == inference.generate_text(
        run.model, run.vocab, [prompt], 4)[0]["tokens"]
    (line,) = api.score([prompt])
    assert len(line["tokens"]) == 4 and line["perplexity"] > 1  # 3 words and <eos>
    assert len(api.next_words([prompt], k=3)[0]) == 3
