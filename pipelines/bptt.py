"""The truncated-BPTT token stream as a `tf.data.Dataset`.

The token stream is cut into `batch_size` contiguous columns (the reference code's `batchify`;
the last `len % batch_size` tokens are dropped and logged). Each step reads the next window of
every column: inputs `x[:, i:i+T]`, targets `x[:, i+1:i+1+T]`. With `variable=True` the window
length is drawn as in Merity et al. 2017, section 4.1: `bptt` with probability 0.95, else
`bptt / 2`, then `N(that, 5)` truncated to an int, at least 5 (and at most `max_len` if set).
The last window is shortened to end at the column's end, so across an epoch every position
1..n-1 of every column is a target exactly once (the reference stops one position early).
The schedule depends only on (seed, epoch): resuming at window k replays the same windows.
"""
import numpy as np
import tensorflow as tf
from absl import logging

MIN_LEN = 5
STD = 5.0
P_FULL = 0.95


def batchify(ids: np.ndarray, batch_size: int) -> np.ndarray:
    """[batch_size, n] array whose row b is the b-th contiguous slice of `ids`."""
    ids = np.asarray(ids, dtype=np.int32)
    n = len(ids) // batch_size
    if n < 2:
        raise ValueError(f"{len(ids)} tokens cannot fill {batch_size} columns of at least 2 "
                         f"tokens; "
                         f"lower the batch size")
    dropped = len(ids) - n * batch_size
    if dropped:
        logging.info("batchify: %d trailing tokens do not fill a column of %d and are not used",
                     dropped, batch_size)
    return ids[: n * batch_size].reshape(batch_size, n)


def window_schedule(n: int, bptt: int, seed: int = 0, epoch: int = 0, variable: bool = True,
                    max_len: int = 0):
    """(starts, lengths) of the windows covering a column of `n` tokens, as int32 arrays."""
    rng = np.random.default_rng([seed, epoch])
    starts, lengths = [], []
    i = 0
    while i < n - 1:
        length = bptt
        if variable:
            mean = bptt if rng.random() < P_FULL else bptt / 2.0
            length = max(MIN_LEN, int(rng.normal(mean, STD)))
        if max_len:
            length = min(length, max_len)
        length = min(length, n - 1 - i)
        starts.append(i)
        lengths.append(length)
        i += length
    return np.asarray(starts, np.int32), np.asarray(lengths, np.int32)


def bptt_dataset(ids, batch_size: int, bptt: int, seed: int = 0, epoch: int = 0,
                 variable: bool = True, max_len: int = 0, start_window: int = 0) -> tf.data.Dataset:
    """Dataset of `(inputs [B, T], targets [B, T])` int32 windows, T varying per step.

    `start_window` skips the first windows of the epoch (to resume mid-epoch).
    """
    columns = batchify(ids, batch_size)
    starts, lengths = window_schedule(columns.shape[1], bptt, seed, epoch, variable, max_len)
    data = tf.constant(columns)

    def window(start, length):
        return data[:, start:start + length], data[:, start + 1:start + 1 + length]

    ds = tf.data.Dataset.from_tensor_slices((starts[start_window:], lengths[start_window:]))
    return ds.map(window, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(
        tf.data.AUTOTUNE)


def num_windows(n_tokens: int, batch_size: int, bptt: int, seed: int = 0, epoch: int = 0,
                variable: bool = True, max_len: int = 0) -> int:
    n = n_tokens // batch_size
    return len(window_schedule(n, bptt, seed, epoch, variable, max_len)[0])
