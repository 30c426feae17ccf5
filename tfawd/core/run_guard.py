"""The faults a long training run meets, handled the same way by both trainers.

- `ModelDirLock`: one trainer per `--model_dir`. A second process is refused at once, naming
  the one that holds the folder; the lock is an `fcntl.flock` on the folder's `.lock`, which
  the kernel releases when its process ends in any way (SIGKILL included), so it never stays
  stuck. A folder on a remote filesystem (gs://, hdfs://, ram://) cannot be locked that way:
  there `.lock` only names the holder, and a second process is warned, not refused (a lock
  that a killed process never releases would stop every later resume).
- `StopSignals`: SIGTERM (how schedulers and cloud preemption stop a job) and SIGINT (Ctrl-C)
  only raise a flag; the loop stops at the next step boundary, saves a checkpoint of exactly
  that step and the process exits with `Interrupted`, so re-running resumes bit-exactly.
- `check_finite`: a non-finite loss or gradient norm (or a loss no sane model reaches, see
  `DIVERGED_LOSS`) stops the run before anything of that step is saved, naming the step and
  the last good checkpoint.

No TensorFlow here: the lock must be taken (and tested) before the heavy imports.
"""
import fcntl
import math
import os
import signal
import sys
import threading
import time

from tfawd.core.run_dir import RunDir


class RunError(RuntimeError):
    """A problem with the run's folder or flags, with a message naming the fix."""


class Interrupted(RunError):
    """The run stopped on SIGTERM / SIGINT after saving its checkpoint; `exit_code` is the
    conventional 128 + signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class NonFiniteError(RunError):
    """The loss or gradient norm stopped being finite."""




class ModelDirLock:
    """Exclusive use of a run folder for as long as this process holds it (a context manager)."""

    def __init__(self, model_dir: str):
        self.model_dir = model_dir
        self.path = RunDir(model_dir).lock
        self._file = None
        self._remote = False

    def acquire(self) -> "ModelDirLock":
        from tfawd.core import files  # (files imports RunError from here)
        if files.is_remote(self.model_dir):
            return self._acquire_remote(files)
        self._created = not os.path.isdir(self.model_dir)
        os.makedirs(self.model_dir, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RunError(f"--model_dir={self.model_dir} is in use by {holder}; wait for it to "
                           f"end or stop it, or give another --model_dir") from None
        f.seek(0)
        f.truncate()
        f.write(self._holder())
        f.flush()
        self._file = f
        return self

    def _holder(self) -> str:
        return (f"process {os.getpid()} (started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                f"{' '.join(sys.argv)})\n")

    def _acquire_remote(self, files) -> "ModelDirLock":
        """A remote folder: `.lock` names the holder; an earlier holder is a warning."""
        self._created = not files.isdir(self.model_dir)
        files.makedirs(self.model_dir)
        holder = files.read_text(self.path).strip() if files.exists(self.path) else ""
        if holder:
            print(f"warning: {self.path} names {holder} as training in --model_dir="
                  f"{self.model_dir}; a remote folder cannot be locked, so this process goes "
                  f"on: make sure that one has ended (two trainers would overwrite each "
                  f"other's checkpoints)", file=sys.stderr)
        files.write_text(self.path, self._holder())
        self._remote = True
        return self

    def release(self) -> None:
        if self._remote:
            from tfawd.core import files
            self._remote = False
            files.write_text(self.path, "")
            if self._created and files.listdir(self.model_dir) == [os.path.basename(self.path)]:
                files.remove(self.path)
                files.rmtree(self.model_dir)
            return
        if self._file is not None:
            self._file.truncate(0)
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
            if self._created and os.listdir(self.model_dir) == [os.path.basename(self.path)]:
                os.remove(self.path)  # a run that never started leaves no folder behind
                os.rmdir(self.model_dir)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


class StopSignals:
    """Within: SIGTERM and SIGINT set `received` (the signal's name) instead of stopping the
    process wherever it is; the loop asks `received` at step boundaries. Outside the main
    thread (where handlers cannot be installed) signals keep their default behaviour."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received = None
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        self.received, self.signum = signal.Signals(signum).name, signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def interrupted(self, step: int, checkpoint: str | None) -> Interrupted:
        """The exception that ends the process once the checkpoint of `step` is saved."""
        return Interrupted(f"stopped by {self.received} at step {step}; checkpoint "
                           f"{checkpoint}; re-run the same command to resume", self.signum)


# Nats per token no model gets near unless its weights ran away: a uniform distribution over
# 33,278 words costs 10.4, an untrained model ~10-20. Cross-entropy gradients stay bounded, so
# a run with a huge learning rate can sit at losses of 1e30 without ever reaching inf.
DIVERGED_LOSS = 1e4


def check_finite(step: int, values: dict, last_checkpoint: str | None) -> None:
    """Raises NonFiniteError if any of `values` ({name: float}) is NaN or infinite, or the
    "loss" exceeds DIVERGED_LOSS (a diverged run)."""
    bad = {k: v for k, v in values.items() if not math.isfinite(v)
           or (k == "loss" and v > DIVERGED_LOSS)}
    if bad:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in bad.items())
        raise NonFiniteError(
            f"{shown} at step {step} (non-finite or diverged): stopped, nothing of this step was "
            f"saved; the last good checkpoint is {last_checkpoint or 'none (no checkpoint yet)'}; "
            f"lower --lr or set --clip, then re-run (it resumes from that checkpoint)")
