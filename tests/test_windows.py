"""Long sequences: the window plan, the split into model inputs, and pooling back."""
import numpy as np
import pytest

from genemask_jax import tokenizer
from genemask_jax import windows


def test_plan_of_several_windows_by_hand():
  # 25 k-mers, windows of 10 overlapping by 5: starts 0, 5, 10, 15 (the last ends at 25).
  assert windows.plan_windows(25, 10, 5) == [(0, 10), (5, 15), (10, 20), (15, 25)]
  # 23 k-mers: the fourth window would run past the end, so it is moved back to 13..23.
  assert windows.plan_windows(23, 10, 5) == [(0, 10), (5, 15), (10, 20), (13, 23)]
  assert windows.count_windows(23, 10, 5) == 4
  # No overlap: adjacent windows, the last moved back.
  assert windows.plan_windows(25, 10, 0) == [(0, 10), (10, 20), (15, 25)]


def test_default_overlap_is_half_a_window_and_covers_every_kmer():
  plan = windows.plan_windows(1000, 510)
  assert plan[0] == (0, 510) and plan[1] == (255, 765) and plan[-1] == (490, 1000)
  covered = np.zeros(1000, int)
  for start, stop in plan:
    covered[start:stop] += 1
  assert covered.min() >= 1
  assert np.all(covered[255:745] >= 2)  # away from the ends every k-mer is in two windows


def test_short_sequences_are_one_window_unchanged():
  assert windows.plan_windows(10, 10, 5) == [(0, 10)]
  assert windows.plan_windows(3, 10) == [(0, 3)]
  assert windows.plan_windows(0, 10) == [(0, 0)]


def test_max_windows_keeps_evenly_spaced_windows_with_both_ends():
  full = windows.plan_windows(60, 10, 5)  # starts 0, 5, ..., 50: 11 windows
  assert len(full) == 11
  kept = windows.plan_windows(60, 10, 5, max_windows=3)
  assert kept == [full[0], full[5], full[10]]
  kept = windows.plan_windows(60, 10, 5, max_windows=4)  # linspace 0, 3.33, 6.67, 10
  assert kept == [full[0], full[3], full[7], full[10]]
  assert windows.plan_windows(60, 10, 5, max_windows=50) == full
  assert windows.plan_windows(60, 10, 5, max_windows=1) == [full[0]]


def test_split_packs_windows_with_specials_and_owners():
  a = np.arange(5, 5 + 23, dtype=np.int32)  # 23 k-mers: 4 windows of 10 (overlap 5)
  b = np.array([7, 8, 9], np.int32)  # 3 k-mers: 1 window
  ids, owner = windows.split([a, b], max_len=12, overlap=5)
  assert ids.shape == (5, 12) and ids.dtype == np.int32
  assert owner.tolist() == [0, 0, 0, 0, 1]
  np.testing.assert_array_equal(ids[1], [tokenizer.CLS_ID, *a[5:15], tokenizer.SEP_ID])
  np.testing.assert_array_equal(ids[3], [tokenizer.CLS_ID, *a[13:23], tokenizer.SEP_ID])
  np.testing.assert_array_equal(
      ids[4], [tokenizer.CLS_ID, 7, 8, 9, tokenizer.SEP_ID] + [tokenizer.PAD_ID] * 7)


def test_pool_mean_over_windows_by_hand():
  # Sequence 0 has windows with values 1, 2, 4, 9 (two features each); sequence 1 one window.
  values = np.array([[1., 10.], [2., 20.], [4., 40.], [9., 90.], [5., 6.], [99., 99.]])
  owner = np.array([0, 0, 0, 0, 1, -1])  # the last row is batch padding
  pooled = windows.pool(values, owner, 2)
  np.testing.assert_allclose(pooled, [[4.0, 40.0], [5.0, 6.0]])  # (1+2+4+9)/4 = 4
  assert pooled.dtype == np.float32
  np.testing.assert_allclose(windows.pool(values, owner, 2, reduce="max"),
                             [[9.0, 90.0], [5.0, 6.0]])


def test_split_then_pool_a_long_sequence_by_hand():
  # The value of a window is the mean of its k-mer ids: the pooled value of the sequence is
  # the mean of those over its windows, computed here by hand from the plan.
  seq = np.arange(100, 123, dtype=np.int32)  # 23 k-mers -> windows 0..10, 5..15, 10..20, 13..23
  ids, owner = windows.split([seq], max_len=12, overlap=5)
  real = ids >= tokenizer.NUM_SPECIAL
  per_window = (ids * real).sum(1) / real.sum(1)
  by_hand = np.mean([seq[0:10].mean(), seq[5:15].mean(), seq[10:20].mean(), seq[13:23].mean()])
  np.testing.assert_allclose(windows.pool(per_window, owner, 1), [by_hand], rtol=1e-6)
  assert by_hand == pytest.approx(np.mean([104.5, 109.5, 114.5, 117.5]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_tokens=30, window=0, overlap=0), "window must be"),
    (dict(n_tokens=30, window=10, overlap=10), "overlap must be in 0..9"),
    (dict(n_tokens=30, window=10, overlap=-1), "overlap must be"),
    (dict(n_tokens=30, window=10, overlap=5, max_windows=0), "max_windows must be"),
])
def test_bad_window_settings_are_user_errors(kwargs, match):
  with pytest.raises(windows.WindowError, match=match):
    windows.plan_windows(**kwargs)


def test_pool_rejects_a_sequence_without_windows():
  with pytest.raises(windows.WindowError, match="sequence 1 has no window"):
    windows.pool(np.ones((2, 3)), np.array([0, 0]), 2)
  with pytest.raises(windows.WindowError, match="reduce must be"):
    windows.pool(np.ones((2, 3)), np.array([0, 1]), 2, reduce="median")
