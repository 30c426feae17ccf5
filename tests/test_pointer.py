"""The continuous cache pointer (Grave et al. 2017) on hand-computed and brute-force cases."""
import math

import keras
import numpy as np
import pytest

from tfawd.lm.models import AwdLstmModel
from tfawd.lm.pointer import cache_probabilities, evaluate_with_cache, mixed_nll


def brute_force(h, y, theta, window):
    """p_cache of each target by the definition, one position at a time."""
    probs, has = np.zeros(y.shape), np.zeros(y.shape, bool)
    for b in range(y.shape[0]):
        for t in range(y.shape[1]):
            keys = range(max(0, t - window), t)
            if not keys:
                continue
            scores = np.array([theta * h[b, t] @ h[b, i] for i in keys])
            attention = np.exp(scores - scores.max())
            attention /= attention.sum()
            probs[b, t] = sum(a for a, i in zip(attention, keys) if y[b, i] == y[b, t])
            has[b, t] = True
    return probs, has


def test_cache_distribution_on_a_hand_computed_example():
    h = np.array([[[1, 0], [0, 1], [1, 0]]], np.float32)
    y = np.array([[5, 6, 5]], np.int32)
    probs, has = cache_probabilities(h, y, theta=1.0, window=2)
    # t=0: empty cache. t=1: the cache holds (h0 -> 5) only, the target is 6.
    # t=2: keys h0 -> 5 and h1 -> 6 with scores 1 and 0; the target 5 gets e / (e + 1).
    np.testing.assert_allclose(probs, [[0, 0, math.e / (math.e + 1)]], rtol=1e-6)
    np.testing.assert_array_equal(has, [[False, True, True]])


@pytest.mark.parametrize("window, segment", [(3, 2), (5, 4), (40, 7), (6, 50)])
def test_segmented_cache_equals_the_definition(window, segment):
    rng = np.random.default_rng(window)
    h = rng.normal(size=(3, 37, 4)).astype(np.float32)
    y = rng.integers(0, 5, size=(3, 37)).astype(np.int32)
    probs, has = cache_probabilities(h, y, theta=0.7, window=window, segment=segment)
    want_probs, want_has = brute_force(h, y, 0.7, window)
    np.testing.assert_allclose(probs, want_probs, atol=1e-5)
    np.testing.assert_array_equal(has, want_has)


def test_mixture_is_the_model_alone_at_lambda_zero_and_the_cache_alone_at_one():
    logp = np.log(np.array([[0.5, 0.25, 0.1]]))
    cache = np.array([[0.0, 0.5, 0.8]])
    has = np.array([[False, True, True]])
    assert mixed_nll(logp, cache, has, 0.0) == pytest.approx(-logp.mean())
    # lambda = 1: the first position has no cache and keeps the model's probability.
    assert mixed_nll(logp, cache, has, 1.0) == pytest.approx(
        -(math.log(0.5) + math.log(0.5) + math.log(0.8)) / 3)


def test_grid_search_reports_the_best_pair_and_the_plain_model():
    """A stream that repeats one short random passage: the untrained model is near uniform,
    while the cache knows which few words recur."""
    keras.utils.set_random_seed(0)
    passage = np.random.default_rng(0).integers(0, 30, size=40)
    ids = np.tile(passage, 8).astype(np.int32)
    model = AwdLstmModel(30, emsize=8, nhid=12, nlayers=2)
    out = evaluate_with_cache(model, ids, batch_size=2, bptt=9, window=60,
                              thetas=[1.0, 1000.0], lambdas=[0.0, 0.1, 0.5])
    assert len(out["grid"]) == 6 and out["nll"] == min(g["nll"] for g in out["grid"])
    for g in out["grid"]:
        if g["lambda"] == 0.0:
            assert g["nll"] == pytest.approx(out["base_nll"], rel=1e-9)
    assert out["lambda"] > 0 and out["ppl"] < 0.95 * out["base_ppl"], out["grid"]


def test_a_mixed_precision_model_is_cached_at_batch_one_as_its_float32_twin_scores():
    """At batch 1 a bf16 model's cache pass runs as its float32 twin: the cache's base
    perplexity is the batch-1 evaluation's, and the model itself is untouched."""
    from tfawd.lm.evaluation import Evaluator
    from tfawd.lm.models import built_in, copy_weights
    keras.utils.set_random_seed(0)
    ids = np.random.default_rng(1).integers(0, 30, size=120).astype(np.int32)
    model = AwdLstmModel(30, emsize=8, nhid=12, nlayers=2)
    model(ids[None, :2], model.initial_state(1))
    mixed = built_in("mixed_bfloat16", lambda: AwdLstmModel.from_config(
        {**model.get_config(), "dtype": "mixed_bfloat16"}))
    copy_weights(model, mixed)
    before = [v.numpy() for v in mixed.trainable_variables]
    out = evaluate_with_cache(mixed, ids, batch_size=1, bptt=9, window=30, thetas=[1.0],
                              lambdas=[0.0, 0.1])
    plain = Evaluator(mixed).evaluate(ids, batch_size=1, bptt=9)
    assert out["base_nll"] == pytest.approx(plain["nll"], rel=1e-6)
    for v, b in zip(mixed.trainable_variables, before):
        np.testing.assert_array_equal(v.numpy(), b)
