"""The two checkpoint folders every run keeps, for the language model and the recogniser.

`<model_dir>/ckpt`: everything a run needs to continue exactly (weights, optimizer, counters),
the last three kept. `<model_dir>/best`: the weights of the best validation score only.

A run resumes from the newest checkpoint that reads whole: one that is truncated, misses a
shard or holds other shapes (a full disk, a copy cut short) is named in one line and the one
before it is used, so a long run never ends on one damaged file (issue 27).
"""
import contextlib
import errno
import json
import os

import tensorflow as tf
from absl import logging

from tfawd.core import files
from tfawd.core.run_dir import RunDir
from tfawd.core.run_guard import RunError

KEEP = 3  # checkpoints kept in ckpt/: the fallbacks when the newest cannot be read
# What reading a damaged checkpoint raises: truncated data (IndexError, DataLossError), a
# missing shard or index (NotFoundError), other shapes or a foreign file (ValueError,
# InvalidArgumentError, AssertionError from assert_consumed).
READ_ERRORS = (tf.errors.OpError, ValueError, IndexError, AssertionError, KeyError, OSError)


@contextlib.contextmanager
def checkpoint_writes(folder: str, what: str = "a checkpoint"):
    """A checkpoint save (or another TensorFlow write, `what`) that fails for lack of space ends
    the run with one line (`DiskFull`); TensorFlow writes the new checkpoint under temporary
    names and records it only once whole, so the previous ones stay usable."""
    try:
        yield
    except (OSError, tf.errors.OpError) as e:
        text = getattr(e, "message", "") or str(e)
        if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or \
                "No space left" in text or "quota" in text.lower():
            raise files.DiskFull(f"no space left on the device saving {what} in {folder}; "
                                 f"free space and re-run the same command (it resumes from the "
                                 f"previous checkpoint, which is intact)") from None
        raise


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
    files.write_json(path, {"class": type(model).__name__, "config": config})


def check_saved_config(model, path: str) -> None:
    """A resumed run's model.json must describe the model the flags built (one line naming
    the file when it is damaged or another run's)."""
    saved = load_config(path)
    mine = {k: v for k, v in model.get_config().items() if k not in ("dtype", "name",
                                                                    "trainable")}
    if saved["class"] != type(model).__name__ or json.loads(json.dumps(mine)) != saved["config"]:
        raise RunError(f"{path} describes another model than this run's flags build (a copy "
                       f"from another run?); restore it from a copy of the run folder")


def load_config(path: str) -> dict:
    """{"class": ..., "config": ...} as `save_config` wrote it; one line naming the file when
    it is missing, not JSON or not of that shape."""
    fix = "restore it from a copy of the run folder (it describes the architecture of its weights)"
    saved = files.read_json(path, "the model's architecture", fix)
    if not (isinstance(saved, dict) and isinstance(saved.get("class"), str)
            and isinstance(saved.get("config"), dict)):
        raise RunError(f"{path} is damaged (no model class and config in it); {fix}")
    return saved


def restore_weights(checkpoint, path: str, model_json: str = "", partial: bool = False) -> None:
    """`checkpoint.restore(path)` with every variable matched; a damaged or foreign checkpoint
    (truncated, missing shard, other shapes than `model_json` describes) gives one line."""
    try:
        status = checkpoint.restore(path)
        if partial:
            status.expect_partial().assert_existing_objects_matched()
        else:
            status.assert_consumed()
    except READ_ERRORS as e:
        reason = first_line(e, 160)
        other = f" or does not match {model_json}" if model_json else ""
        raise RunError(f"checkpoint {path} cannot be read{other} ({reason}); restore the run "
                       f"folder from a copy") from None


def first_line(error: BaseException, limit: int = 160) -> str:
    """What a one-line message quotes of an exception: its first line, cut at `limit`."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__


def latest(folder: str) -> str | None:
    """The newest checkpoint of `folder` (None when it has none), as `tf.train.latest_checkpoint`,
    except that a damaged state file (`folder/checkpoint`) is rebuilt from the checkpoints
    present, with a one-line warning, instead of ending in a decoding error."""
    repair_state(folder)
    return tf.train.latest_checkpoint(folder)


def repair_state(folder: str) -> None:
    """Rewrites `folder/checkpoint` from the `*.index` files present when it cannot be parsed
    (a documented fallback: the state file is only an index of the checkpoints)."""
    state = os.path.join(folder, "checkpoint")
    if not files.exists(state):
        return
    try:
        tf.train.get_checkpoint_state(folder)
        return
    except Exception as e:  # text-proto parse, decoding: whatever a damaged file raises
        reason = first_line(e, 100)
    prefixes = sorted((f[:-len(".index")] for f in files.listdir(folder) if f.endswith(".index")),
                      key=lambda p: int(p.rsplit("-", 1)[1]) if p.rsplit("-", 1)[1].isdigit()
                      else -1)
    print(f"warning: {state} cannot be read ({reason}); rebuilt from the {len(prefixes)} "
          f"checkpoint(s) in the folder", flush=True)
    lines = [f'model_checkpoint_path: "{prefixes[-1]}"'] if prefixes else []
    lines += [f'all_model_checkpoint_paths: "{p}"' for p in prefixes]
    files.write_text(state, "\n".join(lines) + "\n")


class RunCheckpoints:
    """`manager` (ckpt/), `best` (best/) and the run's history.json, restored on creation
    when the folder holds a run (from the newest readable checkpoint)."""

    def __init__(self, model, model_dir: str, **state):
        self.checkpoint = tf.train.Checkpoint(model=weights_checkpoint(model), **state)
        run = RunDir(model_dir)
        repair_state(run.ckpt)
        repair_state(run.best)
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
            reason = first_line(e, 160)
            print(f"warning: checkpoint {path} cannot be read ({reason}); trying the one "
                  f"before it", flush=True)
            logging.warning("checkpoint %s cannot be read: %s", path, e)
    raise RunError(f"no readable checkpoint in {folder} (all {len(paths)} damaged); restore "
                   f"the folder from a copy, or train from scratch in a new --model_dir")


def read_history(path: str, upto_step: int) -> list:
    """history.json up to `upto_step` (the checkpoint resumed from: lines a newer, unreadable
    checkpoint had logged are dropped, as the steps will be trained again)."""
    if not files.exists(path):
        return []
    try:
        history = json.loads(files.read_text(path))
    except (OSError, ValueError, tf.errors.OpError) as e:
        raise RunError(f"{path} cannot be read ({e}); remove it to resume without the earlier "
                       f"log lines, or restore it from a copy") from None
    return [h for h in history if h.get("step", 0) <= upto_step]
