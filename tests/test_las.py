"""Listen-Attend-Spell: attention masking, padding invariance, decoding, memorisation,
error rates and the diagonality score."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfawd.speech import evaluation as speech_eval
from tfawd.speech import las
from tfawd.speech.inference import make_decoder
from tfawd.speech.training import sequence_loss

V = 8  # <pad> <sos> <eos> + 5 characters


def tiny_model(seed=0, **kw):
    keras.utils.set_random_seed(seed)
    args = dict(listener_units=16, speller_units=24, attention_dim=12, embed_dim=8)
    args.update(kw)
    model = las.ListenAttendSpell(V, **args)
    model.teacher_forced(tf.zeros([1, 3, 40]), tf.constant([3]), tf.constant([[2]]))
    return model


def random_batch(seed=0, frames=(20, 13, 7)):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(len(frames), max(frames), 40)).astype(np.float32)
    for i, n in enumerate(frames):
        feats[i, n:] = 0
    return tf.constant(feats), tf.constant(frames, tf.int32)


def test_dot_attention_puts_exactly_zero_on_padded_frames():
    rng = np.random.default_rng(0)
    keys = tf.constant(rng.normal(size=(2, 6, 4)) * 50, tf.float32)  # large energies
    values = tf.constant(rng.normal(size=(2, 6, 4)), tf.float32)
    mask = tf.sequence_mask([6, 2], 6)
    ctx, w = las.dot_attention(tf.constant(rng.normal(size=(2, 4)), tf.float32), keys, values, mask)
    w = w.numpy()
    assert (w[1, 2:] == 0).all()
    np.testing.assert_allclose(w.sum(1), 1, rtol=1e-6)
    np.testing.assert_allclose(ctx[1], w[1, :2] @ values.numpy()[1, :2], rtol=1e-5, atol=1e-6)


def assert_padding_changes_nothing(model, feats, frames, labels):
    """Each utterance alone and padded in the batch: same attention over its frames, zero
    attention beyond them, same characters."""
    logits, attn = model.teacher_forced(feats, frames, labels)
    for i, n in enumerate(frames.numpy()):
        alone_logits, alone_attn = model.teacher_forced(feats[i:i + 1, :n], frames[i:i + 1],
                                                        labels[i:i + 1])
        width = alone_attn.shape[-1]
        np.testing.assert_allclose(logits[i], alone_logits[0], atol=1e-5)
        np.testing.assert_allclose(attn[i, :, :width], alone_attn[0], atol=1e-6)
        assert (attn[i, :, width:].numpy() == 0).all()


@pytest.mark.parametrize("frame_stack,pyramid", [(1, 0), (3, 1)])
def test_padding_does_not_change_an_utterances_outputs(frame_stack, pyramid):
    model = tiny_model(frame_stack=frame_stack, pyramid_layers=pyramid)
    feats, frames = random_batch()
    assert_padding_changes_nothing(model, feats, frames, tf.constant([[3, 4, 5, 2]] * 3))


def test_greedy_equals_stepwise_argmax_and_beam_of_one():
    model = tiny_model()
    feats, frames = random_batch(1)
    tokens, scores, attn = make_decoder(model, 12)(feats, frames)
    b_tokens, b_scores, b_attn = model.beam_search(feats, frames, 12, 1)  # make_decoder
    # would route beam_size 1 to greedy
    np.testing.assert_array_equal(tokens, b_tokens)
    np.testing.assert_allclose(scores, b_scores, rtol=1e-5)
    np.testing.assert_allclose(attn, b_attn, atol=1e-6)
    # greedy step by step: each token is the argmax given the previous ones (teacher forcing
    # on its own output reproduces it)
    logits, _ = model.teacher_forced(feats, frames, tokens)
    np.testing.assert_array_equal(tf.argmax(logits, -1, output_type=tf.int32), tokens)


def test_beam_search_score_is_at_least_greedys():
    model = tiny_model(seed=3)
    feats, frames = random_batch(2)
    _, greedy_scores, _ = make_decoder(model, 10)(feats, frames)
    tokens, beam_scores, _ = make_decoder(model, 10, beam_size=4)(feats, frames)
    assert (beam_scores.numpy() >= greedy_scores.numpy() - 1e-4).all()
    # the returned score is the sequence's log-probability under the model
    logits, _ = model.teacher_forced(feats, frames, tokens)
    logp = tf.gather(tf.nn.log_softmax(logits), tokens, batch_dims=2).numpy()
    for row, toks, score in zip(logp, tokens.numpy(), beam_scores.numpy()):
        end = list(toks).index(2) + 1 if 2 in toks else len(toks)
        np.testing.assert_allclose(row[:end].sum(), score, rtol=1e-4)


def test_teacher_forced_training_memorises_a_tiny_set():
    """Four utterances whose transcripts differ: after training, greedy decoding reproduces
    each one exactly."""
    model = tiny_model(seed=1, listener_units=32, speller_units=48, attention_dim=24)
    feats, frames = random_batch(5, frames=(12, 16, 9, 14))
    feats = tf.concat([feats, tf.zeros([1, 16, 40])], 0)[:4]
    labels = tf.constant([[3, 4, 5, 2, 0], [5, 6, 7, 3, 2], [7, 2, 0, 0, 0], [4, 4, 6, 2, 0]])
    opt = keras.optimizers.Adam(0.01)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits, _ = model.teacher_forced(feats, frames, labels, training=True)
            loss = sequence_loss(logits, labels, 0.0)
        opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    for _ in range(150):
        loss = step()
    assert float(loss) < 0.05
    tokens, _, _ = make_decoder(model, 6)(feats, frames)
    for toks, ref in zip(tokens.numpy(), labels.numpy()):
        n = list(ref).index(2) + 1
        np.testing.assert_array_equal(toks[:n], ref[:n])


def test_scheduled_teacher_forcing_reads_own_predictions():
    """With rate 0 every step after the first reads the previous argmax: the result equals
    teacher forcing on the model's own greedy output."""
    model = tiny_model(seed=2)
    feats, frames = random_batch(3)
    labels = tf.constant([[3, 4, 5, 6, 2]] * 3)
    free, _ = model.teacher_forced(feats, frames, labels, teacher_forcing=0.0)
    own = tf.argmax(free, -1, output_type=tf.int32)
    forced, _ = model.teacher_forced(feats, frames, own)
    np.testing.assert_allclose(free, forced, atol=1e-5)
    truth, _ = model.teacher_forced(feats, frames, labels, teacher_forcing=1.0)
    assert not np.allclose(truth, free)


def test_sequence_loss_ignores_padding_and_smooths():
    logits = tf.constant(np.random.default_rng(0).normal(size=(1, 3, V)), tf.float32)
    full = sequence_loss(logits, tf.constant([[3, 2, 0]]), 0.0)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits([3, 2], logits[0, :2])
    np.testing.assert_allclose(full, tf.reduce_mean(ce), rtol=1e-6)
    # smoothing 0.1 over V classes: (1 - 0.1) * CE + 0.1 * mean over classes of -log p,
    # written out in NumPy on the two real positions
    logp = tf.nn.log_softmax(logits[0, :2]).numpy().astype(np.float64)
    expected = np.mean([0.9 * -logp[0, 3] + 0.1 * -logp[0].mean(),
                        0.9 * -logp[1, 2] + 0.1 * -logp[1].mean()])
    smoothed = float(sequence_loss(logits, tf.constant([[3, 2, 0]]), 0.1))
    assert smoothed == pytest.approx(expected, rel=1e-5) and smoothed > float(full)


def test_error_rates_on_hand_made_strings():
    r = speech_eval.error_rates(["one two", "thre"], ["one two", "three"])
    assert r["cer"] == pytest.approx(1 / 12) and r["wer"] == pytest.approx(1 / 3)
    r = speech_eval.error_rates(["", "nine nine"], ["five", "nine"])
    assert r["cer"] == pytest.approx((4 + 5) / 8) and r["wer"] == pytest.approx(2 / 2)
    with pytest.raises(ValueError):
        speech_eval.error_rates(["a"], [])


def test_diagonality_score():
    diag = np.eye(5)[None]
    assert speech_eval.diagonality(diag, [5], [5]) == {
        "monotonic": 1.0, "monotonic_within_tolerance": 1.0, "tolerance": 4,
        "near_peak_mass": 1.0, "steps": 5}
    backwards = np.eye(4)[::-1][None]
    assert speech_eval.diagonality(backwards, [4], [4])["monotonic"] == 0.0
    # peaks 0, 6, 3, 9, 1: moves +6, -3, +6, -8 -> strict 2/4, within 4 frames 3/4
    jitter = np.eye(10)[[0, 6, 3, 9, 1]][None]
    score = speech_eval.diagonality(jitter, [5], [10], tolerance=4)
    assert score["monotonic"] == 0.5 and score["monotonic_within_tolerance"] == 0.75
    # only the first out_lengths steps and frames count
    assert speech_eval.diagonality(jitter, [2], [10])["monotonic"] == 1.0
    flat = np.full((1, 2, 20), 1 / 20)
    mass = speech_eval.diagonality(flat, [2], [20], width=3)["near_peak_mass"]
    assert mass == pytest.approx(4 / 20)


def test_attention_plot_is_written(tmp_path):
    path = speech_eval.plot_attention(np.eye(6)[:4], list("ab c"), str(tmp_path / "a.png"), "x")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
