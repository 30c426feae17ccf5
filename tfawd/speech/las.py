"""Listen, Attend and Spell (Chan et al. 2016), as seed 003 part 2 specifies it.

- `Listener`: one bidirectional LSTM over the log-mel frames (optionally `frame_stack`
  consecutive frames per step, and pyramidal BiLSTM layers that halve the time resolution,
  Chan et al. section 3.1), then key and value projections of its outputs.
- `dot_attention`: energies e_t = <k_t, q>, softmax over the unpadded frames (padded frames get
  exactly zero weight), context = sum_t a_t v_t (Chan et al. eq. 9-11 with a dot product).
  Optionally windowed (`attention_window`, Chorowski et al. 2015 section 2.3): each step
  attends only to frames near the previous step's attention peak, which the speller's state
  carries, so the same window applies in training, greedy decoding and beam search.
- `guided_attention_loss`: Tachibana et al. (2017) section 4.1's penalty on attention far
  from the diagonal, added to the training loss with --guided_attention.
- `Speller`: a character embedding and two stacked `LSTMCell`s; each step reads the previous
  character and the previous context, queries the listener and predicts the next character
  from [h, context]. Its attention is `dot_attention` (the seed's) or, with
  `attention="location"`, `tfawd.speech.attention.LocationAwareAttention` (Chorowski et al.
  2015 section 2.1), which also sees the previous step's weights (carried in the state).

Training uses teacher forcing with a scheduled rate (Bengio et al. 2015): each step reads the
true previous character with probability `teacher_forcing`, else the model's own previous
prediction. Decoding (greedy and beam search) is a `tf.while_loop` with a maximum length,
optionally capped per utterance by its number of input frames (`max_chars_per_frame`), so a
decoder caught in a loop stops early on a short utterance.
"""
import keras
import tensorflow as tf

from pipelines import speech_features
from tfawd.core.distribute import replica_rows_of
from tfawd.nn.layers import WeightDropLSTM

NEG = -1e9
ATTENTIONS = ("dot", "location")  # --attention
FEATURE_NORMS = ("utterance", "global")  # --feature_norm


def dot_attention(query, keys, values, mask, window=None):
    """query [B, A], keys/values [B, T, A], mask [B, T] bool, window [B, T] bool or None ->
    (context [B, A], weights [B, T]). Weights on padded frames and outside the window are
    exactly 0."""
    if window is not None:
        mask = mask & window
    energies = tf.einsum("bta,ba->bt", keys, query)
    energies = tf.where(mask, energies, NEG)
    weights = tf.nn.softmax(energies, axis=-1) * tf.cast(mask, energies.dtype)
    return tf.einsum("bt,bta->ba", weights, values), weights


def attention_window(peak, frames, ahead, back):
    """peak [B] int32 -> bool [B, frames]: True on frames peak - back .. peak + ahead, the
    window of Chorowski et al. (2015) section 2.3 (centred on the previous step's argmax here
    rather than its median)."""
    t = tf.range(frames)[None, :]
    return (t >= peak[:, None] - back) & (t <= peak[:, None] + ahead)


def guided_attention_weights(label_lengths, frame_lengths, max_labels, max_frames, width=0.2):
    """W [B, L, T] = 1 - exp(-(n/N - t/T)^2 / (2 width^2)) for label n < N and encoder frame
    t < T of each utterance (N, T its lengths), 0 on padded cells: Tachibana et al. (2017),
    "Efficiently Trainable Text-to-Speech System Based on Deep Convolutional Networks with
    Guided Attention", section 4.1. Zero on the diagonal n/N = t/T, near 1 far from it."""
    n_len = tf.cast(tf.maximum(label_lengths, 1), tf.float32)[:, None, None]
    t_len = tf.cast(tf.maximum(frame_lengths, 1), tf.float32)[:, None, None]
    n = tf.range(max_labels, dtype=tf.float32)[None, :, None] / n_len
    t = tf.range(max_frames, dtype=tf.float32)[None, None, :] / t_len
    cells = (tf.sequence_mask(label_lengths, max_labels)[:, :, None]
             & tf.sequence_mask(frame_lengths, max_frames)[:, None, :])
    return (1 - tf.exp(-tf.square(n - t) / (2 * width ** 2))) * tf.cast(cells, tf.float32)


def guided_attention_loss(attention, label_lengths, frame_lengths, width=0.2):
    """attention [B, L, T] -> mean of A[n, t] W[n, t] over the unpadded (label, frame) cells
    (`guided_attention_weights`; Tachibana et al. 2017 section 4.1). A row of attention sums
    to 1 over T frames, so the loss scales as 1/T: about 0.6/T for uniform attention, 0 for
    attention on the diagonal."""
    shape = tf.shape(attention)
    w = guided_attention_weights(label_lengths, frame_lengths, shape[1], shape[2], width)
    cells = tf.reduce_sum(tf.cast(label_lengths, tf.float32) * tf.cast(frame_lengths, tf.float32))
    return tf.reduce_sum(attention * w) / tf.maximum(cells, 1.0)


def stack_frames(x, mask, factor):
    """[B, T, D] -> [B, ceil(T/factor), factor*D]: `factor` consecutive frames per step
    (low frame rate input, as in Sak et al. 2015), so the recurrence runs factor times fewer
    steps."""
    t = tf.shape(x)[1]
    pad = (factor - t % factor) % factor
    x = tf.pad(x, [[0, 0], [0, pad], [0, 0]])
    mask = tf.pad(mask, [[0, 0], [0, pad]])
    b, d = tf.shape(x)[0], x.shape[-1]
    return (tf.reshape(x, [b, -1, factor * d]),
            tf.reduce_any(tf.reshape(mask, [b, -1, factor]), axis=-1))


def pyramid_reduce(x, mask):
    """[B, T, D] -> [B, ceil(T/2), 2D] by concatenating frame pairs (pBLSTM's input)."""
    return stack_frames(x, mask, 2)


class BiLSTM(keras.layers.Layer):
    """A bidirectional LSTM over padded sequences: the forward direction runs as is (padding
    comes after the frames, so it never reaches them), the backward one over each sequence
    reversed within its own length (`tf.reverse_sequence`). Both directions are the lean
    `WeightDropLSTM` loop (one input matmul, then h U per step), several times faster on CPU
    than Keras' masked generic loop. Outputs at padded positions are meaningless: mask them."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.forward, self.backward = WeightDropLSTM(units), WeightDropLSTM(units)

    def call(self, x, mask, training=False):
        lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
        fwd = self.forward(x, training=training)
        rev = tf.reverse_sequence(x, lengths, seq_axis=1, batch_axis=0)
        bwd = tf.reverse_sequence(self.backward(rev, training=training), lengths, 1, 0)
        return tf.concat([fwd, bwd], axis=-1)


class Listener(keras.layers.Layer):
    """BiLSTM encoder (+ `pyramid_layers` pBLSTMs) with key and value projections."""

    def __init__(self, units=256, attention_dim=128, pyramid_layers=0, frame_stack=1, **kwargs):
        super().__init__(**kwargs)
        self.units, self.attention_dim, self.pyramid_layers = units, attention_dim, pyramid_layers
        self.frame_stack = frame_stack
        self.rnns = [BiLSTM(units) for _ in range(1 + pyramid_layers)]
        self.keys = keras.layers.Dense(attention_dim, name="keys")
        self.values = keras.layers.Dense(attention_dim, name="values")

    def call(self, features, mask, training=False):
        """features [B, T, F], mask [B, T] -> keys, values [B, T', A], mask [B, T']."""
        zero_padding = lambda x, m: x * tf.cast(m, x.dtype)[:, :, None]  # noqa: E731
        features = zero_padding(features, mask)  # stacked/paired steps see zeros past the end
        if self.frame_stack > 1:
            features, mask = stack_frames(features, mask, self.frame_stack)
        x = self.rnns[0](features, mask, training=training)
        for rnn in self.rnns[1:]:
            x, mask = pyramid_reduce(zero_padding(x, mask), mask)
            x = rnn(x, mask, training=training)
        return self.keys(x), self.values(x), mask


class Speller(keras.layers.Layer):
    """Two LSTMCells; one `step` = one output character. With `window` > 0 a step attends only
    to encoder frames peak - `window_back` .. peak + `window`, peak the previous step's
    attention argmax (frame 0 before the first step), carried in the state."""

    def __init__(self, vocab_size, units=256, embed_dim=64, attention_dim=128, window=0,
                 window_back=3, attention="dot", **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.units, self.attention_dim = vocab_size, units, attention_dim
        self.window, self.window_back = window, window_back
        if attention not in ATTENTIONS:
            raise ValueError(f"attention={attention!r}: one of {', '.join(ATTENTIONS)}")
        self.location = None
        if attention == "location":
            from tfawd.speech.attention import LocationAwareAttention
            self.location = LocationAwareAttention(attention_dim, name="location_attention")
        self.embed = keras.layers.Embedding(vocab_size, embed_dim)
        self.cells = [keras.layers.LSTMCell(units), keras.layers.LSTMCell(units)]
        self.query = keras.layers.Dense(attention_dim, name="query")
        self.hidden = keras.layers.Dense(units, activation="tanh", name="hidden")
        self.char_logits = keras.layers.Dense(vocab_size, name="char_logits")

    def initial_state(self, batch, frames=0):
        """(h1, c1, h2, c2, context, peak, previous weights [B, frames]): location-aware
        attention's "previous" weights start on frame 0 (`attention.initial_weights`); the
        dot product does not read them (they are [B, 0] when `frames` is not given)."""
        zeros = tf.zeros([batch, self.units])
        previous = tf.one_hot(tf.zeros([batch], tf.int32), frames)
        return (zeros, zeros, zeros, zeros, tf.zeros([batch, self.attention_dim]),
                tf.zeros([batch], tf.int32), previous)

    def step(self, tokens, state, keys, values, mask, training=False):
        """tokens [B] (previous characters) -> (logits [B, V], new state, attention [B, T])."""
        h1, c1, h2, c2, context, peak, previous = state
        x = tf.concat([self.embed(tokens), context], axis=-1)
        h1, (_, c1) = self.cells[0](x, [h1, c1], training=training)
        h2, (_, c2) = self.cells[1](h1, [h2, c2], training=training)
        window = (attention_window(peak, tf.shape(keys)[1], self.window, self.window_back)
                  if self.window else None)
        if self.location is None:
            context, weights = dot_attention(self.query(h2), keys, values, mask, window)
        else:
            context, weights = self.location(h2, keys, values,
                                             mask if window is None else mask & window,
                                             previous)
        peak = tf.argmax(weights, axis=-1, output_type=tf.int32)
        logits = self.char_logits(self.hidden(tf.concat([h2, context], axis=-1)))
        return logits, (h1, c1, h2, c2, context, peak, weights), weights


class ListenAttendSpell(keras.Model):
    """The recogniser: `teacher_forced` for training, `greedy` / `beam_search` for decoding.
    `attention_window`/`attention_window_back` window the attention (see `Speller`);
    `max_chars_per_frame` > 0 caps each decoded utterance at ceil(frames * it) steps
    (incl. <eos>), frames its input frames."""

    def __init__(self, vocab_size, sos_id=1, eos_id=2, listener_units=256, speller_units=256,
                 attention_dim=128, embed_dim=64, pyramid_layers=0, frame_stack=1,
                 attention_window=0, attention_window_back=3, max_chars_per_frame=0.0,
                 ctc_weight=0.0, attention="dot", feature_norm="utterance", feature_dim=40,
                 features="logmel", **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.sos_id, self.eos_id = vocab_size, sos_id, eos_id
        self.ctc_weight = ctc_weight
        # Joint CTC-attention (Watanabe et al. 2017): a CTC head on the listener's values,
        # over the speller's vocabulary with <pad> as the blank (tfawd.speech.ctc).
        self.ctc_head = keras.layers.Dense(vocab_size, name="ctc_logits") if ctc_weight else None
        self.max_chars_per_frame = max_chars_per_frame
        # Global CMVN: the training split's per-band mean and std, saved with the weights (in
        # every checkpoint and export); `normalise` applies them (or per-utterance CMVN).
        if feature_norm not in FEATURE_NORMS:
            raise ValueError(f"feature_norm={feature_norm!r}: one of {', '.join(FEATURE_NORMS)}")
        self.feature_norm = feature_norm
        if feature_norm == "global":
            self.feature_mean = self.add_weight(shape=(feature_dim,), initializer="zeros",
                                                trainable=False, name="feature_mean")
            self.feature_std = self.add_weight(shape=(feature_dim,), initializer="ones",
                                               trainable=False, name="feature_std")
        self.listener = Listener(listener_units, attention_dim, pyramid_layers, frame_stack)
        self.speller = Speller(vocab_size, speller_units, embed_dim, attention_dim,
                               attention_window, attention_window_back, attention)
        self._config = dict(vocab_size=vocab_size, sos_id=sos_id, eos_id=eos_id,
                            listener_units=listener_units, speller_units=speller_units,
                            attention_dim=attention_dim, embed_dim=embed_dim,
                            pyramid_layers=pyramid_layers, frame_stack=frame_stack,
                            attention_window=attention_window,
                            attention_window_back=attention_window_back,
                            max_chars_per_frame=max_chars_per_frame, ctc_weight=ctc_weight,
                            attention=attention, feature_norm=feature_norm,
                            # the --features name only rides along in the config (model.json),
                            # so that evaluation and export rebuild the same input
                            feature_dim=feature_dim, features=features)

    def get_config(self):
        return {**super().get_config(), **self._config}

    @property
    def feature_dim(self) -> int:
        """Bands per input frame (40 log-mels; 13 for AN4's cepstra)."""
        return self._config["feature_dim"]

    def set_feature_stats(self, mean, std):
        """Global CMVN's statistics (the training split's), kept with the weights."""
        self.feature_mean.assign(mean)
        self.feature_std.assign(std)

    def normalise(self, features, frames):
        """Raw features [B, T, D] (e.g. log-mels) -> as the model was trained on them: by the
        training statistics (global) or each utterance over its own `frames` (utterance);
        padded frames zero."""
        if self.feature_norm == "global":
            mask = tf.sequence_mask(frames, tf.shape(features)[1], features.dtype)[:, :, None]
            return (features - self.feature_mean) / self.feature_std * mask

        def one(args):
            feats, n = args
            return tf.pad(speech_features.normalise(feats[:n]),
                          [[0, tf.shape(feats)[0] - n], [0, 0]])
        return tf.map_fn(one, (features, frames),
                         fn_output_signature=tf.TensorSpec(features.shape[1:], features.dtype))

    def listen(self, features, frames, training=False):
        mask = tf.sequence_mask(frames, tf.shape(features)[1])
        return self.listener(features, mask, training=training)

    def length_caps(self, frames, max_len):
        """frames [B] (input frames) -> the most decoder steps (incl. <eos>) of each utterance,
        ceil(frames * max_chars_per_frame) >= 1: its step cap - 1 is <eos>. max_len + 1 (no
        cap: a transcript that reaches max_len has no <eos>, as without the cap) when that
        exceeds max_len or max_chars_per_frame is 0."""
        if not self.max_chars_per_frame:
            return tf.fill(tf.shape(frames), tf.cast(max_len, tf.int32) + 1)
        caps = tf.math.ceil(tf.cast(frames, tf.float32) * self.max_chars_per_frame)
        return tf.clip_by_value(tf.cast(caps, tf.int32), 1, tf.cast(max_len, tf.int32) + 1)

    def teacher_forced(self, features, frames, labels, teacher_forcing=1.0, seed=(0, 0),
                       training=False, with_ctc=False):
        """labels [B, L] (ending in <eos>, padded) -> logits [B, L, V], attention [B, L, T'];
        with `with_ctc` (a model with a CTC head) also the CTC logits [B, T', V] (float32) and
        the encoder frames [B]. Step t reads labels[t-1] (or <sos>) with probability
        `teacher_forcing`, else the argmax of step t-1."""
        keys, values, mask = self.listen(features, frames, training)
        if self.ctc_head is not None:  # also on the building call, so the head has weights
            ctc = (tf.cast(self.ctc_head(values), tf.float32),
                   tf.reduce_sum(tf.cast(mask, tf.int32), axis=1))
        batch, length = tf.shape(labels)[0], tf.shape(labels)[1]
        inputs = tf.concat([tf.fill([batch, 1], self.sos_id), labels[:, :-1]], axis=1)
        use_truth = replica_rows_of(  # one process's draw, also over several replicas
            lambda rows: tf.random.stateless_uniform([rows, length], seed), batch
        ) < teacher_forcing
        state = self.speller.initial_state(batch, tf.shape(keys)[1])
        logits_ta = tf.TensorArray(tf.float32, size=length)
        attn_ta = tf.TensorArray(tf.float32, size=length)
        previous = inputs[:, 0]
        for t in tf.range(length):
            token = tf.where(use_truth[:, t] | (t == 0), inputs[:, t], previous)
            logits, state, weights = self.speller.step(token, state, keys, values, mask, training)
            previous = tf.argmax(logits, axis=-1, output_type=tf.int32)
            logits_ta = logits_ta.write(t, logits)
            attn_ta = attn_ta.write(t, weights)
        out = (tf.transpose(logits_ta.stack(), [1, 0, 2]),
               tf.transpose(attn_ta.stack(), [1, 0, 2]))
        return out + ctc if with_ctc and self.ctc_head is not None else out

    def greedy(self, features, frames, max_len):
        """-> tokens [B, max_len] (<eos> then <eos> padding), scores [B] (sum of log-probs up
        to and including <eos>), attention [B, max_len, T']. Step `length_caps` - 1 is <eos> at
        the latest (its log-probability counts in the score)."""
        keys, values, mask = self.listen(features, frames)
        batch = tf.shape(features)[0]
        caps = self.length_caps(frames, max_len)

        def body(t, token, state, done, score, tokens_ta, attn_ta):
            logits, state, weights = self.speller.step(token, state, keys, values, mask)
            logp = tf.nn.log_softmax(logits)
            nxt = tf.where(done | (t + 1 >= caps), self.eos_id,
                           tf.argmax(logp, -1, output_type=tf.int32))
            score += tf.where(done, 0.0, tf.gather(logp, nxt, batch_dims=1))
            return (t + 1, nxt, state, done | (nxt == self.eos_id), score,
                    tokens_ta.write(t, nxt), attn_ta.write(t, weights))

        init = (tf.constant(0), tf.fill([batch], self.sos_id),
                self.speller.initial_state(batch, tf.shape(keys)[1]),
                tf.zeros([batch], tf.bool), tf.zeros([batch]),
                tf.TensorArray(tf.int32, size=0, dynamic_size=True, element_shape=[None]),
                tf.TensorArray(tf.float32, size=0, dynamic_size=True, element_shape=[None, None]))
        _, _, _, _, score, tokens_ta, attn_ta = tf.while_loop(
            lambda t, _tok, _s, done, *_: (t < max_len) & ~tf.reduce_all(done), body, init,
            maximum_iterations=max_len)
        return self._pad_outputs(tokens_ta.stack(), attn_ta.stack(), max_len, score)

    def _pad_outputs(self, tokens, attention, max_len, score):
        """Time-major stacks (possibly shorter than max_len) -> batch-major, padded to max_len."""
        tokens = tf.transpose(tokens, [1, 0])
        attention = tf.transpose(attention, [1, 0, 2])
        missing = max_len - tf.shape(tokens)[1]
        tokens = tf.pad(tokens, [[0, 0], [0, missing]], constant_values=self.eos_id)
        attention = tf.pad(attention, [[0, 0], [0, missing], [0, 0]])
        return tokens, score, attention

    def beam_search(self, features, frames, max_len, beam_size):
        """Beam search without length normalisation (beam_size 1 is greedy); returns the best
        beam's tokens, score and attention, shaped as `greedy`'s outputs (and capped alike)."""
        keys, values, mask = self.listen(features, frames)
        batch, k, v = tf.shape(features)[0], beam_size, self.vocab_size
        tile = lambda x: tf.repeat(x, k, axis=0)  # noqa: E731  [B, ...] -> [B*K, ...]
        keys, values, mask = tile(keys), tile(values), tile(mask)
        caps = tile(self.length_caps(frames, max_len))
        frames_out = tf.shape(keys)[1]
        is_eos = tf.range(v) == self.eos_id
        eos_only = tf.where(is_eos, 0.0, NEG)

        def body(t, token, state, done, score, tokens, attn):
            logits, state, weights = self.speller.step(token, state, keys, values, mask)
            logp = tf.nn.log_softmax(logits)
            logp = tf.where((t + 1 >= caps)[:, None] & ~is_eos[None, :], NEG, logp)
            logp = tf.where(done[:, None], eos_only[None, :], logp)
            total = tf.reshape(score[:, None] + logp, [batch, k * v])
            score, flat = tf.math.top_k(total, k)
            parent = tf.reshape(flat // v + tf.range(batch)[:, None] * k, [-1])
            nxt = tf.reshape(flat % v, [-1])
            step = tf.one_hot(t, max_len, dtype=tf.int32)
            tokens = tf.gather(tokens, parent) * (1 - step) + nxt[:, None] * step
            attn = tf.tensor_scatter_nd_update(
                tf.gather(attn, parent),
                tf.stack([tf.range(batch * k), tf.fill([batch * k], t)], 1),
                tf.gather(weights, parent))
            state = tf.nest.map_structure(lambda s: tf.gather(s, parent), state)
            done = tf.gather(done, parent) | (nxt == self.eos_id)
            return t + 1, nxt, state, done, tf.reshape(score, [-1]), tokens, attn

        first = tf.tile(tf.concat([[0.0], tf.fill([k - 1], NEG)], 0), [batch])  # one live beam
        init = (tf.constant(0), tf.fill([batch * k], self.sos_id),
                self.speller.initial_state(batch * k, frames_out), tf.zeros([batch * k], tf.bool),
                first,
                tf.fill([batch * k, max_len], self.eos_id),
                tf.zeros([batch * k, max_len, frames_out]))
        _, _, _, _, score, tokens, attn = tf.while_loop(
            lambda t, _tok, _s, done, *_: (t < max_len) & ~tf.reduce_all(done), body, init,
            maximum_iterations=max_len)
        best = tf.range(batch) * k  # top_k sorts, so beam 0 is the best
        return tf.gather(tokens, best), tf.gather(score, best), tf.gather(attn, best)


def encoder_frames(frames, frame_stack: int, pyramid_layers: int):
    """Encoder steps of utterances of `frames` frames (what the attention spans)."""
    frames = -(-frames // frame_stack)
    for _ in range(pyramid_layers):
        frames = (frames + 1) // 2
    return frames
