"""The recogniser's location-aware attention and its decoders with a CTC head (issue 29):
joint CTC/attention beam search at weight 0 is today's beam search (tokens, scores, attention),
the CTC decoder is best-path decoding of the CTC head, and a speller with location-aware
attention keeps the properties of the dot-product one (padding changes nothing, greedy is beam
search of one, it learns)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.test_las import (
    assert_padding_changes_nothing,
    random_batch,
    test_teacher_forced_training_memorises_a_tiny_set,
    tiny_model,
)
from tfawd.speech import ctc, joint_decoding
from tfawd.speech.inference import make_decoder


@pytest.mark.parametrize("attention", ["dot", "location"])
def test_joint_search_at_weight_zero_is_the_attention_beam_search(attention):
    """(An untrained model: <eos> comes from the length caps, 10, 7 and 4 steps.)"""
    model = tiny_model(seed=4, ctc_weight=0.3, attention=attention, max_chars_per_frame=0.5)
    feats, frames = random_batch(6)
    tokens, scores, attn = make_decoder(model, 12, beam_size=3)(feats, frames)
    j_tokens, j_scores, j_attn = joint_decoding.make_joint_decoder(model, 12, 3, 0.0)(
        feats, frames)
    np.testing.assert_array_equal(j_tokens, tokens)
    np.testing.assert_allclose(j_scores, scores, rtol=1e-4)
    for a, b, toks in zip(j_attn.numpy(), attn.numpy(), tokens.numpy()):
        end = list(toks).index(2) + 1 if 2 in toks else len(toks)
        np.testing.assert_allclose(a[:end], b[:end], atol=1e-5)


def test_joint_search_with_ctc_changes_the_ranking_by_the_ctc_term():
    """At weight w the best hypothesis maximises (1 - w) log p_att + w log p_ctc among those
    the search kept; its score is that sum, with log p_ctc the CTC head's probability of it."""
    model = tiny_model(seed=5, ctc_weight=0.5, max_chars_per_frame=0.5)
    feats, frames = random_batch(7)
    w = 0.5
    tokens, scores, _ = joint_decoding.make_joint_decoder(model, 12, 4, w)(feats, frames)
    logits, _, ctc_logits, enc = model.teacher_forced(feats, frames, tokens, with_ctc=True)
    att = tf.gather(tf.nn.log_softmax(logits), tokens, batch_dims=2).numpy()
    ctc_logp = tf.nn.log_softmax(ctc_logits).numpy()
    for i, toks in enumerate(tokens.numpy()):
        end = list(toks).index(2)
        p_ctc = -ctc.ctc_nll_reference(ctc_logp[i, :enc[i]], toks[:end])
        np.testing.assert_allclose(scores[i], (1 - w) * att[i, :end + 1].sum() + w * p_ctc,
                                   rtol=1e-4)


def test_ctc_decoder_is_best_path_of_the_ctc_head():
    model = tiny_model(seed=6, ctc_weight=0.5)
    feats, frames = random_batch(8)
    tokens, _, _ = joint_decoding.make_ctc_decoder(model, 30)(feats, frames)
    _, _, ctc_logits, enc = model.teacher_forced(feats, frames, tf.constant([[2]] * 3),
                                                 with_ctc=True)
    best = ctc.ctc_greedy(ctc_logits, enc).to_list()
    for toks, path in zip(tokens.numpy(), best):
        assert list(toks[:len(path)]) == path and toks[len(path)] == 2


def test_ctc_decoding_of_a_model_without_a_ctc_head_is_refused_in_one_line():
    with pytest.raises(ValueError, match="--ctc_weight"):
        joint_decoding.make_joint_decoder(tiny_model(), 9, 3, 0.3)


def test_location_attention_keeps_padding_out_and_greedy_is_beam_of_one():
    model = tiny_model(attention="location", frame_stack=3, pyramid_layers=1)
    feats, frames = random_batch()
    assert_padding_changes_nothing(model, feats, frames, tf.constant([[3, 4, 5, 2]] * 3))
    tokens, scores, attn = make_decoder(model, 12)(feats, frames)
    b_tokens, b_scores, b_attn = model.beam_search(feats, frames, 12, 1)
    np.testing.assert_array_equal(tokens, b_tokens)
    np.testing.assert_allclose(scores, b_scores, rtol=1e-5)
    np.testing.assert_allclose(attn, b_attn, atol=1e-6)


def test_location_attention_reads_the_previous_weights():
    """The same query and keys give other weights after another previous alignment."""
    model = tiny_model(seed=7, attention="location")
    speller = model.speller
    feats, frames = random_batch(9)
    keys, values, mask = model.listen(feats, frames)
    state = speller.initial_state(3, tf.shape(keys)[1])
    _, _, first = speller.step(tf.fill([3], 1), state, keys, values, mask)
    moved = state[:-1] + (tf.one_hot(tf.fill([3], 5), tf.shape(keys)[1]),)
    _, _, other = speller.step(tf.fill([3], 1), moved, keys, values, mask)
    assert not np.allclose(first, other, atol=1e-4)


def test_a_speller_with_location_attention_learns(monkeypatch):
    original = tiny_model

    def location_model(seed=0, **kw):
        return original(seed, attention="location", **kw)
    monkeypatch.setattr("tests.test_las.tiny_model", location_model)
    test_teacher_forced_training_memorises_a_tiny_set()


def test_an_unknown_attention_is_refused():
    keras.utils.set_random_seed(0)
    with pytest.raises(ValueError, match="attention='additive'"):
        tiny_model(attention="additive")
