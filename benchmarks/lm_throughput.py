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
import json
import os
import subprocess
import sys
import time

import common  # first: sys.path and oneDNN
from absl import flags
from lm_step import TfawdStep

from tfawd import families
from tfawd.lm import config

flags.DEFINE_integer("steps", 20, "Timed training steps per round.")
flags.DEFINE_integer("warmup", 3, "Untimed steps before the first round (tracing, caches).")
flags.DEFINE_integer("rounds", 2, "A/B rounds (tfawd, then reference, per round).")
flags.DEFINE_integer("eval_tokens_per_row", 2000,
                     "Validation tokens per batch row scored for evaluation tokens/s.")
flags.DEFINE_bool("reference", True, "Also time the PyTorch reference (skipped without torch).")
flags.DEFINE_string("reference_script", os.path.join(common.REPO, "..", "shared", "bench",
                                                     "torch_awd_reference.py"),
                    "The reference training script.")
flags.DEFINE_string("out", None, "Also write the JSON here.")
flags.DEFINE_string("profile_dir", "/tmp/tfawd_profile",
                    "With --profile_steps=START,END: after timing, END-START training steps are "
                    "traced into this folder (TensorBoard's Profile tab) and the op types taking "
                    "most of their time are added to the JSON.")
families.define_flags(flags.FLAGS)  # run-level and family flags, as main.py
FLAGS = flags.FLAGS


def matmul_peak_gflops(dtype_name: str, n: int = 2048, reps: int = 8) -> float:
    """GFLOP/s of an n x n x n matmul in `dtype_name` (the machine's practical peak)."""
    import tensorflow as tf
    dtype = tf.bfloat16 if "bfloat16" in dtype_name else tf.float32
    a = tf.cast(tf.random.normal([n, n]), dtype)
    matmul = tf.function(lambda a: tf.matmul(a, a))
    matmul(a).numpy()

    def products():
        for _ in range(reps):
            out = matmul(a)
        out.numpy()
    _, (seconds,) = common.timed(products)
    return 2 * n ** 3 * reps / seconds / 1e9


def training_flops_per_token(cfg, vocab_size: int, train_ids=None) -> int:
    """Matmul FLOPs of one training token: three times the forward (forward, grad of inputs,
    grad of weights) of every LSTM layer's 4 gates over [input, hidden] and of the output layer: the
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


def main():
    from pipelines import bptt
    from pipelines.lm_corpus import load_corpus
    from tfawd.lm.evaluation import Evaluator
    from tfawd.lm.models import resolve_cutoffs
    cfg = config.from_flags(FLAGS)
    from tfawd.core.flags import profile_range
    from tfawd.lm.training import configure_runtime, vocab_order
    configure_runtime(cfg)
    if cfg.model != "awd_lstm":
        FLAGS.reference = False  # the reference is an AWD-LSTM
    corpus = load_corpus(cfg.dataset, cfg.data_dir, order=vocab_order(cfg))
    cfg = resolve_cutoffs(cfg, corpus.word_counts())
    vocab_size = len(corpus.vocab)

    ours = TfawdStep(cfg, corpus)
    ours.run(FLAGS.warmup)
    span = profile_range(cfg.profile_steps)
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
    tfawd_median = common.spread(r["tfawd"]["tokens_per_s"] for r in rounds)["median"]
    result = {
        **common.record("lm_throughput"), "config": common.config_path(),
        "precision": cfg.precision,
        "precision_requested": FLAGS.precision,
        "threads": {"inter_op": cfg.inter_op_threads, "intra_op": cfg.intra_op_threads},
        "model": {k: getattr(cfg, k) for k in ("model", "emsize", "nhid", "nlayers",
                                               "batch_size", "bptt", "variable_bptt",
                                               "softmax", "adaptive_cutoffs", "adaptive_div")},
        "vocab_size": vocab_size, "steps_per_round": FLAGS.steps,
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
        result["reference_tokens_per_s"] = common.spread(
            r["reference"]["tokens_per_s"] for r in rounds)["median"]
        result["ratio_median"] = common.spread(r["ratio"] for r in rounds)["median"]
    elif FLAGS.reference:
        result["reference_skipped"] = "torch is not importable (pip install torch==2.13.0)"
    common.emit(result, FLAGS.out)


if __name__ == "__main__":
    common.run(main)
