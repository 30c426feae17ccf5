"""Does XLA (`jit_compile=True`) speed up the LSTM recurrence on this CPU? One layer's forward
and backward (tfawd/nn/lstm_kernel.py) over a [T, B, 4H] window, graph mode vs XLA, alternating
rounds in one process; prints JSON (seconds per window, first-call compile time).

  python benchmarks/xla_recurrence.py --out=results/xla_recurrence.json
"""
import json
import os
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfawd.core import runtime  # noqa: E402

runtime.configure_onednn()  # before TensorFlow is imported

flags.DEFINE_integer("steps", 70, "Window length T.")
flags.DEFINE_integer("batch", 80, "Batch B.")
flags.DEFINE_integer("units", 1150, "Hidden units H.")
flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16"], "Matmul precision.")
flags.DEFINE_integer("rounds", 3, "Timed rounds of each.")
flags.DEFINE_string("out", None, "Also write the JSON here.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
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

    def timed(fn):
        start = time.perf_counter()
        for g in fn(z, u):
            g.numpy()
        return time.perf_counter() - start

    first = {k: timed(fn) for k, fn in fns.items()}
    rounds = {k: [] for k in fns}
    for _ in range(FLAGS.rounds):
        for k, fn in fns.items():
            rounds[k].append(timed(fn))
    median = {k: statistics.median(v) for k, v in rounds.items()}
    result = {"benchmark": "xla_recurrence", "shape": {"T": t, "B": b, "H": h},
              "dtype": FLAGS.dtype, "first_call_s": first, "rounds_s": rounds,
              "median_s": median, "xla_speedup": median["graph"] / median["xla"]}
    text = json.dumps(result, indent=1)
    print(text)
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    app.run(main)
