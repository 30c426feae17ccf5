"""What every benchmark script shares (benchmarks/README.md lists the scripts):

- start-up: importing this module puts the repository on `sys.path` and chooses oneDNN
  (`runtime.configure_onednn`) before TensorFlow is imported, so it is the first import that
  can load TensorFlow; `run(main)` parses the flags (absl), with `--config=X` for
  `--flagfile=X` where the script has no `--config` of its own, and refuses stray arguments;
- the record a result JSON starts with (`record`): the benchmark's name, the command line as
  typed, the commit, the machine (`runtime.machine()`: CPU, its vector/matrix features, oneDNN
  on or off, ISA caps), the library versions (`reporting.versions()`) and a UTC timestamp;
- timing (`timed`, `spread`): warm-up calls, then timed rounds, summed up as min/median/max;
- the ending (`emit`, `write_json`): the JSON printed, and written atomically to `--out`
  (`tfawd.core.files`: a killed run never leaves half a file).

A script:

    import common  # first: sys.path and oneDNN
    ...
    def main():
        _, seconds = common.timed(fn, FLAGS.rounds, warmup=1)
        common.emit({**common.record("name"), "median_s": common.spread(seconds)["median"]},
                    FLAGS.out)

    if __name__ == "__main__":
        common.run(main)
"""
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from tfawd.core import files, runtime  # noqa: E402

runtime.configure_onednn()  # before TensorFlow is imported
runtime.configure_malloc()
ORIGINAL_ARGS = list(sys.argv[1:])


# --- start-up ---------------------------------------------------------------------------------

def config_argv():
    """--config=X is the documented spelling of --flagfile=X (call before `app.run`)."""
    sys.argv = [a.replace("--config=", "--flagfile=", 1) if a.startswith("--config=") else a
                for a in sys.argv]


def config_path():
    """The flagfile given as --config (or --flagfile)."""
    return next((a.split("=", 1)[1] for a in ORIGINAL_ARGS
                 if a.startswith(("--config=", "--flagfile="))), None)


def run(main) -> None:
    """absl's `app.run` of a script's `main()` (no arguments): flags parsed, `--config` read as
    `--flagfile` unless the script defines a `--config` flag itself, positional arguments an
    error."""
    from absl import app, flags
    if "config" not in flags.FLAGS:
        config_argv()

    def main_without_arguments(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments {argv[1:]}")
        return main()
    app.run(main_without_arguments)


# --- the record -------------------------------------------------------------------------------

def command() -> str:
    """This run's command line, as typed, after the variables that change which kernels run
    (oneDNN set by the user, ISA caps)."""
    env = [f"{k}={os.environ[k]}" for k in (*runtime.ISA_CAPS, runtime.ONEDNN_VAR)
           if k in os.environ and not (k == runtime.ONEDNN_VAR and runtime.machine()[
               "onednn"]["decided_by"] != "user")]
    return " ".join(env + ["python", os.path.relpath(sys.argv[0], REPO)] + ORIGINAL_ARGS)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def record(benchmark: str) -> dict:
    """The fields every benchmark JSON starts with: its name, command, commit, machine,
    versions (TensorFlow, Keras, NumPy, Python) and the UTC time the record was made."""
    from tfawd.core import reporting  # imports TensorFlow: not before the script's start-up
    return {"benchmark": benchmark, "command": command(), "commit": git_commit(),
            "machine": runtime.machine(), "versions": reporting.versions(),
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")}


# --- timing -----------------------------------------------------------------------------------

def timed(fn, rounds: int = 1, warmup: int = 0):
    """fn() `warmup` times untimed (tracing, compiles, caches), then `rounds` times timed:
    (the last result, [seconds of each timed call])."""
    for _ in range(warmup):
        fn()
    seconds, out = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - start)
    return out, seconds


def spread(values) -> dict:
    """{"min", "median", "max"} of a figure's rounds."""
    values = list(values)
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


# --- the ending -------------------------------------------------------------------------------

def write_json(path: str, result: dict) -> None:
    """`result` as JSON, replacing `path` whole (written beside it, then renamed)."""
    files.write_text(path, json.dumps(result, indent=1, default=float) + "\n")


def emit(result: dict, out: str | None = None, hidden: tuple = ()) -> None:
    """Prints a benchmark's JSON (without the `hidden` keys) and writes all of it to `out`."""
    print(json.dumps({k: v for k, v in result.items() if k not in hidden}, indent=1,
                     default=float), flush=True)
    if out:
        write_json(out, result)


def train_runs(jobs, parallel: bool) -> None:
    """Runs `main.py` once per job (name, argv after main.py, model_dir), one after another or
    side by side; each logs to `<model_dir>.log`. A failed run stops the benchmark naming its
    log."""
    procs = []
    for name, args, model_dir in jobs:
        os.makedirs(model_dir, exist_ok=True)
        log = open(f"{model_dir}.log", "a")
        argv = [sys.executable, os.path.join(REPO, "main.py"), *args]
        print(f"{name}: {' '.join(argv[1:])}", flush=True)
        proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        procs.append((name, model_dir, proc, log))
        if not parallel:
            proc.wait()
    for name, model_dir, proc, log in procs:
        proc.wait()
        log.close()
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed (exit {proc.returncode}): see {model_dir}.log")


def finished_run(model_dir: str, seed: int):
    """The results.json of `model_dir` when it holds a finished run (final test scores) of
    `seed`, else None: a benchmark that trains runs reads such a folder instead of retraining."""
    path = os.path.join(model_dir, "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        res = json.load(f)
    return res if res.get("flags", {}).get("seed") == seed and "test_greedy" in res else None
