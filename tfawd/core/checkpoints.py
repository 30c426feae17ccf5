"""The two checkpoint folders every run keeps, for the language model and the recogniser.

`<model_dir>/ckpt`: everything a run needs to continue exactly (weights, optimizer, counters),
the last two kept. `<model_dir>/best`: the weights of the best validation score only.
"""
import json

import tensorflow as tf
from absl import logging

from tfawd.core.run_dir import RunDir


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
    when the folder holds a run."""

    def __init__(self, model, model_dir: str, **state):
        self.checkpoint = tf.train.Checkpoint(model=weights_checkpoint(model), **state)
        run = RunDir(model_dir)
        self.manager = tf.train.CheckpointManager(self.checkpoint, run.ckpt, 2)
        self.best = tf.train.CheckpointManager(weights_checkpoint(model), run.best, 1)
        self.history_path = run.history
        self.history = []
        self.resumed = bool(self.manager.latest_checkpoint)
        if self.resumed:
            self.checkpoint.restore(self.manager.latest_checkpoint).assert_consumed()
            with open(self.history_path) as f:
                self.history = json.load(f)
            logging.info("Resumed from %s", self.manager.latest_checkpoint)
