"""What every benchmark script shares: the start-up (the repository on sys.path, oneDNN chosen
before TensorFlow is imported, `--config` as the spelling of `--flagfile`), the record of the
command, commit and machine, and the JSON ending (printed, and written to `--out`).

    import common  # first: sets up sys.path and oneDNN
    ...
    common.emit(result, out=FLAGS.out)
"""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from tfawd.core import runtime  # noqa: E402

runtime.configure_onednn()  # before TensorFlow is imported
ORIGINAL_ARGS = list(sys.argv[1:])


def config_argv():
    """--config=X is the documented spelling of --flagfile=X (call before `app.run`)."""
    sys.argv = [a.replace("--config=", "--flagfile=", 1) if a.startswith("--config=") else a
                for a in sys.argv]


def config_path():
    """The flagfile given as --config (or --flagfile)."""
    return next((a.split("=", 1)[1] for a in ORIGINAL_ARGS
                 if a.startswith(("--config=", "--flagfile="))), None)


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
    """The fields every benchmark JSON starts with: its name, command, commit and machine."""
    return {"benchmark": benchmark, "command": command(), "commit": git_commit(),
            "machine": runtime.machine()}


def emit(result: dict, out: str | None = None, hidden: tuple = ()) -> None:
    """Prints a benchmark's JSON (without the `hidden` keys) and writes all of it to `out`."""
    print(json.dumps({k: v for k, v in result.items() if k not in hidden}, indent=1,
                     default=float))
    if out:
        with open(out, "w") as f:
            f.write(json.dumps(result, indent=1, default=float) + "\n")
