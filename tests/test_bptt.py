"""The BPTT stream: exact window boundaries, coverage, length distribution, determinism."""
import numpy as np
import pytest

from pipelines import bptt


def _windows(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_batchify_makes_contiguous_columns_and_drops_only_the_remainder():
    cols = bptt.batchify(np.arange(23), 4)
    assert cols.shape == (4, 5)
    np.testing.assert_array_equal(cols[1], [5, 6, 7, 8, 9])  # column b = b-th contiguous slice


def test_batchify_rejects_too_short_streams():
    with pytest.raises(ValueError, match="lower the batch size"):
        bptt.batchify(np.arange(5), 4)


def test_fixed_windows_have_exact_boundaries_and_shifted_targets():
    ids = np.arange(2 * 11)  # two columns of 11 tokens: 0..10 and 11..21
    wins = _windows(bptt.bptt_dataset(ids, batch_size=2, bptt=4, variable=False))
    assert [x.shape for x, _ in wins] == [(2, 4), (2, 4), (2, 2)]  # last window ends the column
    np.testing.assert_array_equal(wins[0][0], [[0, 1, 2, 3], [11, 12, 13, 14]])
    np.testing.assert_array_equal(wins[0][1], [[1, 2, 3, 4], [12, 13, 14, 15]])
    np.testing.assert_array_equal(wins[2][1], [[9, 10], [20, 21]])


def _check_exact_coverage(ids, batch_size, **kw):
    """Every position 1..n-1 of every column is a target exactly once, in order."""
    cols = bptt.batchify(ids, batch_size)
    targets = np.concatenate([y for _, y in _windows(bptt.bptt_dataset(ids, batch_size, **kw))],
                             axis=1)
    np.testing.assert_array_equal(targets, cols[:, 1:])


def test_every_position_is_a_target_exactly_once_on_real_wikitext2(wt2):
    _check_exact_coverage(wt2.ids["train"], 80, bptt=70, seed=1882, variable=True)
    _check_exact_coverage(wt2.ids["valid"], 10, bptt=70, variable=False)


@pytest.mark.parametrize("n", [7, 8, 9, 100, 1001])
def test_coverage_holds_for_any_length(n):
    _check_exact_coverage(np.arange(3 * n), 3, bptt=6, seed=n, variable=True)


def test_window_length_distribution_on_real_wikitext2(wt2):
    """bptt w.p. 0.95 else bptt/2, then N(., 5) truncated, at least 5 (AWD-LSTM 4.1)."""
    n = len(wt2.ids["train"]) // 80
    lengths = np.concatenate([bptt.window_schedule(n, 70, seed=s)[1][:-1] for s in range(8)])
    assert lengths.min() >= 5
    full = lengths[lengths > 52]  # the two modes (70 and 35) are 3.5 std apart
    half = lengths[lengths <= 52]
    assert abs(len(half) / len(lengths) - 0.05) < 0.015
    # int() truncates toward zero, so the mean sits ~0.5 below the drawn mean.
    assert abs(full.mean() - 69.5) < 0.3 and abs(full.std() - 5) < 0.3
    assert abs(half.mean() - 34.5) < 1.5


def test_minimum_and_cap():
    _, lengths = bptt.window_schedule(100000, 6, seed=0)
    assert lengths[:-1].min() == 5 and (lengths[:-1] == 5).mean() > 0.3
    _, capped = bptt.window_schedule(100000, 70, seed=0, max_len=72)
    assert capped.max() == 72


def test_deterministic_for_a_seed_and_epoch_and_different_otherwise():
    ids = np.arange(20000)
    a = bptt.window_schedule(len(ids) // 4, 35, seed=3, epoch=1)
    b = bptt.window_schedule(len(ids) // 4, 35, seed=3, epoch=1)
    c = bptt.window_schedule(len(ids) // 4, 35, seed=3, epoch=2)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1][:20], c[1][:20])
    wins1 = _windows(bptt.bptt_dataset(ids, 4, 35, seed=3, epoch=1))
    wins2 = _windows(bptt.bptt_dataset(ids, 4, 35, seed=3, epoch=1))
    assert all(np.array_equal(p[0], q[0]) for p, q in zip(wins1, wins2))


def test_start_window_resumes_the_same_schedule():
    ids = np.arange(5000)
    full = _windows(bptt.bptt_dataset(ids, 2, 10, seed=5))
    rest = _windows(bptt.bptt_dataset(ids, 2, 10, seed=5, start_window=7))
    assert len(rest) == len(full) - 7
    for (x1, y1), (x2, y2) in zip(full[7:], rest):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert bptt.num_windows(len(ids), 2, 10, seed=5) == len(full)
