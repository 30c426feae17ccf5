"""One config trained with several seeds: the mean and the spread a reader can trust on small data.

On data as small as AN4 or the spoken digits one run's error rate moves by a quarter from one
seed to the next, so a figure worth printing is the mean of several seeds with its range. This
script trains `main.py --flagfile=CONFIG --seed=S --model_dir=WORK/seedS` for each seed (one
after another, or side by side with --parallel, each then given --threads_per_run threads), and
writes one JSON: every run's own `results.json` under `runs`, and under `summary` the mean, min,
max and values over the seeds of each decoding's CER/WER (`valid_joint`, `test_greedy`, ...),
of the diagonality, epochs and training seconds, and each test speaker's mean CER per decoding.
The first seed's attention plots and matrices (`attention.npy`) are copied beside the JSON
(`<out stem>_attention/`).

A seed whose folder already holds a finished run (its `results.json` for that seed) is read,
not retrained; an unfinished one resumes from its checkpoint (`main.py` does that), so a
stopped spread is continued by running the same command again.

  python benchmarks/seed_spread.py --config=configs/las_an4.cfg --seeds=1,2 --parallel \\
      --work_dir=runs/las_an4_seeds --out=results/las_an4.json
"""
import os
import shutil
import statistics

import common  # first: sys.path and oneDNN
from absl import app, flags

flags.DEFINE_string("config", None, "The flagfile every seed trains.")
flags.DEFINE_list("seeds", ["1", "2"], "The seeds, comma-separated.")
flags.DEFINE_string("flags", "", "More flags for every run, e.g. '--time_budget_min=30'.")
flags.DEFINE_string("work_dir", None, "The folder that holds one run folder per seed (seedS).")
flags.DEFINE_bool("parallel", False, "Train the seeds side by side (each with "
                  "--threads_per_run threads) instead of one after another.")
flags.DEFINE_integer("threads_per_run", 1, "With --parallel: each run's intra- and inter-op "
                     "threads.")
flags.DEFINE_string("out", None, "The JSON to write.")
flags.mark_flags_as_required(["config", "work_dir", "out"])
FLAGS = flags.FLAGS

DECODINGS = ("greedy", "beam", "ctc", "joint")
SPLITS = ("valid", "test", "heldout")


def seed_args(seed: int, model_dir: str) -> list:
    args = [f"--flagfile={FLAGS.config}", f"--seed={seed}", f"--model_dir={model_dir}",
            *FLAGS.flags.split()]
    if FLAGS.parallel:
        args += [f"--intra_op_threads={FLAGS.threads_per_run}",
                 f"--inter_op_threads={FLAGS.threads_per_run}"]
    return args


def train(seeds, dirs) -> None:
    """Runs the seeds not finished yet; their logs go to WORK/seedS.log."""
    common.train_runs([(f"seed {s}", seed_args(s, d), d) for s, d in zip(seeds, dirs)
                       if common.finished_run(d, s) is None], FLAGS.parallel)


def stats(values) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "values": list(values)}


def summarise(runs: dict) -> dict:
    """Mean / min / max over the seeds of what every run reports."""
    results = list(runs.values())
    summary = {}
    for split in SPLITS:
        for decoding in DECODINGS:
            key = f"{split}_{decoding}"
            if all(key in r for r in results):
                summary[key] = {m: stats([r[key][m] for r in results]) for m in ("cer", "wer")}
                speakers = [r[key].get("per_speaker") for r in results]
                if all(speakers):
                    summary[key]["per_speaker_cer"] = {
                        spk: statistics.fmean(s[spk]["cer"] for s in speakers)
                        for spk in sorted(speakers[0])}
    for name in ("monotonic", "monotonic_within_tolerance"):
        if all(name in r.get("diagonality_first10", {}) for r in results):
            summary[f"diagonality_{name}"] = stats([r["diagonality_first10"][name]
                                                    for r in results])
    for name in ("epochs_completed", "steps", "train_seconds", "wall_seconds_this_run"):
        if all(name in r for r in results):
            summary[name] = stats([r[name] for r in results])
    return summary


def main():
    seeds = [int(s) for s in FLAGS.seeds]
    if len(set(seeds)) < 2:
        raise app.UsageError(f"--seeds={','.join(FLAGS.seeds)}: give at least two different "
                             "seeds (a spread needs two runs)")
    dirs = [os.path.join(FLAGS.work_dir, f"seed{s}") for s in seeds]
    train(seeds, dirs)
    runs = {str(s): common.finished_run(d, s) for s, d in zip(seeds, dirs)}
    missing = [s for s, r in runs.items() if r is None]
    if missing:
        raise SystemExit(f"seeds {missing} left no finished results.json in {FLAGS.work_dir}")
    first = runs[str(seeds[0])]
    result = {**common.record("seed_spread"), "config": FLAGS.config, "dataset": first["dataset"],
              "model": f"{first['model']} x {len(seeds)} seeds", "seeds": seeds,
              "conditions": ("side by side, " if FLAGS.parallel else "one after another, ")
              + (f"{FLAGS.threads_per_run} thread{'s' * (FLAGS.threads_per_run > 1)} each"
                 if FLAGS.parallel else "all cores"),
              "summary": summarise(runs), "runs": runs}
    stem = os.path.splitext(FLAGS.out)[0]
    attention = os.path.join(dirs[0], "attention")
    if os.path.isdir(attention):
        shutil.rmtree(f"{stem}_attention", ignore_errors=True)
        shutil.copytree(attention, f"{stem}_attention")
        if os.path.exists(os.path.join(dirs[0], "attention.npy")):  # the matrices themselves
            shutil.copy(os.path.join(dirs[0], "attention.npy"), f"{stem}_attention")
        result["attention"] = f"{os.path.basename(stem)}_attention/ (seed {seeds[0]})"
    common.emit(result, FLAGS.out, hidden=("runs",))


if __name__ == "__main__":
    common.run(main)
