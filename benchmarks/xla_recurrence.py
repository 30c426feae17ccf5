"""Does XLA (`jit_compile=True`) speed up the LSTM recurrence on this CPU? One layer's forward
and backward (tfawd/nn/lstm_kernel.py) over a [T, B, 4H] window, graph mode vs XLA, alternating
rounds in one process; prints JSON (seconds per window, first-call compile time).

  python benchmarks/xla_recurrence.py --out=results/xla_recurrence.json
"""
import common  # first: sys.path and oneDNN
from absl import flags

flags.DEFINE_integer("steps", 70, "Window length T.")
flags.DEFINE_integer("batch", 80, "Batch B.")
flags.DEFINE_integer("units", 1150, "Hidden units H.")
flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16"], "Matmul precision.")
flags.DEFINE_integer("rounds", 3, "Timed rounds of each.")
flags.DEFINE_string("out", None, "Also write the JSON here.")
FLAGS = flags.FLAGS


def main():
    import tensorflow as tf

    from tfawd.nn.lstm_kernel import lstm_recurrence
    dtype = tf.as_dtype(FLAGS.dtype)
    t, b, h = FLAGS.steps, FLAGS.batch, FLAGS.units
    z = tf.cast(tf.random.normal([t, b, 4 * h]), dtype)
    u = tf.cast(tf.random.normal([h, 4 * h]) * h ** -0.5, dtype)
    zeros = tf.zeros([b, h])

    def fwd_bwd(z, u):
        with tf.GradientTape() as tape:
            tape.watch([z, u])
            hs, _, _ = lstm_recurrence(z, zeros, zeros, u)
            loss = tf.reduce_sum(tf.cast(hs, tf.float32))
        return tape.gradient(loss, [z, u])

    fns = {"graph": tf.function(fwd_bwd), "xla": tf.function(fwd_bwd, jit_compile=True)}
    windows = {k: (lambda fn=fn: [g.numpy() for g in fn(z, u)]) for k, fn in fns.items()}

    first = {k: common.timed(window)[1][0] for k, window in windows.items()}
    rounds = {k: [] for k in fns}
    for _ in range(FLAGS.rounds):  # alternating, so both see the same machine load
        for k, window in windows.items():
            rounds[k] += common.timed(window)[1]
    median = {k: common.spread(v)["median"] for k, v in rounds.items()}
    common.emit({**common.record("xla_recurrence"), "shape": {"T": t, "B": b, "H": h},
                 "dtype": FLAGS.dtype, "first_call_s": first, "rounds_s": rounds,
                 "median_s": median, "xla_speedup": median["graph"] / median["xla"]}, FLAGS.out)


if __name__ == "__main__":
    common.run(main)
