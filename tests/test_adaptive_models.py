"""--softmax=adaptive in the language models: exact normalised distributions wherever one is
used (loss, perplexity, cache pointer, dynamic evaluation, generation), training, resuming,
and the frequency-ordered vocabulary its clusters need. (The layers themselves:
tests/test_adaptive_softmax.py; the export: tests/test_export.py, both softmaxes.)"""
import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipelines.vocab import Vocabulary
from tests.test_awd_training import awd_cfg
from tests.test_training import tiny_cfg
from tfawd.lm import inference
from tfawd.lm.models import build_model, resolve_cutoffs, unstable_cluster_warning
from tfawd.lm.training import RunError, open_run, train
from tfawd.nn.adaptive_softmax import cluster_shares, sgd_unstable

ADAPTIVE = dict(softmax="adaptive", adaptive_cutoffs="6,16", adaptive_div=2)


@pytest.mark.parametrize("model", ["lstm", "awd_lstm"])
def test_logits_are_normalised_and_the_loss_is_their_nll(tiny_corpus, tmp_path, model):
    kw = dict(model=model, tie_weights=True) if model == "lstm" else dict(model=model)
    cfg = (awd_cfg if model == "awd_lstm" else tiny_cfg)(tmp_path, **kw, **ADAPTIVE)
    net = build_model(cfg, len(tiny_corpus.vocab))
    ids = tiny_corpus.ids["valid"][:3 * 7 + 1]
    x, y = tf.constant(ids[:-1].reshape(3, 7)), tf.constant(ids[1:].reshape(3, 7))
    logp, _ = net(x, net.initial_state(3))
    np.testing.assert_allclose(tf.reduce_logsumexp(logp, -1), 0.0, atol=1e-5)
    nll, _ = net(x, net.initial_state(3), targets=y)
    np.testing.assert_allclose(nll, -tf.gather(logp, y, batch_dims=2), rtol=1e-5, atol=1e-5)


def test_untied_base_model_keeps_its_own_output_matrices(tiny_corpus, tmp_path):
    net = build_model(tiny_cfg(tmp_path, **ADAPTIVE), len(tiny_corpus.vocab))
    assert net.softmax.words is not net.embedding
    tied = build_model(tiny_cfg(tmp_path, tie_weights=True, **ADAPTIVE), len(tiny_corpus.vocab))
    assert tied.softmax.words is tied.embedding
    assert len(tied.trainable_variables) < len(net.trainable_variables)


def test_an_adaptive_model_learns_and_its_perplexity_is_that_of_its_distribution(tiny_corpus,
                                                                                 tmp_path):
    cfg = tiny_cfg(tmp_path / "run", tie_weights=True, **ADAPTIVE)
    metrics = train(cfg, tiny_corpus)
    history = json.load(open(tmp_path / "run" / "history.json"))
    vals = [h["val_ppl"] for h in history if "val_ppl" in h]
    assert vals[-1] < 0.7 * len(tiny_corpus.vocab)  # learnt the structure (uniform: V)
    # the test perplexity (from the training path's nll) is that of the full distribution
    trainer = open_run(cfg, tiny_corpus)
    trainer.best.checkpoint.restore(trainer.best.latest_checkpoint).assert_consumed()
    ids = tiny_corpus.ids["test"]
    logp, _ = trainer.model(tf.constant(ids[None, :-1]), trainer.model.initial_state(1))
    direct = float(-tf.reduce_mean(tf.gather(logp[0], ids[1:], batch_dims=1)))
    assert metrics["test_nll"] == pytest.approx(direct, rel=1e-5)


def test_a_run_refuses_another_softmax_and_cutoffs_beyond_the_vocabulary(tiny_corpus, tmp_path):
    train(awd_cfg(tmp_path / "run", max_epochs=1, **ADAPTIVE), tiny_corpus)
    with pytest.raises(RunError, match="--softmax=adaptive"):
        open_run(awd_cfg(tmp_path / "run", max_epochs=1), tiny_corpus)
    with pytest.raises(RunError, match="adaptive_cutoffs=6,99 must stay below the vocabulary"):
        open_run(awd_cfg(tmp_path / "other", **{**ADAPTIVE, "adaptive_cutoffs": "6,99"}),
                tiny_corpus)


def test_cache_pointer_and_dynamic_evaluation_run_on_the_adaptive_distribution(tiny_corpus,
                                                                               tmp_path):
    from tfawd.lm.modes import tune_cache, tune_dynamic_eval
    cfg = awd_cfg(tmp_path / "run", max_epochs=1, cache_window=20, cache_thetas="0.5",
                  cache_lambdas="0,0.2", dynamic_eval_lrs="0,1e-3", dynamic_eval_lambdas="0",
                  dynamic_eval_grad_batches=3, dynamic_eval_bptt=5, **ADAPTIVE)
    metrics = train(cfg, tiny_corpus)
    cache = tune_cache(cfg, tiny_corpus)
    assert cache["test"]["base_ppl"] == pytest.approx(metrics["test_ppl"], rel=1e-4)
    dynamic = tune_dynamic_eval(cfg, tiny_corpus)
    lr0 = [g for g in dynamic["search"]["grid"] if g["lr"] == 0][0]
    assert np.isfinite(dynamic["test"]["ppl"]) and lr0["ppl"] > 0
    # at lr 0 nothing adapts: the grid's entry is static evaluation of the same (validation)
    # tokens in the same segments, batch 1, with the run's best weights
    from tfawd.lm.evaluation import Evaluator
    best, _ = inference.load_trained(cfg.model_dir, cfg)
    static = Evaluator(best).evaluate(tiny_corpus.ids["valid"][:cfg.dynamic_eval_tune_tokens],
                                      batch_size=1, bptt=cfg.dynamic_eval_bptt)
    assert lr0["nll"] == pytest.approx(static["nll"], rel=1e-6)
    assert lr0["ppl"] == pytest.approx(static["ppl"], rel=1e-5)
    # --cache_window given: the cache pointer also ran on top of the adapting model; its base
    # is dynamic evaluation's own figure, and lambda 0 is in the grid, so it cannot be worse.
    both = dynamic["cache"]
    for split in ("valid", "test"):
        assert both[split]["base_nll"] == pytest.approx(dynamic[split]["nll"], rel=1e-6)
    assert both["valid"]["nll"] <= both["valid"]["base_nll"] + 1e-9
    with open(tmp_path / "run" / "eval_results.json") as f:
        recorded = json.load(f)
    assert recorded["dynamic_eval_cache"]["test"]["lambda"] == both["valid"]["lambda"]
    assert "outputs" not in recorded["dynamic_eval"]["valid"]


def test_generation_and_beam_search_draw_from_the_adaptive_distribution(tiny_corpus, tmp_path):
    keras.utils.set_random_seed(0)
    net = build_model(awd_cfg(tmp_path, **ADAPTIVE), len(tiny_corpus.vocab))
    prompt = [tiny_corpus.ids["valid"][:4]]
    greedy, logprobs = inference.generate(net, prompt, 5)
    logp, _ = net(tf.constant(prompt), net.initial_state(1))
    assert greedy[0, 0] == int(tf.argmax(logp[0, -1]))
    assert logprobs[0, 0] == pytest.approx(float(tf.reduce_max(logp[0, -1])), abs=1e-5)
    beam, score = inference.beam_search(net, prompt, 3, beam_size=1)
    np.testing.assert_array_equal(beam, greedy[:, :3])
    assert score[0] == pytest.approx(logprobs[0, :3].sum(), abs=1e-5)  # greedy's log-prob
    # Two tokens with a beam as wide as the vocabulary: every first word is kept, so the
    # search is exact. Its pair and score are the best of all V^2 pairs, scored here by one
    # batched run of the model over prompt + each first word.
    vocab = len(tiny_corpus.vocab)
    best, best_score = inference.beam_search(net, prompt, 2, beam_size=vocab)
    rows = np.concatenate([np.repeat(prompt, vocab, axis=0), np.arange(vocab)[:, None]], axis=1)
    logp, _ = net(tf.constant(rows, tf.int32), net.initial_state(vocab))
    pairs = logp[0, -2][:, None] + logp[:, -1]  # log p(a | prompt) + log p(b | prompt, a)
    a, b = np.unravel_index(int(tf.argmax(tf.reshape(pairs, [-1]))), pairs.shape)
    assert (a, b) == tuple(best[0])
    assert best_score[0] == pytest.approx(float(pairs[a, b]), abs=1e-4)
    assert best_score[0] >= logprobs[0, :2].sum() - 1e-5  # at least greedy's pair


def test_frequency_order_puts_frequent_words_first():
    vocab = Vocabulary.from_tokens("b a c a c a d".split(), order="frequency")
    assert vocab.words[:4] == ["a", "c", "b", "d"]  # ties keep first appearance
    assert Vocabulary.from_tokens("b a c a".split()).words[:3] == ["b", "a", "c"]
    with pytest.raises(ValueError, match="order must be"):
        Vocabulary.from_tokens(["a"], order="alphabetical")


def test_a_cluster_too_large_for_sgd_is_warned_of_with_cutoffs_that_are_not(tmp_path):
    counts = np.round(1e6 / np.arange(1, 3001)).astype(np.int64)  # Zipf, ids by frequency
    cfg = awd_cfg(tmp_path, softmax="adaptive", adaptive_cutoffs="100,1000", lr=30)
    warning = unstable_cluster_warning(cfg, counts)  # [100, 1000) holds ~27% of the tokens
    assert "[100, 1000) holds" in warning and "--lr=30" in warning
    fix = warning.rsplit("--adaptive_cutoffs=", 1)[1]
    assert fix.startswith("100,")
    assert unstable_cluster_warning(awd_cfg(tmp_path, softmax="adaptive", adaptive_cutoffs=fix,
                                            lr=30), counts) is None
    assert unstable_cluster_warning(awd_cfg(tmp_path, softmax="adaptive",
                                            adaptive_cutoffs="100,1000", lr=1), counts) is None
    assert unstable_cluster_warning(awd_cfg(tmp_path, lr=30), counts) is None  # full softmax


def test_auto_cutoffs_give_a_head_then_clusters_sgd_is_stable_on():
    counts = np.round(1e6 / np.arange(1, 30001)).astype(np.int64)  # Zipf, ids by frequency
    cfg = awd_cfg("unused", softmax="adaptive", adaptive_cutoffs="auto", lr=30)
    cutoffs = resolve_cutoffs(cfg, counts).adaptive_cutoffs_list()
    assert cutoffs[0] == 2000 and len(cutoffs) > 2
    shares = cluster_shares(counts, [0, *cutoffs, len(counts)])
    assert all(s <= 1.5 / 30 and not sgd_unstable(s, 30) for s in shares[1:])
    assert resolve_cutoffs(cfg, counts[:500]).adaptive_cutoffs_list()[0] == 100  # a fifth
    assert resolve_cutoffs(awd_cfg("unused", softmax="adaptive", adaptive_cutoffs="auto",
                                   lr=1), counts).adaptive_cutoffs == "2000"  # one tail
    given = awd_cfg("unused", softmax="adaptive", adaptive_cutoffs="5,9")
    assert resolve_cutoffs(given, counts) is given
    with pytest.raises(ValueError, match="auto is resolved from the training corpus"):
        cfg.adaptive_cutoffs_list()


def test_a_run_with_auto_cutoffs_saves_them_resumes_and_loads(tiny_corpus, tmp_path):
    cfg = awd_cfg(tmp_path / "run", max_steps=4, softmax="adaptive", adaptive_cutoffs="auto")
    metrics = train(cfg, tiny_corpus)
    resolved = metrics["adaptive_cutoffs"]
    counts = tiny_corpus.word_counts()
    assert resolved == resolve_cutoffs(cfg, counts).adaptive_cutoffs != "auto"
    assert json.load(open(tmp_path / "run" / "flags.json"))["adaptive_cutoffs"] == "auto"
    assert json.load(open(tmp_path / "run" / "model.json"))["config"]["cutoffs"] == [
        int(c) for c in resolved.split(",")]
    again = train(dataclasses.replace(cfg, max_steps=6), tiny_corpus)  # resumes, same cut-offs
    assert again["steps"] == 6 and again["adaptive_cutoffs"] == resolved
    model, _ = inference.load_trained(str(tmp_path / "run"),
                                      dataclasses.replace(cfg, explicit=("adaptive_cutoffs",)))
    assert model.softmax.cutoffs == [int(c) for c in resolved.split(",")]
