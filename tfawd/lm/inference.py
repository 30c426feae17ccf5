"""Prediction and generation with a trained language model (`load_trained`).

Prediction: `next_word_scores` (logits of the word after each context, read from the zero
state) and `prediction_nll`; `read_contexts` reads contexts from a `.npy` or a text file.
Generation: `generate` (greedy, or sampling with temperature / top-k / top-p) and
`beam_search`, each one `tf.function` whose `tf.while_loop` carries the LSTM state: the prompt
is read once, then the model runs on one token per step; `generate_text` for text prompts.

Text is tokenised like the corpus (whitespace split) but WITHOUT the `<eos>` the corpus ends
every line with: a prompt is a line still being written, so the next word is predicted
mid-line. Write `<eos>` explicitly to predict after a line end (a leading `<eos>` puts the
model where training lines start). Prompts may have different lengths: each row's state
stops exactly at its own last token.
"""
import os
import weakref

import numpy as np
import tensorflow as tf
from absl import logging

from pipelines.vocab import EOS, UNK, Vocabulary
from tfawd.core import files
from tfawd.core.checkpoints import latest as latest_checkpoint
from tfawd.core.checkpoints import restore_weights, weights_checkpoint
from tfawd.core.run_dir import RunDir
from tfawd.core.run_flags import check_architecture, flag_mismatches
from tfawd.core.run_guard import RunError
from tfawd.lm.config import AUTO
from tfawd.lm.models import architecture_flags, build_model, from_saved_config

METHODS = ("greedy", "sample")
_ARCHITECTURE = ("model", "emsize", "nhid", "nlayers", "tie_weights", "softmax", "adaptive_cutoffs",
                 "adaptive_div")


# -- loading --------------------------------------------------------------------------------
def load_trained(model_dir: str, cfg):
    """(model, vocab) of a trained run, the model only (no optimizer, no training step): built
    from the run's `model.json` (runs older than it: from `cfg`, whose architecture flags must
    then be the run's), the vocabulary from `vocab.txt`, the weights from `best/` (the best
    validated ones), else from the latest `ckpt/` (the live training weights; with NT-ASGD
    these are not the averaged ones). Architecture flags the user gave (`cfg.explicit`; every
    field of a config built in code) must agree with the run's: a conflict is refused naming
    both values."""
    run = RunDir(model_dir)
    best = latest_checkpoint(run.best)
    last = latest_checkpoint(run.ckpt)
    if not best and last and files.exists(os.path.join(run.best, "checkpoint")):
        print(f"warning: the best weights in {run.best} cannot be found (their files are "
              f"missing); using the latest training weights {last}", flush=True)
    if not files.exists(run.vocab) or not (best or last):
        raise RunError(f"no trained model in --model_dir={model_dir} (needs vocab.txt and "
                       f"best/ or ckpt/); train one first or point --model_dir at a trained run")
    vocab = Vocabulary.load(run.vocab)
    if files.exists(run.model):
        check_architecture(cfg, model_dir, architecture_flags(run.model),
                           wildcards=(AUTO,))  # auto: as resolved
        model = from_saved_config(run.model, cfg.precision)
        if model.vocab_size != len(vocab):
            raise RunError(f"{run.vocab} has {len(vocab)} words but {run.model} a vocabulary of "
                           f"{model.vocab_size}: one of them is damaged or from another run; "
                           f"restore the run folder from a copy")
    else:
        diff = flag_mismatches(cfg, model_dir, _ARCHITECTURE)
        if diff:
            raise RunError(f"--model_dir={model_dir} was trained with {', '.join(diff)}; "
                           f"pass the flags it was trained with")
        model = build_model(cfg, len(vocab))
    if best:
        restore_weights(weights_checkpoint(model), best, run.model)
    else:  # the training checkpoint also holds the optimizer and run state: skip those
        restore_weights(tf.train.Checkpoint(model=weights_checkpoint(model)), last, run.model,
                        partial=True)
    logging.info("Loaded %s (vocabulary of %d words)", best or last, len(vocab))
    return model, vocab


# -- inputs ---------------------------------------------------------------------------------
def encode_prompt(vocab: Vocabulary, text: str, strict: bool = False) -> np.ndarray:
    """The ids of `text`'s whitespace-separated words (no `<eos>` appended). Unknown words
    become `<unk>` with a logged warning, or raise ValueError with `strict=True`."""
    words = text.split()
    unknown = sorted({w for w in words if w not in vocab.index})
    if unknown:
        message = f"prompt {text!r}: {len(unknown)} word(s) not in the vocabulary: {unknown}"
        if strict:
            raise ValueError(f"{message}; fix the prompt or pass strict=False to map them to {UNK}")
        logging.warning("%s; mapped to %s", message, UNK)
    return vocab.encode(words)


def read_contexts(path: str, vocab: Vocabulary, strict: bool = False) -> list:
    """Contexts from `path`: a `.npy` of int ids [B, T] (or one sequence [T]), or a text file
    with one context per line (see `encode_prompt`; blank lines are skipped)."""
    if path.endswith(".npy"):
        with files.open_file(path, "rb") as f:
            ids = np.load(f)
        if ids.ndim not in (1, 2) or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"{path}: expected int ids [B, T], got {ids.dtype} {ids.shape}")
        rows = list(np.atleast_2d(ids).astype(np.int32))
    else:
        with files.open_file(path) as f:
            rows = [encode_prompt(vocab, line, strict) for line in f if line.strip()]
    return _check_rows(rows, len(vocab), "contexts")[0]


def _check_rows(ids, vocab_size: int, name: str):
    """(list of int32 rows, lengths) of a [B, T] array or a list of sequences, validated."""
    rows = [np.asarray(r) for r in ids]
    if any(r.ndim != 1 for r in rows):
        raise ValueError(f"{name} must be [B, T] ids or a list of id sequences")
    if not rows:
        raise ValueError(f"{name} is empty: give at least one sequence of word ids")
    for i, r in enumerate(rows):
        if not len(r):
            raise ValueError(f"{name}[{i}] has no tokens: every sequence needs at least one word")
        if r.min() < 0 or r.max() >= vocab_size:
            raise ValueError(f"{name}[{i}] has ids outside [0, {vocab_size}): use ids of the "
                             f"model's vocabulary")
    return [r.astype(np.int32) for r in rows], np.array([len(r) for r in rows], np.int32)


def _padded(rows):
    """Rows left-aligned in a [B, max length] array (padding 0, never read)."""
    out = np.zeros([len(rows), max(len(r) for r in rows)], np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


# -- prediction -----------------------------------------------------------------------------
def next_word_scores(model, ids, batch_size: int = 64) -> np.ndarray:
    """Logits [B, V] (float32, unnormalised) of the word following each context of `ids`
    ([B, T] ints, or a list of sequences of any lengths), each read from the zero state.
    Contexts are right-padded and the logits taken at each row's own last position, which is
    exact as the model is causal."""
    rows, lengths = _check_rows(ids, model.vocab_size, "ids")
    out = []
    for start in range(0, len(rows), batch_size):
        x, n = _padded(rows[start:start + batch_size]), lengths[start:start + batch_size]
        logits, _ = model(tf.constant(x), model.initial_state(len(x)), training=False)
        out.append(tf.cast(tf.gather(logits, n - 1, batch_dims=1), tf.float32).numpy())
    return np.concatenate(out)


def prediction_nll(scores, targets) -> float:
    """Mean negative log-likelihood of `targets` [B] under softmax(`scores` [B, V])."""
    scores = np.asarray(scores, np.float64)
    targets = np.asarray(targets).reshape(-1)
    if scores.ndim != 2 or len(targets) != len(scores):
        raise ValueError(f"targets: need one per row of scores {scores.shape}, got {len(targets)}")
    if targets.min() < 0 or targets.max() >= scores.shape[1]:
        raise ValueError(f"targets must be ids in [0, {scores.shape[1]})")
    top = scores.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(scores - top).sum(axis=1))
    return float(np.mean(log_z - scores[np.arange(len(targets)), targets]))


# -- generation -----------------------------------------------------------------------------
def _read_prompt(model, ids, lengths):
    """In-graph: logits [B, V] after each row's last prompt token, and the state there. The
    common prefix is one model call; longer rows then advance one token at a time while
    shorter ones keep their state."""
    shortest, longest = tf.reduce_min(lengths), tf.shape(ids)[1]
    h, states = model.features(ids[:, :shortest], model.initial_state(tf.shape(ids)[0]))
    last = tf.cast(model.logits(h[:, -1]), tf.float32)  # the output layer at one position only

    def step(t, last, states):
        logits, new = model(tf.reshape(ids[:, t], [-1, 1]), states)  # T=1: no recurrence loop
        active = (t < lengths)[:, None]
        states = [tuple(tf.where(active, n, o) for n, o in zip(*pair)) for pair in zip(new, states)]
        return t + 1, tf.where(active, tf.cast(logits[:, 0], tf.float32), last), states

    _, last, states = tf.while_loop(lambda t, *_: t < longest, step, (shortest, last, states))
    return last, states


def _sample_filtered(logits, top_k, top_p, step_seed):
    """A draw from softmax(`logits` [B, V]) cut to the `top_k` most likely tokens (0: all), then
    to the nucleus: the smallest set of most likely tokens whose probability reaches `top_p`.

    Only the candidates are ranked: `tf.math.top_k` with k = top_k is one pass over the
    vocabulary, where sorting all of it (and sorting back) cost most of a generation step; the
    whole vocabulary is sorted only for a nucleus without top_k. The draw is made among the
    ranked candidates and mapped back to vocabulary ids."""
    vocab = tf.shape(logits)[1]
    ranked, ids = tf.math.top_k(logits, tf.where(top_k > 0, tf.minimum(top_k, vocab), vocab))
    before = tf.math.cumsum(tf.nn.softmax(ranked), axis=-1, exclusive=True)
    ranked = tf.where(before < top_p, ranked, -np.inf)  # the first candidate is always kept
    pick = tf.random.stateless_categorical(ranked, 1, step_seed, dtype=tf.int32)
    return tf.gather(ids, pick, batch_dims=1)[:, 0]


def sampling_loop(model, greedy: bool, ids, lengths, num_tokens, temperature, top_k, top_p,
                  seed, penalty):
    """In-graph generation (see `generate`): reads the prompts (`_read_prompt`), then a
    `tf.while_loop` carrying the LSTM state draws `num_tokens` tokens. `model(ids, states)`
    must run at inference; `penalty` [V] is added to the logits (-inf bans a word). Returns
    (tokens [B, num_tokens] int32, log-probabilities [B, num_tokens] float32). Written with
    explicit `tf.while_loop`/`tf.cond`, so it also traces with autograph off (SavedModel export)."""
    def choose(logits, t):
        masked = logits + penalty
        if greedy:
            token = tf.argmax(masked, axis=-1, output_type=tf.int32)
        else:
            masked = masked / temperature
            step_seed = tf.stack([seed, tf.cast(t, tf.int64)])
            token = tf.cond(
                (top_k > 0) | (top_p < 1),
                lambda: _sample_filtered(masked, top_k, top_p, step_seed),
                lambda: tf.random.stateless_categorical(masked, 1, step_seed, dtype=tf.int32)[:, 0])
        return token, tf.gather(tf.nn.log_softmax(logits), token, batch_dims=1)

    def step(t, token, states, tokens, logprobs):
        logits, states = model(token[:, None], states)
        token, logprob = choose(tf.cast(logits[:, 0], tf.float32), t)
        return t + 1, token, states, tokens.write(t, token), logprobs.write(t, logprob)

    logits, states = _read_prompt(model, ids, lengths)
    token, logprob = choose(logits, 0)
    tokens = tf.TensorArray(tf.int32, size=num_tokens).write(0, token)
    logprobs = tf.TensorArray(tf.float32, size=num_tokens).write(0, logprob)
    _, _, _, tokens, logprobs = tf.while_loop(
        lambda t, *_: t < num_tokens, step, (tf.constant(1), token, states, tokens, logprobs))
    return tf.transpose(tokens.stack()), tf.transpose(logprobs.stack())


def _sampler(model, greedy: bool):
    """The compiled generation loop (`sampling_loop`, see `generate`) for `model`."""
    spec = tf.TensorSpec
    sig = [spec([None, None], tf.int32), spec([None], tf.int32), spec([], tf.int32),
           spec([], tf.float32), spec([], tf.int32), spec([], tf.float32), spec([], tf.int64),
           spec([None], tf.float32)]

    @tf.function(input_signature=sig)
    def run(ids, lengths, num_tokens, temperature, top_k, top_p, seed, penalty):
        return sampling_loop(model, greedy, ids, lengths, num_tokens, temperature, top_k, top_p,
                             seed, penalty)

    return run


def _beam_searcher(model):
    """The compiled beam search loop (see `beam_search`) for `model`."""
    spec = tf.TensorSpec
    sig = [spec([None, None], tf.int32), spec([None], tf.int32), spec([], tf.int32),
           spec([], tf.int32), spec([None], tf.float32)]

    @tf.function(input_signature=sig)
    def run(ids, lengths, num_tokens, beam, penalty):
        logits, states = _read_prompt(model, ids, lengths)
        batch, vocab = tf.shape(logits)[0], tf.shape(logits)[1]
        scores, tokens = tf.math.top_k(tf.nn.log_softmax(logits) + penalty, beam)  # [B, K]
        states = [tuple(tf.repeat(s, beam, axis=0) for s in layer) for layer in states]
        first = beam * tf.range(batch)[:, None]  # row of each prompt's first beam

        def step(t, scores, tokens, states, token_ta, parent_ta):
            logits, states = model(tf.reshape(tokens, [-1, 1]), states)
            logp = tf.nn.log_softmax(tf.cast(logits[:, 0], tf.float32)) + penalty
            candidates = scores[:, :, None] + tf.reshape(logp, [batch, beam, vocab])
            scores, flat = tf.math.top_k(tf.reshape(candidates, [batch, -1]), beam)
            parents, tokens = flat // vocab, flat % vocab
            rows = tf.reshape(first + parents, [-1])
            states = [tuple(tf.gather(s, rows) for s in layer) for layer in states]
            return (t + 1, scores, tokens, states, token_ta.write(t, tokens),
                    parent_ta.write(t, parents))

        token_ta = tf.TensorArray(tf.int32, size=num_tokens).write(0, tokens)
        parent_ta = tf.TensorArray(tf.int32, size=num_tokens).write(0, tf.zeros_like(tokens))
        _, scores, _, _, token_ta, parent_ta = tf.while_loop(
            lambda t, *_: t < num_tokens, step,
            (tf.constant(1), scores, tokens, states, token_ta, parent_ta))
        return token_ta.stack(), parent_ta.stack(), scores  # [N, B, K], [N, B, K], [B, K]

    return run


class WeakInferenceModel:
    """The model at inference, weakly referenced: its cached functions must not keep it alive."""

    def __init__(self, model):
        self.ref = weakref.ref(model)

    def __call__(self, ids, states):
        return self.ref()(ids, states, training=False)

    def features(self, ids, states):
        """(the output layer's input [B, T, E], new states)."""
        h, states, _ = self.ref().features(ids, states, training=False)
        return h, states

    def logits(self, h):
        return self.ref().logits(h)

    def initial_state(self, batch):
        return self.ref().initial_state(batch)


_COMPILED = weakref.WeakKeyDictionary()  # model -> {kind: tf.function}, each traced once


def _compiled(model, kind):
    """The compiled loop of `kind` ("greedy", "sample" or "beam") for `model`."""
    fns = _COMPILED.setdefault(model, {})
    if kind not in fns:
        proxy = WeakInferenceModel(model)
        fns[kind] = _beam_searcher(proxy) if kind == "beam" else _sampler(proxy, kind == "greedy")
    return fns[kind]


def _check_generation(model, prompt_ids, num_tokens, banned_ids):
    """(padded prompts, lengths, penalty [V]: -inf on banned ids, number of allowed ids)."""
    rows, lengths = _check_rows(prompt_ids, model.vocab_size, "prompt_ids")
    if int(num_tokens) < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    banned = np.unique(np.asarray(banned_ids, np.int64).reshape(-1))
    if len(banned) and (banned.min() < 0 or banned.max() >= model.vocab_size):
        raise ValueError(f"banned_ids must be ids in [0, {model.vocab_size}), got {banned_ids}")
    if len(banned) == model.vocab_size:
        raise ValueError("banned_ids bans the whole vocabulary: leave some words allowed")
    penalty = np.zeros(model.vocab_size, np.float32)
    penalty[banned] = -np.inf
    return _padded(rows), lengths, penalty, model.vocab_size - len(banned)


def generate(model, prompt_ids, num_tokens: int, method: str = "greedy",
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             banned_ids=()):
    """Continues each prompt of `prompt_ids` ([B, P] ints, or a list of sequences of any
    lengths) by `num_tokens` tokens.

    method "greedy" takes the most likely token (temperature, top_k, top_p are then unused);
    "sample" draws from softmax(logits / temperature), restricted to the `top_k` most likely
    tokens (0: all) and then to the nucleus: the smallest set whose probability reaches
    `top_p` (1: all). The draw of step t uses the stateless seed (`seed`, t): the same seed
    gives the same sample. `banned_ids` (e.g. `<unk>`) are never chosen.

    Returns (ids [B, num_tokens] int32, logprobs [B, num_tokens] float32): the log-probability
    of each chosen token under the model's unmodified softmax (no temperature, filters or
    bans), so -logprobs.mean() is the continuation's NLL under the model.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 <= int(top_k) <= model.vocab_size:
        raise ValueError(f"top_k must be in [0, {model.vocab_size}] (0: no limit), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1: no nucleus filter), got {top_p}")
    ids, lengths, penalty, _ = _check_generation(model, prompt_ids, num_tokens, banned_ids)
    tokens, logprobs = _compiled(model, method)(  # converted to the signature's dtypes
        ids, lengths, num_tokens, temperature, top_k, top_p, seed, penalty)
    return tokens.numpy(), logprobs.numpy()


def beam_search(model, prompt_ids, num_tokens: int, beam_size: int, banned_ids=()):
    """The most likely continuation of exactly `num_tokens` tokens found by beam search, for
    each prompt of `prompt_ids` (as in `generate`): beams are rows of one batch, their LSTM
    states reordered by parent at every step. Returns (ids [B, num_tokens] int32, total
    log-probability [B] float32). `beam_size=1` is greedy decoding."""
    if int(beam_size) < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    ids, lengths, penalty, allowed = _check_generation(model, prompt_ids, num_tokens, banned_ids)
    if beam_size > allowed:
        raise ValueError(f"beam_size must be at most the {allowed} allowed words, got {beam_size}")
    tokens, parents, scores = (t.numpy() for t in _compiled(model, "beam")(
        ids, lengths, num_tokens, beam_size, penalty))
    batch = np.arange(len(ids))
    best, out = np.zeros(len(ids), np.int64), np.zeros([len(ids), num_tokens], np.int32)
    for t in range(num_tokens - 1, -1, -1):  # follow the best final beam back to the prompt
        out[:, t] = tokens[t, batch, best]
        best = parents[t, batch, best]
    return out, scores[:, 0]


def render(words, eos: str = "\n") -> str:
    """Words joined by spaces, each `<eos>` (a line end in the corpus) written as `eos`."""
    lines = [[]]
    for w in words:
        lines.append([]) if w == EOS else lines[-1].append(w)
    return eos.join(" ".join(line) for line in lines)


def generate_text(model, vocab: Vocabulary, prompts, num_tokens: int, method: str = "greedy",
                  beam_size: int = 1, strict: bool = False, eos: str = "\n", **kwargs) -> list:
    """Continues text prompts (tokenised as `encode_prompt`). `method` is "greedy", "sample"
    (`kwargs` as in `generate`: temperature, top_k, top_p, seed, banned_ids) or "beam"
    (`beam_size`; banned_ids only). Each result is {prompt, continuation (rendered by
    `render`: `<eos>` as `eos`, a newline by default), tokens, mean_nll}."""
    rows = [encode_prompt(vocab, p, strict) for p in prompts]
    for i, r in enumerate(rows):
        if not len(r):
            raise ValueError(f"prompts[{i}] ({prompts[i]!r}) has no words: give some context")
    if method == "beam":
        ids, totals = beam_search(model, rows, num_tokens, beam_size, **kwargs)
        nlls = -totals / num_tokens
    else:
        ids, logprobs = generate(model, rows, num_tokens, method, **kwargs)
        nlls = -logprobs.mean(axis=1)
    return [{"prompt": p, "continuation": render(vocab.decode(r), eos),
             "tokens": vocab.decode(r), "mean_nll": float(n)}
            for p, r, n in zip(prompts, ids, nlls)]
