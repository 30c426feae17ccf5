"""NT-ASGD: SGD with coupled L2 weight decay that switches to iterate averaging.

Merity, Keskar & Socher, "Regularizing and Optimizing LSTM Language Models" (2017,
arXiv:1708.02182), section 3 and Algorithm 1: train with plain SGD and, once the validation
loss stops improving by a non-monotone criterion (`nonmonotone_trigger`), keep stepping with
SGD but report/evaluate the running average of the iterates since the switch.
"""
import contextlib

import keras
import tensorflow as tf
from keras import ops


class StepReducedGradients:
    """For optimizers whose gradients the training step has already all-reduced over the
    replicas (and clipped by their global norm: `tfawd.core.distribute`). Keras' TensorFlow
    optimizers sum the gradients over the replicas inside `apply` when called in a replica
    context; here that would sum them a second time. One process: no difference."""

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return list(grads_and_vars)


@keras.saving.register_keras_serializable("tfawd")
class SGD(StepReducedGradients, keras.optimizers.SGD):
    """Keras SGD for steps that reduce their own gradients (`StepReducedGradients`)."""


@keras.saving.register_keras_serializable("tfawd")
class Adam(StepReducedGradients, keras.optimizers.Adam):
    """Keras Adam for steps that reduce their own gradients (`StepReducedGradients`); its
    `global_clipnorm` then clips the global batch's gradient."""


@keras.saving.register_keras_serializable("tfawd")
class NTASGD(StepReducedGradients, keras.optimizers.Optimizer):
    """SGD with coupled weight decay plus a switchable average of the iterates.

    Every step (as PyTorch's `SGD`/`ASGD` with `weight_decay`):

        g = g + weight_decay * w
        w = w - learning_rate * g

    After `switch_to_averaging()`, each step also updates one "average" slot per variable,

        n = iterations + 1 - average_start        # steps since the switch, this one included
        average += (w - average) / n

    so after n steps since the switch `average` is the arithmetic mean of the n iterates
    w_1..w_n (the weights after each of those steps). Before the switch the slots are not
    touched. The switch initialises the slots to the current weights, so the averaged
    weights are usable (and equal to the current ones) before the first averaged step.

    This is the reference code's `torch.optim.ASGD(params, lr, t0=0, lambd=0.,
    weight_decay=wdecay)`, created at the switch: with lambd=0 its step is the SGD step
    above and its `ax` is the running mean of the iterates. One detail differs: PyTorch
    updates its averaging factor one step late (mu = 1/max(1, step - t0) is computed after
    it is used), so its `ax` after n >= 2 steps is the mean of w_2..w_n (w_1 is dropped);
    here it is the mean of w_1..w_n, the average of Algorithm 1. The difference is O(1/n).

    The learning rate is a variable: `opt.learning_rate.assign(x)` between steps is honoured.
    All state (averages, `averaging` flag, `average_start`, `iterations`) is in Keras optimizer
    variables, so `tf.train.Checkpoint(optimizer=opt)` saves and restores it.
    """

    def __init__(self, learning_rate=30.0, weight_decay=1.2e-6, name="ntasgd", **kwargs):
        # Not passed to the base class: its `weight_decay` is decoupled (AdamW style).
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.l2_weight_decay = float(weight_decay)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.averages = [self.add_variable_from_reference(v, "average") for v in var_list]
        self.averaging = self.add_variable((), initializer="zeros", dtype="int64", name="averaging")
        self.average_start = self.add_variable(
            (), initializer="zeros", dtype="int64", name="average_start")

    def update_step(self, gradient, variable, learning_rate):
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.convert_to_tensor(gradient)
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.add(ops.cast(gradient, dtype),
                           ops.multiply(ops.cast(self.l2_weight_decay, dtype), variable))
        self.assign_sub(variable, ops.multiply(lr, gradient))

        average = self.averages[self._get_variable_index(variable)]

        def update_average():
            # `iterations` is incremented after all update steps, hence the + 1.
            n = ops.maximum(self.iterations + 1 - self.average_start, 1)
            mu = ops.divide(ops.ones((), dtype), ops.cast(n, dtype))
            self.assign_add(average, ops.multiply(mu, ops.subtract(variable, average)))

        ops.cond(ops.greater(self.averaging, 0), update_average, lambda: None)

    @property
    def is_averaging(self) -> bool:
        return self.built and bool(self.averaging.numpy())

    def switch_to_averaging(self):
        """Start averaging from the next step on (eager; a second call does nothing)."""
        if not self.built:
            raise RuntimeError("Build the optimizer (opt.build(variables)) before switching.")
        if self.is_averaging:
            return
        for variable, average in zip(self._trainable_variables, self.averages):
            average.assign(variable)
        self.average_start.assign(ops.cast(self.iterations, "int64"))
        self.averaging.assign(1)

    def swap_average(self, var_list=None):
        """Swap each variable's value with its average (twice restores the weights exactly)."""
        if not self.is_averaging:
            raise RuntimeError("swap_average before switch_to_averaging(): no average yet.")
        for variable in self._trainable_variables if var_list is None else var_list:
            average = self.averages[self._get_variable_index(variable)]
            current = tf.identity(variable)
            variable.assign(average)
            average.assign(current)

    @contextlib.contextmanager
    def averaged_weights(self, var_list=None):
        """Within the block the variables hold the averaged weights (once averaging; before
        the switch they keep their current values). Restored on exit, even on exception."""
        if not self.is_averaging:
            yield
            return
        self.swap_average(var_list)
        try:
            yield
        finally:
            self.swap_average(var_list)

    def get_config(self):
        config = super().get_config()
        config["weight_decay"] = self.l2_weight_decay  # the base class stores None
        return config


def nonmonotone_trigger(history, current, nonmono=5) -> bool:
    """The reference code's rule for switching SGD -> ASGD (NT-ASGD, Algorithm 1).

    `history` holds the validation losses of all previous checks (not the current one).
    Switch when the current loss is worse than the best of all checks except the last
    `nonmono` ones; never before more than `nonmono` checks have been made:

        len(history) > nonmono and current > min(history[:-nonmono])
    """
    history = list(history)
    return len(history) > nonmono and current > min(history[:-nonmono])
