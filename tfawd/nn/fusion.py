"""XLA-fused element-wise functions, and the switch that keeps them out of exported graphs.

On this CPU a chain of small element-wise TensorFlow kernels (an LSTM step's gates, the
softmax's exp / subtract / cast over [N, V]) costs more in dispatch and in memory passes than in
arithmetic; `jit_compile=True` turns each chain into one loop. Matmuls are left to TensorFlow
(oneDNN), which multiplies bfloat16 faster than XLA does here (benchmarks/xla_recurrence.py).

TF Serving runs XLA only when started with `--xla_cpu_compilation_enabled`, so SavedModels are
traced inside `standard_kernels()`, where every fused function runs as its plain TensorFlow
form (or the `fallback` given, when the fused form would be slow without XLA).
"""
import contextlib
import functools

import tensorflow as tf

_enabled = True


def xla(fn=None, *, fallback=None):
    """Decorator: `fn` compiled with XLA when traced normally; `fallback` (default: `fn`
    itself, uncompiled) when traced inside `standard_kernels()`."""
    if fn is None:
        return functools.partial(xla, fallback=fallback)
    compiled = tf.function(fn, jit_compile=True)
    plain = fallback or fn

    @functools.wraps(fn)
    def call(*args, **kwargs):
        return (compiled if _enabled else plain)(*args, **kwargs)

    return call


@contextlib.contextmanager
def standard_kernels():
    """Within: fused functions trace as standard TensorFlow kernels (for export, and as the
    baseline of benchmarks/xla_fusion.py)."""
    global _enabled
    kept, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = kept
