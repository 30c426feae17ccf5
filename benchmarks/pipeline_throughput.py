"""Tokens/s of the BPTT tf.data stream on its own (no model), for WikiText-2 train.

  python benchmarks/pipeline_throughput.py --batch_size=80 --bptt=70 [--data_dir=...]
Prints one JSON line. The training step consumes ~10^3-10^4 tokens/s on 2 cores, so the
stream must be orders of magnitude faster to never be the bottleneck.
"""
import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfawd.core import runtime  # noqa: E402

runtime.configure_onednn()  # before TensorFlow is imported
from pipelines import bptt  # noqa: E402
from pipelines.corpus_files import default_data_dir  # noqa: E402
from pipelines.lm_corpus import load_corpus  # noqa: E402

flags.DEFINE_string("data_dir", None, "Data folder (default: $TFAWD_DATA_DIR).")
flags.DEFINE_integer("batch_size", 80, "Stream columns.")
flags.DEFINE_integer("bptt", 70, "Mean window length.")
flags.DEFINE_integer("epochs", 3, "Epochs to time.")
FLAGS = flags.FLAGS


def main(_):
    corpus = load_corpus("wikitext2", FLAGS.data_dir or default_data_dir())
    ids = corpus.ids["train"]
    tokens, start = 0, time.perf_counter()
    for epoch in range(FLAGS.epochs):
        for x, _ in bptt.bptt_dataset(ids, FLAGS.batch_size, FLAGS.bptt, seed=1, epoch=epoch):
            tokens += int(x.shape[0] * x.shape[1])
    seconds = time.perf_counter() - start
    print(json.dumps({"benchmark": "bptt_stream", "batch_size": FLAGS.batch_size,
                      "bptt": FLAGS.bptt, "epochs": FLAGS.epochs, "tokens": tokens,
                      "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds)}))


if __name__ == "__main__":
    app.run(main)
