"""An A/B (or A/B/C) of recogniser variants on one config: the arms trained side by side on the
same machine, under the same conditions, and the one with the lowest validation error chosen.

Each arm is `main.py --flagfile=CONFIG --seed=SEED --model_dir=WORK/<arm> <common flags> <the
arm's flags>`; with --parallel the arms train side by side, one thread each (so a time budget
gives every arm the same share of the machine). The JSON holds, per arm, its flags, epochs,
training seconds, every decoding's validation and test CER/WER and the diagonality, and under
`chosen` the arm with the lowest `--select` (a validation score: the test speakers stay out of
every choice). An arm whose folder already holds its finished run is read, not retrained.

  python benchmarks/speech_ab.py --config=configs/las_an4.cfg --seed=1 --parallel \\
      --flags="--time_budget_min=52" \\
      --arms="logmel=;cepstra=--features=cepstra;logmel_vtlp=--vtlp=0.1" \\
      --work_dir=runs/an4_features_ab --out=results/las_an4_features_ab.json
"""
import os

import common  # first: sys.path and oneDNN
from absl import app, flags

FLAGS = flags.FLAGS

KEPT = ("command", "commit", "machine", "train_seconds", "epochs_completed", "steps",
        "num_parameters", "stopped", "diagonality_first10", "diagonality_valid")


def parse_arms(text: str) -> dict:
    """'a=;b=--x=1 --y' -> {'a': [], 'b': ['--x=1', '--y']} (names unique, in order)."""
    arms = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, extra = part.partition("=")
        if not sep or not name or name in arms:
            raise app.UsageError(f"--arms: {part!r} is not NAME=FLAGS with a new NAME")
        arms[name] = extra.split()
    if len(arms) < 2:
        raise app.UsageError("--arms needs at least two arms")
    return arms


def arm_args(extra: list, model_dir: str) -> list:
    args = [f"--flagfile={FLAGS.config}", f"--seed={FLAGS.seed}", f"--model_dir={model_dir}",
            *FLAGS.flags.split(), *extra]
    if FLAGS.parallel:
        args += ["--intra_op_threads=1", "--inter_op_threads=1"]
    return args


def summary(res: dict, extra: list) -> dict:
    """What an A/B reader compares: the arm's flags and every decoding's scores."""
    out = {k: res[k] for k in KEPT if k in res}
    out["arm_flags"] = extra
    for key, value in res.items():
        if key.startswith(("valid_", "test_")) and isinstance(value, dict) and "cer" in value:
            out[key] = {m: value[m] for m in ("cer", "wer", "utterances") if m in value}
    return out


def choose(runs: dict, select: str) -> str:
    """The arm with the lowest CER of the `select` decoding (validation only)."""
    if not select.startswith("valid_"):
        raise app.UsageError(f"--select={select}: choose on a validation decoding (valid_...)")
    missing = [a for a, r in runs.items() if select not in r]
    if missing:
        raise SystemExit(f"--select={select}: arms {missing} have no such score")
    return min(runs, key=lambda a: runs[a][select]["cer"])


def main():
    arms = parse_arms(FLAGS.arms)
    dirs = {a: os.path.join(FLAGS.work_dir, a) for a in arms}
    common.train_runs([(a, arm_args(arms[a], dirs[a]), dirs[a]) for a in arms
                       if common.finished_run(dirs[a], FLAGS.seed) is None], FLAGS.parallel)
    runs = {a: summary(common.finished_run(dirs[a], FLAGS.seed) or {}, arms[a]) for a in arms}
    best = choose(runs, FLAGS.select)
    result = {**common.record("speech_ab"), "config": FLAGS.config, "seed": FLAGS.seed,
              "common_flags": FLAGS.flags, "select": FLAGS.select,
              "conditions": ("side by side, one thread each" if FLAGS.parallel
                             else "one after another, all cores")
              + (f"; {FLAGS.note}" if FLAGS.note else ""),
              "chosen": best,
              "by_arm": {a: runs[a][FLAGS.select]["cer"] for a in arms}, "runs": runs}
    common.emit(result, FLAGS.out, hidden=("runs",))


def define_flags() -> None:
    """The flags (defined when run as a script, so tests can import it beside seed_spread)."""
    flags.DEFINE_string("config", None, "The flagfile every arm trains.")
    flags.DEFINE_string("arms", None, "NAME=FLAGS;NAME=FLAGS...: each arm's name and its own "
                        "flags (space-separated; empty for the config as it is).")
    flags.DEFINE_integer("seed", 1, "The seed of every arm.")
    flags.DEFINE_string("flags", "", "More flags for every arm, e.g. '--time_budget_min=35'.")
    flags.DEFINE_string("work_dir", None, "The folder that holds one run folder per arm.")
    flags.DEFINE_bool("parallel", False, "Train the arms side by side, one thread each.")
    flags.DEFINE_string("select", "valid_joint", "The validation decoding whose CER picks "
                        "the arm.")
    flags.DEFINE_string("out", None, "The JSON to write.")
    flags.DEFINE_string("note", "", "What else the machine did meanwhile (recorded under "
                        "`conditions`), e.g. 'the long run paused (SIGSTOP) throughout'.")
    flags.mark_flags_as_required(["config", "arms", "work_dir", "out"])


if __name__ == "__main__":
    define_flags()
    common.run(main)
