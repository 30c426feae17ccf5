"""A/B in one process of the output layer's vocabulary padding (`tfawd/nn/losses.py`,
`VOCAB_ALIGN`): `decoder_nll` forward + backward, and its three products alone, at the paper
config's shape (N = 80 x 70 tokens, E = 400, V = 33,278), unpadded (align 1) against padded,
the arms alternated round by round.

  python benchmarks/vocab_align.py --out=F
"""
import common
from absl import flags

flags.DEFINE_integer("tokens", 80 * 70, "N: tokens of a window (batch x bptt).")
flags.DEFINE_integer("vocab", 33278, "V: WikiText-2's vocabulary.")
flags.DEFINE_integer("emsize", 400, "E: the last layer's width (tied to the embedding).")
flags.DEFINE_multi_integer("align", [1, 64], "Arms: VOCAB_ALIGN values (1: no padding).")
flags.DEFINE_integer("rounds", 4, "Alternated rounds; each figure is the best call of a round.")
flags.DEFINE_integer("calls", 3, "Timed calls per arm and round.")
flags.DEFINE_string("out", None, "Also write the JSON here.")
FLAGS = flags.FLAGS


def main():
    import tensorflow as tf

    from tfawd.nn import losses
    n, v, e = FLAGS.tokens, FLAGS.vocab, FLAGS.emsize
    default_align = losses.VOCAB_ALIGN
    h = tf.cast(tf.random.normal([n, e]), tf.bfloat16)
    w = tf.random.normal([v, e], stddev=0.1)
    b = tf.zeros([v])
    y = tf.random.uniform([n], 0, v, tf.int32)

    def arm(align):
        size = v + (-v % align)
        wp = tf.cast(tf.random.normal([size, e]), tf.bfloat16)
        dl = tf.cast(tf.random.normal([n, size]), tf.bfloat16)

        @tf.function
        def step(h, w, b):
            losses.VOCAB_ALIGN = align  # read when traced
            with tf.GradientTape() as tape:
                tape.watch([h, w, b])
                loss = tf.reduce_mean(losses.decoder_nll(h, w, b, y))
            return tape.gradient(loss, [h, w, b])
        forward = tf.function(lambda h, wp: tf.matmul(h, wp, transpose_b=True))
        d_x = tf.function(lambda dl, wp: tf.matmul(dl, wp))
        d_w = tf.function(lambda dl, h: tf.matmul(dl, h, transpose_a=True))
        return {"decoder_nll_fwd_bwd_ms": lambda: [t.numpy() for t in step(h, w, b)],
                "forward_product_ms": lambda: forward(h, wp).numpy(),
                "dx_product_ms": lambda: d_x(dl, wp).numpy(),
                "dw_product_ms": lambda: d_w(dl, h).numpy()}, size
    arms = {a: arm(a) for a in FLAGS.align}
    for fns, _ in arms.values():  # trace and warm every function before timing
        for fn in fns.values():
            fn()
    rows = {a: {k: [] for k in arms[a][0]} for a in arms}
    for _ in range(FLAGS.rounds):
        for a, (fns, _) in arms.items():
            for name, fn in fns.items():
                _, seconds = common.timed(fn, rounds=FLAGS.calls)
                rows[a][name].append(round(1000 * min(seconds), 1))
    losses.VOCAB_ALIGN = default_align
    medians = {a: {k: common.spread(x)["median"] for k, x in r.items()} for a, r in rows.items()}
    base = FLAGS.align[0]
    common.emit({**common.record("vocab_align"), "shape": {"tokens": n, "vocab": v, "emsize": e},
                 "padded_vocab": {a: arms[a][1] for a in arms}, "rounds_ms": rows,
                 "median_ms": medians,
                 "speedup_over_align_%d" % base: {
                     a: {k: medians[base][k] / medians[a][k] for k in medians[a]}
                     for a in arms if a != base}}, FLAGS.out)


if __name__ == "__main__":
    common.run(main)
