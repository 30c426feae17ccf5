"""Does XLA fusion of the element-wise work speed up the training step? A/B in one process:
tfawd's training step as it runs (each LSTM step's gate arithmetic forward and backward, and
the softmax's element-wise work over the [N, V] products, in XLA-fused functions,
tfawd/nn/fusion.py) against the same step traced inside `fusion.standard_kernels()` (the
same arithmetic as separate TensorFlow kernels), alternating rounds on the real stream.
Prints JSON: tokens/s of each round, the median ratio, trace counts, and how far the two
steps' losses drift apart.

  python benchmarks/xla_fusion.py --config=configs/awd_lstm_wt2.cfg \
      --precision=mixed_bfloat16 --steps=5 --rounds=3
"""
import common  # first: sys.path and oneDNN
import lm_throughput  # noqa: F401  (its flags: --steps, --rounds, --warmup, --out, model flags)
from absl import flags
from lm_step import TfawdStep

FLAGS = flags.FLAGS


def main():
    from pipelines.lm_corpus import load_corpus
    from tfawd.lm import config, training
    from tfawd.nn import fusion
    cfg = config.from_flags(FLAGS)
    training.configure_runtime(cfg)
    corpus = load_corpus(cfg.dataset, cfg.data_dir, order=training.vocab_order(cfg))
    steps = {"fused": TfawdStep(cfg, corpus), "standard": TfawdStep(cfg, corpus)}
    losses = {name: [] for name in steps}
    steps["fused"].run(FLAGS.warmup, losses["fused"])
    compile_ahead = steps["fused"].compile_ahead(FLAGS.rounds * FLAGS.steps)
    with fusion.standard_kernels():  # traced on its first call
        steps["standard"].run(FLAGS.warmup, losses["standard"])
    rounds = []
    for _ in range(FLAGS.rounds):
        row = {name: step.run(FLAGS.steps, losses[name]) for name, step in steps.items()}
        row["ratio"] = row["fused"]["tokens_per_s"] / row["standard"]["tokens_per_s"]
        rounds.append(row)
    result = {
        **common.record("xla_fusion"), "precision": cfg.precision,
        "steps_per_round": FLAGS.steps, "rounds": rounds,
        "ratio_median": common.spread(r["ratio"] for r in rounds)["median"],
        "traces": {name: step.traces() for name, step in steps.items()},
        "xla_compile_ahead": compile_ahead,
        # same seed and windows: the same function up to rounding (the first step, from the
        # same weights), which the following steps amplify
        "loss_difference_by_step": [abs(a - b) for a, b in zip(*losses.values())],
    }
    common.emit(result, FLAGS.out)


if __name__ == "__main__":
    common.run(main)
