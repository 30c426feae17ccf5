"""Perplexity of a language model over a whole split, state carried across windows.

Windows are fixed-length (`bptt`); the loss is the exact mean NLL over every target position
(the reference weights each window's mean by its length and divides by the split length, which
counts one token too many per column).
"""
import time

import tensorflow as tf

from pipelines.bptt import bptt_dataset
from tfawd.losses import perplexity


class Evaluator:
    """Scores token streams with `model`; one traced step per batch size (window length free)."""

    def __init__(self, model):
        self.model = model
        self._steps = {}

    def _step(self, batch_size):
        if batch_size not in self._steps:
            model = self.model
            state_spec = [(tf.TensorSpec([batch_size, None]),) * 2 for _ in model.initial_state(1)]
            ids = tf.TensorSpec([batch_size, None], tf.int32)

            @tf.function(input_signature=[ids, ids, state_spec])
            def step(x, y, states):
                nll, states = model(x, states, training=False, targets=y)
                return tf.reduce_sum(nll), states

            self._steps[batch_size] = step
        return self._steps[batch_size]

    def evaluate(self, ids, batch_size: int, bptt: int) -> dict:
        """{'nll', 'ppl', 'tokens', 'seconds', 'tokens_per_s'} of the stream `ids`."""
        start = time.perf_counter()
        step = self._step(batch_size)
        states = self.model.initial_state(batch_size)
        total, count = 0.0, 0
        for x, y in bptt_dataset(ids, batch_size, bptt, variable=False):
            nll, states = step(x, y, states)
            total += float(nll)
            count += int(tf.size(y))
        seconds = time.perf_counter() - start
        mean = total / count
        return {"nll": mean, "ppl": perplexity(mean), "tokens": count, "seconds": seconds,
                "tokens_per_s": count / seconds, "batch_size": batch_size}

