"""Adaptive input and output layers over a vocabulary split into frequency clusters.

- `cluster_layout`: the clusters [0, c_1), [c_1, c_2), ..., [c_n, V) of `cutoffs` and their
  dimensions d_i = max(1, dim // div**i) (Baevski & Auli 2019, section 3).
- `AdaptiveEmbedding` (Baevski & Auli 2019, "Adaptive Input Representations for Neural
  Language Modeling", section 3): cluster i embeds in d_i dimensions, projected up to the model
  dimension; with AWD-LSTM's embedding dropout (Merity et al. 2017, section 4.3).
- `AdaptiveSoftmax` (Grave et al. 2017, "Efficient softmax approximation for GPUs", section 4):
  a head softmax over the first cluster's words and one logit per tail cluster, each tail
  cluster a softmax of its own; optionally tied to an `AdaptiveEmbedding` (Baevski & Auli 2019,
  section 3, "adaptive input + adaptive softmax, tied").
- `cluster_shares`, `sgd_unstable`, `stable_share`, `balanced_cutoffs`: Grave et al. train
  with Adagrad; under AWD-LSTM's SGD at lr 30 a tail cluster holding too many of the tokens
  makes its logit oscillate, so cut-offs are chosen by token share, not by rank alone.

Ids are taken in the given order: put frequent words at small ids for the speed-up to apply.
Weights are created float32 (the dtype policy's variable dtype) without autocasting; every
method casts them to the precision of its input: matmuls run in the compute dtype (bfloat16
under mixed precision), softmaxes and losses in float32 (float64 for float64 inputs).
"""
import keras
import tensorflow as tf

from tfawd.nn.layers import dropout_mask


def cluster_layout(vocab_size, dim, cutoffs, div, dim_name="output_dim"):
    """(bounds [0, c_1, ..., c_n, V], dims [d_0, ..., d_n]) of the clusters, d_i = max(1,
    dim // div**i): frequent words get the full dimension, rarer ones div times fewer per
    cluster (Baevski & Auli 2019, section 3). Raises ValueError on invalid arguments."""
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"{dim_name} must be a positive int, got {dim!r}")
    cutoffs = list(cutoffs)
    if (any(int(c) != c or not 0 < c < vocab_size for c in cutoffs)
            or any(a >= b for a, b in zip(cutoffs, cutoffs[1:]))):
        raise ValueError(f"cutoffs must be strictly increasing ints in (0, vocab_size="
                         f"{vocab_size}), e.g. [{vocab_size // 4 or 1}]; got {cutoffs}")
    if not div >= 1:
        raise ValueError(f"div must be >= 1 (cluster i has dimension {dim_name} // div**i), "
                         f"got {div!r}")
    dims = [max(1, int(dim // div**i)) for i in range(len(cutoffs) + 1)]
    return [0, *(int(c) for c in cutoffs), vocab_size], dims


def cluster_shares(counts, bounds):
    """Each cluster's share of the tokens: `counts[w]` occurrences of id w, `bounds` as
    `cluster_layout` returns them."""
    total = float(sum(counts)) or 1.0
    return [float(sum(counts[lo:hi])) / total for lo, hi in zip(bounds, bounds[1:])]


def sgd_unstable(share, lr):
    """Whether plain SGD at `lr` oscillates on a tail cluster's logit at the unigram stage.

    The cluster logit is one head output shared by every word of its cluster: its bias has
    gradient mean(p_c - [y in c]) and curvature p_c (1 - p_c), and a gradient step on a
    curvature-k coordinate is stable only while lr k < 2. Early in training p_c is the
    cluster's token `share`. AWD-LSTM's SGD at lr 30 thus needs clusters of at most ~7% of the
    tokens: WT2's words ranked 2000-10000 hold 15.6%, and with them the logit's bias swung
    between 4 and 9 from step to step while the last LSTM layer's output collapsed to
    |h| ~ 0.001 (a loss stuck at the unigram level for thousands of steps;
    results/adaptive_clusters_awd_lstm_wt2_cpu.json)."""
    return lr * share * (1.0 - share) > 2.0


def stable_share(lr):
    """The largest token share of a tail cluster used for SGD at `lr`: 1.5 / lr, a quarter
    below `sgd_unstable`'s threshold (share ~ 2 / lr), since variable-length BPTT scales the
    step up to ~1.3 lr and the batch's share varies around the corpus'."""
    return 1.5 / lr


def balanced_cutoffs(counts, head, max_share):
    """Cut-offs [head, c_2, ...] for ids sorted by frequency (`counts[w]` occurrences of id w):
    the head holds ids below `head`, then each tail cluster is extended while it holds at most
    `max_share` of the tokens (the last one holds what remains, possibly less)."""
    if not 0 < head < len(counts):
        raise ValueError(f"head must be in (0, {len(counts)}), got {head!r}")
    total, cutoffs, mass = float(sum(counts)), [head], 0.0
    for w in range(head, len(counts)):
        share = counts[w] / total
        if mass and mass + share > max_share:
            cutoffs.append(w)
            mass = 0.0
        mass += share
    return cutoffs


def cluster_of(ids, cutoffs):
    """The cluster index (0 = head) of every id in `ids`, as int32 of the same shape."""
    ids = tf.cast(ids, tf.int32)
    return sum((tf.cast(ids >= c, tf.int32) for c in cutoffs), tf.zeros_like(ids))


def _softmax_dtype(dtype):
    return tf.float64 if dtype == tf.float64 else tf.float32


def _logsumexp_nll(logits, targets):
    """-log softmax(logits)[targets] per row, logits [N, C] in the softmax dtype."""
    picked = tf.gather(logits, targets[:, None], batch_dims=1)[:, 0]
    return tf.reduce_logsumexp(logits, axis=-1) - picked


@keras.saving.register_keras_serializable("tfawd")
class AdaptiveEmbedding(keras.layers.Layer):
    """Adaptive input representations (Baevski & Auli 2019, section 3).

    Cluster i of `cluster_layout` has a table E_i [V_i, d_i] (`embeddings[i]`); tail clusters
    (i >= 1) also a projection P_i [d_i, output_dim] (`projections[i - 1]`), so word w of
    cluster i embeds as E_i[w - c_i] P_i. The head cluster has d_0 = output_dim and no
    projection. Each cluster looks up only its own ids (`tf.dynamic_partition`), so the cost
    per token is that of its cluster.

    `dropout` is AWD-LSTM's embedding dropout (Merity et al. 2017, section 4.3), as
    `tfawd.nn.layers.EmbeddingDropout`: during training each word is dropped with probability
    `dropout` for the whole call (every occurrence embeds to zero), kept words are scaled by
    1 / (1 - dropout).

    call(ids [...] int, training) -> [..., output_dim] in the compute dtype.
    """

    def __init__(self, vocab_size, output_dim, cutoffs, div=4, dropout=0.0, seed=None,
                 embeddings_initializer=None, projection_initializer="glorot_uniform",
                 **kwargs):
        super().__init__(**kwargs)
        self.bounds, self.dims = cluster_layout(vocab_size, output_dim, cutoffs, div)
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.vocab_size, self.output_dim, self.div = vocab_size, output_dim, div
        self.cutoffs = self.bounds[1:-1]
        self.dropout, self.seed = dropout, seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.embeddings_initializer = keras.initializers.get(
            embeddings_initializer or keras.initializers.RandomUniform(-0.1, 0.1))
        self.projection_initializer = keras.initializers.get(projection_initializer)

    def build(self, input_shape=None):
        sizes = [hi - lo for lo, hi in zip(self.bounds, self.bounds[1:])]
        self.embeddings = [
            self.add_weight(shape=(v, d), initializer=self.embeddings_initializer,
                            name=f"embeddings_{i}", autocast=False)
            for i, (v, d) in enumerate(zip(sizes, self.dims))]
        self.projections = [
            self.add_weight(shape=(d, self.output_dim), initializer=self.projection_initializer,
                            name=f"projection_{i}", autocast=False)
            for i, d in enumerate(self.dims) if i > 0]
        self.built = True

    def call(self, inputs, training=False):
        ids = tf.cast(inputs, tf.int32)
        flat = tf.reshape(ids, [-1])
        clusters = cluster_of(flat, self.cutoffs)
        n = len(self.dims)
        positions = tf.dynamic_partition(tf.range(tf.size(flat)), clusters, n)
        words = tf.dynamic_partition(flat, clusters, n)
        dtype = self.compute_dtype
        vectors = []
        for i, (lo, cluster_words) in enumerate(zip(self.bounds, words)):
            v = tf.cast(tf.gather(self.embeddings[i], cluster_words - lo), dtype)
            if i > 0:
                v = tf.matmul(v, tf.cast(self.projections[i - 1], dtype))
            vectors.append(v)
        outputs = tf.reshape(tf.dynamic_stitch(positions, vectors),
                             tf.concat([tf.shape(ids), [self.output_dim]], axis=0))
        outputs = tf.ensure_shape(outputs, ids.shape.concatenate([self.output_dim]))
        if not training or self.dropout == 0:
            return outputs
        rows = dropout_mask([self.vocab_size, 1], self.dropout, self.seed_generator, dtype)
        return outputs * tf.gather(rows, ids)  # section 4.3: whole words, every occurrence

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.output_dim)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size,
                "output_dim": self.output_dim, "cutoffs": list(self.cutoffs), "div": self.div,
                "dropout": self.dropout, "seed": self.seed,
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer),
                "projection_initializer": keras.initializers.serialize(
                    self.projection_initializer)}


class _Link:
    """Holds the tied embedding without Keras tracking it: its variables belong to (and are
    saved by) the owner of the embedding, not to the softmax."""

    def __init__(self, layer):
        self.layer = layer


@keras.saving.register_keras_serializable("tfawd")
class AdaptiveSoftmax(keras.layers.Layer):
    """The adaptive softmax (Grave et al. 2017, section 4).

    The head is a softmax over the head cluster's V_0 words and one logit per tail cluster:
    head logits = h [E_0; C]^T + b_head, C [n_tail, input_dim] (`cluster_kernel`). Tail cluster
    i is a softmax of its own over (h P_i^T) E_i^T + b_i, and p(w) = p_head(i) p_i(w) for w in
    cluster i (p_head(w) for head words). `biases` = [b_head [V_0 + n_tail], b_1 [V_1], ...].

    Word matrices E_i [V_i, d_i] and projections P_i [d_i, input_dim] are those of `words`, an
    `AdaptiveEmbedding` layout: the layer's own sublayer when untied, or `tied_to` (Baevski &
    Auli 2019, section 3: the output layer reuses both the input embeddings and projections),
    in which case the softmax owns only `cluster_kernel` and `biases`; the embedding's
    variables stay its owner's (not tracked here, not in this layer's `weights`).

    Serialisation: `get_config` stores `tied=True`, not the embedding. A model rebuilding its
    layers from its own config passes `tied_to` again; a softmax deserialised on its own must
    be re-linked with `tie(embedding)` before it is built.

    log_probs(h [..., input_dim]) -> [..., vocab_size]; nll(h, targets [...]) -> [...];
    call(h) = log_probs(h). Float32 results (float64 for float64 h).
    """

    def __init__(self, vocab_size, input_dim, cutoffs, div=4, tied_to=None, tied=False,
                 **kwargs):
        super().__init__(**kwargs)
        self.bounds, self.dims = cluster_layout(vocab_size, input_dim, cutoffs, div,
                                                "input_dim")
        self.vocab_size, self.input_dim, self.div = vocab_size, input_dim, div
        self.cutoffs = self.bounds[1:-1]
        self.tied, self._link = bool(tied or tied_to is not None), None
        if tied_to is not None:
            self.tie(tied_to)
        elif not self.tied:
            self.own_words = AdaptiveEmbedding(vocab_size, input_dim, self.cutoffs, div,
                                               dtype=self.dtype_policy, name="words")

    def tie(self, embedding):
        """Use `embedding`'s E_i and P_i as the output word matrices and tail projections."""
        if not self.tied:
            raise ValueError("tie() needs a softmax created with tied=True or tied_to=...")
        if not isinstance(embedding, AdaptiveEmbedding):
            raise ValueError(f"tied_to must be an AdaptiveEmbedding, got {type(embedding)}")
        if (embedding.vocab_size, embedding.output_dim, embedding.cutoffs, embedding.div) != (
                self.vocab_size, self.input_dim, self.cutoffs, self.div):
            raise ValueError(
                "tied_to must have this softmax's vocab_size, cutoffs and div and output_dim == "
                f"input_dim; got {(embedding.vocab_size, embedding.output_dim)}, "
                f"{embedding.cutoffs}, {embedding.div} for {(self.vocab_size, self.input_dim)}, "
                f"{self.cutoffs}, {self.div}")
        self.tied, self._link = True, _Link(embedding)

    @property
    def words(self):
        """The `AdaptiveEmbedding` whose E_i and P_i this softmax uses."""
        if not self.tied:
            return self.own_words
        if self._link is None:
            raise ValueError("this AdaptiveSoftmax is tied (tied=True) but not linked: pass "
                             "tied_to=embedding or call tie(embedding) before using it")
        return self._link.layer

    def build(self, input_shape=None):
        if not self.words.built:
            self.words.build()
        n_tail = len(self.dims) - 1
        self.cluster_kernel = self.add_weight(
            shape=(n_tail, self.input_dim), name="cluster_kernel", autocast=False,
            initializer=keras.initializers.RandomUniform(-0.1, 0.1))
        sizes = [self.bounds[1] + n_tail] + [
            hi - lo for lo, hi in zip(self.bounds[1:], self.bounds[2:])]
        self.biases = [self.add_weight(shape=(v,), initializer="zeros", autocast=False,
                                       name="head_bias" if i == 0 else f"tail_bias_{i}")
                       for i, v in enumerate(sizes)]
        self.built = True

    def _flat(self, h):
        """(h as a tensor, h as [N, input_dim]); builds the layer on first use."""
        h = tf.convert_to_tensor(h)
        if not self.built:
            self.build(h.shape)
        return h, tf.reshape(h, [-1, self.input_dim])

    def _head_logits(self, h):
        """[N, V_0 + n_tail] head logits (head words, then one per tail cluster)."""
        w = tf.concat([self.words.embeddings[0], self.cluster_kernel], axis=0)
        products = tf.matmul(h, tf.cast(w, h.dtype), transpose_b=True)
        dtype = _softmax_dtype(h.dtype)
        return tf.cast(products, dtype) + tf.cast(self.biases[0], dtype)

    def _tail_logits(self, i, h):
        """[N, V_i] logits of tail cluster i: h projected down by P_i^T, times E_i^T."""
        projected = tf.matmul(h, tf.cast(self.words.projections[i - 1], h.dtype),
                              transpose_b=True)
        products = tf.matmul(projected, tf.cast(self.words.embeddings[i], h.dtype),
                             transpose_b=True)
        dtype = _softmax_dtype(h.dtype)
        return tf.cast(products, dtype) + tf.cast(self.biases[i], dtype)

    def log_probs(self, h):
        """Exact log p(w | h) [..., vocab_size] of every word: log p_head(w) for head words,
        log p_head(cluster i) + log p_i(w) for tail words (Grave et al. 2017, section 4)."""
        h, flat = self._flat(h)
        head = tf.nn.log_softmax(self._head_logits(flat))
        v0 = self.bounds[1]
        parts = [head[:, :v0]]
        for i in range(1, len(self.dims)):
            parts.append(head[:, v0 + i - 1:v0 + i]
                         + tf.nn.log_softmax(self._tail_logits(i, flat)))
        out = tf.reshape(tf.concat(parts, axis=-1),
                         tf.concat([tf.shape(h)[:-1], [self.vocab_size]], axis=0))
        return tf.ensure_shape(out, h.shape[:-1].concatenate([self.vocab_size]))

    def nll(self, h, targets):
        """-log p(targets | h) [...], the training loss: the head for every row, tail cluster
        i only for the rows whose target is in it (Grave et al. 2017, section 4)."""
        _, flat = self._flat(h)
        dims = tf.shape(targets)
        y = tf.reshape(tf.cast(targets, tf.int32), [-1])
        clusters = cluster_of(y, self.cutoffs)
        v0 = self.bounds[1]
        head_targets = tf.where(clusters == 0, y, v0 - 1 + clusters)  # word or cluster logit
        out = _logsumexp_nll(self._head_logits(flat), head_targets)
        for i in range(1, len(self.dims)):
            rows = tf.where(clusters == i)  # [K, 1]
            tail = _logsumexp_nll(self._tail_logits(i, tf.gather_nd(flat, rows)),
                                  tf.gather_nd(y, rows) - self.bounds[i])
            out = tf.tensor_scatter_nd_add(out, rows, tail)
        return tf.reshape(out, dims)

    def call(self, inputs):
        return self.log_probs(inputs)

    def compute_output_spec(self, inputs):
        dtype = "float64" if inputs.dtype == "float64" else "float32"
        return keras.KerasTensor((*inputs.shape[:-1], self.vocab_size), dtype=dtype)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size,
                "input_dim": self.input_dim, "cutoffs": list(self.cutoffs), "div": self.div,
                "tied": self.tied}
