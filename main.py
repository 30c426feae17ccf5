"""tfawd entry point: parses flags and dispatches to a mode.

  python main.py --flagfile=configs/lstm_base_wt2_cpu.cfg              # train + evaluate
  python main.py --flagfile=configs/lstm_base_wt2_cpu.cfg --mode=evaluate
"""
import contextlib
import importlib.util
import sys

if importlib.util.find_spec("tensorflow") is None:  # the extras choose the build: BUILD.md
    raise SystemExit("error: TensorFlow is not installed; pip install -e '.[cpu]' (or '.[gpu]' "
                     "on a machine with an NVIDIA GPU and its driver)")

from tfawd.core import runtime  # noqa: E402

runtime.configure_onednn()  # before TensorFlow is imported (tfawd/core/runtime.py says why)

from absl import app, flags  # noqa: E402

from tfawd.core import distribute  # noqa: E402
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
distribute.define_flags(flags.FLAGS)
FLAGS = flags.FLAGS
TRAINING_MODES = ("train", "finetune")  # what --distribute spreads; the chief does the rest


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; flags look like --name=value")
    from pipelines.corpus_files import DataError
    if FLAGS.mode != "train":  # a trained run's folder answers for its own flags
        adopt_recorded_flags(FLAGS, FLAGS.model_dir)
    if not chief_of_this_mode():
        return
    if FLAGS.model == "las":
        return speech(DataError)
    from tfawd.lm import export, training
    from tfawd.lm import modes as eval_modes
    cfg = config.from_flags(FLAGS)
    training.configure_runtime(cfg)  # before the strategy starts TensorFlow's runtime
    dist = make_distribution()
    modes = {"train": lambda c: training.train(c, distribution=dist),
             "finetune": lambda c: training.finetune(c, distribution=dist),
             "evaluate": eval_modes.evaluate, "tune_cache": eval_modes.tune_cache,
             "tune_dynamic_eval": eval_modes.tune_dynamic_eval,
             "predict": lambda c: eval_modes.predict(c, config.inference_from_flags(FLAGS)),
             "generate": lambda c: eval_modes.generate(c, config.inference_from_flags(FLAGS)),
             "export": lambda c: export.export_run(c, config.inference_from_flags(FLAGS))}
    user_errors = (DataError, training.RunError)
    if FLAGS.mode in ("predict", "generate", "export"):
        user_errors += (ValueError,)  # bad prompts, ids or decoding parameters
    try:
        with lost_workers_reported(dist):
            modes[FLAGS.mode](cfg)
    except Interrupted as e:  # SIGTERM / Ctrl-C: checkpoint saved, resumable
        print(f"| {e}", flush=True)
        sys.exit(e.exit_code)
    except user_errors as e:
        sys.exit(f"error: {e}")


def chief_of_this_mode() -> bool:
    """--distribute=multi_worker spreads training; any other mode runs on the chief alone
    (worker 0), and the other workers end at once."""
    if FLAGS.distribute != "multi_worker" or FLAGS.mode in TRAINING_MODES:
        return True
    import os
    try:
        worker, _ = distribute.cluster_position(os.environ.get("TF_CONFIG", ""))
    except distribute.RunError as e:
        sys.exit(f"error: {e}")
    if worker:
        print(f"| worker {worker}: --mode={FLAGS.mode} runs on the chief (worker 0) only",
              flush=True)
    return worker == 0


def make_distribution():
    """The strategy of --distribute for the training modes (one process otherwise)."""
    if FLAGS.mode not in TRAINING_MODES:
        return distribute.local()
    try:
        return distribute.make(distribute.from_flags(FLAGS))
    except distribute.RunError as e:
        sys.exit(f"error: {e}")


@contextlib.contextmanager
def lost_workers_reported(dist):
    """A collective that fails because another worker stopped: one clear line, not a trace."""
    try:
        yield
    except distribute.COLLECTIVE_ERRORS as e:
        if dist.num_workers == 1:
            raise
        reason = (e.message or type(e).__name__).strip().splitlines()[0][:300]
        sys.exit(f"error: worker {dist.worker} lost the other workers ({type(e).__name__}: "
                 f"{reason}); restart every worker with the same command to resume from the "
                 f"last checkpoint in --model_dir")


def speech(data_error):
    """--model=las: the speech recogniser (train, evaluate or export)."""
    from tfawd.speech import evaluation, export
    from tfawd.speech import training as speech_training
    modes = {"train": speech_training.train, "evaluate": evaluation.evaluate,
             "export": export.export_run}
    if FLAGS.mode not in modes:
        sys.exit(f"error: --mode={FLAGS.mode} is not available for --model=las "
                 f"(one of {', '.join(modes)})")
    runtime.set_threads(FLAGS.inter_op_threads, FLAGS.intra_op_threads)
    if FLAGS.mode == "train":
        dist = make_distribution()
        modes["train"] = lambda c: speech_training.train(c, distribution=dist)
    else:
        dist = distribute.local()
    try:
        with lost_workers_reported(dist):
            modes[FLAGS.mode](speech_config.from_flags(FLAGS))
    except Interrupted as e:
        print(f"| {e}", flush=True)
        sys.exit(e.exit_code)
    except (data_error, ValueError, RuntimeError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
