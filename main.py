"""tfawd entry point: parses flags and dispatches to a mode.

  python main.py --flagfile=configs/lstm_base_wt2_cpu.cfg              # train + evaluate
  python main.py --flagfile=configs/lstm_base_wt2_cpu.cfg --mode=evaluate
"""
import sys

from tfawd.core import runtime

runtime.configure_onednn()  # before TensorFlow is imported (tfawd/core/runtime.py says why)

from absl import app, flags  # noqa: E402

from tfawd.core.flags import adopt_recorded_flags  # noqa: E402
from tfawd.core.run_guard import Interrupted  # noqa: E402
from tfawd.lm import config  # noqa: E402
from tfawd.speech import config as speech_config  # noqa: E402

flags.DEFINE_enum("mode", "train", ["train", "finetune", "evaluate", "tune_cache",
                                    "tune_dynamic_eval", "predict", "generate", "export"],
                  "train: train (or resume) then evaluate the best weights; "
                  "finetune: restart averaged SGD from the best weights (AWD-LSTM); "
                  "evaluate: valid/test perplexity of the weights in --model_dir (with the "
                  "cache pointer / dynamic evaluation when their flags are set); "
                  "tune_cache / tune_dynamic_eval: choose their parameters on validation, "
                  "then score test; predict: next-word scores of --contexts; generate: "
                  "continue --prompt / --prompts_file; export: SavedModels for TF Serving "
                  "under --export_dir.")
config.define_flags()
speech_config.define_flags()
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; flags look like --name=value")
    from pipelines.corpus_files import DataError
    if FLAGS.mode != "train":  # a trained run's folder answers for its own flags
        adopt_recorded_flags(FLAGS, FLAGS.model_dir)
    if FLAGS.model == "las":
        return speech(DataError)
    from tfawd.lm import export, training
    from tfawd.lm import modes as eval_modes
    cfg = config.from_flags(FLAGS)
    training.configure_runtime(cfg)
    modes = {"train": training.train, "finetune": training.finetune,
             "evaluate": eval_modes.evaluate, "tune_cache": eval_modes.tune_cache,
             "tune_dynamic_eval": eval_modes.tune_dynamic_eval,
             "predict": lambda c: eval_modes.predict(c, config.inference_from_flags(FLAGS)),
             "generate": lambda c: eval_modes.generate(c, config.inference_from_flags(FLAGS)),
             "export": lambda c: export.export_run(c, config.inference_from_flags(FLAGS))}
    user_errors = (DataError, training.RunError)
    if FLAGS.mode in ("predict", "generate", "export"):
        user_errors += (ValueError,)  # bad prompts, ids or decoding parameters
    try:
        modes[FLAGS.mode](cfg)
    except Interrupted as e:  # SIGTERM / Ctrl-C: checkpoint saved, resumable
        print(f"| {e}", flush=True)
        sys.exit(e.exit_code)
    except user_errors as e:
        sys.exit(f"error: {e}")


def speech(data_error):
    """--model=las: the speech recogniser (train, evaluate or export)."""
    from tfawd.speech import evaluation, export
    from tfawd.speech import training as speech_training
    modes = {"train": speech_training.train, "evaluate": evaluation.evaluate,
             "export": export.export_run}
    if FLAGS.mode not in modes:
        sys.exit(f"error: --mode={FLAGS.mode} is not available for --model=las "
                 f"(one of {', '.join(modes)})")
    try:
        modes[FLAGS.mode](speech_config.from_flags(FLAGS))
    except Interrupted as e:
        print(f"| {e}", flush=True)
        sys.exit(e.exit_code)
    except (data_error, ValueError, RuntimeError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
