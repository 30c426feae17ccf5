"""tfawd entry point: parses flags and dispatches to a mode.

  python main.py --flagfile=configs/lstm_base_wt2_cpu.cfg              # train + evaluate
  python main.py --flagfile=configs/lstm_base_wt2_cpu.cfg --mode=evaluate
"""
import sys

from absl import app, flags

from tfawd import config

flags.DEFINE_enum("mode", "train", ["train", "finetune", "evaluate"],
                  "train: train (or resume) then evaluate the best weights; "
                  "finetune: restart averaged SGD from the best weights (AWD-LSTM); "
                  "evaluate: valid/test perplexity of the weights in --model_dir.")
config.define_flags()
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; flags look like --name=value")
    from tfawd import training
    from pipelines.corpus_files import DataError
    cfg = config.from_flags(FLAGS)
    try:
        modes = {"train": training.train, "finetune": training.finetune,
                 "evaluate": training.evaluate}
        modes[FLAGS.mode](cfg)
    except (DataError, training.RunError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
