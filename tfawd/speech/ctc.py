"""Connectionist temporal classification (CTC) for the character recogniser, and joint
CTC/attention decoding.

- Blank: CTC needs one extra "no character" output. `CTC_BLANK` is the `<pad>` id 0 of
  `pipelines.speech_features.CharVocab`: padding is never a target (labels hold 0 only after
  their end), so the id is free, and a CTC head over the speller's vocabulary (V = 31) needs no
  extra column. `<sos>` (1) and `<eos>` (2) stay ordinary CTC symbols that never occur in a
  target, so training drives their probability to ~0.
- Labels: the speller's labels are `[B, L]` character ids ending in `<eos>`, padded with 0;
  CTC's targets are the characters only (`ctc_labels` drops `<eos>` and padding).
- Training: `ctc_loss` (tf.nn.ctc_loss), checked against `ctc_nll_reference`, the forward
  algorithm of Graves et al. (2006), "Connectionist Temporal Classification", eq. 5-8.
- Decoding: `ctc_greedy` (best path), `ctc_prefix_beam_search` (Hannun et al. 2014, "First-pass
  large vocabulary continuous speech recognition using bi-directional recurrent DNNs";
  Graves 2012 section 7.5), and `joint_beam_search`: the attention decoder's label-synchronous
  beam search rescored on the fly by `CTCPrefixScorer`, the CTC prefix score of Watanabe et al.
  (2017), "Hybrid CTC/Attention Architecture for End-to-End Speech Recognition", section 3.3 /
  Algorithm 2 (Kim, Hori and Watanabe 2017, "Joint CTC-attention based end-to-end speech
  recognition using multi-task learning").

Host-side functions (the reference, the beam searches, the scorer) take NumPy log-probabilities
of one utterance, `[T, V]`, already cut to its length, and work in float64 log space.
"""
from typing import NamedTuple

import numpy as np
import tensorflow as tf

CTC_BLANK = 0  # CharVocab's <pad>
SOS_ID, EOS_ID = 1, 2  # CharVocab's <sos>, <eos>
NEG_INF = -np.inf


def _logsumexp(x, axis):
    """log(sum(exp(x))) over `axis`, -inf (not nan) where every term is -inf."""
    x = np.asarray(x, np.float64)
    top = np.max(x, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(x - top), axis=axis, keepdims=True)) + top
    return np.squeeze(out, axis=axis)


def ctc_labels(labels, eos_id=EOS_ID):
    """labels [B, L] (character ids, maybe `<eos>`, padded with 0) -> (labels [B, L'] int32 with
    `<eos>` and padding removed, left-aligned and padded with 0, lengths [B] int32)."""
    labels = tf.convert_to_tensor(labels, tf.int32)
    keep = (labels != CTC_BLANK) & (labels != eos_id)
    ragged = tf.ragged.boolean_mask(labels, keep)
    return ragged.to_tensor(0), tf.cast(ragged.row_lengths(), tf.int32)


def ctc_loss(logits, logit_lengths, labels, eos_id=EOS_ID):
    """Per-utterance CTC negative log-likelihood -log p(y | x), [B] float32.

    logits [B, T, V] (any float dtype; the loss is computed in float32), logit_lengths [B]
    (frames of each utterance), labels [B, L] as the speller's (`ctc_labels` strips `<eos>` and
    padding). An utterance with fewer frames than its labelling needs (characters + repeats) has
    probability 0: TensorFlow then returns a huge finite loss (about 700 in float32), not inf,
    so callers should filter such utterances."""
    labels, label_lengths = ctc_labels(labels, eos_id)
    return tf.nn.ctc_loss(labels, tf.cast(logits, tf.float32), label_lengths,
                          tf.cast(logit_lengths, tf.int32), logits_time_major=False,
                          blank_index=CTC_BLANK)


def ctc_nll_reference(log_probs, label, blank=CTC_BLANK):
    """-log p(label | x) by the forward algorithm, written out (Graves et al. 2006 eq. 5-8).

    l' = label with a blank before, between and after the characters (|l'| = 2S + 1).
    alpha_1(1) = y_1^b, alpha_1(2) = y_1^{l_1}, alpha_1(s) = 0 for s > 2 (eq. 5-6);
    alpha_t(s) = (alpha_{t-1}(s) + alpha_{t-1}(s-1) [+ alpha_{t-1}(s-2) if l'_s != b and
    l'_s != l'_{s-2}]) y_t^{l'_s} (eq. 6-7); p = alpha_T(|l'|) + alpha_T(|l'| - 1) (eq. 8).
    In log space; log_probs [T, V], label [S] (no blanks)."""
    y = np.asarray(log_probs, np.float64)
    ext = [blank]
    for c in label:
        ext += [int(c), blank]
    alpha = np.full(len(ext), NEG_INF)
    alpha[0] = y[0, blank]
    if len(ext) > 1:
        alpha[1] = y[0, ext[1]]
    for t in range(1, len(y)):
        new = np.full(len(ext), NEG_INF)
        for s in range(len(ext)):
            terms = [alpha[s]]
            if s >= 1:
                terms.append(alpha[s - 1])
            if s >= 2 and ext[s] != blank and ext[s] != ext[s - 2]:
                terms.append(alpha[s - 2])
            new[s] = _logsumexp(terms, 0) + y[t, ext[s]]
        alpha = new
    return -float(_logsumexp(alpha[-2:], 0))


def ctc_greedy(log_probs, lengths, blank=CTC_BLANK):
    """Best path decoding: log_probs [B, T, V], lengths [B] -> tf.RaggedTensor [B, None] of the
    most probable frame labels with repeats collapsed, then blanks dropped (works in graphs)."""
    best = tf.argmax(log_probs, axis=-1, output_type=tf.int32)
    previous = tf.pad(best[:, :-1], [[0, 0], [1, 0]], constant_values=-1)
    keep = ((best != blank) & (best != previous)
            & tf.sequence_mask(lengths, tf.shape(best)[1]))
    return tf.ragged.boolean_mask(best, keep)


def ctc_prefix_beam_search(log_probs, beam, blank=CTC_BLANK):
    """CTC prefix beam search (Hannun et al. 2014; Graves 2012 section 7.5): log_probs [T, V]
    -> up to `beam` (labelling tuple, log p(labelling | x)) pairs, best first.

    Each kept prefix l carries log p_b(l) and log p_nb(l): the probability of the frames so far
    being collapsed to l with the last frame blank / non-blank. One frame t:
      p_b'(l) += (p_b(l) + p_nb(l)) y_t^b                        (a blank)
      p_nb'(l) += p_nb(l) y_t^{last(l)}                          (the last character repeated)
      p_nb'(l + c) += (p_b(l) + p_nb(l)) y_t^c, c != last(l)     (a new character)
      p_nb'(l + c) += p_b(l) y_t^c, c == last(l)                 (a repeat after a blank)
    then the `beam` prefixes with the largest p_b + p_nb are kept. The score of a labelling is
    log(p_b + p_nb) after the last frame: exact (the sum over all its alignments) unless a
    prefix of it was pruned."""
    y = np.asarray(log_probs, np.float64)
    beams = {(): (0.0, NEG_INF)}
    for t in range(len(y)):
        nxt = {}

        def add(prefix, b=NEG_INF, nb=NEG_INF):
            old_b, old_nb = nxt.get(prefix, (NEG_INF, NEG_INF))
            nxt[prefix] = (np.logaddexp(old_b, b), np.logaddexp(old_nb, nb))

        for prefix, (pb, pnb) in beams.items():
            total = np.logaddexp(pb, pnb)
            add(prefix, b=total + y[t, blank])
            for c in np.flatnonzero(np.isfinite(y[t])):
                if c == blank:
                    continue
                c = int(c)
                if prefix and c == prefix[-1]:
                    add(prefix, nb=pnb + y[t, c])
                    add(prefix + (c,), nb=pb + y[t, c])
                else:
                    add(prefix + (c,), nb=total + y[t, c])
        ranked = sorted(nxt.items(), key=lambda kv: -np.logaddexp(*kv[1]))
        beams = {p: s for p, s in ranked[:beam] if np.isfinite(np.logaddexp(*s))}
    return [(p, float(np.logaddexp(*s))) for p, s in beams.items()]


class CTCState(NamedTuple):
    """CTC forward variables of N hypotheses h: r [N, T, 2] = log r_t^n(h), log r_t^b(h) (the
    probability of frames 1..t being collapsed to h, ending in a non-blank / blank frame), and
    last [N] (h's last character, -1 for the empty hypothesis <sos>)."""
    r: np.ndarray
    last: np.ndarray


class CTCPrefixScorer:
    """The CTC prefix score of Watanabe et al. (2017) section 3.3, Algorithm 2 (the
    multi-candidate form of ESPnet's CTCPrefixScore), for one utterance's CTC log-probs [T, V].

    For a hypothesis g with forward variables r_t^n(g), r_t^b(g) (`CTCState`) and a candidate
    character c, h = g + c. With phi_t = r_t^b(g) + (0 if c == last(g) else r_t^n(g)) and
    phi_0 = 1 if g is empty else 0 (frames are 1..T):
      r_t^n(h) = (r_{t-1}^n(h) + phi_{t-1}) y_t^c,        r_0^n(h) = 0,
      r_t^b(h) = (r_{t-1}^b(h) + r_{t-1}^n(h)) y_t^blank,  r_0^b(h) = 0,
      psi(h) = sum_{t=1..T} phi_{t-1} y_t^c
    psi(h) = p(h...| x), the probability of all labellings that start with h (term t: c, h's
    last character, is first emitted at frame t). The empty hypothesis has r_t^n = 0 and
    r_t^b = prod_{s<=t} y_s^b.
    For c = <eos> the score is p(g | x) = r_T^n(g) + r_T^b(g). Everything in log space; psi is
    vectorised over hypotheses, candidates and frames, the r recursion (only for the kept
    extensions, `advance`) over hypotheses."""

    def __init__(self, log_probs, blank=CTC_BLANK, eos_id=EOS_ID):
        self.y = np.asarray(log_probs, np.float64)
        self.blank, self.eos_id = blank, eos_id

    def initial_state(self):
        """The empty hypothesis (<sos>), N = 1."""
        r = np.full((1, len(self.y), 2), NEG_INF)
        r[0, :, 1] = np.cumsum(self.y[:, self.blank])
        return CTCState(r, np.array([-1]))

    def _phi(self, state):
        """[N, T, V]: phi_{t-1} for frames t = 1..T (phi_0 first), per candidate c."""
        rn, rb = state.r[:, :, 0], state.r[:, :, 1]
        phi = np.repeat(np.logaddexp(rn, rb)[:, :, None], self.y.shape[1], axis=2)
        rows = np.flatnonzero(state.last >= 0)
        phi[rows, :, state.last[rows]] = rb[rows]
        start = np.where(state.last < 0, 0.0, NEG_INF)[:, None, None]
        start = np.broadcast_to(start, (len(phi), 1, phi.shape[2]))
        return np.concatenate([start, phi[:, :-1]], axis=1)

    def prefix_scores(self, state):
        """[N, V]: log psi(h + c) for every candidate c, <eos> treated as an ordinary symbol;
        -inf for the blank."""
        psi = _logsumexp(self._phi(state) + self.y[None], axis=1)
        psi[:, self.blank] = NEG_INF
        return psi

    def end_scores(self, state):
        """[N]: log p(h | x) = log(r_T^n(h) + r_T^b(h))."""
        return np.logaddexp(state.r[:, -1, 0], state.r[:, -1, 1])

    def scores(self, state):
        """[N, V]: the score alpha_ctc(h + c) of each extension: `prefix_scores`, with the
        <eos> column replaced by `end_scores` (the hypothesis ends)."""
        out = self.prefix_scores(state)
        out[:, self.eos_id] = self.end_scores(state)
        return out

    def advance(self, state, parents, tokens):
        """The state of the M hypotheses parents[m] + tokens[m] (r recursion above)."""
        parents, tokens = np.asarray(parents), np.asarray(tokens)
        parent = CTCState(state.r[parents], state.last[parents])
        phi = self._phi(parent)[np.arange(len(tokens)), :, tokens]  # [M, T]
        yc, yb = self.y[:, tokens].T, self.y[:, self.blank]  # [M, T], [T]
        r = np.full((len(tokens), len(self.y), 2), NEG_INF)
        r[:, 0, 0] = phi[:, 0] + yc[:, 0]
        for t in range(1, len(self.y)):
            r[:, t, 0] = np.logaddexp(r[:, t - 1, 0], phi[:, t]) + yc[:, t]
            r[:, t, 1] = np.logaddexp(r[:, t - 1, 0], r[:, t - 1, 1]) + yb[t]
        return CTCState(r, tokens.copy())


class Hypothesis(NamedTuple):
    """A finished hypothesis: its characters (no <sos>/<eos>), joint score, and the attention
    log-probability (incl. <eos>) and CTC log-probability log p_ctc(tokens | x) (0 when the
    search ran without CTC) it combines; with `keep_states`, `state`: the decoder state after
    its <eos> step (e.g. its attention history); `lm`: the fused character LM's log p(tokens +
    <eos>) (0 without one)."""
    tokens: tuple
    score: float
    att: float
    ctc: float
    state: object = None
    lm: float = 0.0


def joint_beam_search(step_fn, init_state, ctc_log_probs, ctc_weight, beam, max_len,
                      sos_id=SOS_ID, eos_id=EOS_ID, blank=CTC_BLANK, keep_states=False,
                      lm=None, lm_weight=0.0, length_bonus=0.0):
    """Joint CTC/attention one-pass beam search (Watanabe et al. 2017 section 3.3, eq. 23-25):
    each hypothesis h is scored alpha(h) = (1 - w) alpha_att(h) + w alpha_ctc(h), where
    alpha_att(g + c) = alpha_att(g) + log p_att(c | g, x) and alpha_ctc(h) =
    `CTCPrefixScorer.scores` (log psi(h), or log p_ctc(g | x) for h = g + <eos>), w = ctc_weight.

    step_fn(tokens [N], states) -> (log p_att [N, V], new states): the attention decoder's step
    on the previous characters; states a nest of arrays with a leading N axis (gathered with
    index arrays). init_state: its state for one hypothesis (N = 1). ctc_log_probs [T, V]: one
    utterance's CTC log-probs, cut to its frames.

    As `ListenAttendSpell.beam_search`: `beam` slots; a hypothesis ending in <eos> keeps its
    slot with its final score and competes with the live extensions (all candidates are ranked
    together, the best `beam` kept); the search stops when every kept hypothesis has ended; step
    `max_len` (counting <eos>) may only be <eos>. Extensions scored -inf (the CTC blank, w > 0)
    are never kept. No length normalisation. Returns the kept `Hypothesis`es, best first (with
    `keep_states`, each with its decoder state after the <eos> step). A
    weight of exactly 0 (1) skips the CTC (attention) term: a plain attention (CTC-only)
    search.

    Shallow fusion (`tfawd.speech.char_lm`): `lm` = (lm_step_fn, lm_init_state), shaped as
    step_fn / init_state, adds lm_weight * log p_lm(h) (`Hypothesis.lm`, <eos> scored too) and
    length_bonus per character of h (<eos> counted) to alpha(h)."""
    use_att, use_ctc = ctc_weight < 1, ctc_weight > 0
    scorer = CTCPrefixScorer(ctc_log_probs, blank, eos_id) if use_ctc else None
    ctc_state = scorer.initial_state() if use_ctc else None
    use_lm = lm is not None and (lm_weight != 0 or length_bonus != 0)
    lm_step, lm_states = lm if use_lm else (None, None)
    prefixes, att, lm_acc = [()], np.zeros(1), np.zeros(1)
    tokens, states, ended = np.array([sos_id]), init_state, []
    for step in range(max_len):
        logp, new_states = step_fn(tokens, states)
        cand_att = att[:, None] + np.asarray(logp, np.float64)
        cand_ctc = scorer.scores(ctc_state) if use_ctc else np.zeros_like(cand_att)
        total = ((1 - ctc_weight) * cand_att if use_att else 0) + (
            ctc_weight * cand_ctc if use_ctc else 0)
        cand_lm = np.zeros_like(cand_att)
        if use_lm:
            lm_logp, new_lm_states = lm_step(tokens, lm_states)
            cand_lm = lm_acc[:, None] + np.asarray(lm_logp, np.float64)
            total = total + lm_weight * cand_lm + length_bonus * (step + 1)
        if step == max_len - 1:
            total[:, np.arange(total.shape[1]) != eos_id] = NEG_INF
        scores = np.concatenate([[h.score for h in ended], total.ravel()])
        order = np.argsort(-scores, kind="stable")[:beam]
        order = order[np.isfinite(scores[order])]
        kept_ended = [ended[i] for i in order[order < len(ended)]]
        flat = order[order >= len(ended)] - len(ended)
        parents, chars = flat // total.shape[1], flat % total.shape[1]
        done = chars == eos_id
        kept_ended += [Hypothesis(prefixes[p], float(total[p, eos_id]), float(cand_att[p, eos_id]),
                                  float(cand_ctc[p, eos_id]),
                                  tf.nest.map_structure(lambda s, p=p: np.asarray(s)[p:p + 1],
                                                        new_states) if keep_states else None,
                                  float(cand_lm[p, eos_id]))
                       for p in parents[done]]
        ended = sorted(kept_ended, key=lambda h: -h.score)
        parents, chars = parents[~done], chars[~done]
        if not len(parents):
            break
        prefixes = [prefixes[p] + (int(c),) for p, c in zip(parents, chars)]
        att, lm_acc = cand_att[parents, chars], cand_lm[parents, chars]
        states = tf.nest.map_structure(lambda s: np.asarray(s)[parents], new_states)
        if use_lm:
            lm_states = tf.nest.map_structure(lambda s: np.asarray(s)[parents], new_lm_states)
        ctc_state = scorer.advance(ctc_state, parents, chars) if use_ctc else None
        tokens = chars
    return ended
