"""Quality guard of mixed precision (issue 4): float32 and mixed_bfloat16 training of the same
configuration and seed must follow the same curve.

Trains the model of a flagfile for `--steps` steps of the real BPTT stream in each precision
(the training step `main.py` uses; same seed, so the same windows and initial weights), then
scores validation with the trained weights. Prints and writes JSON with both loss curves, the
mean loss over steps `--window` (default 100-200) of each, its relative difference, the
validation perplexities and theirs, and whether both are within `--tolerance` (1%). With
`--control` (default), a third run, float32 on standard kernels, measures how far rounding
alone moves the same two figures: early in training, at lr 30, the trajectory is chaotic and a
difference below that floor says nothing about precision.

  python benchmarks/precision_guard.py --config=configs/awd_lstm_wt2_cpu.cfg --steps=200 \\
      --out=results/precision_guard_awd_cpu.json
"""
import dataclasses
import statistics
import time

import common  # first: sys.path and oneDNN
import lm_throughput  # noqa: F401  (its flags: --steps, --out, and every model flag)
from absl import app, flags
from lm_step import TfawdStep

from tfawd.lm import config

flags.DEFINE_string("window", "100,200", "Steps [START, END) whose mean loss is compared.")
flags.DEFINE_float("tolerance", 0.01, "Largest relative difference allowed.")
flags.DEFINE_integer("valid_tokens", 0, "Validation tokens scored (0: the whole split).")
flags.DEFINE_bool("control", True,
                  "Also train float32 on standard kernels (tfawd/nn/fusion.py): the same "
                  "arithmetic rounded in another order. Its differences from the float32 run "
                  "are the noise floor of the comparison: how far rounding alone moves the "
                  "curve and the validation perplexity after --steps steps.")
FLAGS = flags.FLAGS
PRECISIONS = ("float32", "mixed_bfloat16")
CONTROL = "float32_standard_kernels"


def train_and_validate(cfg, corpus) -> dict:
    from tfawd.lm.evaluation import Evaluator
    start = time.perf_counter()
    step = TfawdStep(cfg, corpus)
    losses = []
    speed = step.run(FLAGS.steps, losses)
    valid = corpus.ids["valid"]
    valid = valid[:FLAGS.valid_tokens + 1] if FLAGS.valid_tokens else valid
    scored = Evaluator(step.model).evaluate(valid, cfg.eval_batch_size, cfg.bptt)
    return {"losses": losses, "tokens_per_s": speed["tokens_per_s"], "val_ppl": scored["ppl"],
            "val_nll": scored["nll"], "seconds": time.perf_counter() - start}


def relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def main():
    from pipelines.lm_corpus import load_corpus
    from tfawd.lm.training import vocab_order
    cfg = config.from_flags(FLAGS)
    lo, hi = (int(v) for v in FLAGS.window.split(","))
    if hi > FLAGS.steps:
        raise app.UsageError(f"--window={FLAGS.window} ends after --steps={FLAGS.steps}")
    corpus = load_corpus(cfg.dataset, cfg.data_dir, order=vocab_order(cfg))
    from tfawd.nn import fusion
    runs = {p: train_and_validate(dataclasses.replace(cfg, precision=p), corpus)
            for p in PRECISIONS}
    if FLAGS.control:
        with fusion.standard_kernels():
            runs[CONTROL] = train_and_validate(dataclasses.replace(cfg, precision="float32"),
                                               corpus)
    means = {p: statistics.fmean(r["losses"][lo:hi]) for p, r in runs.items()}
    loss_diff = relative(means["mixed_bfloat16"], means["float32"])
    ppl_diff = relative(runs["mixed_bfloat16"]["val_ppl"], runs["float32"]["val_ppl"])
    result = {
        **common.record("precision_guard"), "config": common.config_path(),
        "model": {k: getattr(cfg, k) for k in ("model", "emsize", "nhid", "nlayers",
                                               "batch_size", "bptt", "seed")},
        "steps": FLAGS.steps, "window": [lo, hi], "tolerance": FLAGS.tolerance,
        "mean_loss": means, "mean_loss_rel_diff": loss_diff,
        "val_ppl": {p: r["val_ppl"] for p, r in runs.items()}, "val_ppl_rel_diff": ppl_diff,
        "tokens_per_s": {p: r["tokens_per_s"] for p, r in runs.items()},
        "holds": loss_diff <= FLAGS.tolerance and ppl_diff <= FLAGS.tolerance,
        **({"control": {
            "what": "float32 on standard kernels against float32 (XLA-fused): rounding only",
            "mean_loss_rel_diff": relative(means[CONTROL], means["float32"]),
            "val_ppl_rel_diff": relative(runs[CONTROL]["val_ppl"], runs["float32"]["val_ppl"]),
        }} if CONTROL in runs else {}),
        "losses": {p: r["losses"] for p, r in runs.items()},
    }
    common.emit(result, FLAGS.out, hidden=("losses",))


if __name__ == "__main__":
    common.run(main)
