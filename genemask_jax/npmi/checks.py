"""The NPMI package's error, its limits and the checks every part of it shares.

Floor: a table GeneMask masks with must score at least ``min_scored_fraction`` of the 4^k
k-mers (default 0.5, `DEFAULT_MIN_SCORED_FRACTION`): unscored k-mers all share the worst
rank, so a small or unusual genome (300 kbp at min_count=101 scored 3 of 4096 6-mers; a
51 bp, protein or RNA FASTA none) would silently turn GeneMask into near-random span
masking. The command and pretraining pass the floor to `score_counts` and `load_lookup`
checks it by default; the error gives the share scored and the fix (a lower min_count or
the authors' table). Pass 0 to analyse any table.
"""

from __future__ import annotations

import numpy as np

from genemask_jax import errors
from genemask_jax import tokenizer

MIN_K, MAX_K = 1, 10
DEFAULT_MIN_COUNT = 101
# The least share of the 4^k k-mers a table must score for GeneMask. Unscored k-mers all
# share the worst rank, so a table scoring few of them leaves GeneMask near-random span
# masking (300 kbp at min_count=101 scored 3 of 4096 6-mers). The shared 88 Mbp scores all
# 4096, the packaged 5.3 Mbp sample 3960 (97%), 300 chr22 blocks (555 kbp) 2412 (59%).
DEFAULT_MIN_SCORED_FRACTION = 0.5
# How a user gets a table that passes the floor (pretraining's config keys).
FLOOR_FIX = ("lower npmi.min_count or use the authors' table: "
             "--config=configs/pretrain.py:authors_npmi")


class NpmiError(errors.UserError):
  """Bad input for the NPMI statistics (bad k, no ACGT, a malformed table)."""


def check_k(k: int) -> int:
  """Returns k as an int if it is an integer in 1..10, else raises NpmiError."""
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not MIN_K <= k <= MAX_K:
    raise NpmiError(f"k must be an integer in {MIN_K}..{MAX_K}, got {k!r}")
  return int(k)


def lookup_size(k: int) -> int:
  """Length of the lookup arrays: 4^k k-mers plus the tokenizer's special tokens."""
  return 4**check_k(k) + tokenizer.NUM_SPECIAL


def check_scored_fraction(scored: int, k: int, min_scored_fraction: float, where: str,
                          fix: str = FLOOR_FIX) -> None:
  """Raises NpmiError if fewer than ``min_scored_fraction`` of the 4^k k-mers are scored.

  Args:
    scored: number of k-mers with a score.
    k: the k-mer length.
    min_scored_fraction: the floor, in [0, 1]; 0 disables the check.
    where: what the table came from (a file, "the corpus ..."), starts the message.
    fix: what the user can do, ends the message.
  """
  min_scored_fraction = check_min_scored_fraction(min_scored_fraction)
  total = 4**k
  if scored < min_scored_fraction * total or (min_scored_fraction > 0 and scored == 0):
    raise NpmiError(
        f"{where}: {scored} of {total} {k}-mers scored ({scored / total:.1%}), fewer than "
        f"min_scored_fraction={min_scored_fraction:g}: GeneMask would mask near-random "
        f"spans; {fix}")


def check_min_scored_fraction(value: float) -> float:
  """Returns ``value`` as a float if it lies in [0, 1], else raises NpmiError."""
  if (isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer))
      or not 0.0 <= value <= 1.0):
    raise NpmiError(f"min_scored_fraction must be a number in [0, 1], got {value!r}")
  return float(value)


def check_min_count(min_count: int) -> int:
  """Returns ``min_count`` as an int if it is an integer >= 1, else raises NpmiError."""
  if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) or min_count < 1:
    raise NpmiError(f"min_count must be an integer >= 1, got {min_count!r}")
  return int(min_count)

