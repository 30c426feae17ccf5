"""Loss utilities and whole-split evaluation."""
import contextlib
import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from tfawd.lm.config import LMConfig
from tfawd.lm.evaluation import Evaluator
from tfawd.lm.models import build_model, copy_weights, tied_logits
from tfawd.nn import fusion
from tfawd.nn.losses import clip_gradients, decoder_nll, dedupe_sparse, token_nll


def test_dedupe_sparse_sums_repeated_rows_so_the_norm_is_the_dense_norm():
    g = tf.IndexedSlices(tf.constant([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]]),
                         tf.constant([4, 1, 4]), tf.constant([6, 2]))
    d = dedupe_sparse(g)
    np.testing.assert_allclose(tf.convert_to_tensor(d), tf.convert_to_tensor(g))
    dense_norm = float(tf.norm(tf.convert_to_tensor(g)))
    _, norm = clip_gradients([g], 0.0)
    assert math.isclose(float(norm), dense_norm, rel_tol=1e-6)  # sqrt(1+4+9) would be wrong
    assert not math.isclose(dense_norm, math.sqrt(14.0))


def test_clipping_scales_to_the_bound_and_reports_the_unclipped_norm():
    grads, norm = clip_gradients([tf.constant([3.0, 4.0])], 0.25)
    assert math.isclose(float(norm), 5.0, rel_tol=1e-6)
    assert math.isclose(float(tf.norm(grads[0])), 0.25, rel_tol=1e-6)


def test_token_nll_is_the_negative_log_softmax():
    logits = tf.constant([[[0.0, math.log(3.0)]]])
    np.testing.assert_allclose(token_nll(logits, tf.constant([[1]])), [[-math.log(0.75)]], 1e-6)


def _decoder_case(dtype, seed=0):
    rng = np.random.default_rng(seed)
    h = tf.cast(rng.normal(size=(3, 4, 6)), dtype)
    w = tf.constant(rng.normal(size=(11, 6)), tf.float32)
    b = tf.constant(rng.normal(size=(11,)), tf.float32)
    y = tf.constant(rng.integers(0, 11, size=(3, 4)), tf.int32)
    d = tf.constant(rng.uniform(size=(3, 4)), tf.float32)  # upstream weights per token
    return h, w, b, y, d


def _values_and_grads(fn, h, w, b, y, d):
    with tf.GradientTape() as tape:
        tape.watch([h, w, b])
        nll = fn(h, w, b, y)
        loss = tf.reduce_sum(nll * d)
    return nll, tape.gradient(loss, [h, w, b])


@pytest.mark.parametrize("xla", [True, False], ids=["xla_fused", "standard_kernels"])
def test_decoder_nll_equals_cross_entropy_of_the_tied_logits_with_its_gradients(xla):
    case = _decoder_case(tf.float32)
    plain = lambda h, w, b, y: token_nll(tied_logits(h, w, b), y)  # noqa: E731
    want, want_grads = _values_and_grads(plain, *case)
    with contextlib.nullcontext() if xla else fusion.standard_kernels():
        got, got_grads = _values_and_grads(decoder_nll, *case)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(tf.convert_to_tensor(g), tf.convert_to_tensor(w),
                                   rtol=1e-4, atol=1e-6)


def test_decoder_nll_in_bfloat16_keeps_a_float32_loss_and_gradient_dtypes():
    h, w, b, y, d = _decoder_case(tf.bfloat16)
    got, (dh, dw, db) = _values_and_grads(decoder_nll, h, w, b, y, d)
    assert got.dtype == tf.float32 and dh.dtype == tf.bfloat16
    assert dw.dtype == tf.float32 and db.dtype == tf.float32
    want = token_nll(tied_logits(tf.cast(h, tf.float32), w, b), y)
    np.testing.assert_allclose(got, want, rtol=0.03, atol=0.03)


def test_evaluation_is_exact_and_independent_of_window_length(tiny_corpus):
    """Carrying the state makes the split's NLL the same for any window length, and equal to
    scoring the whole column in one call."""
    model = build_model(LMConfig(emsize=8, nhid=8, dropout=0.3, precision="float32"),
                        len(tiny_corpus.vocab))
    ids = tiny_corpus.ids["valid"]
    ev = Evaluator(model)
    a, b = ev.evaluate(ids, 3, bptt=5), ev.evaluate(ids, 3, bptt=64)
    assert a["tokens"] == b["tokens"] == 3 * (len(ids) // 3 - 1)
    assert math.isclose(a["nll"], b["nll"], rel_tol=1e-5)
    cols = tf.constant(ids[: 3 * (len(ids) // 3)].reshape(3, -1))
    logits, _ = model(cols[:, :-1], model.initial_state(3))
    whole = float(tf.reduce_mean(token_nll(logits, cols[:, 1:])))
    assert math.isclose(a["nll"], whole, rel_tol=1e-5)
    assert math.isclose(a["ppl"], math.exp(a["nll"]))


def test_a_mixed_precision_model_is_scored_in_float32_at_small_batches(tiny_corpus):
    """Batch <= FLOAT32_MAX_BATCH: the float32 twin with the model's current weights (so the
    figure equals a float32 model's exactly); larger batches: the bfloat16 model itself."""
    cfg = LMConfig(model="awd_lstm", emsize=8, nhid=12, nlayers=3, precision="float32")
    mixed = build_model(dataclasses.replace(cfg, precision="mixed_bfloat16"),
                        len(tiny_corpus.vocab))
    exact = build_model(cfg, len(tiny_corpus.vocab))
    copy_weights(mixed, exact)
    ids = tiny_corpus.ids["valid"]
    ev = Evaluator(mixed)
    assert ev.evaluate(ids, 1, bptt=7)["nll"] == pytest.approx(
        Evaluator(exact).evaluate(ids, 1, bptt=7)["nll"], rel=1e-6)
    big = ev.evaluate(ids, 5, bptt=7)["nll"]
    assert big != Evaluator(exact).evaluate(ids, 5, bptt=7)["nll"]  # bf16 rounding shows
    assert big == pytest.approx(Evaluator(exact).evaluate(ids, 5, bptt=7)["nll"], rel=0.02)
    for v in mixed.trainable_variables:  # new weights reach the twin at the next evaluation
        v.assign(v * 0.5)
    copy_weights(mixed, exact)
    assert ev.evaluate(ids, 1, bptt=7)["nll"] == pytest.approx(
        Evaluator(exact).evaluate(ids, 1, bptt=7)["nll"], rel=1e-6)
