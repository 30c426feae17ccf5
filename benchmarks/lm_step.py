"""tfawd's training step as the benchmarks time it: the model, carried state, optimizer and
`training.make_train_step` that `main.py` trains with, fed by the real BPTT stream of a corpus.
Shared by lm_throughput, precision_guard, xla_fusion and adaptive_clusters; defines no flags.
Import it after `common` (which chooses oneDNN before TensorFlow is imported)."""
import collections
import json
import os
import time


class TfawdStep:
    """tfawd's training step on the real stream, timed in rounds of `steps` windows."""

    def __init__(self, cfg, corpus):
        import keras

        from pipelines.bptt import bptt_dataset
        from tfawd.lm import models, training
        keras.utils.set_random_seed(cfg.seed)
        self.model = models.build_model(cfg, len(corpus.vocab))
        self.state = state = training.LMState(self.model, cfg.batch_size, cfg.lr)
        self.step = training.make_train_step(self.model, training.make_optimizer(cfg), state, cfg)
        self.cfg = cfg
        self.windows = iter(bptt_dataset(corpus.ids["train"], cfg.batch_size, cfg.bptt,
                                         seed=cfg.seed, variable=cfg.variable_bptt,
                                         max_len=cfg.bptt_max_len).repeat())
        self.ahead = collections.deque()  # windows drawn by `compile_ahead`, not yet trained on

    def next_window(self):
        return self.ahead.popleft() if self.ahead else next(self.windows)

    def compile_ahead(self, steps: int) -> dict:
        """XLA compiles the fused softmax (tfawd/nn/losses.py) once per window length and process,
        ~0.35 s each here: a training run pays it in its first minutes, a benchmark of a few
        dozen steps would pay it in most timed steps. Compiles it for the lengths of the next
        `steps` windows, so the timed rounds measure the steady state; returns what it cost."""
        import tensorflow as tf

        from tfawd.nn.losses import decoder_nll
        if self.cfg.softmax != "full":
            return {"skipped": "the adaptive softmax has no XLA-fused function"}
        while len(self.ahead) < steps:
            self.ahead.append(next(self.windows))
        lengths = sorted({int(x.shape[1]) for x, _ in self.ahead})
        weights, bias = map(tf.convert_to_tensor, self.model.decoder_weights())
        dtype = self.model.compute_dtype
        start = time.perf_counter()
        for length in lengths:
            h = tf.zeros([self.cfg.batch_size, length, weights.shape[1]], dtype)
            with tf.GradientTape() as tape:
                tape.watch(h)
                targets = tf.zeros([self.cfg.batch_size, length], tf.int32)
                nll = decoder_nll(h, weights, bias, targets)
            float(tf.reduce_sum(tf.cast(tape.gradient(nll, h), tf.float32)))
        return {"window_lengths": len(lengths), "seconds": time.perf_counter() - start}

    def run(self, steps: int, losses: list | None = None) -> dict:
        """Times `steps` steps; appends each step's cross-entropy to `losses` if given."""
        tokens, start, out = 0, time.perf_counter(), []
        for _ in range(steps):
            x, y = self.next_window()
            loss, _ = self.step(x, y)
            out.append(loss)
            tokens += int(x.shape[0] * x.shape[1])
        float(loss)
        seconds = time.perf_counter() - start
        if losses is not None:
            losses.extend(float(v) for v in out)
        return {"tokens_per_s": tokens / seconds, "step_s": seconds / steps}

    def profile(self, steps: int, logdir: str) -> list:
        """Traces `steps` steps; returns the top ops by self time (needs xprof, which
        tensorboard-plugin-profile installs)."""
        import glob

        import tensorflow as tf
        tf.profiler.experimental.start(logdir)
        self.run(steps)
        tf.profiler.experimental.stop()
        return top_ops(sorted(glob.glob(os.path.join(logdir, "plugins/profile/*/*.xplane.pb")))[-1])

    def traces(self) -> int:
        return self.step.experimental_get_tracing_count()


def top_ops(xplane: str, n: int = 15) -> list:
    """[{op type, self time %}] of the n op types taking most host self-time in a trace."""
    try:
        from xprof.convert import raw_to_tool_data
    except ImportError:
        return [{"skipped": "xprof is not installed (pip install tensorboard-plugin-profile)"}]
    data, _ = raw_to_tool_data.xspace_to_tool_data([xplane], "framework_op_stats", {})
    table = json.loads(data)
    table = table[0] if isinstance(table, list) else table
    cols = [c["id"] for c in table["cols"]]
    by_type = {}
    for row in table["rows"]:
        cell = dict(zip(cols, (c["v"] if c else None for c in row["c"])))
        if cell.get("host_or_device") not in (None, "Host"):
            continue
        by_type[cell["type"]] = by_type.get(cell["type"], 0.0) + float(cell["total_self_time"])
    total = sum(by_type.values()) or 1.0
    return [{"op": k, "self_time_pct": round(100 * v / total, 1)}
            for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])[:n]]

