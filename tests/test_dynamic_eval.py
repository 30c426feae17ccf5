"""Dynamic evaluation (Krause et al. 2018): exactness at lr 0, adaptation, restoration."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfawd.lm.dynamic_eval import DynamicEvaluator, gradient_rms
from tfawd.lm.evaluation import Evaluator
from tfawd.lm.models import AwdLstmModel


@pytest.fixture(scope="module")
def setup():
    from tests.conftest import make_tiny_corpus
    keras.utils.set_random_seed(0)
    corpus = make_tiny_corpus()
    model = AwdLstmModel(len(corpus.vocab), emsize=8, nhid=12, nlayers=2)
    model(np.zeros([1, 1], np.int32), model.initial_state(1))
    rms = gradient_rms(model, corpus.ids["train"], batch_size=4, bptt=5, max_batches=20)
    return corpus, model, rms


def test_gradient_statistics_cover_every_trainable_weight(setup):
    _, model, rms = setup
    assert [r.shape for r in rms] == [tuple(v.shape) for v in model.trainable_variables]
    assert all(np.all(r >= 0) for r in rms) and all(r.max() > 0 for r in rms)


def test_learning_rate_zero_is_exactly_static_evaluation(setup):
    corpus, model, rms = setup
    ids = corpus.ids["valid"][:200]
    dynamic = DynamicEvaluator(model, rms).evaluate(ids, lr=0.0, lam=0.0, bptt=5)
    static = Evaluator(model).evaluate(ids, batch_size=1, bptt=5)
    assert dynamic["tokens"] == static["tokens"] == 199
    assert dynamic["nll"] == pytest.approx(static["nll"], rel=1e-6)


def test_adapting_to_a_repetitive_stream_lowers_perplexity_and_weights_are_restored(setup):
    corpus, model, rms = setup
    before = [v.numpy() for v in model.trainable_variables]
    ids = np.tile(np.random.default_rng(0).integers(0, 30, 25), 20).astype(np.int32)
    evaluator = DynamicEvaluator(model, rms)
    static = evaluator.evaluate(ids, lr=0.0, lam=0.0, bptt=5)
    tuned = evaluator.tune(ids, lrs=[1e-2, 2e-2], lambdas=[0.0, 0.02], bptt=5)
    assert len(tuned["grid"]) == 4 and tuned["ppl"] < 0.8 * static["ppl"], tuned["grid"]
    for v, b in zip(model.trainable_variables, before):
        np.testing.assert_array_equal(v.numpy(), b)


def test_a_long_evaluation_reports_its_progress(setup, monkeypatch, caplog):
    from tfawd.lm import dynamic_eval
    corpus, model, rms = setup
    monkeypatch.setattr(dynamic_eval, "LOG_EVERY", 10)
    with caplog.at_level("INFO", logger="absl"):  # whatever verbosity another test left
        DynamicEvaluator(model, rms).evaluate(corpus.ids["valid"][:101], lr=0.0, lam=0.0, bptt=5)
    lines = [r.getMessage() for r in caplog.records if "dynamic eval" in r.getMessage()]
    assert [line.split(",")[0] for line in lines] == ["dynamic eval: 50 / 100 tokens",
                                                      "dynamic eval: 100 / 100 tokens"]


def test_kept_outputs_at_lr_zero_are_the_static_ones_and_give_the_static_cache(setup):
    # The cache pointer on top of dynamic evaluation reads the outputs the adapting model
    # produced; with nothing adapting they are the static model's, so the cache pointer on
    # them scores exactly as the plain cache pointer at batch 1.
    from tfawd.lm.pointer import cache_grid, collect, evaluate_with_cache
    corpus, model, rms = setup
    ids = corpus.ids["valid"][:121]
    dynamic = DynamicEvaluator(model, rms).evaluate(ids, lr=0.0, lam=0.0, bptt=5,
                                                    keep_outputs=True)
    h, y, logp = dynamic["outputs"]
    static_h, static_y, static_logp = collect(model, ids, 1, 5)
    assert h.shape == (1, 120, 8) and y.shape == logp.shape == (1, 120)
    np.testing.assert_array_equal(y, static_y)
    np.testing.assert_allclose(h, static_h, atol=1e-5)
    np.testing.assert_allclose(logp, static_logp, atol=1e-5)
    assert -logp.mean() == pytest.approx(dynamic["nll"], rel=1e-6)
    both = cache_grid(h, y, logp, 30, [0.5, 1.0], [0.1, 0.3])
    plain = evaluate_with_cache(model, ids, 1, 5, 30, [0.5, 1.0], [0.1, 0.3])
    assert (both["theta"], both["lambda"]) == (plain["theta"], plain["lambda"])
    assert both["nll"] == pytest.approx(plain["nll"], rel=1e-5)


def test_adapted_outputs_differ_from_the_static_ones(setup):
    corpus, model, rms = setup
    ids = corpus.ids["valid"][:121]
    evaluator = DynamicEvaluator(model, rms)
    static = evaluator.evaluate(ids, lr=0.0, lam=0.0, bptt=5, keep_outputs=True)["outputs"]
    adapted = evaluator.evaluate(ids, lr=1e-2, lam=0.0, bptt=5, keep_outputs=True)["outputs"]
    np.testing.assert_allclose(adapted[0][:, :5], static[0][:, :5], atol=1e-6)  # segment 1
    assert np.abs(adapted[0][:, 5:] - static[0][:, 5:]).max() > 1e-4
    assert "outputs" not in evaluator.evaluate(ids, lr=0.0, lam=0.0, bptt=5)


def _reference_dynamic_eval(model, rms, ids, lr, lam, bptt, epsilon=2e-5):
    """The module doc's procedure written out one segment at a time in eager TensorFlow, the
    form the evaluator had before it ran chunks of segments on the graph (issue 25)."""
    from tfawd.nn.losses import token_nll
    variables = model.trainable_variables
    trained = [v.numpy() for v in variables]
    rate = [r / np.mean([float(np.mean(q)) for q in rms]) for r in rms]
    states, total, count = model.initial_state(1), 0.0, 0
    try:
        for i in range(0, len(ids) - 1, bptt):
            x, y = ids[None, i:i + bptt], ids[None, i + 1:i + bptt + 1]
            x = x[:, :y.shape[1]]
            with tf.GradientTape() as tape:
                logits, states = model(x, states, training=False)
                nll = token_nll(logits, y)
                loss = tf.reduce_mean(nll)
            grads = tape.gradient(loss, variables)
            total += float(tf.reduce_sum(nll))
            count += y.shape[1]
            for v, g, v0, r, q in zip(variables, grads, trained, rms, rate):
                decay = (lam * np.minimum(q, 1 / lam)).astype(np.float32)
                v.assign(v + decay * (v0 - v) - lr * tf.convert_to_tensor(g) / (r + epsilon))
    finally:
        for v, v0 in zip(variables, trained):
            v.assign(v0)
    return total / count


@pytest.mark.parametrize("chunk, length", [(500, 203), (7, 203), (3, 200)])
def test_adapted_perplexity_equals_the_segment_by_segment_procedure(setup, chunk, length):
    """Chunks of segments on the graph (any chunk size, with or without a shorter last
    segment) adapt exactly as the procedure run one segment at a time: 1e-4 relative."""
    corpus, model, rms = setup
    ids = corpus.ids["valid"][:length].astype(np.int32)
    expected = _reference_dynamic_eval(model, rms, ids, lr=2e-2, lam=0.02, bptt=5)
    evaluator = DynamicEvaluator(model, rms, chunk=chunk)
    assert evaluator._tied is not None  # W adapted from its rank-5 gradient, never written out
    got = evaluator.evaluate(ids, lr=2e-2, lam=0.02, bptt=5)
    static = Evaluator(model).evaluate(ids, batch_size=1, bptt=5)
    assert got["tokens"] == length - 1
    assert abs(expected - static["nll"]) > 1e-3  # the weights did adapt
    assert got["nll"] == pytest.approx(expected, rel=1e-4)


def test_a_mixed_precision_model_adapts_as_its_float32_twin(setup):
    """A bf16 model is adapted as its float32 twin: the same NLL as the float32 model with the
    same weights, and the bf16 model itself untouched."""
    from tfawd.lm.models import built_in, copy_weights
    corpus, model, rms = setup
    mixed = built_in("mixed_bfloat16", lambda: AwdLstmModel.from_config(
        {**model.get_config(), "dtype": "mixed_bfloat16"}))
    copy_weights(model, mixed)
    ids = corpus.ids["valid"][:101]
    evaluator = DynamicEvaluator(mixed, rms)
    assert evaluator.model is not mixed and evaluator.model.compute_dtype == "float32"
    got = evaluator.evaluate(ids, lr=1e-2, lam=0.01, bptt=5)
    want = DynamicEvaluator(model, rms).evaluate(ids, lr=1e-2, lam=0.01, bptt=5)
    assert got["nll"] == pytest.approx(want["nll"], rel=1e-6)
    for m, f in zip(mixed.trainable_variables, model.trainable_variables):
        np.testing.assert_array_equal(m.numpy(), f.numpy())
