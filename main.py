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
runtime.configure_malloc()

from absl import app, flags  # noqa: E402

from tfawd import families  # noqa: E402
from tfawd.core import distribute, registry  # noqa: E402
from tfawd.core.run_flags import adopt_recorded_flags  # noqa: E402
from tfawd.core.run_guard import Interrupted, RunError  # noqa: E402

FAMILIES = families.define_flags(flags.FLAGS)  # the run-level flags, then each family's
MODES = tuple(dict.fromkeys(m for fam in FAMILIES for m in fam.modes))
flags.DEFINE_enum("mode", "train", MODES,
                  "train: train (or resume) then evaluate the best weights; "
                  "finetune: restart averaged SGD from the best weights (AWD-LSTM); "
                  "evaluate: the scores of the weights in --model_dir (for a language model "
                  "with the cache pointer / dynamic evaluation when their flags are set); "
                  "tune_cache / tune_dynamic_eval: choose their parameters on validation, "
                  "then score test; predict: next-word scores of --contexts; generate: "
                  "continue --prompt / --prompts_file; export: SavedModels for TF Serving "
                  "under --export_dir. Modes by family: " + "; ".join(
                      f"{fam.name} ({', '.join(fam.models)}): {', '.join(fam.modes)}"
                      for fam in FAMILIES) + ".")
distribute.define_flags(flags.FLAGS)
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; flags look like --name=value")
    if FLAGS.model_dir is None:  # the family's default folder
        FLAGS.model_dir = registry.family_of(FLAGS.model).config().model_dir
    if FLAGS.mode != "train":  # a trained run's folder answers for its own flags
        try:
            adopt_recorded_flags(FLAGS, FLAGS.model_dir)
        except RunError as e:  # its results.json / flags.json damaged: one line naming it
            sys.exit(f"error: {e}")
    family = registry.family_of(FLAGS.model)
    if FLAGS.dataset is not None and FLAGS.dataset not in family.datasets:
        sys.exit(f"error: --dataset={FLAGS.dataset} is not data of --model={FLAGS.model} "
                 f"(one of {', '.join(family.datasets)})")
    if FLAGS.mode not in family.modes:
        sys.exit(f"error: --mode={FLAGS.mode} is not available for --model={FLAGS.model} "
                 f"(one of {', '.join(family.modes)})")
    training = FLAGS.mode in family.training_modes
    if not chief_of_this_mode(training):
        return
    cfg = family.from_flags(FLAGS)
    runtime.set_threads(cfg.inter_op_threads, cfg.intra_op_threads)  # before the strategy
    dist = make_distribution(training)
    try:
        with lost_workers_reported(dist):
            family.modes[FLAGS.mode](cfg, FLAGS, dist)
    except Interrupted as e:  # SIGTERM / Ctrl-C: checkpoint saved, resumable
        print(f"| {e}", flush=True)
        sys.exit(e.exit_code)
    except family.user_errors(FLAGS.mode) as e:
        sys.exit(f"error: {e}")


def chief_of_this_mode(training: bool) -> bool:
    """--distribute=multi_worker spreads training; any other mode runs on the chief alone
    (worker 0), and the other workers end at once."""
    if FLAGS.distribute != "multi_worker" or training:
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


def make_distribution(training: bool):
    """The strategy of --distribute for the training modes (one process otherwise)."""
    if not training:
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


if __name__ == "__main__":
    app.run(main)
