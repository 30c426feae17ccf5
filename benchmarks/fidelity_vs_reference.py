"""Learning-curve fidelity: tfawd's AWD-LSTM training step against the PyTorch reference.

Runs the first `--steps` training steps of tfawd (the run driver that `main.py` uses, real
WikiText-2 stream) and of ../shared/bench/torch_awd_reference.py with the same sizes and
hyper-parameters, then compares their mean training loss over matching step ranges. The two
use different random streams (initial weights, masks, window lengths), so the curves agree
within noise, not bit for bit. Needs torch (`pip install torch==2.13.0`; not a project
dependency).

  python benchmarks/fidelity_vs_reference.py --steps=300 --out=results/fidelity_awd_small.json
"""
import dataclasses
import json
import os
import subprocess
import sys
import tempfile

import common  # first: sys.path and oneDNN
from absl import flags

from pipelines.corpus_files import default_data_dir
from tfawd.lm.config import LMConfig

flags.DEFINE_integer("steps", 300, "Training steps of each implementation.")
flags.DEFINE_integer("range", 100, "Width of the step ranges whose mean losses are compared.")
flags.DEFINE_integer("emsize", 200, "Embedding size.")
flags.DEFINE_integer("nhid", 500, "Hidden size of the inner LSTM layers.")
flags.DEFINE_integer("nlayers", 3, "LSTM layers.")
flags.DEFINE_integer("batch_size", 20, "Batch size.")
flags.DEFINE_integer("bptt", 35, "Mean window length (variable-length BPTT).")
flags.DEFINE_integer("seed", 1882, "Seed of both runs.")
flags.DEFINE_string("data_dir", None, "Data folder (default: $TFAWD_DATA_DIR).")
flags.DEFINE_string("reference", os.path.join(common.REPO, "..", "shared", "bench",
                                              "torch_awd_reference.py"), "Reference script.")
flags.DEFINE_string("out", None, "Write the JSON summary here too.")
FLAGS = flags.FLAGS

# The paper's WikiText-2 hyper-parameters (Merity et al. 2017, section 5).
PAPER = dict(lr=30.0, clip=0.25, dropout=0.4, dropouth=0.2, dropouti=0.65, dropoute=0.1,
             wdrop=0.5, alpha=2.0, beta=1.0, wdecay=1.2e-6)


def run_tfawd(data_dir):
    from tfawd.lm.training import open_run
    with tempfile.TemporaryDirectory() as model_dir:
        cfg = LMConfig(model="awd_lstm", optimizer="ntasgd", emsize=FLAGS.emsize,
                       nhid=FLAGS.nhid, nlayers=FLAGS.nlayers, batch_size=FLAGS.batch_size,
                       bptt=FLAGS.bptt, variable_bptt=True, seed=FLAGS.seed,
                       max_steps=FLAGS.steps, log_every=1, checkpoint_every=10 ** 9,
                       model_dir=model_dir, data_dir=data_dir, **PAPER)
        trainer = open_run(cfg)
        _, (seconds,) = common.timed(trainer.run)
    losses = [h["train_loss"] for h in trainer.history if "train_loss" in h]
    return losses, seconds, dataclasses.asdict(cfg)


def run_reference(data_dir):
    args = [sys.executable, FLAGS.reference, "--data", os.path.join(data_dir, "wikitext-2"),
            "--steps", str(FLAGS.steps), "--log_every", "1", "--emsize", str(FLAGS.emsize),
            "--nhid", str(FLAGS.nhid), "--nlayers", str(FLAGS.nlayers),
            "--batch_size", str(FLAGS.batch_size), "--bptt", str(FLAGS.bptt),
            "--seed", str(FLAGS.seed)] + [f"--{k}={v}" for k, v in PAPER.items()]
    proc, (seconds,) = common.timed(
        lambda: subprocess.run(args, capture_output=True, text=True, check=True))
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return [r["loss"] for r in rows if "step" in r], seconds


def range_means(losses, width):
    return [sum(losses[i:i + width]) / len(losses[i:i + width])
            for i in range(0, len(losses), width)]


def main():
    data_dir = FLAGS.data_dir or default_data_dir()
    ref_losses, ref_seconds = run_reference(data_dir)
    tf_losses, tf_seconds, cfg = run_tfawd(data_dir)
    tf_means, ref_means = range_means(tf_losses, FLAGS.range), range_means(ref_losses, FLAGS.range)
    summary = {
        **common.record("fidelity_vs_reference"), "steps": FLAGS.steps, "range": FLAGS.range,
        "ranges": [f"{i}-{i + FLAGS.range - 1}" for i in range(0, FLAGS.steps, FLAGS.range)],
        "tfawd_mean_loss": [round(m, 4) for m in tf_means],
        "reference_mean_loss": [round(m, 4) for m in ref_means],
        "relative_difference": [round(a / b - 1, 4) for a, b in zip(tf_means, ref_means)],
        "tfawd_seconds": round(tf_seconds, 1), "reference_seconds": round(ref_seconds, 1),
        "config": {k: cfg[k] for k in ("emsize", "nhid", "nlayers", "batch_size", "bptt",
                                       "seed", *PAPER)},
        "tfawd_losses": tf_losses, "reference_losses": ref_losses,
    }
    common.emit(summary, FLAGS.out, hidden=("tfawd_losses", "reference_losses"))


if __name__ == "__main__":
    common.run(main)
