"""The two checkpoint folders every run keeps, for the language model and the recogniser.

`<model_dir>/ckpt`: everything a run needs to continue exactly (weights, optimizer, counters),
the last two kept. `<model_dir>/best`: the weights of the best validation score only.
"""
import json
import logging

import tensorflow as tf

from tfawd.models import weights_checkpoint
from tfawd.run_dir import RunDir


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
