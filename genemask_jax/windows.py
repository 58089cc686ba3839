"""Sequences longer than the model: overlapping windows in, one value per sequence out.

A model with ``max_len`` positions sees at most ``max_len - 2`` k-mers (510 for DNABERT's
512) between ``[CLS]`` and ``[SEP]``. A longer sequence is cut into windows of that many
k-mers; the model runs on every window; the per-window values (embeddings, logits,
probabilities) are pooled back to one value per sequence. Pure numpy; shared by
`genemask_jax.embed` and the fine-tuning / prediction binaries.

The rule, stated once:

* **Windows.** ``window`` k-mers each, consecutive windows ``window - overlap`` apart,
  starting at k-mer 0; the last window is moved back to end exactly at the sequence's end
  (so it may overlap its predecessor by more than ``overlap``). Every window is full
  length; a sequence of at most ``window`` k-mers is one window, unchanged.
* **Overlap.** Default ``window // 2`` (`default_overlap`): every k-mer outside the first
  and last half-window lies in two windows, once in a window's first half and once in its
  second, so no k-mer is seen only at a window's edge, where it has context on one side
  only. The price is ~2x the model work of non-overlapping windows; ``overlap=0`` halves it.
* **max_windows.** When a sequence needs more windows than ``max_windows``, that many are
  kept, evenly spaced over the planned ones (``round(linspace(0, n - 1, max_windows))``):
  the first and last are always kept (``max_windows=1`` keeps the first only), the middle
  is sampled with gaps. Costs are then bounded by ``max_windows`` windows per sequence.
* **Pooling.** The value of a sequence is the mean of its windows' values (`pool`,
  ``reduce="mean"``), every window weighted equally (all windows are full length, so this
  is also the token-weighted mean of per-window token means). ``reduce="max"`` takes the
  element-wise maximum instead (so max-pooled embeddings stay a maximum over all tokens).
  Rows whose ``owner`` is negative (padding added to fill a batch) are ignored.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from genemask_jax import errors
from genemask_jax import tokenizer

REDUCTIONS = ("mean", "max")


class WindowError(errors.UserError):
  """A window size, overlap or window budget that cannot work."""


def default_overlap(window: int) -> int:
  """The default overlap of windows of ``window`` k-mers: half a window (rounded down)."""
  return window // 2


def _check(window: int, overlap: int, max_windows: int | None) -> None:
  if int(window) < 1:
    raise WindowError(f"window must be at least 1 k-mer, got {window}")
  if not 0 <= int(overlap) < int(window):
    raise WindowError(f"overlap must be in 0..{window - 1} k-mers for windows of {window}, "
                      f"got {overlap}")
  if max_windows is not None and int(max_windows) < 1:
    raise WindowError(f"max_windows must be at least 1 (or None for no bound), got "
                      f"{max_windows}")


def count_windows(n_tokens: int, window: int, overlap: int | None = None) -> int:
  """How many windows a sequence of ``n_tokens`` k-mers needs before any ``max_windows``."""
  overlap = default_overlap(window) if overlap is None else overlap
  _check(window, overlap, None)
  if n_tokens <= window:
    return 1
  stride = window - overlap
  return 1 + -(-(n_tokens - window) // stride)  # ceil: the last one is moved to the end.


def plan_windows(n_tokens: int, window: int, overlap: int | None = None,
                 max_windows: int | None = None) -> list[tuple[int, int]]:
  """The ``[start, stop)`` k-mer ranges of one sequence's windows (see the module doc).

  Args:
    n_tokens: k-mers in the sequence (0 gives one empty window).
    window: k-mers per window (``max_len - 2`` of the model).
    overlap: k-mers shared by consecutive windows; default ``window // 2``.
    max_windows: keep at most this many, evenly spaced; None keeps all.

  Returns:
    Ranges in increasing order; each ``stop - start == min(n_tokens, window)``.

  Raises:
    WindowError: window < 1, overlap outside 0..window-1, max_windows < 1.
  """
  overlap = default_overlap(window) if overlap is None else int(overlap)
  _check(window, overlap, max_windows)
  if n_tokens <= window:
    return [(0, int(n_tokens))]
  n = count_windows(n_tokens, window, overlap)
  stride = window - overlap
  starts = [min(i * stride, n_tokens - window) for i in range(n)]
  if max_windows is not None and n > max_windows:
    keep = np.unique(np.round(np.linspace(0, n - 1, int(max_windows))).astype(int))
    starts = [starts[i] for i in keep]
  return [(s, s + window) for s in starts]


def split(ids_list: Sequence[np.ndarray], max_len: int, overlap: int | None = None,
          max_windows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Tokenised sequences -> model-ready windows and the sequence each belongs to.

  Args:
    ids_list: k-mer id arrays (no specials), one per sequence, any lengths.
    max_len: the model's positions; windows hold ``max_len - 2`` k-mers.
    overlap: k-mers shared by consecutive windows; default half a window.
    max_windows: per-sequence bound on windows (evenly spaced when it binds).

  Returns:
    (window_ids int32 [W, max_len]: ``[CLS] k-mers [SEP] [PAD]...``, owner int32 [W]:
    the index in ``ids_list`` of each window's sequence, non-decreasing). Every sequence
    has at least one window; ``np.bincount(owner, minlength=len(ids_list))`` counts them.

  Raises:
    WindowError: max_len < 3, or a bad overlap / max_windows.
  """
  if int(max_len) < 3:
    raise WindowError(f"max_len must be at least 3 ([CLS] k-mer [SEP]), got {max_len}")
  window = int(max_len) - 2
  pieces, owner = [], []
  for row, ids in enumerate(ids_list):
    ids = np.asarray(ids)
    for start, stop in plan_windows(len(ids), window, overlap, max_windows):
      pieces.append(ids[start:stop])
      owner.append(row)
  window_ids = tokenizer.pack(pieces, max_len) if pieces else np.zeros((0, max_len), np.int32)
  return window_ids, np.asarray(owner, np.int32)


def pool(values: np.ndarray, owner: np.ndarray, n_rows: int,
         reduce: str = "mean") -> np.ndarray:
  """Per-window values -> per-sequence values.

  Args:
    values: [W, ...] one value per window (any trailing shape).
    owner: [W] int; the sequence of each window, or a negative number for a padding window
      that must not count.
    n_rows: number of sequences; output row i pools the windows with ``owner == i``.
    reduce: "mean" (equal weight per window) or "max" (element-wise).

  Returns:
    [n_rows, ...] float32 for "mean" (the dtype of ``values`` for "max").

  Raises:
    WindowError: an unknown ``reduce``, mismatched lengths, an owner >= n_rows, or a
      sequence with no window.
  """
  if reduce not in REDUCTIONS:
    raise WindowError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
  values = np.asarray(values)
  owner = np.asarray(owner).astype(np.int64)
  if values.shape[0] != owner.shape[0]:
    raise WindowError(f"{values.shape[0]} window values but {owner.shape[0]} owners")
  real = owner >= 0
  values, owner = values[real], owner[real]
  if owner.size and owner.max() >= n_rows:
    raise WindowError(f"owner {int(owner.max())} outside the {n_rows} sequences")
  counts = np.bincount(owner, minlength=n_rows)
  if np.any(counts == 0):
    raise WindowError(f"sequence {int(np.argmin(counts))} has no window to pool")
  if reduce == "mean":
    out = np.zeros((n_rows,) + values.shape[1:], np.float64)
    np.add.at(out, owner, values.astype(np.float64))
    out /= counts.reshape((n_rows,) + (1,) * (values.ndim - 1))
    return out.astype(np.float32)
  if np.issubdtype(values.dtype, np.floating):
    fill = -np.inf
  else:
    fill = np.iinfo(values.dtype).min
  out = np.full((n_rows,) + values.shape[1:], fill, values.dtype)
  np.maximum.at(out, owner, values)
  return out
