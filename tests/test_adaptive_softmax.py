"""Adaptive input (Baevski & Auli 2019) and adaptive softmax (Grave et al. 2017) as
specifications: normalised exact log-probabilities against a NumPy reference, the efficient loss
against them, finite-difference gradients, tying, embedding dropout, mixed precision, graphs."""
import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfawd.lm.models import tied_logits
from tfawd.nn.adaptive_softmax import (
    AdaptiveEmbedding,
    AdaptiveSoftmax,
    balanced_cutoffs,
    cluster_shares,
    sgd_unstable,
)
from tfawd.nn.losses import token_nll

V, E, CUTOFFS, DIV = 23, 8, [5, 12], 2  # clusters [0, 5) d=8, [5, 12) d=4, [12, 23) d=2


@contextlib.contextmanager
def dtype_policy(name):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def make(tied, policy="float32", seed=0, **embedding_kwargs):
    """(embedding or None, softmax), built, with random non-zero biases."""
    with dtype_policy(policy):
        emb = AdaptiveEmbedding(V, E, CUTOFFS, DIV, **embedding_kwargs) if tied else None
        if emb is not None:
            emb.build()
        softmax = AdaptiveSoftmax(V, E, CUTOFFS, DIV, tied_to=emb)
        softmax.build()
    rng = np.random.default_rng(seed)
    for b in softmax.biases:
        b.assign(rng.normal(size=b.shape))
    return emb, softmax


def numpy_log_probs(softmax, h):
    """log p(w | h) [N, V] straight from the definition (Grave et al. 2017, section 4)."""
    emb, proj = softmax.words.embeddings, softmax.words.projections
    bias = [b.numpy().astype(np.float64) for b in softmax.biases]

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    head = log_softmax(h @ np.concatenate([emb[0].numpy(), softmax.cluster_kernel.numpy()]).T
                       + bias[0])
    parts = [head[:, :CUTOFFS[0]]]
    for i in range(1, len(emb)):
        tail = log_softmax(h @ proj[i - 1].numpy().T @ emb[i].numpy().T + bias[i])
        parts.append(head[:, CUTOFFS[0] + i - 1:CUTOFFS[0] + i] + tail)
    return np.concatenate(parts, -1)


def all_clusters_targets(shape, seed=0):
    y = np.random.default_rng(seed).integers(0, V, size=shape).ravel()
    y[:3] = [0, 7, 20][:y.size]  # one target in each cluster, if there is room
    return tf.constant(y.reshape(shape), tf.int32)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, E), (7, E), (1, 1, E)])
def test_probabilities_sum_to_one_for_every_context(tied, shape):
    _, softmax = make(tied)
    lp = softmax(tf.random.normal(shape, seed=1) * 3)
    assert lp.shape == (*shape[:-1], V) and lp.dtype == tf.float32
    np.testing.assert_allclose(tf.reduce_sum(tf.exp(lp), -1), np.ones(shape[:-1]), atol=1e-5)


@pytest.mark.parametrize("tied", [False, True])
def test_log_probs_match_a_numpy_computation_from_the_weights(tied):
    _, softmax = make(tied)
    h = np.random.default_rng(2).normal(size=(9, E)).astype(np.float32)
    np.testing.assert_allclose(softmax.log_probs(h), numpy_log_probs(softmax, h),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tied", [False, True])
def test_nll_is_the_negative_log_prob_of_the_target_in_every_cluster(tied):
    _, softmax = make(tied)
    h = tf.random.normal([V, E], seed=3)
    y = tf.range(V)  # every word, so every cluster
    np.testing.assert_allclose(softmax.nll(h, y), -np.diag(softmax.log_probs(h)), rtol=1e-5)
    h3, y3 = tf.random.normal([3, 4, E], seed=4), all_clusters_targets([3, 4])
    want = -tf.gather(softmax(h3), y3[..., None], batch_dims=2)[..., 0]
    np.testing.assert_allclose(softmax.nll(h3, y3), want, rtol=1e-5)
    head_only = tf.constant([[1, 4]])  # the tail clusters get no rows
    np.testing.assert_allclose(softmax.nll(h3[:1, :2], head_only),
                               -tf.gather(softmax(h3[:1, :2]), head_only[..., None],
                                          batch_dims=2)[..., 0], rtol=1e-5)


@pytest.mark.parametrize("tied", [False, True])
def test_gradients_match_central_finite_differences(tied):
    """d mean nll / d (h and every weight) in float64; tied, h = h0 + embedding(ids), so the
    embedding's E_i and P_i are used on the way in and on the way out."""
    emb, softmax = make(tied, policy="float64")
    rng = np.random.default_rng(5)
    h0 = tf.Variable(rng.normal(size=(3, 4, E)))
    ids, y = all_clusters_targets([3, 4], seed=6), all_clusters_targets([3, 4], seed=7)

    def loss():
        h = h0 + emb(ids) if tied else h0
        return tf.reduce_mean(softmax.nll(h, y))

    variables = [h0, *softmax.trainable_weights, *(emb.trainable_weights if tied else [])]
    assert len(variables) == (1 + 1 + 3 + 5)  # h, cluster kernel, 3 biases, 3 E_i + 2 P_i
    with tf.GradientTape() as tape:
        value = loss()
    grads = tape.gradient(value, variables)
    eps = 1e-6
    for var, grad in zip(variables, grads):
        base = var.numpy()
        numeric = np.zeros(base.size)
        for k in range(base.size):
            for sign in (1, -1):
                bumped = base.copy().ravel()
                bumped[k] += sign * eps
                var.assign(bumped.reshape(base.shape))
                numeric[k] += sign * loss().numpy() / (2 * eps)
        var.assign(base)
        np.testing.assert_allclose(tf.convert_to_tensor(grad).numpy().ravel(), numeric,
                                   rtol=1e-5, atol=1e-8, err_msg=var.name)


def test_tied_softmax_owns_no_word_matrices_and_trains_the_embedding_from_both_sides():
    emb, softmax = make(tied=True)
    own = {v.path for v in softmax.weights}
    assert own == {f"{softmax.name}/{n}" for n in
                   ("cluster_kernel", "head_bias", "tail_bias_1", "tail_bias_2")}
    assert not {id(v) for v in softmax.weights} & {id(v) for v in emb.weights}
    assert softmax.words is emb and len(emb.trainable_weights) == 5
    ids, y = all_clusters_targets([3, 4], seed=8), all_clusters_targets([3, 4], seed=9)
    h = tf.random.normal([3, 4, E], seed=10)
    r = tf.random.normal([3, 4, E], seed=11)
    with tf.GradientTape(persistent=True) as tape:
        into = tf.reduce_sum(emb(ids) * r)  # the input use
        out = tf.reduce_mean(softmax.nll(h, y))  # the output use
        both = into + out
    dense = lambda g: tf.convert_to_tensor(g).numpy()  # noqa: E731
    for var in emb.trainable_weights:
        g_in, g_out, g_both = (dense(tape.gradient(t, var)) for t in (into, out, both))
        assert np.abs(g_in).max() > 0 and np.abs(g_out).max() > 0, var.name
        np.testing.assert_allclose(g_both, g_in + g_out, rtol=1e-5, atol=1e-7)
    _, untied = make(tied=False)
    assert len(untied.trainable_weights) == 4 + 5  # its own E_i and P_i


def test_no_cutoffs_is_the_plain_tied_softmax():
    emb = AdaptiveEmbedding(V, E, [])
    softmax = AdaptiveSoftmax(V, E, [], tied_to=emb)
    softmax.build()
    softmax.biases[0].assign(np.random.default_rng(12).normal(size=V))
    h, y = tf.random.normal([2, 3, E], seed=13), all_clusters_targets([2, 3])
    want = token_nll(tied_logits(h, emb.embeddings[0], softmax.biases[0]), y)
    np.testing.assert_allclose(softmax.nll(h, y), want, rtol=1e-5)


def test_adaptive_embedding_looks_up_and_projects_each_cluster():
    emb = AdaptiveEmbedding(V, E, CUTOFFS, DIV)
    ids = all_clusters_targets([3, 4])
    out = emb(ids).numpy()
    assert out.shape == (3, 4, E) and emb.dims == [8, 4, 2]
    bounds = [0, *CUTOFFS, V]
    for w, vec in zip(ids.numpy().ravel(), out.reshape(-1, E)):
        i = int(np.searchsorted(CUTOFFS, w, side="right"))
        want = emb.embeddings[i].numpy()[w - bounds[i]]
        if i > 0:
            want = want @ emb.projections[i - 1].numpy()
        np.testing.assert_allclose(vec, want, rtol=1e-5, atol=1e-7)
    assert emb(tf.constant([[3], [15]])).shape == (2, 1, E)  # T = 1
    assert AdaptiveEmbedding(V, 4, [5, 12, 20], div=4).dims == [4, 1, 1, 1]  # floored at 1


def test_adaptive_embedding_dropout_drops_whole_words_everywhere_in_the_batch():
    emb = AdaptiveEmbedding(V, E, CUTOFFS, DIV, dropout=0.4, seed=14)
    ids = tf.constant(np.random.default_rng(15).integers(0, V, size=(6, 10)), tf.int32)
    clean = emb(ids, training=False).numpy()
    np.testing.assert_array_equal(emb(ids), clean)  # identity at inference
    dropped_any = kept_any = False
    for _ in range(3):
        out = emb(ids, training=True).numpy()
        for w in np.unique(ids):
            at = ids.numpy() == w
            if np.all(out[at] == 0):
                dropped_any = True
            else:  # kept at every occurrence, scaled by 1 / (1 - p)
                np.testing.assert_allclose(out[at], clean[at] / 0.6, rtol=1e-6)
                kept_any = True
    assert dropped_any and kept_any
    big = AdaptiveEmbedding(2000, 2, [100, 500], dropout=0.3, seed=16,
                            embeddings_initializer="ones")
    zero = np.all(big(tf.range(2000)[None], training=True).numpy() == 0, axis=-1)
    assert abs(zero.mean() - 0.3) < 0.04


def test_mixed_bfloat16_gives_float32_log_probs_that_sum_to_one():
    emb, softmax = make(tied=True, policy="mixed_bfloat16")
    ids, y = all_clusters_targets([2, 5]), all_clusters_targets([2, 5], seed=17)
    h = emb(ids)
    assert h.dtype == tf.bfloat16 and emb.embeddings[0].dtype == "float32"
    lp = softmax(h)
    assert lp.dtype == tf.float32
    np.testing.assert_allclose(tf.reduce_sum(tf.exp(lp), -1), np.ones([2, 5]), atol=1e-3)
    nll = softmax.nll(h, y)
    assert nll.dtype == tf.float32
    np.testing.assert_allclose(nll, -tf.gather(lp, y[..., None], batch_dims=2)[..., 0],
                               rtol=1e-2, atol=1e-2)


def test_runs_in_a_graph_without_autograph_for_any_batch_and_length():
    emb, softmax = make(tied=True, dropout=0.2, seed=18)
    spec = tf.TensorSpec([None, None], tf.int32)

    @tf.function(autograph=False, input_signature=[spec, spec])
    def step(ids, targets):
        with tf.GradientTape() as tape:
            h = emb(ids, training=True)
            loss = tf.reduce_mean(softmax.nll(h, targets))
        grads = tape.gradient(loss, emb.trainable_weights + softmax.trainable_weights)
        return loss, softmax(h), [tf.convert_to_tensor(g) for g in grads]

    for shape in ([2, 5], [3, 1], [1, 1]):
        loss, lp, grads = step(all_clusters_targets(shape), all_clusters_targets(shape, 19))
        assert lp.shape == (*shape, V) and np.isfinite(loss.numpy())
        assert all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize("build, name", [
    (lambda: AdaptiveEmbedding(V, E, [12, 5]), "cutoffs"),
    (lambda: AdaptiveEmbedding(V, E, [5, 5]), "cutoffs"),
    (lambda: AdaptiveEmbedding(V, E, [0, 5]), "cutoffs"),
    (lambda: AdaptiveEmbedding(V, E, [5, V]), "cutoffs"),
    (lambda: AdaptiveEmbedding(V, E, CUTOFFS, div=0.5), "div"),
    (lambda: AdaptiveEmbedding(V, 0, CUTOFFS), "output_dim"),
    (lambda: AdaptiveEmbedding(0, E, []), "vocab_size"),
    (lambda: AdaptiveEmbedding(V, E, CUTOFFS, dropout=1.0), "dropout"),
    (lambda: AdaptiveSoftmax(V, 0, CUTOFFS), "input_dim"),
    (lambda: AdaptiveSoftmax(V, E, CUTOFFS, DIV, tied_to=AdaptiveEmbedding(V, 6, CUTOFFS, DIV)),
     "tied_to"),
    (lambda: AdaptiveSoftmax(V, E, CUTOFFS, 4, tied_to=AdaptiveEmbedding(V, E, CUTOFFS, 2)),
     "tied_to"),
    (lambda: AdaptiveSoftmax(V, E, CUTOFFS, tied=True).build(), "tie"),
])
def test_bad_arguments_raise_value_errors_naming_the_argument(build, name):
    with pytest.raises(ValueError, match=name):
        build()


def test_get_config_round_trips_and_a_deserialised_tied_softmax_is_relinked():
    emb, softmax = make(tied=True, dropout=0.1, seed=3,
                        embeddings_initializer=keras.initializers.RandomNormal(stddev=0.2))
    for layer in (emb, softmax, make(tied=False)[1]):
        assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config()
    clone = AdaptiveSoftmax.from_config(softmax.get_config())
    assert clone.tied
    clone.tie(emb)
    clone.build()
    assert clone.words is emb and len(clone.weights) == 4
    assert clone(tf.zeros([1, E])).shape == (1, V)


ZIPF = np.round(1e6 / np.arange(1, 2001)).astype(np.int64)  # counts of ids 0..1999 by frequency


@pytest.mark.parametrize("lr, share", [(30, 0.02), (30, 0.05), (30, 0.1), (30, 0.2),
                                       (10, 0.2), (10, 0.5), (1, 0.5)])
def test_sgd_unstable_predicts_whether_gradient_descent_on_a_cluster_logit_settles(lr, share):
    # A cluster logit against the rest of the head (held fixed): p = sigmoid(b), the gradient
    # of the mean NLL is p - share. Started 0.1 off its optimum, plain gradient descent
    # settles there exactly when sgd_unstable says it is stable.
    b = np.log(share / (1 - share)) + 0.1
    for _ in range(500):
        b -= lr * (1 / (1 + np.exp(-b)) - share)
    settled = abs(1 / (1 + np.exp(-b)) - share) < 1e-6
    assert settled == (not sgd_unstable(share, lr))


def test_balanced_cutoffs_fill_each_tail_cluster_up_to_the_share():
    cutoffs = balanced_cutoffs(ZIPF, head=50, max_share=0.04)
    bounds = [0, *cutoffs, len(ZIPF)]
    shares = cluster_shares(ZIPF, bounds)
    assert cutoffs[0] == 50 and cutoffs == sorted(set(cutoffs))
    assert sum(shares) == pytest.approx(1.0)
    assert all(s <= 0.04 for s in shares[1:])
    total = ZIPF.sum()
    for hi in bounds[2:-1]:  # each full cluster could not take its next word
        lo = bounds[bounds.index(hi) - 1]
        assert (ZIPF[lo:hi + 1].sum()) / total > 0.04
    with pytest.raises(ValueError, match="head"):
        balanced_cutoffs(ZIPF, head=0, max_share=0.04)
