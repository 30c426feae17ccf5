"""Exports an untrained language model of a flagfile's architecture, for latency measurements.

Serving latency depends on the architecture, not on the weights: this gives
`benchmarks/serving_latency.py` an export of the right shape without a training run (the
vocabulary is the corpus's, the weights are their initial values).

  python benchmarks/export_untrained.py --config=configs/awd_lstm_wt2_cpu.cfg \
      --export_dir=/tmp/exports --export_name=awd_lstm_wt2_cpu
"""
import common  # first: sys.path and oneDNN
from absl import flags

from tfawd import families
from tfawd.lm import config

families.define_flags(flags.FLAGS)  # run-level and family flags, as main.py
FLAGS = flags.FLAGS


def main():
    import keras

    from pipelines.lm_corpus import load_corpus
    from tfawd.lm.export import export_language_model
    from tfawd.lm.models import build_model
    from tfawd.lm.training import vocab_order
    from tfawd.nn import fusion
    cfg = config.from_flags(FLAGS)
    corpus = load_corpus(cfg.dataset, cfg.data_dir, order=vocab_order(cfg))
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg, len(corpus.vocab))
    with fusion.standard_kernels():  # as --mode=export: no XLA in served graphs
        path = export_language_model(model, corpus.vocab, FLAGS.export_dir,
                                     FLAGS.export_name or "untrained")
    print(path)


if __name__ == "__main__":
    common.run(main)
