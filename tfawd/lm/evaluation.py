"""Perplexity of a language model over a whole split, state carried across windows.

Windows are fixed-length (`bptt`); the loss is the exact mean NLL over every target position
(the reference weights each window's mean by its length and divides by the split length, which
counts one token too many per column).
"""
import time

import tensorflow as tf

from pipelines.bptt import bptt_dataset
from tfawd.lm.models import copy_weights, float32_twin
from tfawd.nn import lstm_kernel
from tfawd.nn.losses import perplexity

# At or below this batch size a mixed-precision model is scored by its float32 twin: faster
# there (batch-1 evaluation: benchmarks/lm_throughput.py's eval figures) and exact.
FLOAT32_MAX_BATCH = 4


class Evaluator:
    """Scores token streams with `model`; one traced step per batch size (window length free)."""

    def __init__(self, model):
        self.model = model
        self._steps = {}
        self._twin = None

    def scorer(self, batch_size):
        """The model that scores batches of `batch_size`, holding the current weights: the
        model itself, or at batch <= FLOAT32_MAX_BATCH a mixed-precision model's float32
        twin."""
        if batch_size > FLOAT32_MAX_BATCH or self.model.compute_dtype == "float32":
            return self.model
        if self._twin is None:
            self._twin = float32_twin(self.model)
        copy_weights(self.model, self._twin)
        return self._twin

    def _step(self, batch_size):
        if batch_size not in self._steps:
            model = self.scorer(batch_size)
            state_spec = [(tf.TensorSpec([batch_size, None]),) * 2 for _ in model.initial_state(1)]
            ids = tf.TensorSpec([batch_size, None], tf.int32)

            @tf.function(input_signature=[ids, ids, state_spec])
            def step(x, y, states):
                with lstm_kernel.forward_only():  # no gradient: the lean scoring recurrence
                    nll, states = model(x, states, training=False, targets=y)
                return tf.reduce_sum(nll), states

            self._steps[batch_size] = step
        return self._steps[batch_size]

    def evaluate(self, ids, batch_size: int, bptt: int) -> dict:
        """{'nll', 'ppl', 'tokens', 'seconds', 'tokens_per_s'} of the stream `ids`."""
        start = time.perf_counter()
        self.scorer(batch_size)  # the twin takes the current weights
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


def split_metrics(evaluator: Evaluator, corpus, cfg, test: bool = True) -> dict:
    """The final figures of a run: validation perplexity at `cfg.eval_batch_size` and (with
    `test`) test perplexity at `cfg.test_batch_size`, as the reference code scores them."""
    valid = evaluator.evaluate(corpus.ids["valid"], cfg.eval_batch_size, cfg.bptt)
    out = {"val_ppl": valid["ppl"], "val_nll": valid["nll"], "valid_eval": valid}
    if test:
        result = evaluator.evaluate(corpus.ids["test"], cfg.test_batch_size, cfg.bptt)
        out.update(test_ppl=result["ppl"], test_nll=result["nll"], test_eval=result)
    return out
