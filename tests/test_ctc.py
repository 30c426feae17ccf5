"""tfawd.speech.ctc: the CTC loss against the forward algorithm and brute force, the decoders,
the CTC prefix scorer's identities, and joint CTC/attention beam search at weights 0 and 1."""
import itertools

import numpy as np
import pytest
import tensorflow as tf

from tfawd.speech import ctc

EOS = ctc.EOS_ID


def log_softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def random_log_probs(rng, t, v, scale=2.0):
    return log_softmax(rng.normal(size=(t, v)) * scale)


def collapse(path, blank=0):
    out = []
    for i, c in enumerate(path):
        if c != blank and (i == 0 or c != path[i - 1]):
            out.append(c)
    return tuple(out)


def brute_force(log_probs, blank=0):
    """{labelling: log p(labelling | x)} by summing over all V^T frame paths."""
    t, v = log_probs.shape
    probs = {}
    for path in itertools.product(range(v), repeat=t):
        p = np.exp(sum(log_probs[i, c] for i, c in enumerate(path)))
        key = collapse(path, blank)
        probs[key] = probs.get(key, 0.0) + p
    return {k: np.log(p) for k, p in probs.items() if p > 0}


@pytest.mark.parametrize("t", [1, 2, 3, 4, 5])
def test_reference_equals_brute_force(t):
    lp = random_log_probs(np.random.default_rng(t), t, 4)
    truth = brute_force(lp)
    assert abs(np.logaddexp.reduce(list(truth.values()))) < 1e-9  # the labellings sum to 1
    for label, logp in truth.items():
        assert -ctc.ctc_nll_reference(lp, label) == pytest.approx(logp, abs=1e-9), label
    if t < 3:  # "aa" needs 3 frames (a blank between the repeats)
        assert ctc.ctc_nll_reference(lp, [1, 1]) == np.inf


def test_ctc_labels_strip_eos_and_padding():
    labels, lengths = ctc.ctc_labels([[3, 4, EOS, 0], [5, EOS, 0, 0], [EOS, 0, 0, 0]])
    assert labels.numpy()[:, :2].tolist() == [[3, 4], [5, 0], [0, 0]]
    assert not labels.numpy()[:, 2:].any()
    assert lengths.numpy().tolist() == [2, 1, 0]


def test_tf_ctc_loss_equals_reference():
    rng = np.random.default_rng(0)
    v, t_max = 8, 12
    cases = [(12, [3, 4, 5]), (9, [3, 3, 4, 4]), (5, [7]), (7, [5, 5, 5]), (4, []),
             (10, [6, 3, 6, 3, 6]), (3, [4, 5])]
    logits = rng.normal(size=(len(cases), t_max, v)).astype(np.float32) * 2
    lengths = np.array([t for t, _ in cases])
    labels = np.zeros((len(cases), 7), np.int32)
    for i, (_, label) in enumerate(cases):
        labels[i, :len(label) + 1] = label + [EOS]
    loss = ctc.ctc_loss(tf.constant(logits), lengths, labels).numpy()
    for i, (t, label) in enumerate(cases):
        ref = ctc.ctc_nll_reference(log_softmax(logits[i, :t].astype(np.float64)), label)
        assert loss[i] == pytest.approx(ref, abs=1e-4), (t, label)
    loss16 = ctc.ctc_loss(tf.constant(logits, tf.bfloat16), lengths, labels)
    assert loss16.dtype == tf.float32


def test_greedy_collapses_repeats_and_drops_blanks():
    path = [[3, 3, 0, 3, 4, 4, 0, 0, 5], [0, 5, 5, 0, 5, 3, 3, 3, 3]]
    lp = tf.math.log(tf.one_hot(path, 6) * 0.9 + 0.1 / 6)
    out = ctc.ctc_greedy(lp, tf.constant([9, 5])).to_list()
    assert out == [[3, 3, 4, 5], [5, 5]]


@pytest.mark.parametrize("seed,t,v", [(0, 3, 3), (1, 4, 4), (2, 5, 4), (3, 5, 3), (4, 4, 5)])
def test_prefix_beam_search_finds_most_probable_labelling(seed, t, v):
    lp = random_log_probs(np.random.default_rng(seed), t, v, scale=1.0)
    truth = brute_force(lp)
    found = ctc.ctc_prefix_beam_search(lp, beam=500)
    best = max(truth, key=truth.get)
    assert found[0][0] == best
    assert found[0][1] == pytest.approx(truth[best], abs=1e-9)
    for label, logp in found:  # nothing pruned: every score is exact
        assert logp == pytest.approx(truth[label], abs=1e-9)


def test_scorer_end_score_is_sequence_probability():
    rng = np.random.default_rng(5)
    lp = random_log_probs(rng, 9, 7)
    scorer = ctc.CTCPrefixScorer(lp, eos_id=EOS)
    for label in [[3, 3, 4], [5], [], [4, 6, 4, 4], [6, 6, 6]]:
        state = scorer.initial_state()
        for c in label:
            state = scorer.advance(state, [0], [c])
        end = scorer.end_scores(state)[0]
        assert end == pytest.approx(-ctc.ctc_nll_reference(lp, label), abs=1e-9)
        tf_nll = ctc.ctc_loss(tf.constant(lp[None], tf.float32), [9], [label + [EOS]])
        assert np.exp(end) == pytest.approx(np.exp(-tf_nll.numpy()[0]), rel=1e-4)
        scores = scorer.scores(state)[0]
        assert scores[EOS] == end and scores[0] == -np.inf


@pytest.mark.parametrize("seed,t,v", [(0, 4, 4), (1, 5, 4), (2, 5, 3), (3, 3, 5)])
def test_prefix_scores_identity_and_brute_force(seed, t, v):
    """psi(h) = p(h) + sum_c psi(h + c), and psi(h) = sum of p(l) over labellings l = h...;
    with several hypotheses in one state (N = 3), so the vectorisation over N is checked."""
    lp = random_log_probs(np.random.default_rng(seed), t, v, scale=1.5)
    truth = brute_force(lp)
    scorer = ctc.CTCPrefixScorer(lp, eos_id=v)  # <eos> outside V: every column a symbol
    for h in [(), (1,), (1, 1), (2, 1), (1, 2, 2)]:
        state = scorer.initial_state()
        psi = 0.0
        for i, c in enumerate(h):  # three copies of h: rows 0..2
            psi = scorer.prefix_scores(state)[0, c]
            state = scorer.advance(state, [0, 0, 0] if i == 0 else [0, 1, 2], [c, c, c])
        brute = [p for lab, p in truth.items() if lab[:len(h)] == h]
        assert psi == pytest.approx(np.logaddexp.reduce(brute) if brute else -np.inf, abs=1e-9)
        ends = scorer.end_scores(state)
        ext = scorer.prefix_scores(state)
        assert np.allclose(ext, ext[0]) and np.allclose(ends, ends[0])
        total = np.logaddexp(ends[0], np.logaddexp.reduce(ext[0, 1:]))
        assert total == pytest.approx(psi, abs=1e-9), h


def uniform_step(v):
    return lambda tokens, states: (np.full((len(tokens), v), -np.log(v)), states)


@pytest.mark.parametrize("seed,t", [(0, 2), (1, 3), (2, 4), (3, 5), (4, 5), (5, 4)])
def test_joint_weight_one_is_ctc_prefix_search(seed, t):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(t, 5)) * 1.5
    logits[:, [ctc.SOS_ID, EOS]] = -np.inf  # CTC never emits <sos>/<eos>: chars are 3 and 4
    lp = log_softmax(logits)
    found = ctc.ctc_prefix_beam_search(lp, beam=200)
    hyps = ctc.joint_beam_search(uniform_step(5), (np.zeros(1),), lp, 1.0, beam=200,
                                 max_len=t + 1)
    assert hyps[0].tokens == found[0][0]
    assert hyps[0].score == pytest.approx(found[0][1], abs=1e-9)
    assert hyps[0].score == hyps[0].ctc
    small = ctc.joint_beam_search(uniform_step(5), (np.zeros(1),), lp, 1.0, beam=2,
                                  max_len=t + 1)
    assert small[0].score <= hyps[0].score + 1e-12
    assert small[0].score == pytest.approx(-ctc.ctc_nll_reference(lp, small[0].tokens))


def markov_model(seed, v, max_len):
    """A toy attention decoder: log p(c | previous c', step n) = log_softmax(A[c'] + B[n])."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(v, v)) * 2, rng.normal(size=(max_len + 1, v))

    def step(tokens, states):
        (n,) = states
        return log_softmax(a[tokens] + b[n]), (n + 1,)
    return step, (np.zeros(1, np.int64),)


def plain_beam_search(step, state, v, beam, max_len, sos=ctc.SOS_ID, eos=EOS):
    """ListenAttendSpell.beam_search in NumPy: `beam` slots (one live at first), ended slots
    extend only by <eos> at +0, top `beam` of slots x V, only <eos> at step max_len."""
    neg = -1e9
    score = np.array([0.0] + [neg] * (beam - 1))
    tokens = np.full((beam, 0), eos)
    done = np.zeros(beam, bool)
    last = np.full(beam, sos)
    state = tuple(np.repeat(s, beam, axis=0) for s in state)
    for n in range(max_len):
        logp, state = step(last, state)
        if n == max_len - 1:
            logp = np.where(np.arange(v) == eos, logp, neg)
        logp = np.where(done[:, None], np.where(np.arange(v) == eos, 0.0, neg), logp)
        total = (score[:, None] + logp).ravel()
        flat = np.argsort(-total, kind="stable")[:beam]
        parent, nxt = flat // v, flat % v
        score, last = total[flat], nxt
        tokens = np.concatenate([tokens[parent], nxt[:, None]], axis=1)
        state = tuple(s[parent] for s in state)
        done = done[parent] | (nxt == eos)
        if done.all():
            break
    out = [(tuple(int(c) for c in row[:list(row).index(eos)]), s)
           for row, s in zip(tokens, score) if s > neg / 2]
    return sorted(out, key=lambda x: -x[1])


@pytest.mark.parametrize("seed,beam", [(0, 1), (1, 3), (2, 5), (3, 8)])
def test_joint_weight_zero_is_plain_beam_search(seed, beam):
    v, max_len = 6, 7
    step, state = markov_model(seed, v, max_len)
    expected = plain_beam_search(step, state, v, beam, max_len)
    lp = random_log_probs(np.random.default_rng(seed + 100), 10, v)
    hyps = ctc.joint_beam_search(step, state, lp, 0.0, beam, max_len)
    assert [(h.tokens, round(h.score, 9)) for h in hyps] == [
        (tok, round(s, 9)) for tok, s in expected]
    assert hyps[0].att == hyps[0].score


def test_joint_scores_combine_attention_and_ctc():
    v, max_len, w = 6, 8, 0.3
    step, state = markov_model(7, v, max_len)
    logits = np.random.default_rng(8).normal(size=(12, v)) * 2
    logits[:, [ctc.SOS_ID, EOS]] = -5.0
    lp = log_softmax(logits)
    hyps = ctc.joint_beam_search(step, state, lp, w, beam=4, max_len=max_len)
    assert len(hyps) == 4
    for h in hyps:
        att, n, st = 0.0, 0, state
        for prev, c in zip((ctc.SOS_ID,) + h.tokens, h.tokens + (EOS,)):
            logp, st = step(np.array([prev]), st)
            att += logp[0, c]
            n += 1
        assert h.att == pytest.approx(att, abs=1e-9)
        assert h.ctc == pytest.approx(-ctc.ctc_nll_reference(lp, h.tokens), abs=1e-9)
        assert h.score == pytest.approx((1 - w) * att + w * h.ctc, abs=1e-9)
        assert n <= max_len


def test_fusion_adds_the_weighted_lm_score_and_length_bonus():
    """Shallow fusion: each kept hypothesis's score is (1 - w) att + w ctc + beta lm + gamma
    |tokens + <eos>|, lm its LM log-probability (recomputed here by stepping the LM over it)."""
    v, max_len, w, beta, gamma = 6, 8, 0.3, 0.4, 0.7
    step, state = markov_model(7, v, max_len)
    lm_step, lm_state = markov_model(9, v, max_len)
    logits = np.random.default_rng(8).normal(size=(12, v)) * 2
    logits[:, [ctc.SOS_ID, EOS]] = -5.0
    lp = log_softmax(logits)
    hyps = ctc.joint_beam_search(step, state, lp, w, beam=4, max_len=max_len,
                                 lm=(lm_step, lm_state), lm_weight=beta, length_bonus=gamma)
    assert len(hyps) == 4
    for h in hyps:
        att, lm, st, lst = 0.0, 0.0, state, lm_state
        for prev, c in zip((ctc.SOS_ID,) + h.tokens, h.tokens + (EOS,)):
            logp, st = step(np.array([prev]), st)
            lm_logp, lst = lm_step(np.array([prev]), lst)
            att, lm = att + logp[0, c], lm + lm_logp[0, c]
        assert h.lm == pytest.approx(lm, abs=1e-9)
        assert h.score == pytest.approx((1 - w) * att + w * h.ctc + beta * lm
                                        + gamma * (len(h.tokens) + 1), abs=1e-9)
    # no fusion: the search of before (same hypotheses and scores), whatever the LM
    plain = ctc.joint_beam_search(step, state, lp, w, beam=4, max_len=max_len)
    off = ctc.joint_beam_search(step, state, lp, w, beam=4, max_len=max_len,
                                lm=(lm_step, lm_state), lm_weight=0.0)
    assert [(h.tokens, h.score) for h in off] == [(h.tokens, h.score) for h in plain]


def test_a_confident_lm_decides_between_transcripts_the_recogniser_cannot_tell_apart():
    """Attention and CTC equally sure of characters 3 and 4: the LM's preference picks one,
    and a length bonus makes a longer transcript win over <eos>."""
    v = 6

    def even(tokens, states):  # attention: 3 or 4 equally, then <eos> likelier than more
        logp = np.full((len(tokens), v), -20.0)
        logp[:, [3, 4]] = np.log(0.3)
        logp[:, EOS] = np.log(0.4)
        return logp, states

    def prefers(char):
        def lm(tokens, states):
            logp = np.full((len(tokens), v), np.log(0.01))
            logp[:, char] = np.log(0.9)
            logp[:, EOS] = np.log(0.05)
            return logp, states
        return lm, (np.zeros(1),)
    state = (np.zeros(1),)
    lp = log_softmax(np.zeros((4, v)))
    no_lm = ctc.joint_beam_search(even, state, lp, 0.0, beam=4, max_len=4)
    assert no_lm[0].tokens == ()  # <eos> at once is the likeliest
    for char in (3, 4):
        hyps = ctc.joint_beam_search(even, state, lp, 0.0, beam=4, max_len=4,
                                     lm=prefers(char), lm_weight=1.0, length_bonus=2.0)
        assert hyps[0].tokens[:1] == (char,)
