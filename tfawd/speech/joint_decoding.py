"""Decoding a recogniser that has a CTC head (`--ctc_weight` > 0), shaped as
`tfawd.speech.inference.make_decoder`'s decoders: (features, frames) -> (tokens [B, max_len]
ending in <eos>, scores [B], attention [B, max_len, T']).

- `make_joint_decoder`: joint CTC/attention one-pass beam search (Watanabe et al. 2017,
  "Hybrid CTC/Attention Architecture for End-to-End Speech Recognition", section 3.3):
  `tfawd.speech.ctc.joint_beam_search` per utterance, the speller's step a `tf.function` on the
  hypotheses of that utterance, the CTC prefix scores on the host. ESPnet's AN4 recipe decodes
  this way; without the CTC term its attention-only decoding was 70.6% CER, with it 15.3%.
  The attention maps are those of the best hypothesis (carried through the search as part of
  the decoder state). With a character LM (`tfawd.speech.char_lm`, --lm_weight): shallow
  fusion, its log-probability and a length bonus added to every hypothesis's score.
- `make_ctc_decoder`: the CTC head alone, best path (`ctc_greedy`); attention all zero.
"""
import numpy as np
import tensorflow as tf

from tfawd.speech.ctc import ctc_greedy, joint_beam_search
from tfawd.speech.inference import batch_spec


def _encode(model, max_len):
    @tf.function(input_signature=batch_spec(model.feature_dim)[:2])
    def encode(features, frames):
        keys, values, mask = model.listen(features, frames)
        ctc = tf.nn.log_softmax(tf.cast(model.ctc_head(values), tf.float32))
        return (keys, values, tf.reduce_sum(tf.cast(mask, tf.int32), axis=1), ctc,
                model.length_caps(frames, max_len))
    return encode


def _needs_ctc_head(model):
    if model.ctc_head is None:
        raise ValueError("CTC decoding needs a model trained with --ctc_weight > 0 (it has no "
                         "CTC head); decode with --ctc_decode_weight=0")


def _lm_scorer(lm):
    """(step_fn, initial state) of a `tfawd.speech.char_lm.CharLM` for `joint_beam_search`."""
    step = tf.function(lm.step, reduce_retracing=True)

    def lm_step(prev, states):
        logp, states = step(tf.constant(prev, tf.int32), [tf.constant(s) for s in states])
        return logp.numpy(), [s.numpy() for s in states]
    return lm_step, [np.asarray(s) for s in lm.initial_state(1)]


def make_joint_decoder(model, max_len: int, beam_size: int, ctc_weight: float, lm=None,
                       lm_weight: float = 0.0, length_bonus: float = 0.0):
    """Joint CTC/attention beam search with weight `ctc_weight` on the CTC prefix score (0: the
    attention beam search, as `ListenAttendSpell.beam_search`; 1: CTC prefix scores only, the
    attention decoder still proposing the characters). With a character LM `lm`: shallow
    fusion at `lm_weight`, plus `length_bonus` a character (`tfawd.speech.char_lm`)."""
    _needs_ctc_head(model)
    encode = _encode(model, max_len)
    speller = model.speller
    fusion = dict(lm=_lm_scorer(lm), lm_weight=lm_weight,
                  length_bonus=length_bonus) if lm is not None else {}

    @tf.function(reduce_retracing=True)
    def step(tokens, state, keys, values):
        n = tf.shape(tokens)[0]
        keys, values = tf.repeat(keys, n, axis=0), tf.repeat(values, n, axis=0)
        mask = tf.ones(tf.shape(keys)[:2], tf.bool)
        logits, state, weights = speller.step(tokens, state, keys, values, mask)
        return tf.nn.log_softmax(tf.cast(logits, tf.float32)), state, weights

    def decode(features, frames):
        keys, values, lengths, ctc, caps = encode(features, frames)
        batch, width = int(tf.shape(keys)[0]), int(tf.shape(keys)[1])
        tokens = np.full([batch, max_len], model.eos_id, np.int32)
        scores = np.zeros([batch], np.float32)
        attention = np.zeros([batch, max_len, width], np.float32)
        for b in range(batch):
            n = int(lengths[b])
            k, v = keys[b:b + 1, :n], values[b:b + 1, :n]

            def step_fn(prev, states, k=k, v=v):
                state, history = states
                logp, state, weights = step(tf.constant(prev, tf.int32), state, k, v)
                history = np.concatenate([history, weights.numpy()[:, None, :]], axis=1)
                return logp.numpy(), (tf.nest.map_structure(np.asarray, state), history)

            init = (tf.nest.map_structure(np.asarray, speller.initial_state(1, n)),
                    np.zeros([1, 0, n], np.float32))
            # caps: steps incl. <eos>, max_len + 1 uncapped (then, as in greedy decoding, a
            # transcript of max_len characters is cut there without its <eos>)
            hyps = joint_beam_search(step_fn, init, ctc[b, :n].numpy(), ctc_weight, beam_size,
                                     int(caps[b]), model.sos_id, model.eos_id, keep_states=True,
                                     **fusion)
            best = hyps[0]
            out = list(best.tokens) + [model.eos_id]
            tokens[b, :len(out)] = out[:max_len]
            scores[b] = best.score
            maps = best.state[1][0][:max_len]
            attention[b, :len(maps), :n] = maps
        return tf.constant(tokens), tf.constant(scores), tf.constant(attention)
    return decode


def make_ctc_decoder(model, max_len: int):
    """Best-path decoding of the CTC head alone (the recogniser without its attention decoder)."""
    _needs_ctc_head(model)
    encode = _encode(model, max_len)

    def decode(features, frames):
        _, _, lengths, ctc, _ = encode(features, frames)
        best = ctc_greedy(ctc, lengths)[:, :max_len - 1]
        tokens = tf.concat([best, tf.fill([best.nrows(), 1], model.eos_id)], axis=1)
        tokens = tokens.to_tensor(model.eos_id, shape=[None, max_len])
        return (tokens, tf.zeros([tf.shape(tokens)[0]]),
                tf.zeros([tf.shape(tokens)[0], max_len, tf.shape(ctc)[1]]))
    return decode
