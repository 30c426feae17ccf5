"""What the training loop (`tfawd.core.loop.Loop`) costs per step, apart from the step itself.

Runs the loop over a task whose step does no work (a Python float back, as a real step's
loss), for --steps steps with the logging and checkpoint cadence of the CPU configs, and
prints JSON: microseconds of loop bookkeeping per step (counters, stop checks, non-finite
check, log lines, TensorBoard scalars, amortised checkpoints). Compare with a real step's
time (benchmarks/lm_throughput.py: ~0.25 s for the CPU AWD config on the AVX512_BF16 EPYC,
results/lm_throughput_awd_lstm_wt2_cpu_bf16_amd_epyc.json) for the loop's share.

  python benchmarks/loop_overhead.py --steps=2000 [--out=F]
"""
import contextlib
import io
import tempfile

import common  # first: sys.path and oneDNN
import keras
import tensorflow as tf
from absl import flags

from tfawd.core.loop import Loop, LoopConfig, Task

flags.DEFINE_integer("steps", 2000, "Steps timed.")
flags.DEFINE_integer("log_every", 50, "Log cadence (the CPU configs': 50).")
flags.DEFINE_integer("checkpoint_every", 200, "Checkpoint cadence (the CPU configs': 200).")
flags.DEFINE_string("out", None, "Also write the JSON here.")
FLAGS = flags.FLAGS


class NoWork(Task):
    unit = "tokens"

    def __init__(self, steps):
        self.model = keras.Sequential([keras.layers.Dense(1)])
        self.model.build((None, 1))
        self.optimizer = keras.optimizers.SGD()
        self.optimizer.build(self.model.trainable_variables)
        self.steps = steps

    def epoch_batches(self, epoch, start):
        return range(start, self.steps), self.steps

    def step(self, batch, step):
        return {"loss": 1.0, "gradient norm": 0.1}, 1400

    def log_entry(self, means, rate, epoch):
        tf.summary.scalar("loss", means["loss"])
        return {"train_loss": means["loss"], "tokens_per_s": rate}

    def validate(self):
        return {"score": 1.0}

    def validation_entry(self, result):
        return {}

    def describe(self, result):
        return "valid 1.0"


def main():
    work = tempfile.mkdtemp(prefix="loop_overhead_")
    loop = Loop(NoWork(FLAGS.steps), LoopConfig(work, max_epochs=1, log_every=FLAGS.log_every,
                                                checkpoint_every=FLAGS.checkpoint_every))
    with contextlib.redirect_stdout(io.StringIO()):
        _, (seconds,) = common.timed(loop.run)
    common.emit({**common.record("loop_overhead"), "steps": FLAGS.steps,
                 "log_every": FLAGS.log_every, "checkpoint_every": FLAGS.checkpoint_every,
                 "us_per_step": round(1e6 * seconds / FLAGS.steps, 1)}, FLAGS.out)


if __name__ == "__main__":
    common.run(main)
