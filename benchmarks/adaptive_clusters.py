"""Why the adaptive softmax's cut-offs matter under SGD: the first steps of a config with given
cut-offs, with the tail clusters' logit biases and the last layer's output size per step.

Trains --steps windows of the config (the training step of `tfawd.lm.training`, the real
stream) for each --cutoffs value (`auto` or explicit ranks, each with its --div), and writes
one JSON: per setting the resolved cut-offs, each tail cluster's share of the training tokens
and whether SGD at the config's lr is unstable on it (`sgd_unstable`), the mean training loss
every --every steps, and at those steps each tail cluster's logit bias and mean |h| of the
carried last-layer state. A cluster too large for the lr shows as a bias that swings from one
check to the next and |h| collapsing towards 0 while the loss stays at the unigram level.

  python benchmarks/adaptive_clusters.py --flagfile=configs/awd_lstm_wt2_cpu.cfg --steps=400 \\
      --cutoffs=2000,10000:4 --cutoffs=auto:1 --out=results/adaptive_clusters_awd_lstm_wt2_cpu.json
"""
import dataclasses
import time

import common  # first: sys.path and oneDNN
import numpy as np
from absl import flags
from lm_step import TfawdStep

from pipelines.lm_corpus import load_corpus
from tfawd import families
from tfawd.lm import config
from tfawd.lm import training as lm_training
from tfawd.lm.models import resolve_cutoffs
from tfawd.nn.adaptive_softmax import cluster_shares, sgd_unstable

families.define_flags(flags.FLAGS)  # run-level and family flags, as main.py
flags.DEFINE_integer("steps", 400, "Training windows per setting.")
flags.DEFINE_integer("every", 50, "Record every this many steps.")
flags.DEFINE_multi_string("cutoffs", ["2000,10000:4", "auto:1"],
                          "CUTOFFS:DIV settings to compare (CUTOFFS: auto or ranks).")
flags.DEFINE_string("out", None, "The JSON to write.")
FLAGS = flags.FLAGS


def run_setting(cfg, corpus, counts) -> dict:
    cfg = resolve_cutoffs(cfg, counts)
    run = TfawdStep(cfg, corpus)
    softmax = run.model.softmax
    bounds = [0, *cfg.adaptive_cutoffs_list(), len(counts)]
    shares = cluster_shares(counts, bounds)
    losses, records, start = [], [], time.perf_counter()
    for i in range(1, FLAGS.steps + 1):
        losses.append(float(run.step(*run.next_window())[0]))
        if i % FLAGS.every == 0:
            head_bias = softmax.biases[0].numpy()
            records.append({
                "step": i, "train_loss": float(np.mean(losses[-FLAGS.every:])),
                "cluster_logit_bias": [round(float(b), 3) for b in head_bias[bounds[1]:]],
                "mean_abs_last_state": float(np.abs(run.state.hidden[-1][0].numpy()).mean())})
            print(f"{cfg.adaptive_cutoffs}: {records[-1]}", flush=True)
    return {"adaptive_cutoffs": cfg.adaptive_cutoffs, "adaptive_div": cfg.adaptive_div,
            "tail_shares": [round(s, 4) for s in shares[1:]],
            "sgd_unstable": [sgd_unstable(s, cfg.lr) for s in shares[1:]],
            "seconds": time.perf_counter() - start, "curve": records}


def main():
    base = dataclasses.replace(config.from_flags(FLAGS), softmax="adaptive")
    lm_training.configure_runtime(base)
    corpus = load_corpus(base.dataset, base.data_dir, order="frequency")
    counts = corpus.word_counts()
    settings = {}
    for text in FLAGS.cutoffs:
        cutoffs, _, div = text.partition(":")
        cfg = dataclasses.replace(base, adaptive_cutoffs=cutoffs, adaptive_div=int(div or 1))
        settings[text] = run_setting(cfg, corpus, counts)
    common.emit({**common.record("adaptive_clusters"), "lr": base.lr,
                 "batch_size": base.batch_size, "bptt": base.bptt, "settings": settings},
                FLAGS.out)


if __name__ == "__main__":
    common.run(main)
