"""The run driver of every model family: the path of one training run, from the command to
results.json, in one place (shaped after tensorflow/models' `official/core/train_lib`, where a
task builds the model and its steps and the driver runs them).

    train(task_class, cfg)
      run folder: the chief writes `cfg.model_dir`, other workers a scratch copy (`distribute`)
      ModelDirLock: one process trains in a folder
      start(): batch check, seed, the family's `task_class(cfg, distribution)` (data, model
               under the strategy's scope, optimizer, train step), its `Loop` (checkpoints
               restored), model.json written or checked, "resumed at"
      Loop.run(): epochs and steps until a bound (`tfawd.core.loop`)
      the chief: the task's final evaluation of the best weights, its report (plots),
               results.json, one `| final |` line

A family gives a `TrainingTask`: the loop's `Task` hooks plus `final_evaluation` and `report`.
Every run-level flag (`RunFlags` fields: bounds, checkpoint cadence, profiling, precision)
means the same for every family because only this module turns them into a `LoopConfig`.
"""
import dataclasses
import time

import keras
from absl import logging

from tfawd.core import distribute, files, reporting
from tfawd.core.checkpoints import check_saved_config, save_config
from tfawd.core.flags import profile_range
from tfawd.core.loop import Loop, LoopConfig, Task
from tfawd.core.run_dir import RunDir
from tfawd.core.run_guard import ModelDirLock


class TrainingTask(Task):
    """A family's training: built from (cfg, distribution) with its data, model (under the
    strategy's scope), optimizer and step; `cfg` is the config the run trains with (after the
    family resolved what it resolves: precision, cut-offs)."""

    def started(self, run: Loop) -> None:
        """Called once the run's checkpoints are restored (e.g. to start fine-tuning)."""

    def final_evaluation(self, run: Loop) -> dict:
        """Metrics of the weights the run keeps (its best), for results.json."""
        raise NotImplementedError

    def report(self, run: Loop, metrics: dict) -> tuple:
        """(config recorded in results.json, extra metrics such as plot names, the fields of
        the `| final |` line)."""
        raise NotImplementedError


def loop_config(cfg) -> LoopConfig:
    """The loop's bounds, logging, checkpoint cadence and profiling, from the run flags (a
    family without a --precision flag trains in float32)."""
    return LoopConfig(cfg.model_dir, cfg.max_epochs, cfg.max_steps, cfg.time_budget_min,
                      cfg.log_every, cfg.checkpoint_every,
                      checkpoint_minutes=cfg.checkpoint_every_min,
                      profile=profile_range(cfg.profile_steps),
                      precision=getattr(cfg, "precision", "float32"))


def start(task_class, cfg, distribution=None, **task_kw) -> Loop:
    """The loop of `cfg.model_dir` (new or resumed), ready to `run()`: the batch checked
    against the replicas, the seed set, the family's task built, the checkpoints restored,
    the model's architecture written (model.json) or checked against the folder's."""
    dist = distribution or distribute.local()
    dist.check_batch(cfg.batch_size)
    keras.utils.set_random_seed(cfg.seed)
    task = task_class(cfg, dist, **task_kw)
    files.makedirs(task.cfg.model_dir)
    path = RunDir(task.cfg.model_dir).model
    if files.exists(path):  # a resumed run: its saved architecture must be this one
        check_saved_config(task.model, path)
    run = Loop(task, loop_config(task.cfg), distribution=dist)
    if not files.exists(path):
        save_config(task.model, path)
    if run.resumed:
        logging.info("Resumed at epoch %d, batch %d, step %d", int(run.state.epoch),
                     int(run.state.batch), int(run.state.step))
    task.started(run)
    return run


def train(task_class, cfg, distribution=None, prepare_folder=None, **task_kw) -> dict:
    """Trains (or resumes) the run of `cfg.model_dir`, evaluates its best weights and writes
    results.json (see the module doc). `prepare_folder(folder)` runs before the lock is taken
    (e.g. a fine-tuning run copies its parent's vocabulary)."""
    dist = distribution or distribute.local()
    with dist.run_folder(cfg.model_dir) as folder:
        cfg = dataclasses.replace(cfg, model_dir=folder)
        files.makedirs(folder)
        if prepare_folder:
            prepare_folder(folder)
        with ModelDirLock(folder):  # one trainer per run folder
            return _train_locked(task_class, cfg, dist, task_kw)


def _train_locked(task_class, cfg, dist, task_kw) -> dict:
    begun = time.perf_counter()
    run = start(task_class, cfg, dist, **task_kw)
    reporting.record_command(cfg.model_dir)
    stopped = run.run()
    if not dist.is_chief:  # the chief evaluates and reports
        return {"worker": dist.worker, "stopped": stopped, **run.summary()}
    metrics = run.task.final_evaluation(run)
    metrics.update(stopped=stopped, **run.summary(),
                   wall_seconds_this_run=round(time.perf_counter() - begun, 1),
                   distribute=dist.describe())
    recorded, extra, fields = run.task.report(run, metrics)
    metrics.update(extra)
    path = reporting.write_results(cfg.model_dir, recorded, metrics)
    reporting.line("final", *fields, path)
    return metrics
