"""Tokens/s of the BPTT tf.data stream on its own (no model), for WikiText-2 train.

  python benchmarks/pipeline_throughput.py --batch_size=80 --bptt=70 [--data_dir=...] [--out=F]
Prints JSON (and writes it to --out). The training step consumes ~10^3-10^4 tokens/s on 2
cores, so the stream must be orders of magnitude faster to never be the bottleneck.
"""
import common  # first: sys.path and oneDNN
from absl import flags

from pipelines import bptt
from pipelines.corpus_files import default_data_dir
from pipelines.lm_corpus import load_corpus

flags.DEFINE_string("data_dir", None, "Data folder (default: $TFAWD_DATA_DIR).")
flags.DEFINE_integer("batch_size", 80, "Stream columns.")
flags.DEFINE_integer("bptt", 70, "Mean window length.")
flags.DEFINE_integer("epochs", 3, "Epochs to time.")
flags.DEFINE_string("out", None, "Also write the JSON here.")
FLAGS = flags.FLAGS


def main():
    corpus = load_corpus("wikitext2", FLAGS.data_dir or default_data_dir())
    ids = corpus.ids["train"]

    def stream() -> int:
        tokens = 0
        for epoch in range(FLAGS.epochs):
            for x, _ in bptt.bptt_dataset(ids, FLAGS.batch_size, FLAGS.bptt, seed=1, epoch=epoch):
                tokens += int(x.shape[0] * x.shape[1])
        return tokens
    tokens, (seconds,) = common.timed(stream)
    common.emit({**common.record("bptt_stream"), "batch_size": FLAGS.batch_size,
                 "bptt": FLAGS.bptt, "epochs": FLAGS.epochs, "tokens": tokens,
                 "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds)}, FLAGS.out)


if __name__ == "__main__":
    common.run(main)
