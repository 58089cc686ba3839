r"""NPMI scores of every k-mer from n-gram counts, and the ranking GeneMask masks by.

Scores (`score_counts`), for every k-mer w, with one normaliser Z for every n-gram length
(p(x) = c(x) / Z, ``log_z`` = ln Z):

* ``naive.pmi``   = ln p(w) - sum_i ln p(w_i) over the k single letters;
* ``true.pmi``    = min over binary splits w[:i] | w[i:] of ln p(w) - ln p(w[:i]) - ln p(w[i:]),
  i = 1..k-2 as the authors computed it (their loop leaves out i = k-1; reproduced by
  default), or i = 1..k-1 with ``true_splits="all"``;
* ``dp.true.pmi`` = min over segmentations s of w into contiguous pieces of length 1 or 2 of
  ln p(w) - sum_s ln p(s) (``segmentation="genemask"``), or, with ``segmentation="levine"``,
  over all segmentations into at least two contiguous pieces of any length (the PMI of
  Levine et al. 2021, "PMI-Masking", ICLR);
* ``norm_dp_true_pmi`` = dp * ln c(w) / (ln c(w) + ln m), m = ``min_count`` (101, the authors'
  minimum number of occurrences); k-mers seen fewer than m times get no score (NaN).

Z: the authors' values fit ln Z = 21.0146 for their counts, about twice the number of
6-mer windows in GRCh38 chr1-3. The default here is therefore Z = 2 x (number of counted
k-mer windows) (`default_log_z`): it reproduces their ranking and scales with the genome, so
it carries over to any input (Z enters the dp and true scores through the number of pieces,
so it changes the ranking, not only an offset; the agreement of each choice of Z with the
authors' table is measured by benchmarks/bench_npmi.py, in docs/benchmarks.md). With both
strands N counts both. Pass ``log_z`` to fix it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from genemask_jax import tokenizer
from genemask_jax.npmi import checks
from genemask_jax.npmi import counting
from genemask_jax.npmi.checks import NpmiError

# ln Z that fits the authors' published values (their GRCh38 chr1-3 counts).
AUTHORS_LOG_Z = 21.0146
TRUE_SPLITS = ("authors", "all")
SEGMENTATIONS = ("genemask", "levine")


@dataclasses.dataclass(frozen=True)
class NpmiTable:
  """Scores of all 4^k k-mers, indexed by k-mer code (token id - 5). Arrays are (4^k,).

  Attributes:
    k, log_z, min_count: the parameters.
    count: int64 occurrences.
    naive, true, dp, npmi: float64 scores (NaN where undefined: unseen k-mers, and for npmi
      k-mers seen fewer than min_count times).
  """
  k: int
  log_z: float
  min_count: int
  count: np.ndarray
  naive: np.ndarray
  true: np.ndarray
  dp: np.ndarray
  npmi: np.ndarray


def default_log_z(counts: counting.NgramCounts) -> float:
  """ln(2 x number of counted k-mer windows): matches the authors' normaliser (see module doc)."""
  return math.log(2 * counts.total(counts.k))


def _piece(x: np.ndarray, k: int, start: int, length: int) -> np.ndarray:
  """Code of the piece w[start:start+length] of each k-mer code x."""
  return (x >> (2 * (k - start - length))) & (4**length - 1)


def score_counts(counts: counting.NgramCounts, *, log_z: float | None = None,
                 min_count: int = checks.DEFAULT_MIN_COUNT, true_splits: str = "authors",
                 segmentation: str = "genemask", min_scored_fraction: float = 0.0,
                 source: str = "the counted sequence", fix: str = checks.FLOOR_FIX) -> NpmiTable:
  """Scores every k-mer (formulas in the module docstring).

  Args:
    counts: n-gram counts for n = 1..k.
    log_z: ln Z; None = `default_log_z`.
    min_count: k-mers seen fewer times get no normalised score (NaN); >= 1.
    true_splits: "authors" (splits i = 1..k-2) or "all" (i = 1..k-1).
    segmentation: "genemask" (pieces of length 1 or 2) or "levine" (any pieces, at least two).
    min_scored_fraction: the least share of the 4^k k-mers that must get a normalised score
      (`DEFAULT_MIN_SCORED_FRACTION` for a table GeneMask will mask with; the command and
      pretraining pass it); 0 = no floor, for analysis of any input.
    source, fix: name the input and the remedy in the floor's error message.

  Returns:
    The table over the 4^k k-mers.

  Raises:
    NpmiError: a bad parameter, or fewer k-mers scored than the floor.
  """
  if true_splits not in TRUE_SPLITS:
    raise NpmiError(f"true_splits must be one of {TRUE_SPLITS}, got {true_splits!r}")
  if segmentation not in SEGMENTATIONS:
    raise NpmiError(f"segmentation must be one of {SEGMENTATIONS}, got {segmentation!r}")
  min_count = checks.check_min_count(min_count)
  min_scored_fraction = checks.check_min_scored_fraction(min_scored_fraction)
  if log_z is None:
    log_z = default_log_z(counts)
  if not math.isfinite(log_z):
    raise NpmiError(f"log_z must be finite, got {log_z!r}")
  with np.errstate(divide="ignore"):
    logp = [np.log(c.astype(np.float64)) - log_z for c in counts.counts]
  with np.errstate(invalid="ignore"):  # -inf - -inf for unseen n-grams; masked below.
    table = _score(counts, logp, float(log_z), int(min_count), true_splits, segmentation)
  checks.check_scored_fraction(int(np.count_nonzero(~np.isnan(table.npmi))), counts.k,
                        min_scored_fraction,
                        f"{source} ({counts.total(counts.k):,} {counts.k}-mer windows, "
                        f"min_count={min_count})", fix)
  return table


def _score(counts: counting.NgramCounts, logp: list[np.ndarray], log_z: float, min_count: int,
           true_splits: str, segmentation: str) -> NpmiTable:
  k = counts.k
  x = np.arange(4**k, dtype=np.int64)
  lp = lambda start, length: logp[length - 1][_piece(x, k, start, length)]
  whole = logp[k - 1]

  naive = whole - sum(lp(i, 1) for i in range(k))

  splits = range(1, k - 1) if true_splits == "authors" else range(1, k)
  true = np.full(4**k, np.nan)
  for i in splits:
    true = np.fmin(true, whole - lp(0, i) - lp(i, k - i))

  # best[j]: the largest sum of ln p(piece) over segmentations of w[:j].
  best = [np.zeros(4**k)]
  for j in range(1, k + 1):
    if segmentation == "genemask":
      lengths = range(1, min(2, j) + 1)
    else:
      lengths = range(1, j + 1) if j < k else range(1, k)
    cand = [best[j - l] + lp(j - l, l) for l in lengths]
    best.append(np.maximum.reduce(cand) if cand else np.full(4**k, -np.inf))
  dp = whole - best[k]

  count = counts.counts[k - 1]
  seen = count > 0
  naive, true, dp = (np.where(seen, s, np.nan) for s in (naive, true, dp))
  with np.errstate(divide="ignore", invalid="ignore"):
    log_c = np.log(count.astype(np.float64))
    npmi = dp * log_c / (log_c + math.log(min_count))
  npmi = np.where(count >= min_count, npmi, np.nan)
  return NpmiTable(k=k, log_z=float(log_z), min_count=int(min_count), count=count,
                   naive=naive, true=true, dp=dp, npmi=npmi)


def rank_desc(score: np.ndarray, worst: int) -> np.ndarray:
  """Ranks (int64, 1 = highest); ties keep index order; NaN gets `worst`."""
  order = np.argsort(-score, kind="stable")  # NaN sorts last.
  rank = np.empty(score.shape[0], np.int64)
  rank[order] = np.arange(1, score.shape[0] + 1)
  rank[np.isnan(score)] = worst
  return rank


def kmer_strings(k: int) -> np.ndarray:
  """All k-mers in code order (= token id - 5) as a (4^k,) array of ASCII bytes (S{k})."""
  x = np.arange(4**k, dtype=np.int64)
  letters = np.frombuffer(tokenizer.BASES.encode(), np.uint8)
  digits = np.stack([_piece(x, k, i, 1) for i in range(k)], axis=1)
  return np.ascontiguousarray(letters[digits]).view(f"S{k}").reshape(-1)
