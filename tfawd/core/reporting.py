"""Run outputs: results.json (metrics, flags, versions, machine and oneDNN state, timing) and
the loss-curve PNG."""
import dataclasses
import os
import platform
import sys

import keras
import matplotlib

from tfawd.core import files, runtime
from tfawd.core.run_dir import RunDir

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def versions() -> dict:
    import keras
    import numpy
    import tensorflow as tf
    import tensorflow_datasets as tfds
    return {"python": sys.version.split()[0], "tensorflow": tf.__version__,
            "keras": keras.__version__, "tensorflow_datasets": tfds.__version__,
            "numpy": numpy.__version__, "machine": platform.machine(),
            "cpu_count": os.cpu_count()}


def write_json(path, payload) -> None:
    """Writes atomically (a killed run never leaves a half-written file: `files`)."""
    files.write_json(path, payload)


def record_command(model_dir) -> None:
    """Appends this process's command line to <model_dir>/commands.txt when it starts training:
    a run resumed after an interruption or a time budget lists every invocation that trained it."""
    files.append_line(RunDir(model_dir).commands, " ".join(sys.argv))


def write_results(model_dir, cfg, metrics: dict) -> str:
    """results.json: the metrics, the flags, the versions, this process's `command` and the
    `commands` of every invocation that trained the run (`record_command`), oldest first."""
    path = RunDir(model_dir).results
    command = " ".join(sys.argv)
    log = RunDir(model_dir).commands
    commands = [command]
    if files.exists(log):  # a damaged byte shows as U+FFFD rather than stopping the report
        commands = files.read_text(log, errors="replace").splitlines()
    precision = {"precision": cfg.precision} if hasattr(cfg, "precision") else {}
    write_json(path, {"dataset": cfg.dataset, "model": cfg.model, **precision, **metrics,
                      "flags": dataclasses.asdict(cfg), "versions": versions(),
                      "machine": runtime.machine(),
                      "command": command, "commands": commands})
    return path


def plot_loss_curve(history: list, path: str, title: str = "") -> str:
    """Train and validation perplexity against training steps (log scale)."""
    train = [(h["step"], h["train_ppl"]) for h in history if "train_ppl" in h]
    valid = [(h["step"], h["val_ppl"]) for h in history if "val_ppl" in h]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train (running mean over log interval)", lw=1)
    if valid:
        ax.plot(*zip(*valid), "o-", label="validation", lw=1.5)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    files.save_figure(fig, path)
    plt.close(fig)
    return path


def line(*fields) -> None:
    """One line of a run's report on stdout, the style of every tfawd run: `| a | b | c`."""
    print("| " + " | ".join(str(f) for f in fields), flush=True)


class LogLines:
    """Progbar's interface as plain log lines, for output that is not a terminal."""

    def __init__(self, total):
        self.total = total

    def update(self, current, values=()):
        info = " - ".join(f"{k}: {v:.4g}" for k, v in values)
        of = f"/{self.total}" if self.total else ""
        print(f"{current}{of} - {info}", flush=True)


class _Bar:
    """A Keras progress bar showing each value as logged (not averaged over the epoch)."""

    def __init__(self, total, current):
        self.total, self.current, self.bar = total, current, None

    def update(self, current, values=()):
        if self.bar is None:
            self.bar = keras.utils.Progbar(self.total, stateful_metrics=[k for k, _ in values])
            if self.current:
                self.bar.update(self.current)
        self.bar.update(current, list(values))


def progress_bar(total: int | None, current: int):
    """A Keras progress bar on a terminal, log lines otherwise (Progbar assumes a terminal)."""
    if not sys.stdout.isatty():
        return LogLines(total)
    return _Bar(total, current)
