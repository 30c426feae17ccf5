"""LAS attention aids: the guided attention loss (Tachibana et al. 2017, 4.1), windowed
attention (Chorowski et al. 2015, 2.3) in training and both decoders, and the decode-length
cap from the input frames."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipelines.speech_features import CharVocab
from tests.test_las import assert_padding_changes_nothing, random_batch, tiny_model
from tfawd.speech import las
from tfawd.speech import training as speech_training
from tfawd.speech.config import SpeechConfig
from tfawd.speech.inference import build_las, make_decoder

EOS = 2


def test_guided_attention_weights_by_hand():
    """W[n, t] = 1 - exp(-(n/N - t/T)^2 / (2 g^2)): 0 on the diagonal, growing off it, 0 on
    padded cells (utterance 0 has N=2 labels, T=4 frames; utterance 1 N=3, T=3)."""
    w = las.guided_attention_weights(tf.constant([2, 3]), tf.constant([4, 3]), 3, 4,
                                     width=0.2).numpy()
    g2 = 2 * 0.2 ** 2
    f = lambda d: 1 - math.exp(-d * d / g2)  # noqa: E731
    np.testing.assert_allclose(w[0], [[0, f(.25), f(.5), f(.75)],
                                      [f(.5), f(.25), 0, f(.25)],
                                      [0, 0, 0, 0]], atol=1e-6)  # label 2 is padding
    np.testing.assert_allclose(w[1, :, :3], [[0, f(1 / 3), f(2 / 3)],
                                             [f(1 / 3), 0, f(1 / 3)],
                                             [f(2 / 3), f(1 / 3), 0]], atol=1e-6)
    assert (w[1, :, 3] == 0).all()  # frame 3 is padding
    assert f(.25) == pytest.approx(0.54216, abs=1e-5)
    assert 0 < f(.25) < f(.5) < f(.75) < 1
    wider = las.guided_attention_weights(tf.constant([2]), tf.constant([4]), 2, 4, width=0.5)
    assert float(wider[0, 0, 1]) < w[0, 0, 1]  # a larger g tolerates more


def test_guided_attention_loss_is_zero_on_the_diagonal_and_ignores_padding():
    n = tf.constant([4])
    diagonal = tf.eye(4)[None]
    anti = tf.eye(4)[::-1][None]
    uniform = tf.fill([1, 4, 4], 0.25)
    losses = [float(las.guided_attention_loss(a, n, n)) for a in (diagonal, uniform, anti)]
    assert losses[0] == 0 and 0 < losses[1] < losses[2]
    # anti-diagonal by hand: cells (n, 3-n), |n/4 - (3-n)/4| = 3/4, 1/4, 1/4, 3/4; mean over 16
    g2 = 2 * 0.2 ** 2
    by_hand = 2 * (1 - math.exp(-0.75 ** 2 / g2)) + 2 * (1 - math.exp(-0.25 ** 2 / g2))
    assert losses[2] == pytest.approx(by_hand / 16, rel=1e-5)
    # the same utterance padded in a batch (attention on padded cells too): the mean runs over
    # the 16 + 4 unpadded cells only
    padded = np.zeros([2, 6, 7], np.float32)
    padded[0, :4, :4] = anti[0]
    padded[0, 4:, :] = padded[0, :, 4:] = 1.0  # mass on padding is not penalised
    padded[1, 0, :4] = [1, 0, 0, 0]  # N=1, T=4: on its diagonal (t=0)
    batch = float(las.guided_attention_loss(tf.constant(padded), tf.constant([4, 1]),
                                            tf.constant([4, 4])))
    assert batch == pytest.approx(by_hand / 20, rel=1e-5)


def test_windowed_dot_attention_is_zero_outside_the_window_and_on_padding():
    rng = np.random.default_rng(0)
    keys = tf.constant(rng.normal(size=(3, 12, 4)) * 5, tf.float32)
    values = tf.constant(rng.normal(size=(3, 12, 4)), tf.float32)
    mask = tf.sequence_mask([12, 12, 6], 12)
    peak = tf.constant([0, 7, 5])
    window = las.attention_window(peak, 12, ahead=3, back=2)
    ctx, w = las.dot_attention(tf.constant(rng.normal(size=(3, 4)), tf.float32), keys, values,
                               mask, window)
    w = w.numpy()
    inside = np.zeros([3, 12], bool)
    inside[0, 0:4] = inside[1, 5:11] = inside[2, 3:6] = True  # [p-2, p+3], cut at 0 / padding
    np.testing.assert_array_equal(window.numpy() & mask.numpy(), inside)
    assert (w[~inside] == 0).all() and (w[inside] > 0).all()
    np.testing.assert_allclose(w.sum(1), 1, rtol=1e-6)
    np.testing.assert_allclose(ctx[1], w[1, 5:11] @ values.numpy()[1, 5:11], rtol=1e-5,
                               atol=1e-6)


def window_model(seed=0, **kw):
    return tiny_model(seed, attention_window=3, attention_window_back=1, **kw)


def discourage_eos(model, bias):
    """Sets the output bias of <eos> (an untrained speller may end at once)."""
    b = model.speller.char_logits.bias
    b.assign(tf.tensor_scatter_nd_update(b, [[EOS]], [bias]))


def assert_windowed(attn, frames_out, ahead=3, back=1, steps=None):
    """Each step's attention lies in [p - back, p + ahead] (p: the previous step's argmax, 0
    at first), on unpadded frames, and sums to 1."""
    for a, n in zip(attn, frames_out):
        a = a[:steps] if steps is not None else a
        peak = 0
        for row in a:
            allowed = np.zeros(len(row), bool)
            allowed[max(0, peak - back):min(n, peak + ahead + 1)] = True
            assert (row[~allowed] == 0).all() and (row[allowed] > 0).all()
            np.testing.assert_allclose(row.sum(), 1, rtol=1e-5)
            peak = int(row.argmax())


def test_teacher_forced_attention_stays_in_the_window():
    model = window_model()
    feats, frames = random_batch(frames=(20, 13, 7))
    labels = tf.constant([[3, 4, 5, 6, 7, 3, 4, 2]] * 3)
    _, attn = model.teacher_forced(feats, frames, labels)
    assert_windowed(attn.numpy(), frames.numpy())
    # and it changes the attention: without the window the peaks are free
    _, free = tiny_model().teacher_forced(feats, frames, labels)
    assert not np.allclose(attn, free)


def test_greedy_equals_beam_of_one_with_the_window_and_the_cap():
    model = window_model(max_chars_per_frame=0.5)  # caps 10, 7 and 4 steps
    discourage_eos(model, -2.0)
    feats, frames = random_batch(1, frames=(20, 13, 7))
    tokens, scores, attn = make_decoder(model, 12)(feats, frames)
    ends = [list(t).index(EOS) + 1 for t in tokens.numpy()]
    assert ends == [10, 7, 4]
    peaks = attn.numpy()[0, :10].argmax(-1)
    assert (np.diff(peaks) < 0).any() and peaks.max() > 3  # the window moved both ways
    b_tokens, b_scores, b_attn = model.beam_search(feats, frames, 12, 1)
    np.testing.assert_array_equal(tokens, b_tokens)
    np.testing.assert_allclose(scores, b_scores, rtol=1e-5)
    np.testing.assert_allclose(attn, b_attn, atol=1e-6)
    for a, end, n in zip(attn.numpy(), ends, frames.numpy()):
        assert_windowed(a[None], [n], steps=end)
    # each token before the forced <eos> is the argmax given the previous ones under the
    # same window
    logits, _ = model.teacher_forced(feats, frames, tokens)
    argmax = tf.argmax(logits, -1, output_type=tf.int32).numpy()
    for row, toks, end in zip(argmax, tokens.numpy(), ends):
        np.testing.assert_array_equal(row[:end - 1], toks[:end - 1])
    # a wider beam keeps the window too (its state carries each beam's own peak)
    beam_tokens, _, beam_attn = make_decoder(model, 12, beam_size=3)(feats, frames)
    _, beam_forced = model.teacher_forced(feats, frames, beam_tokens)
    for a, f, toks in zip(beam_attn.numpy(), beam_forced.numpy(), beam_tokens.numpy()):
        end = list(toks).index(EOS) + 1
        np.testing.assert_allclose(a[:end], f[:end], atol=1e-5)


def test_decode_cap_limits_the_output_length():
    """A speller that never says <eos> runs to max_len; with max_chars_per_frame = 0.25 the
    20-, 13- and 7-frame utterances end with a forced <eos> at step 5, 4 and 2, and the score
    is still the sequence's log-probability (the forced <eos> included)."""
    feats, frames = random_batch(2, frames=(20, 13, 7))
    free = tiny_model(seed=5)
    discourage_eos(free, -30.0)
    tokens, _, _ = make_decoder(free, 12)(feats, frames)
    assert (tokens.numpy() != EOS).all()
    capped = tiny_model(seed=5, max_chars_per_frame=0.25)
    discourage_eos(capped, -30.0)
    np.testing.assert_array_equal(capped.length_caps(frames, 12), [5, 4, 2])
    np.testing.assert_array_equal(capped.length_caps(frames, 3), [4, 4, 2])  # 4: none
    for beam in (1, 3):
        tokens, scores, _ = make_decoder(capped, 12, beam_size=beam)(feats, frames)
        ends = [list(t).index(EOS) + 1 for t in tokens.numpy()]
        assert ends == [5, 4, 2], (beam, tokens)
        assert (tokens.numpy()[:, :-1] != EOS).sum(1).tolist() == [4, 3, 1]
        logits, _ = capped.teacher_forced(feats, frames, tokens)
        logp = tf.gather(tf.nn.log_softmax(logits), tokens, batch_dims=2).numpy()
        np.testing.assert_allclose([r[:e].sum() for r, e in zip(logp, ends)], scores,
                                   rtol=1e-4)


def test_the_flags_reach_the_model_and_its_config():
    cfg = SpeechConfig(listener_units=8, speller_units=8, attention_dim=4, char_embed_dim=4,
                       attention_window=9, attention_window_back=2, max_chars_per_frame=0.3)
    model = build_las(cfg, CharVocab())
    config = model.get_config()
    assert (config["attention_window"], config["attention_window_back"],
            config["max_chars_per_frame"]) == (9, 2, 0.3)
    assert (model.speller.window, model.speller.window_back) == (9, 2)
    assert model.max_chars_per_frame == 0.3


def test_guided_attention_training_moves_attention_to_the_diagonal():
    """The train step reports the (unweighted) guided loss; minimising it with a large
    weight lowers it well below its start."""
    keras.utils.set_random_seed(0)
    model = tiny_model(seed=6, frame_stack=2)
    cfg = SpeechConfig(label_smoothing=0.0, guided_attention=200.0, guided_attention_width=0.2)
    step = speech_training.make_train_step(model, keras.optimizers.Adam(0.01), cfg)
    feats, frames = random_batch(7, frames=(24, 18, 12))
    labels = tf.constant([[3, 4, 5, 6, 2], [5, 6, 7, 2, 0], [7, 3, 2, 0, 0]])
    seed = tf.constant([0, 0])
    ce, guided, _ = step(feats, frames, labels, 1.0, seed)
    start = float(guided)
    assert float(ce) > 0 and start > 0
    for _ in range(40):
        ce, guided, _ = step(feats, frames, labels, 1.0, seed)
    assert float(guided) < 0.5 * start


def test_padding_does_not_change_windowed_attention():
    model = window_model(frame_stack=3, pyramid_layers=1)
    feats, frames = random_batch(frames=(40, 26, 14))
    assert_padding_changes_nothing(model, feats, frames, tf.constant([[3, 4, 5, 6, 7, 2]] * 3))


def test_a_ctc_head_exists_only_with_a_ctc_weight_and_round_trips():
    assert tiny_model().ctc_head is None
    model = tiny_model(seed=3, ctc_weight=0.4)
    assert model.ctc_head is not None and model.get_config()["ctc_weight"] == 0.4
    rebuilt = las.ListenAttendSpell.from_config(model.get_config())
    assert rebuilt.ctc_weight == 0.4
    old = {k: v for k, v in tiny_model().get_config().items() if k != "ctc_weight"}
    assert las.ListenAttendSpell.from_config(old).ctc_head is None  # a run from before CTC


def test_the_ctc_step_reports_both_losses_as_their_formulas():
    """With --ctc_weight the step's cross-entropy is the speller's and its CTC the head's NLL
    per character of the batch (learning rate 0: the step changes no weight)."""
    from tfawd.speech.ctc import ctc_loss
    model = tiny_model(seed=3, ctc_weight=0.4)
    cfg = SpeechConfig(label_smoothing=0.0, ctc_weight=0.4)
    step = speech_training.make_train_step(model, keras.optimizers.Adam(0.0), cfg)
    feats, frames = random_batch(2, frames=(24, 18, 12))
    labels = tf.constant([[3, 4, 5, 6, 2], [5, 6, 7, 2, 0], [7, 3, 2, 0, 0]])
    seed = tf.constant([0, 0])
    ce, _, ctc = step(feats, frames, labels, 1.0, seed)
    logits, _, ctc_logits, enc = model.teacher_forced(feats, frames, labels, 1.0, seed,
                                                      training=True, with_ctc=True)
    chars = float(tf.reduce_sum(tf.cast(labels > 0, tf.float32)))
    assert float(ce) == pytest.approx(
        float(speech_training.sequence_loss(logits, labels, 0.0)), rel=1e-5)
    assert float(ctc) == pytest.approx(
        float(tf.reduce_sum(ctc_loss(ctc_logits, enc, labels))) / chars, rel=1e-5)
    assert float(ctc) > 0


def test_training_with_a_ctc_weight_lowers_the_ctc_loss():
    model = tiny_model(seed=4, ctc_weight=0.5)
    cfg = SpeechConfig(label_smoothing=0.0, ctc_weight=0.5)
    step = speech_training.make_train_step(model, keras.optimizers.Adam(0.01), cfg)
    feats, frames = random_batch(5, frames=(24, 18, 12))
    labels = tf.constant([[3, 4, 5, 6, 2], [5, 6, 7, 2, 0], [7, 3, 2, 0, 0]])
    _, _, first = step(feats, frames, labels, 1.0, tf.constant([0, 0]))
    for _ in range(30):
        _, _, ctc = step(feats, frames, labels, 1.0, tf.constant([0, 0]))
    assert float(ctc) < 0.5 * float(first)
