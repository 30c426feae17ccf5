"""The two checkpoint folders every run keeps, for the language model and the recogniser.

`<model_dir>/ckpt`: everything a run needs to continue exactly (weights, optimizer, counters),
the last three kept. `<model_dir>/best`: the weights of the best validation score only.

A run resumes from the newest checkpoint that reads whole: one that is truncated, misses a
shard or holds other shapes (a full disk, a copy cut short) is named in one line and the one
before it is used, so a long run never ends on one damaged file (issue 27).
"""
import json
import os

import tensorflow as tf
from absl import logging

from tfawd.core.run_dir import RunDir
from tfawd.core.run_guard import RunError

KEEP = 3  # checkpoints kept in ckpt/: the fallbacks when the newest cannot be read
# What reading a damaged checkpoint raises: truncated data (IndexError, DataLossError), a
# missing shard or index (NotFoundError), other shapes or a foreign file (ValueError,
# InvalidArgumentError, AssertionError from assert_consumed).
READ_ERRORS = (tf.errors.OpError, ValueError, IndexError, AssertionError, KeyError, OSError)


def weights_checkpoint(model) -> tf.train.Checkpoint:
    """A checkpoint of all of the model's state: weights and dropout RNG, in
    `model.variables` order.

    `tf.train.Checkpoint(model=model)` is not enough with Keras 3: layers kept in a Python
    list (`self.rnns = [...]`) are not tracked by it and would be silently left out.
    """
    return tf.train.Checkpoint(variables=[v.value for v in model.variables])



def save_config(model, path: str) -> None:
    """Writes the model's class and `get_config()` beside its weights (`<model_dir>/model.json`;
    nanoGPT keeps its config in the checkpoint), so a trained run is rebuilt without flags."""
    config = {k: v for k, v in model.get_config().items() if k not in ("dtype", "name",
                                                                       "trainable")}
    with open(path, "w") as f:
        json.dump({"class": type(model).__name__, "config": config}, f, indent=1)
        f.write("\n")


def load_config(path: str) -> dict:
    """{"class": ..., "config": ...} as `save_config` wrote it."""
    with open(path) as f:
        return json.load(f)


class RunCheckpoints:
    """`manager` (ckpt/), `best` (best/) and the run's history.json, restored on creation
    when the folder holds a run (from the newest readable checkpoint)."""

    def __init__(self, model, model_dir: str, **state):
        self.checkpoint = tf.train.Checkpoint(model=weights_checkpoint(model), **state)
        run = RunDir(model_dir)
        self.manager = tf.train.CheckpointManager(self.checkpoint, run.ckpt, KEEP)
        self.best = tf.train.CheckpointManager(weights_checkpoint(model), run.best, 1)
        self.history_path = run.history
        self.history = []
        self.resumed = bool(self.manager.checkpoints)
        if self.resumed:
            path = restore_newest(self.checkpoint, self.manager.checkpoints, run.ckpt)
            self.history = read_history(self.history_path, step_of(path))
            logging.info("Resumed from %s", path)


def step_of(path: str) -> int:
    """The step a checkpoint was saved at (the manager numbers them by step)."""
    return int(path.rsplit("-", 1)[1])


def restore_newest(checkpoint, paths: list, folder: str) -> str:
    """Restores the newest of `paths` (oldest first) that reads whole, saying in one line which
    newer ones could not be read and why; RunError when none can."""
    for path in reversed(paths):
        try:
            checkpoint.restore(path).assert_consumed()
            return path
        except READ_ERRORS as e:
            reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            print(f"warning: checkpoint {path} cannot be read ({reason}); trying the one "
                  f"before it", flush=True)
            logging.warning("checkpoint %s cannot be read: %s", path, e)
    raise RunError(f"no readable checkpoint in {folder} (all {len(paths)} damaged); restore "
                   f"the folder from a copy, or train from scratch in a new --model_dir")


def read_history(path: str, upto_step: int) -> list:
    """history.json up to `upto_step` (the checkpoint resumed from: lines a newer, unreadable
    checkpoint had logged are dropped, as the steps will be trained again)."""
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            history = json.load(f)
    except (OSError, ValueError) as e:
        raise RunError(f"{path} cannot be read ({e}); remove it to resume without the earlier "
                       f"log lines, or restore it from a copy") from None
    return [h for h in history if h.get("step", 0) <= upto_step]
