"""Plain-Python, per-sequence port of the masking rules: the reference for the JAX code.

Written the way the authors' host loop works (one sequence at a time, Python lists, a rank
table lookup), straight from the rules in genemask_jax/masking.py's docstring, without
sharing any code with it. Used by tests/test_masking.py (identity for given centres) and
benchmarks/bench_masking.py (the speed reference).
"""

from __future__ import annotations

import random
from typing import Sequence

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID, NUM_SPECIAL = 0, 1, 2, 3, 4, 5
IGNORE_LABEL = -100


def eligible(ids: Sequence[int], vocab: int) -> list[bool]:
  """k-mer positions: [UNK] or a k-mer id."""
  return [t == UNK_ID or NUM_SPECIAL <= t < vocab for t in ids]


def spans_from_centres(ids: Sequence[int], rank: Sequence[int], centres: Sequence[bool],
                       strategy: str = "genemask", rank_source: str = "content",
                       all_high_if_few: bool = True, few_threshold: int = 8,
                       span_before: int = 2, span_after: int = 3,
                       high_radius: int = 5, elig: Sequence[bool] | None = None) -> list[bool]:
  """Masked positions (list of bools) of one sequence for the given centres.

  `elig` is eligible(ids, len(rank)), computed here when not given.
  """
  n = len(ids)
  if elig is None:
    elig = eligible(ids, len(rank))
  cs = [c for c in range(n) if centres[c] and elig[c]]
  if strategy == "bert":
    masked = [False] * n
    for c in cs:
      masked[c] = True
    return masked
  masked = [False] * n

  def rank_at(i):
    return rank[ids[i]] if rank_source == "content" else rank[i]

  scored = []
  for c in cs:
    window = [j for j in range(c - span_before, c + span_after + 1) if 0 <= j < n and elig[j]]
    for j in window:
      masked[j] = True
    if strategy == "dnabert":
      continue
    best_rank = min(rank_at(j) for j in window)
    if rank_at(c) == best_rank:
      best = c
    else:
      best = next(j for j in window if rank_at(j) == best_rank)
    scored.append((best_rank, c, best))
  if strategy == "dnabert":
    return masked
  if all_high_if_few and len(scored) <= few_threshold:
    high = scored
  else:
    high = sorted(scored)[:(len(scored) + 1) // 2]  # by (rank at best, centre position)
  for _, _, b in high:
    for j in range(b - high_radius, b + high_radius + 1):
      if 0 <= j < n and elig[j]:
        masked[j] = True
  return masked


def mask_sequence(ids: Sequence[int], rank: Sequence[int], rng: random.Random,
                  strategy: str = "genemask", p: float = 0.0176, random_over: str = "kmers",
                  mask_prob: float = 0.8, random_prob: float = 0.1,
                  **span_options) -> tuple[list[int], list[int]]:
  """Full masking of one sequence with Python's RNG: (masked_ids, labels)."""
  vocab = len(rank)
  elig = eligible(ids, vocab)
  centres = [e and rng.random() < p for e in elig]
  masked = spans_from_centres(ids, rank, centres, strategy, elig=elig, **span_options)
  out = list(ids)
  labels = [IGNORE_LABEL] * len(ids)
  lo = NUM_SPECIAL if random_over == "kmers" else 0
  for i, m in enumerate(masked):
    if m:
      labels[i] = ids[i]
      u = rng.random()
      if u < mask_prob:
        out[i] = MASK_ID
      elif u < mask_prob + random_prob:
        out[i] = rng.randrange(lo, vocab)
  return out, labels
