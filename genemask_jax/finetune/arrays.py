"""Row batching shared by fine-tuning, the linear probe and predictions."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np


def batched(fn: Callable[[jax.Array], jax.Array], ids: np.ndarray, batch_size: int,
            axis: int = 0) -> np.ndarray:
  """Applies ``fn`` to fixed-size row batches of ``ids`` (the last padded with [PAD] rows,
  so one compiled shape serves all) and concatenates the outputs along ``axis``."""
  n = len(ids)
  outs = []
  for start in range(0, n, batch_size):
    chunk = ids[start:start + batch_size]
    rows = len(chunk)
    if rows < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - rows,) + chunk.shape[1:],
                                              chunk.dtype)])
    out = np.asarray(fn(chunk))
    outs.append(np.take(out, np.arange(rows), axis=axis))
  return np.concatenate(outs, axis=axis)


def subsample(data: tuple[np.ndarray, np.ndarray], max_examples: int | None,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """At most ``max_examples`` rows of (ids, labels), a fixed random draw in original order."""
  ids, labels = data
  if max_examples is None or max_examples <= 0 or len(ids) <= max_examples:
    return ids, labels
  keep = np.sort(np.random.default_rng(seed).choice(len(ids), max_examples, replace=False))
  return ids[keep], labels[keep]
