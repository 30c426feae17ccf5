"""The training loop of every model family: epochs, steps and time bounds, logging, TensorBoard,
checkpoint cadence, profiling, validate-and-keep-best, stop reasons and the faults of a long
run (issue 17).

A model family supplies a `Task` (its model, optimizer, batches, train step, validation and
schedule); the `Loop` drives it. Shaped after tensorflow/models' `official/core` trainer, where
the trainer knows nothing of the task but its steps.

Everything a run needs to continue exactly is in `<model_dir>/ckpt`: weights, optimizer, the
loop's counters (`RunState`) and the task's own state (`Task.state`). Re-running with the same
`model_dir` resumes at the step where the run stopped, bit for bit.
"""
import contextlib
import dataclasses
import os
import time
from collections.abc import Iterable

import numpy as np
import tensorflow as tf

from tfawd.core import reporting
from tfawd.core.checkpoints import RunCheckpoints, checkpoint_writes
from tfawd.core.clock import clock
from tfawd.core.run_dir import RunDir
from tfawd.core.run_guard import StopSignals, check_finite
from tfawd.core.segments import Segments

FLOAT32_MAX = float(np.finfo(np.float32).max)


class RunState(tf.Module):
    """The loop's counters, checkpointed with the weights: epoch, batch within the epoch,
    global step, the best validation score (lower is better), and the seconds and units
    (tokens, frames) trained."""

    def __init__(self):
        super().__init__()
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.batch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.best_score = tf.Variable(np.inf, dtype=tf.float64, trainable=False)
        self.train_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.train_units = tf.Variable(0, dtype=tf.int64, trainable=False)


@dataclasses.dataclass
class LoopConfig:
    """When the loop stops, logs and saves."""
    model_dir: str
    max_epochs: int
    max_steps: int = 0  # 0: no bound
    time_budget_min: float = 0.0  # 0: no bound; counted from this process's start
    log_every: int = 50
    checkpoint_every: int = 0  # 0: at epoch ends and stops only
    checkpoint_minutes: float = 0.0  # also when this long passed since the last save (0: off)
    profile: tuple | None = None  # (first step, end step) traced to TensorBoard
    precision: str = "float32"  # the dtype policy the steps run in, recorded per segment


class Task:
    """What a model family gives the loop. `model` and `optimizer` are checkpointed; `unit`
    names what `step` counts (tokens, frames)."""

    cfg = None
    model = None
    optimizer = None
    unit = "units"

    def state(self) -> dict:
        """Trackables the checkpoint holds besides weights, optimizer and the loop's counters."""
        return {}

    def epoch_batches(self, epoch: int, start: int) -> tuple[Iterable, int | None]:
        """The epoch's batches from the `start`-th on, and how many the epoch has (or None)."""
        raise NotImplementedError

    def step(self, batch, step: int) -> tuple[dict, int]:
        """Training step number `step` (from 0): ({name: float}, "loss" among them; units it
        trained on)."""
        raise NotImplementedError

    def log_entry(self, means: dict, rate: float, epoch: int) -> dict:
        """History fields of one log line from the mean `step` values since the last one and
        the units per second; writes the TensorBoard scalars (within the train writer)."""
        raise NotImplementedError

    def validate(self) -> dict:
        """Validation of the model's current weights; "score" is what the best minimises."""
        raise NotImplementedError

    def validation_entry(self, result: dict) -> dict:
        """History fields of a validation; writes its TensorBoard data (within the valid
        writer)."""
        raise NotImplementedError

    def describe(self, result: dict) -> str:
        """The validation as one log-line field, e.g. 'valid ppl 98.20'."""
        raise NotImplementedError

    def end_epoch(self, result: dict, improved: bool, history: list,
                  minutes_left: float | None = None, epoch: int = 0) -> tuple[str, bool]:
        """The schedule after an epoch's validation (`history`: the checks before it;
        `minutes_left`: of the time budget, None without one; `epoch`: the number of the
        epoch that ended, from 1): (event to log, converged). `validation_entry` is asked
        after it."""
        return "", False

    def averaged_weights(self):
        """Context in which the model holds the weights that are validated and kept (e.g. an
        average of the trained ones)."""
        return contextlib.nullcontext()


class Loop:
    """Trains `task` in `cfg.model_dir`: `run()` until an epoch, step or time bound, a
    converged schedule, or SIGTERM / Ctrl-C (then a checkpoint of the current step and
    `Interrupted`). A non-finite or diverged step stops the run before anything of it is
    saved (`run_guard.check_finite`)."""

    def __init__(self, task: Task, cfg: LoopConfig, distribution=None):
        """`distribution` (`tfawd.core.distribute.Distribution`): the workers agree on every
        decision taken from a clock, a signal or a score; None: one process."""
        self.task, self.settings, self.distribution = task, cfg, distribution
        self.state = RunState()
        ckpts = RunCheckpoints(task.model, cfg.model_dir, optimizer=task.optimizer,
                               run=self.state, **task.state())
        self.manager, self.best = ckpts.manager, ckpts.best
        self.history_path, self.history = ckpts.history_path, ckpts.history
        self.resumed = ckpts.resumed
        self.tb_dir = RunDir(cfg.model_dir).tb
        self.segments = Segments(RunDir(cfg.model_dir).segments)
        with checkpoint_writes(self.tb_dir, "TensorBoard logs"):
            self.writers = {k: tf.summary.create_file_writer(os.path.join(self.tb_dir, k))
                            for k in ("train", "valid")}

    cfg = property(lambda self: self.task.cfg)  # the run's config (a family's RunFlags)
    model = property(lambda self: self.task.model)

    def save(self):
        st = self.state
        reporting.write_json(self.history_path, self.history)
        with checkpoint_writes(self.manager.directory):
            self.manager.save(checkpoint_number=int(st.step))
        self._last_save = time.perf_counter()
        self.segments.update(int(st.step), float(st.train_seconds), int(st.train_units),
                             clock().paused)

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> str:
        """Trains until a bound; returns why it stopped: max_epochs, max_steps, time_budget
        or converged."""
        with StopSignals() as signals, self._profiler() as profiler:
            return self._run(signals, profiler)

    def _run(self, signals, profiler) -> str:
        cfg, st = self.settings, self.state
        self.segments.start(cfg.precision, int(st.step), float(st.train_seconds),
                            int(st.train_units), self.task.unit, clock().paused)
        self._last_save = time.perf_counter()
        start = self._start = clock().now()  # the budget leaves out the time it was stopped
        while int(st.epoch) < cfg.max_epochs:
            if cfg.max_steps and int(st.step) >= cfg.max_steps:
                return "max_steps"
            epoch = int(st.epoch)
            batches, total = self.task.epoch_batches(epoch, int(st.batch))
            print(f"Epoch {epoch + 1}/{cfg.max_epochs}", flush=True)
            bar = reporting.progress_bar(total, int(st.batch))
            pending = _Pending()
            for batch in batches:
                profiler.at(int(st.step))
                values, units = self.task.step(batch, int(st.step))
                check_finite(int(st.step) + 1, values, self.manager.latest_checkpoint)
                pending.add(values, units)
                st.step.assign_add(1)
                st.batch.assign_add(1)
                stop = self._agreed_stop(signals, start)
                if int(st.step) % cfg.log_every == 0 or stop:
                    self._log(pending, bar)
                if stop == "signal":  # SIGTERM / Ctrl-C: this step's checkpoint, then exit
                    self.save()
                    raise signals.interrupted(int(st.step), self.manager.latest_checkpoint)
                if stop:
                    self.keep_partial_epoch(stop)
                    self.save()
                    return stop
                if (cfg.checkpoint_every and int(st.step) % cfg.checkpoint_every == 0) or \
                        self._checkpoint_due():
                    self.save()
            if pending.steps:
                self._log(pending, bar)
            if self.end_epoch():
                return "converged"
        return "max_epochs"

    def _agreed_stop(self, signals, start):
        """"signal", a bound's name, or None, the same on every worker (the first worker to
        see a signal or the end of its budget stops them all)."""
        reasons = (None, "time_budget", "signal")  # in the order a worker's reason prevails
        local = "signal" if signals.received else self._stop_reason(start)
        if local == "max_steps" or self._agree is None:
            return local  # the step count is the same on every worker
        return reasons[int(self._agree(reasons.index(local), "max"))]

    def _checkpoint_due(self) -> bool:
        """`checkpoint_minutes` passed since the last save (looked at on logging steps, agreed
        by the workers): a killed run loses at most about that much, whatever the step costs
        on this machine."""
        cfg = self.settings
        if not cfg.checkpoint_minutes or int(self.state.step) % cfg.log_every:
            return False
        due = time.perf_counter() - self._last_save >= 60 * cfg.checkpoint_minutes
        return bool(due if self._agree is None else self._agree(int(due), "max"))

    @property
    def _agree(self):
        dist = self.distribution
        return dist.agree if dist is not None and dist.num_workers > 1 else None

    def validation(self) -> dict:
        """The task's validation, its score agreed by the workers (bit-equal weights can
        still score a last bit apart on different CPUs)."""
        result = self.task.validate()
        if self._agree is not None:
            result["score"] = self._agree(result["score"], "max")
        return result

    def minutes_left(self) -> float | None:
        """Of `time_budget_min` (counted from this process's `run()`, the time it was stopped
        left out: `PauseAwareClock`), None without a budget."""
        if not self.settings.time_budget_min:
            return None
        start = getattr(self, "_start", None)  # None: run() has not started
        elapsed = 0.0 if start is None else clock().now() - start
        left = self.settings.time_budget_min - elapsed / 60
        return left if self._agree is None else self._agree(left, "min")

    def _stop_reason(self, start):
        cfg = self.settings
        if cfg.max_steps and int(self.state.step) >= cfg.max_steps:
            return "max_steps"
        if cfg.time_budget_min and clock().now() - start > 60 * cfg.time_budget_min:
            return "time_budget"
        return None

    def _log(self, pending, bar):
        st, step, seconds = self.state, int(self.state.step), pending.seconds()
        st.train_seconds.assign_add(seconds)
        st.train_units.assign_add(pending.units)
        rate = pending.units / max(seconds, 1e-9)
        with self.writers["train"].as_default(step=step):
            entry = self.task.log_entry(pending.means(), rate, int(st.epoch))
        self.history.append({"step": step, "epoch": int(st.epoch) + 1, **entry})  # from 1
        bar.update(int(st.batch), [(k, v) for k, v in entry.items() if isinstance(v, float)])
        pending.reset()

    # -- validation ----------------------------------------------------------------------
    def _validate(self, partial: bool) -> tuple[dict, bool]:
        """Validates the weights the task keeps and saves them as the best when they beat the
        best score (`partial`: the best of every check, epoch ends and earlier stops, without
        moving the best score the schedule sees). Returns (result, kept)."""
        st = self.state
        with self.task.averaged_weights():
            result = self.validation()
            best = float(st.best_score)
            if partial:
                best = min([best] + [h.get("score", np.inf) for h in self.history
                                     if h.get("partial") and h.get("kept")])
            kept = result["score"] < best
            if kept:
                if not partial:
                    st.best_score.assign(result["score"])
                with checkpoint_writes(self.best.directory):
                    self.best.save(checkpoint_number=int(st.step))
        return result, kept

    def _validation_entry(self, result: dict, **fields) -> dict:
        st = self.state
        with self.writers["valid"].as_default(step=int(st.step)):
            entry = self.task.validation_entry(result)
        return {"step": int(st.step), "epoch": int(st.epoch) + 1, **entry,
                "score": result["score"], **fields}

    def keep_partial_epoch(self, stop: str) -> None:
        """A run stopped inside an epoch (time budget, max_steps) validates the weights it has
        and keeps them as the best when they beat it, so the final evaluation never falls back
        to an older epoch's weights. The schedule does not see this check: the best score and
        the task's schedule count epoch ends only, so a resumed run continues exactly as one
        that was never stopped."""
        st = self.state
        if int(st.batch) == 0:
            return  # stopped at an epoch boundary: that epoch was validated
        result, kept = self._validate(partial=True)
        self.history.append(self._validation_entry(
            result, partial=True, kept=kept,
            event=f"{stop} inside the epoch" + (": best so far" if kept else "")))
        print(f"| {stop} at step {int(st.step)}, inside epoch {int(st.epoch) + 1} | "
              f"{self.task.describe(result)} | {'kept as the best' if kept else 'not better'}",
              flush=True)

    def end_epoch(self) -> bool:
        """Validates, keeps the best weights, applies the task's schedule, checkpoints; True
        when the schedule says training has converged."""
        st = self.state
        result, improved = self._validate(partial=False)
        event, converged = self.task.end_epoch(result, improved, self.history,
                                               minutes_left=self.minutes_left(),
                                               epoch=int(st.epoch) + 1)
        event = event or ("best so far" if improved else "")
        self.history.append(self._validation_entry(result, event=event))
        seconds = f" | {result['seconds']:.0f}s" if "seconds" in result else ""
        print(f"| end of epoch {int(st.epoch) + 1} | {self.task.describe(result)} | "
              f"{event or 'no improvement'}{seconds}", flush=True)
        st.epoch.assign_add(1)
        st.batch.assign(0)
        self.save()
        return converged

    def restore_best(self) -> str:
        """Loads the best weights into the model: "best", or "last" if none were kept."""
        if not self.best.latest_checkpoint:
            return "last"
        self.best.checkpoint.restore(self.best.latest_checkpoint).assert_consumed()
        return "best"

    def summary(self) -> dict:
        """The counters results.json reports."""
        st = self.state
        return {"epochs_completed": int(st.epoch), "steps": int(st.step),
                f"train_{self.task.unit}": int(st.train_units),
                "train_seconds": float(st.train_seconds),
                f"train_{self.task.unit}_per_s": int(st.train_units)
                / max(float(st.train_seconds), 1e-9),
                "num_parameters": int(sum(np.prod(v.shape)
                                          for v in self.task.model.trainable_variables)),
                "segments": self.segments.items}

    # -- profiling -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _profiler(self):
        profiler = _Profiler(self.settings.profile, self.tb_dir)
        try:
            yield profiler
        finally:
            profiler.stop()


class _Pending:
    """The step values, units and (pause-free) time since the last log line."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.values, self.units, self.steps, self.t0 = [], 0, 0, clock().now()

    def add(self, values: dict, units: int):
        self.values.append(values)
        self.units += units
        self.steps += 1

    def seconds(self) -> float:
        return clock().now() - self.t0

    def means(self) -> dict:
        return {k: float(np.mean([v[k] for v in self.values])) for k in self.values[0]}


class _Profiler:
    """Traces steps [start, end) of `profile` to TensorBoard's profile tab."""

    def __init__(self, profile, log_dir):
        self.range, self.log_dir, self.active = profile, log_dir, False

    def at(self, step: int):
        if not self.range:
            return
        if step == self.range[0] and not self.active:
            tf.profiler.experimental.start(self.log_dir)
            self.active = True
        elif step >= self.range[1] and self.active:
            self.stop()

    def stop(self):
        if self.active:
            tf.profiler.experimental.stop()
            self.active = False
