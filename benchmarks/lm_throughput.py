"""Training throughput of tfawd's language model against the PyTorch reference, side by side.

Runs the training step `main.py` uses (`training.make_train_step`, real WikiText-2 BPTT
stream) for the model of a flagfile, and, when torch is importable, the reference training
step (../shared/bench/torch_awd_reference.py) with the same sizes, alternating A/B/A/B so both
see the same machine load. Prints one JSON object with the tokens/s of each round, the median
ratio, the analytic training FLOPs per token, this machine's matmul peak for the precision
(measured in the same run) and the fraction of it achieved, evaluation tokens/s (batch 10
and 1), the tf.data stream's tokens/s alone, and how many times the step was traced.

  python benchmarks/lm_throughput.py --config=configs/awd_lstm_wt2.cfg --steps=20
  python benchmarks/lm_throughput.py --config=configs/awd_lstm_wt2.cfg --precision=mixed_bfloat16

Any model flag of main.py overrides the config (e.g. --batch_size=20). Needs torch for the
reference (`pip install torch==2.13.0`; not a project dependency).
"""
import collections
import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from tfawd.core import runtime  # noqa: E402

runtime.configure_onednn()  # before TensorFlow is imported
from tfawd.lm import config  # noqa: E402

flags.DEFINE_integer("steps", 20, "Timed training steps per round.")
flags.DEFINE_integer("warmup", 3, "Untimed steps before the first round (tracing, caches).")
flags.DEFINE_integer("rounds", 2, "A/B rounds (tfawd, then reference, per round).")
flags.DEFINE_integer("eval_tokens_per_row", 2000,
                     "Validation tokens per batch row scored for evaluation tokens/s.")
flags.DEFINE_bool("reference", True, "Also time the PyTorch reference (skipped without torch).")
flags.DEFINE_string("reference_script", os.path.join(REPO, "..", "shared", "bench",
                                                     "torch_awd_reference.py"),
                    "The reference training script.")
flags.DEFINE_string("out", None, "Also write the JSON here.")
flags.DEFINE_string("profile_dir", "/tmp/tfawd_profile",
                    "With --profile_steps=START,END: after timing, END-START training steps are "
                    "traced into this folder (TensorBoard's Profile tab) and the op types taking "
                    "most of their time are added to the JSON.")
config.define_flags()
FLAGS = flags.FLAGS


def matmul_peak_gflops(dtype_name: str, n: int = 2048, reps: int = 8) -> float:
    """GFLOP/s of an n x n x n matmul in `dtype_name` (the machine's practical peak)."""
    import tensorflow as tf
    dtype = tf.bfloat16 if "bfloat16" in dtype_name else tf.float32
    a = tf.cast(tf.random.normal([n, n]), dtype)
    matmul = tf.function(lambda a: tf.matmul(a, a))
    matmul(a).numpy()
    start = time.perf_counter()
    for _ in range(reps):
        out = matmul(a)
    out.numpy()
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9


def training_flops_per_token(cfg, vocab_size: int, train_ids=None) -> int:
    """Matmul FLOPs of one training token: 3x the forward (forward, grad of inputs, grad of
    weights) of every LSTM layer's 4 gates over [input, hidden] and of the output layer: the
    full softmax, or the adaptive softmax's head for every token plus each tail cluster's
    projection and matrix for the share of `train_ids` in that cluster."""
    if cfg.model == "awd_lstm":
        sizes = [cfg.emsize] + [cfg.nhid] * (cfg.nlayers - 1) + [cfg.emsize]
    else:
        sizes = [cfg.emsize] + [cfg.nhid] * cfg.nlayers
    lstm = sum(2 * 4 * out * (inp + out) for inp, out in zip(sizes[:-1], sizes[1:]))
    e = sizes[-1]
    cutoffs = cfg.adaptive_cutoffs_list()
    if not cutoffs:
        return 3 * (lstm + 2 * e * vocab_size)
    import numpy as np
    bounds = [0, *cutoffs, vocab_size]
    output = 2 * e * (cutoffs[0] + len(cutoffs))  # the head
    for i, (lo, hi) in enumerate(zip(bounds[1:], bounds[2:]), start=1):
        share = float(np.mean((train_ids >= lo) & (train_ids < hi)))
        d = max(1, int(e // cfg.adaptive_div ** i))
        output += share * 2 * (e * d + d * (hi - lo))
    return int(3 * (lstm + output))


class TfawdStep:
    """tfawd's training step on the real stream, timed in rounds of `steps` windows."""

    def __init__(self, cfg, corpus):
        import keras

        from pipelines.bptt import bptt_dataset
        from tfawd.lm import models, training
        keras.utils.set_random_seed(cfg.seed)
        self.model = models.build_model(cfg, len(corpus.vocab))
        state = training.LMState(self.model, cfg.batch_size, cfg.lr)
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


def run_reference(cfg, steps: int, warmup: int) -> dict:
    args = [sys.executable, FLAGS.reference_script,
            "--data", os.path.join(cfg.data_dir, "wikitext-2"), "--steps", str(steps + warmup),
            "--warmup", str(warmup), "--log_every", str(10 ** 6), "--seed", str(cfg.seed)]
    for name in ("emsize", "nhid", "nlayers", "batch_size", "bptt", "lr", "clip", "wdecay",
                 "dropout", "dropouth", "dropouti", "dropoute", "wdrop", "alpha", "beta"):
        args += [f"--{name}", str(getattr(cfg, name))]
    if not cfg.variable_bptt:
        args.append("--fixed_bptt")
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    summary = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    return {"tokens_per_s": summary["tokens_per_s"]}


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")

    from pipelines import bptt
    from pipelines.lm_corpus import load_corpus
    from tfawd.lm.evaluation import Evaluator
    from tfawd.lm.models import resolve_cutoffs
    cfg = config.from_flags(FLAGS)
    from tfawd.lm.training import configure_runtime, vocab_order
    configure_runtime(cfg)
    if cfg.model != "awd_lstm":
        FLAGS.reference = False  # the reference is an AWD-LSTM
    corpus = load_corpus(cfg.dataset, cfg.data_dir, order=vocab_order(cfg))
    cfg = resolve_cutoffs(cfg, corpus.word_counts())
    vocab_size = len(corpus.vocab)

    ours = TfawdStep(cfg, corpus)
    ours.run(FLAGS.warmup)
    span = cfg.profile_range()
    profiled = span[1] - span[0] if span else 0
    compile_ahead = ours.compile_ahead(FLAGS.rounds * FLAGS.steps + profiled)
    with_reference = FLAGS.reference and torch_available()
    rounds = []
    for _ in range(FLAGS.rounds):
        row = {"tfawd": ours.run(FLAGS.steps)}
        if with_reference:
            row["reference"] = run_reference(cfg, FLAGS.steps, FLAGS.warmup)
            row["ratio"] = row["tfawd"]["tokens_per_s"] / row["reference"]["tokens_per_s"]
        rounds.append(row)

    evaluator, valid = Evaluator(ours.model), corpus.ids["valid"]
    evaluation = {}
    for b in (cfg.eval_batch_size, cfg.test_batch_size):
        stream = valid[:FLAGS.eval_tokens_per_row * b + 1]
        evaluator.evaluate(stream, b, cfg.bptt)  # traces, and compiles its window lengths
        evaluation[f"batch_{b}"] = evaluator.evaluate(stream, b, cfg.bptt)["tokens_per_s"]

    tokens, start = 0, time.perf_counter()
    for x, _ in bptt.bptt_dataset(corpus.ids["train"], cfg.batch_size, cfg.bptt, seed=cfg.seed,
                                  variable=cfg.variable_bptt):
        tokens += int(x.shape[0] * x.shape[1])
    pipeline = tokens / (time.perf_counter() - start)

    profile = ours.profile(profiled, FLAGS.profile_dir) if span else None
    flops = training_flops_per_token(cfg, vocab_size, corpus.ids["train"])
    peak = matmul_peak_gflops(cfg.precision)
    tfawd_median = statistics.median(r["tfawd"]["tokens_per_s"] for r in rounds)
    result = {
        "benchmark": "lm_throughput", "command": command(), "commit": git_commit(),
        "config": config_path(), "precision": cfg.precision,
        "precision_requested": FLAGS.precision,
        "threads": {"inter_op": cfg.inter_op_threads, "intra_op": cfg.intra_op_threads},
        "model": {k: getattr(cfg, k) for k in ("model", "emsize", "nhid", "nlayers",
                                               "batch_size", "bptt", "variable_bptt",
                                               "softmax", "adaptive_cutoffs", "adaptive_div")},
        "vocab_size": vocab_size, "steps_per_round": FLAGS.steps, "machine": runtime.machine(),
        "rounds": rounds, "tfawd_tokens_per_s": tfawd_median,
        "train_step_traces": ours.traces(), "xla_compile_ahead": compile_ahead,
        "training_flops_per_token": flops, "matmul_peak_gflops": peak,
        "achieved_fraction_of_peak": tfawd_median * flops / (peak * 1e9),
        "eval_tokens_per_s": evaluation, "pipeline_tokens_per_s": pipeline,
    }
    if profile:
        result["profile"] = {"dir": FLAGS.profile_dir, "steps": profiled,
                             "top_ops": profile}
    if with_reference:
        result["reference_tokens_per_s"] = statistics.median(
            r["reference"]["tokens_per_s"] for r in rounds)
        result["ratio_median"] = statistics.median(r["ratio"] for r in rounds)
    elif FLAGS.reference:
        result["reference_skipped"] = "torch is not importable (pip install torch==2.13.0)"
    emit(result)


def emit(result: dict, hidden: tuple = ()) -> None:
    """Prints a benchmark's JSON (without the `hidden` keys) and writes all of it to --out."""
    print(json.dumps({k: v for k, v in result.items() if k not in hidden}, indent=1,
                     default=float))
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            f.write(json.dumps(result, indent=1, default=float) + "\n")


def config_path():
    """The flagfile given as --config (or --flagfile)."""
    return next((a.split("=", 1)[1] for a in sys.argv
                 if a.startswith(("--config=", "--flagfile="))), None)


def command() -> str:
    """This run's command line, as typed (before --config became --flagfile), after the
    variables that change which kernels run (oneDNN set by the user, ISA caps)."""
    env = [f"{k}={os.environ[k]}" for k in (*runtime.ISA_CAPS, runtime.ONEDNN_VAR)
           if k in os.environ and not (k == runtime.ONEDNN_VAR and runtime.machine()[
               "onednn"]["decided_by"] != "user")]
    return " ".join(env + ["python", os.path.relpath(sys.argv[0], REPO)] + ORIGINAL_ARGS)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


ORIGINAL_ARGS = list(sys.argv[1:])


def config_argv():
    """--config=X is the documented spelling of --flagfile=X."""
    sys.argv = [a.replace("--config=", "--flagfile=", 1) if a.startswith("--config=") else a
                for a in sys.argv]


if __name__ == "__main__":
    config_argv()
    app.run(main)
