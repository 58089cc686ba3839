"""The 6-mer NPMI table as the motif analysis sees it: k-mer strings, scores, ranks, top-K.

Any table `genemask_jax.npmi.load_lookup` reads (our CSV, the authors' CSV, .npy/.npz) is
turned into `KmerTable`: the 4^6 k-mers as strings in the tokenizer's code order with their
NPMI score and rank. Only scored k-mers (finite score) take part in the analysis. This module
also holds the error class every part of `genemask_jax.motifs` raises and the small k-mer
helpers (GC count, reverse complement) the other modules share.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from genemask_jax import errors
from genemask_jax import npmi
from genemask_jax import tokenizer

K = 6
_COMPLEMENT = str.maketrans("ACGT", "TGCA")


class MotifsError(errors.UserError):
  """Bad input for the motif analysis (table, K, JASPAR release, collection, task)."""


@dataclasses.dataclass(frozen=True)
class KmerTable:
  """A k-mer NPMI table in code order (= token id - 5).

  Attributes:
    kmers: (4^k,) str array, the k-mers in `npmi.kmer_strings` order.
    score: float64 (4^k,), the NPMI; NaN where the table gives no score.
    rank: int64 (4^k,), 1 = highest NPMI; unscored k-mers get 4^k + 5.
    source: where the table came from (for reports).
  """
  kmers: np.ndarray
  score: np.ndarray
  rank: np.ndarray
  source: str

  @property
  def k(self) -> int:
    return len(self.kmers[0])

  @property
  def scored(self) -> np.ndarray:
    """bool (4^k,): the k-mers with a score."""
    return np.isfinite(self.score)

  def top(self, n: int) -> np.ndarray:
    """int64 (n,): code indices of the n best-ranked scored k-mers, best first."""
    check_top(self, n)
    scored = np.flatnonzero(self.scored)
    order = scored[np.argsort(self.rank[scored], kind="stable")]
    return order[:n]


def from_lookup(lookup: npmi.NpmiLookup, source: str = "") -> KmerTable:
  """The k-mer view of a lookup (drops the tokenizer's special tokens)."""
  score = lookup.score[tokenizer.NUM_SPECIAL:].astype(np.float64)
  score[~np.isfinite(score)] = np.nan
  rank = lookup.rank[tokenizer.NUM_SPECIAL:].astype(np.int64)
  return KmerTable(kmers=npmi.kmer_strings(lookup.k).astype(str), score=score, rank=rank,
                   source=source)


def load_table(path: str | os.PathLike) -> KmerTable:
  """Reads an NPMI table of 6-mers (any format `npmi.load_lookup` reads).

  Raises:
    MotifsError: the file is unreadable, malformed, or not a 6-mer table.
  """
  path = os.fspath(path)
  try:
    lookup = npmi.load_lookup(path)
  except npmi.NpmiError as e:
    raise MotifsError(f"--npmi: {e}") from e
  if lookup.k != K:
    raise MotifsError(f"{path}: holds a table of {lookup.k}-mers; the motif analysis needs "
                      f"the {K}-mer NPMI table (4096 rows) that GeneMask masks with")
  table = from_lookup(lookup, source=path)
  if not table.scored.any():
    raise MotifsError(f"{path}: no {K}-mer has a score")
  return table


def check_top(table: KmerTable, n: int) -> int:
  """Returns n if 1 <= n <= number of scored k-mers, else raises MotifsError."""
  n_scored = int(table.scored.sum())
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= n_scored:
    raise MotifsError(f"--top={n!r}: expected an integer in 1..{n_scored} (the number of "
                      f"scored {table.k}-mers in {table.source or 'the table'})")
  return int(n)


def gc_count(kmers: np.ndarray | list[str]) -> np.ndarray:
  """int64 (n,): number of G and C letters in each k-mer."""
  return np.array([s.count("G") + s.count("C") for s in kmers], np.int64)


def reverse_complement(seq: str) -> str:
  """Reverse complement of an ACGT string."""
  return seq.translate(_COMPLEMENT)[::-1]
