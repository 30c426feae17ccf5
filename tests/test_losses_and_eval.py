"""Loss utilities and whole-split evaluation."""
import math

import numpy as np
import tensorflow as tf

from tfawd.config import LMConfig
from tfawd.evaluation import Evaluator
from tfawd.losses import clip_gradients, dedupe_sparse, token_nll
from tfawd.models import build_model


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


def test_evaluation_is_exact_and_independent_of_window_length(tiny_corpus):
    """Carrying the state makes the split's NLL the same for any window length, and equal to
    scoring the whole column in one call."""
    model = build_model(LMConfig(emsize=8, nhid=8, dropout=0.3), len(tiny_corpus.vocab))
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
