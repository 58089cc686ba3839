r"""GeneMask's 6-mer NPMI statistics: count n-grams in a genome, score, rank, serve a lookup.

GeneMask masks spans centred on the k-mers with the highest Normalized PMI. The authors
released only their table (GRCh38 chr1-3); this module computes it from any FASTA and turns
it, or their table, into the lookup arrays the on-device masking reads.

Counting (`count_fasta`, `count_sequences`, `NgramCounter`) streams the sequence block by
block: each letter becomes a 2-bit code through a 256-entry table (A=0 T=1 C=2 G=3 in either
case, as in `genemask_jax.tokenizer`; any other letter is invalid), k-mer codes are built with
k whole-array shifts and counted with `np.bincount` on cache-sized chunks. Only k-mer windows
are histogrammed; the counts of the shorter n-grams (n < k) are the k-mer counts summed over
their last k-n letters plus the few n-grams that start within k-1 letters of an invalid
letter or a record end, counted separately. Windows that touch a non-ACGT letter are
skipped, nothing is counted across records (short records are batched with an invalid
separator letter between them, which no counted window may touch), and the k-1 letters at
the end of a block are carried into the next block of the same record. Memory is bounded by
the block size and 4^k, not by the input. `both_strands` adds the reverse-complement strand
from the counts alone (c2(x) = c(x) + c(revcomp x)).

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

Ranks: every rank column of our CSV ranks within the k-mers only (1 = highest score); the
authors' ``*.rank`` columns rank within all 2..10-grams, their ``norm_pmi_rank_rel`` within
the 6-mers. In ours ``norm_pmi_rank_rel`` equals ``norm_dp_true_pmi_rank``;
``adv_pmi_rank_drop`` = dp rank - naive rank and ``norm_adv_pmi_rank_drop`` = norm rank - dp
rank, as in theirs. A k-mer without a score gets the worst rank, ``4^k + 5`` (the vocabulary
size), in every rank column and in the lookup.

Floor: a table GeneMask masks with must score at least ``min_scored_fraction`` of the 4^k
k-mers (default 0.5, `DEFAULT_MIN_SCORED_FRACTION`): unscored k-mers all share the worst
rank, so a small or unusual genome (300 kbp at min_count=101 scored 3 of 4096 6-mers; a
51 bp, protein or RNA FASTA none) would silently turn GeneMask into near-random span
masking. The command and pretraining pass the floor to `score_counts` and `load_lookup`
checks it by default; the error gives the share scored and the fix (a lower min_count or
the authors' table). Pass 0 to analyse any table.

Lookup (`NpmiLookup`, `load_lookup`): ``score`` float32 (4^k + 5,) and ``rank`` int32
(4^k + 5,), indexed by token id (`genemask_jax.tokenizer`: five specials, then the k-mers in
``itertools.product("ATCG")`` order). Specials, ``[UNK]`` and unscored k-mers have score
-inf and rank 4^k + 5, so they are never picked first. `write_table` writes the CSV and, next
to it, ``<stem>.rank.npy`` and ``<stem>.score.npy``; `load_lookup` reads either of those,
an ``.npz`` holding ``rank`` and ``score``, our CSV or the authors' CSV.

Command (counts, scores, writes the CSV and the two .npy files, prints the top/bottom 10)::

    python -m genemask_jax.npmi \
        --fasta=$GENEMASK_DATA_DIR/genome/GRCh37_chrX_1-70M.fa.gz,$GENEMASK_DATA_DIR/genome/GRCh37_chr22_blocks.fa.gz \
        --output=/tmp/npmi/table.csv

Bad flags (k, --min_count < 1, an --output that is a directory or not writable) fail before
the count, and too few scored k-mers before anything is written: one line on stderr, exit 2.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import sys
import tempfile
import time
from typing import Callable, Iterable, Sequence

from absl import app
from absl import flags
import numpy as np

from genemask_jax import errors
from genemask_jax import tokenizer
from genemask_jax.data import fasta

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
# ln Z that fits the authors' published values (their GRCh38 chr1-3 counts).
AUTHORS_LOG_Z = 21.0146
CSV_COLUMNS = ("ngram", "naive.pmi", "true.pmi", "dp.true.pmi", "norm_dp_true_pmi",
               "ngram_size", "naive.pmi.rank", "dp.true.pmi.rank", "norm_dp_true_pmi_rank",
               "adv_pmi_rank_drop", "norm_adv_pmi_rank_drop", "norm_pmi_rank_rel")
TRUE_SPLITS = ("authors", "all")
SEGMENTATIONS = ("genemask", "levine")

# Byte -> 2-bit base code in the tokenizer's order (A=0 T=1 C=2 G=3); 4 = not ACGT.
_LUT = np.full(256, 4, dtype=np.uint8)
for _i, _b in enumerate(tokenizer.BASES):
  _LUT[ord(_b)] = _i
  _LUT[ord(_b.lower())] = _i


_CHUNK = 1 << 18  # k-mer starts per bincount.
_SEPARATOR = np.zeros(1, np.uint8)  # Byte 0 is no base: put between records.


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


# ------------------------------------------------------------------------------ counting


@dataclasses.dataclass(frozen=True)
class NgramCounts:
  """n-gram counts for n = 1..k.

  Attributes:
    k: the longest n-gram length.
    counts: ``counts[n - 1]`` is an int64 array of shape (4^n,), indexed by the n-gram's
      base-4 code (first letter most significant; A=0 T=1 C=2 G=3).
    letters: number of sequence letters read (any letter, before skipping non-ACGT).
  """
  k: int
  counts: tuple[np.ndarray, ...]
  letters: int

  def total(self, n: int) -> int:
    """Number of counted n-gram windows."""
    return int(self.counts[n - 1].sum())


class NgramCounter:
  """Streaming n-gram counter (n = 1..k) over blocks of sequence letters.

  Feed each record's sequence as consecutive `add` calls and close it with `end_record`;
  `result` gives the counts. Small blocks (short records) are batched into one buffer,
  records separated by an invalid letter, which no counted window may touch: counting is
  the same as record by record, with the numpy call overhead paid once per batch. Memory:
  O(block size + 4^k).
  """

  def __init__(self, k: int, batch: int = 1 << 20):
    self.k = check_k(k)
    self._kmer = np.zeros(4**self.k + 1, np.int64)  # Last bin collects invalid windows.
    self._short = [np.zeros(4**n, np.int64) for n in range(1, self.k)]
    self._tail = np.zeros(0, np.uint8)  # Codes of the last k-1 letters not yet counted.
    self._pending: list[np.ndarray] = []
    self._pending_len = 0
    self._batch = batch
    self._dtype = np.uint16 if self.k <= 7 else np.uint32  # Codes and the sentinel 4^k fit.
    self.letters = 0

  def add(self, block: bytes | bytearray | memoryview | np.ndarray) -> None:
    """Adds the next piece of the current record (ASCII letters, any case)."""
    raw = block if isinstance(block, np.ndarray) else np.frombuffer(block, np.uint8)
    if raw.dtype != np.uint8 or raw.ndim != 1:
      raise NpmiError(f"a block is bytes or a 1-D uint8 array of ASCII letters, got "
                      f"{raw.dtype} of shape {raw.shape}")
    self.letters += raw.shape[0]
    self._pending.append(raw)
    self._pending_len += raw.shape[0]
    if self._pending_len >= self._batch:
      self._flush()

  def end_record(self) -> None:
    """Ends the current record: no n-gram is counted across it."""
    if self._pending_len or self._tail.size:
      self._pending.append(_SEPARATOR)
      self._pending_len += 1

  def _flush(self) -> None:
    """Counts every n-gram whose k-window lies in tail + pending; keeps the last k-1 letters."""
    if not self._pending:
      return
    raw = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
    self._pending, self._pending_len = [], 0
    codes = _LUT[raw]
    buf = np.concatenate([self._tail, codes]) if self._tail.size else codes
    starts = buf.shape[0] - self.k + 1
    if starts > 0:
      self._count_starts(buf, starts)
      self._tail = buf[starts:].copy()
    else:
      self._tail = buf

  def result(self) -> NgramCounts:
    """The counts of everything added so far (the open record counts as ended)."""
    self._flush()
    k = self.k
    short = [s.copy() for s in self._short]
    tail = self._tail  # Fewer than k letters: only shorter n-grams, up to the end.
    if tail.size:
      bad_pos = np.append(np.flatnonzero(tail > 3), tail.shape[0])
      starts = np.flatnonzero(tail <= 3)
      runlen = bad_pos[np.searchsorted(bad_pos, starts)] - starts
      self._count_prefixes(tail & 3, starts, runlen, short)
    kmer = self._kmer[:4**k]
    counts = []
    for n in range(1, k):
      counts.append(kmer.reshape(4**n, 4**(k - n)).sum(axis=1) + short[n - 1])
    counts.append(kmer.copy())
    return NgramCounts(k=k, counts=tuple(counts), letters=self.letters)

  def _count_starts(self, buf: np.ndarray, starts: int) -> None:
    """Counts all n-grams starting at positions 0..starts-1 of buf (their k-windows fit)."""
    k = self.k
    bad = buf > 3
    any_bad = bool(bad.any())
    b = buf & 3 if any_bad else buf
    # Chunks keep the code array and bincount's intp copy in cache (about 2x faster than
    # whole blocks) and bound the temporaries: chunk x (dtype + 8 bytes).
    for s0 in range(0, starts, _CHUNK):
      n = min(_CHUNK, starts - s0)
      code = b[s0:s0 + n].astype(self._dtype)
      for j in range(1, k):
        np.left_shift(code, 2, out=code)
        np.bitwise_or(code, b[s0 + j:s0 + j + n], out=code)
      if any_bad:
        chunk_bad = bad[s0:s0 + n + k - 1]
        bad_window = chunk_bad[:n].copy()
        for j in range(1, k):
          bad_window |= chunk_bad[j:j + n]
        if bad_window.any():
          code[bad_window] = 4**k
          # Starts at a valid letter whose k-window is cut by an invalid one: count the
          # shorter n-grams that still fit (few: at most k-1 per run of invalid letters).
          short = np.flatnonzero(bad_window & ~chunk_bad[:n]) + s0
          if short.size:
            bad_pos = np.flatnonzero(bad)
            runlen = bad_pos[np.searchsorted(bad_pos, short)] - short
            self._count_prefixes(b, short, runlen, self._short)
      self._kmer += np.bincount(code, minlength=4**k + 1)

  def _count_prefixes(self, b: np.ndarray, starts: np.ndarray, runlen: np.ndarray,
                      out: list[np.ndarray]) -> None:
    """Adds the n-grams b[s:s+n], n = 1..min(runlen, k-1), at each start s to out[n - 1]."""
    code = np.zeros(starts.shape[0], np.int64)
    for n in range(1, self.k):
      keep = runlen >= n
      if not keep.all():
        starts, runlen, code = starts[keep], runlen[keep], code[keep]
      if not starts.size:
        break
      code = code * 4 + b[starts + n - 1]
      out[n - 1] += np.bincount(code, minlength=4**n)


def count_sequences(sequences: Iterable[str | bytes | np.ndarray], k: int = 6) -> NgramCounts:
  """Counts n-grams (n = 1..k) in in-memory sequences; each one is a separate record.

  Args:
    sequences: sequences of letters (str, bytes or uint8 ASCII arrays), any case.
    k: longest n-gram, 1..10.

  Returns:
    The counts; windows touching a non-ACGT letter are skipped.
  """
  counter = NgramCounter(k)
  for seq in sequences:
    counter.add(seq.encode("ascii", errors="replace") if isinstance(seq, str) else seq)
    counter.end_record()
  return counter.result()


def _estimated_size(path: str) -> int:
  """Uncompressed size of a file: gzip's ISIZE trailer (mod 2^32) or the file size."""
  size = os.path.getsize(path)
  try:
    with open(path, "rb") as f:
      if f.read(2) == b"\x1f\x8b" and size >= 18:
        f.seek(-4, os.SEEK_END)
        isize = int.from_bytes(f.read(4), "little")
        return isize if isize >= size else 0
  except OSError:
    return 0
  return size


ProgressFn = Callable[[int, int, int, int], None]  # (file index, n files, letters, est. bytes)


def count_fasta(paths: Sequence[str | os.PathLike], k: int = 6, *, block_size: int = 1 << 22,
                progress: ProgressFn | None = None) -> NgramCounts:
  """Counts n-grams (n = 1..k) over FASTA files (plain or gzip), streaming.

  Args:
    paths: FASTA files; every record is counted separately (nothing spans records).
    k: longest n-gram, 1..10.
    block_size: letters per block read; bounds the memory.
    progress: optional callback(file index, number of files, letters read so far, estimated
      total bytes of all files), called after every block.

  Returns:
    The counts.

  Raises:
    NpmiError: bad k, or no k-mer of ACGT letters in the files.
    fasta.FastaError: a missing, unreadable or malformed file.
  """
  k = check_k(k)
  paths = [os.fspath(p) for p in paths]
  fasta.check_files(paths)
  total = sum(_estimated_size(p) for p in paths)
  counter = NgramCounter(k)
  for i, path in enumerate(paths):
    current = None
    for record, block in fasta.iter_blocks(path, block_size=block_size):
      if record != current:
        counter.end_record()
        current = record
      counter.add(block)
      if progress is not None:
        progress(i, len(paths), counter.letters, total)
    counter.end_record()
  counts = counter.result()
  if counts.total(1) == 0:
    raise NpmiError(f"no A/C/G/T letters in {', '.join(paths)} ({counts.letters} letters read);"
                    " NPMI needs DNA sequence")
  if counts.total(k) == 0:
    raise NpmiError(f"no {k}-mer of A/C/G/T letters in {', '.join(paths)}: every ACGT run is "
                    f"shorter than k={k}")
  return counts


def reverse_complement_index(n: int) -> np.ndarray:
  """rc[x] = code of the reverse complement of the n-gram with code x; int64 (4^n,)."""
  x = np.arange(4**n, dtype=np.int64)
  rc = np.zeros_like(x)
  for i in range(n):  # Digit i from the right of x becomes digit i from the left, complemented.
    rc = rc * 4 + (((x >> (2 * i)) & 3) ^ 1)  # A<->T is 0<->1, C<->G is 2<->3.
  return rc


def both_strands(counts: NgramCounts) -> NgramCounts:
  """Adds the reverse-complement strand: c2(x) = c(x) + c(revcomp(x)) for every n."""
  return dataclasses.replace(counts, counts=tuple(
      c + c[reverse_complement_index(n)] for n, c in enumerate(counts.counts, 1)))


# ------------------------------------------------------------------------------ scores


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


def default_log_z(counts: NgramCounts) -> float:
  """ln(2 x number of counted k-mer windows): matches the authors' normaliser (see module doc)."""
  return math.log(2 * counts.total(counts.k))


def _piece(x: np.ndarray, k: int, start: int, length: int) -> np.ndarray:
  """Code of the piece w[start:start+length] of each k-mer code x."""
  return (x >> (2 * (k - start - length))) & (4**length - 1)


def score_counts(counts: NgramCounts, *, log_z: float | None = None,
                 min_count: int = DEFAULT_MIN_COUNT, true_splits: str = "authors",
                 segmentation: str = "genemask", min_scored_fraction: float = 0.0,
                 source: str = "the counted sequence", fix: str = FLOOR_FIX) -> NpmiTable:
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
  min_count = check_min_count(min_count)
  min_scored_fraction = check_min_scored_fraction(min_scored_fraction)
  if log_z is None:
    log_z = default_log_z(counts)
  if not math.isfinite(log_z):
    raise NpmiError(f"log_z must be finite, got {log_z!r}")
  with np.errstate(divide="ignore"):
    logp = [np.log(c.astype(np.float64)) - log_z for c in counts.counts]
  with np.errstate(invalid="ignore"):  # -inf - -inf for unseen n-grams; masked below.
    table = _score(counts, logp, float(log_z), int(min_count), true_splits, segmentation)
  check_scored_fraction(int(np.count_nonzero(~np.isnan(table.npmi))), counts.k,
                        min_scored_fraction,
                        f"{source} ({counts.total(counts.k):,} {counts.k}-mer windows, "
                        f"min_count={min_count})", fix)
  return table


def _score(counts: NgramCounts, logp: list[np.ndarray], log_z: float, min_count: int,
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


# ------------------------------------------------------------------------------ lookup


@dataclasses.dataclass(frozen=True)
class NpmiLookup:
  """Lookup arrays indexed by token id.

  Attributes:
    rank: int32 (4^k + 5,), 1 = highest NPMI; specials, [UNK] and unscored k-mers = 4^k + 5.
    score: float32 (4^k + 5,), the NPMI; -inf for specials, [UNK] and unscored k-mers.
  """
  rank: np.ndarray
  score: np.ndarray

  @property
  def k(self) -> int:
    return int(round(math.log(self.rank.shape[0] - tokenizer.NUM_SPECIAL, 4)))


def lookup_from_table(table: NpmiTable) -> NpmiLookup:
  """The lookup arrays of a computed table."""
  worst = lookup_size(table.k)
  rank = np.full(worst, worst, np.int32)
  score = np.full(worst, -np.inf, np.float32)
  scored = ~np.isnan(table.npmi)
  rank[tokenizer.NUM_SPECIAL:] = rank_desc(table.npmi, worst)
  score[tokenizer.NUM_SPECIAL:][scored] = table.npmi[scored]
  return NpmiLookup(rank=rank, score=score)


def _fmt(v: float) -> str:
  return repr(float(v)) if not math.isnan(v) else "nan"


def lookup_paths(csv_path: str | os.PathLike) -> tuple[str, str]:
  """The (rank, score) .npy paths written next to a table CSV: <stem>.rank.npy, <stem>.score.npy."""
  stem = os.path.splitext(os.fspath(csv_path))[0]
  return stem + ".rank.npy", stem + ".score.npy"


def write_table(table: NpmiTable, path: str | os.PathLike) -> NpmiLookup:
  """Writes the CSV (authors' columns, best first) and the lookup .npy files next to it.

  Returns:
    The lookup written.
  """
  path = os.fspath(path)
  worst = lookup_size(table.k)
  naive_rank = rank_desc(table.naive, worst)
  dp_rank = rank_desc(table.dp, worst)
  norm_rank = rank_desc(table.npmi, worst)
  order = np.lexsort((np.arange(norm_rank.shape[0]), norm_rank))
  ngrams = kmer_strings(table.k)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="", encoding="ascii") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    cols = [ngrams[order].astype(str).tolist()] + [
        [_fmt(v) for v in s[order].tolist()]
        for s in (table.naive, table.true, table.dp, table.npmi)]
    ranks = [r[order].tolist() for r in (naive_rank, dp_rank, norm_rank,
                                         dp_rank - naive_rank, norm_rank - dp_rank, norm_rank)]
    w.writerows(zip(cols[0], cols[1], cols[2], cols[3], cols[4], [table.k] * len(order),
                    *ranks))
  lookup = lookup_from_table(table)
  rank_path, score_path = lookup_paths(path)
  np.save(rank_path, lookup.rank)
  np.save(score_path, lookup.score)
  return lookup


def _check_lookup(rank: np.ndarray, score: np.ndarray, where: str) -> NpmiLookup:
  n = rank.shape[0] if rank.ndim == 1 else -1
  if rank.ndim != 1 or score.shape != rank.shape:
    raise NpmiError(f"{where}: rank and score must be 1-D arrays of one length, got shapes "
                    f"{rank.shape} and {score.shape}")
  k = round(math.log(max(n - tokenizer.NUM_SPECIAL, 1), 4))
  if n != 4**k + tokenizer.NUM_SPECIAL or not MIN_K <= k <= MAX_K:
    raise NpmiError(f"{where}: length {n} is not 4^k + {tokenizer.NUM_SPECIAL} for a k in "
                    f"{MIN_K}..{MAX_K}")
  if not np.issubdtype(rank.dtype, np.integer) or not np.issubdtype(score.dtype, np.floating):
    raise NpmiError(f"{where}: expected integer ranks and float scores, got {rank.dtype} and "
                    f"{score.dtype}")
  if rank.min(initial=1) < 1 or rank.max(initial=1) > n:
    raise NpmiError(f"{where}: ranks must lie in 1..{n}")
  return NpmiLookup(rank=rank.astype(np.int32), score=score.astype(np.float32))


def _load_csv(path: str) -> NpmiLookup:
  """Reads our CSV or the authors' (columns ngram, norm_dp_true_pmi, norm_pmi_rank_rel)."""
  try:
    f = open(path, newline="", encoding="ascii")
  except OSError as e:
    raise NpmiError(f"{path}: cannot open: {e.strerror or e}") from e
  with f:
    try:
      reader = csv.reader(f)
      header = next(reader, None)
      if header is None:
        raise NpmiError(f"{path}: empty file; expected a CSV with columns {', '.join(CSV_COLUMNS)}")
      header = [h.strip() for h in header]
      need = ("ngram", "norm_dp_true_pmi", "norm_pmi_rank_rel")
      missing = [c for c in need if c not in header]
      if missing:
        raise NpmiError(f"{path}:1: missing column(s) {', '.join(missing)}; header is "
                        f"{','.join(header)}; expected the NPMI table columns "
                        f"{', '.join(CSV_COLUMNS)}")
      ci, si, ri = (header.index(c) for c in need)
      rows: dict[str, tuple[float, int, int]] = {}
      k = None
      for lineno, row in enumerate(reader, 2):
        if not row:
          continue
        if len(row) != len(header):
          raise NpmiError(f"{path}:{lineno}: {len(row)} fields, expected {len(header)}")
        ngram = row[ci].strip().upper()
        if k is None:
          k = len(ngram)
          if not MIN_K <= k <= MAX_K:
            raise NpmiError(f"{path}:{lineno}: ngram {row[ci]!r} is not a k-mer with k in "
                            f"{MIN_K}..{MAX_K}")
        if len(ngram) != k or ngram.strip("ACGT"):
          raise NpmiError(f"{path}:{lineno}: ngram {row[ci]!r} is not a {k}-mer of A/C/G/T")
        if ngram in rows:
          raise NpmiError(f"{path}:{lineno}: duplicate row for {ngram} (first on line "
                          f"{rows[ngram][2]})")
        try:
          score = float(row[si]) if row[si].strip() else math.nan
          rank = int(row[ri])
        except ValueError as e:
          raise NpmiError(f"{path}:{lineno}: expected a number in norm_dp_true_pmi and an integer"
                          f" in norm_pmi_rank_rel, got {row[si]!r}, {row[ri]!r}") from e
        rows[ngram] = (score, rank, lineno)
    except UnicodeDecodeError as e:
      raise NpmiError(f"{path}: not an ASCII CSV file ({e})") from e
    except csv.Error as e:
      raise NpmiError(f"{path}:{reader.line_num}: malformed CSV: {e}") from e
  if k is None:
    raise NpmiError(f"{path}: no rows after the header")
  ngrams = kmer_strings(k).astype(str)
  absent = [g for g in ngrams if g not in rows]
  if absent:
    raise NpmiError(f"{path}: {len(absent)} of the {4**k} {k}-mers have no row (e.g. "
                    f"{', '.join(absent[:5])}); the table must list every {k}-mer once")
  worst = lookup_size(k)
  rank = np.full(worst, worst, np.int32)
  score = np.full(worst, -np.inf, np.float32)
  vals = [rows[g] for g in ngrams]
  s = np.array([v[0] for v in vals])
  r = np.array([v[1] for v in vals], np.int64)
  lines = np.array([v[2] for v in vals])
  scored = ~np.isnan(s)
  bad = np.flatnonzero(scored & ((r < 1) | (r > 4**k)))
  if bad.size:
    raise NpmiError(f"{path}:{lines[bad[0]]}: rank {r[bad[0]]} outside 1..{4**k}")
  order = np.argsort(r[scored], kind="stable")
  rs, ss, ls = r[scored][order], s[scored][order], lines[scored][order]
  dup = np.flatnonzero(np.diff(rs) == 0)
  if dup.size:
    raise NpmiError(f"{path}:{ls[dup[0] + 1]}: rank {rs[dup[0]]} also on line {ls[dup[0]]}")
  worse = np.flatnonzero(np.diff(ss) > 0)
  if worse.size:
    raise NpmiError(f"{path}:{ls[worse[0] + 1]}: norm_pmi_rank_rel disagrees with "
                    f"norm_dp_true_pmi (rank {rs[worse[0] + 1]} scores higher than rank "
                    f"{rs[worse[0]]} on line {ls[worse[0]]})")
  rank[tokenizer.NUM_SPECIAL:][scored] = r[scored]
  score[tokenizer.NUM_SPECIAL:][scored] = s[scored]
  return NpmiLookup(rank=rank, score=score)


def scored_count(lookup: NpmiLookup) -> int:
  """Number of k-mers with a (finite) score in a lookup."""
  return int(np.count_nonzero(np.isfinite(lookup.score[tokenizer.NUM_SPECIAL:])))


def load_lookup(path: str | os.PathLike, k: int | None = None, *,
                min_scored_fraction: float = DEFAULT_MIN_SCORED_FRACTION) -> NpmiLookup:
  """Loads the lookup arrays from any NPMI table source.

  Args:
    path: our CSV or the authors' CSV (faithful-reproduction mode; rank from
      ``norm_pmi_rank_rel``, score from ``norm_dp_true_pmi``), ``<stem>.rank.npy`` or
      ``<stem>.score.npy`` (the other is read from next to it), or an ``.npz`` holding
      ``rank`` and ``score``.
    k: expected k-mer length; None = take it from the file.
    min_scored_fraction: the least share of the 4^k k-mers the table must score (see
      `DEFAULT_MIN_SCORED_FRACTION`); 0 accepts any table.

  Returns:
    NpmiLookup with rank int32 (4^k + 5,) and score float32 (4^k + 5,), by token id.

  Raises:
    NpmiError: unreadable file, wrong columns, missing or duplicate k-mers, bad ranks, or
      fewer k-mers scored than the floor.
  """
  path = os.fspath(path)
  if k is not None:
    check_k(k)
  min_scored_fraction = check_min_scored_fraction(min_scored_fraction)
  if not os.path.isfile(path):
    raise NpmiError(f"{path}: no such file (expected an NPMI table .csv, .npz or .rank.npy)")
  if path.endswith(".npz"):
    try:
      with np.load(path) as z:
        if "rank" not in z or "score" not in z:
          raise NpmiError(f"{path}: expected arrays 'rank' and 'score', found {sorted(z.files)}")
        lookup = _check_lookup(z["rank"], z["score"], path)
    except (OSError, ValueError) as e:
      if isinstance(e, NpmiError):
        raise
      raise NpmiError(f"{path}: not a readable .npz file: {e}") from e
  elif path.endswith(".npy"):
    for suffix in (".rank.npy", ".score.npy"):
      if path.endswith(suffix):
        stem = path[:-len(suffix)]
        break
    else:
      raise NpmiError(f"{path}: a .npy lookup is named <stem>.rank.npy or <stem>.score.npy")
    arrays = []
    for p in (stem + ".rank.npy", stem + ".score.npy"):
      try:
        arrays.append(np.load(p, allow_pickle=False))
      except (OSError, ValueError) as e:
        raise NpmiError(f"{p}: cannot read the lookup array: {e}") from e
    lookup = _check_lookup(arrays[0], arrays[1], stem + ".{rank,score}.npy")
  else:
    lookup = _load_csv(path)
  if k is not None and lookup.rank.shape[0] != lookup_size(k):
    raise NpmiError(f"{path}: holds a {lookup.k}-mer table, expected k={k}")
  check_scored_fraction(scored_count(lookup), lookup.k, min_scored_fraction, path,
                        "recompute it with a lower min_count or " + FLOOR_FIX.split(" or ", 1)[1])
  return lookup


# ------------------------------------------------------------------------------ command


class _Progress:
  """A one-line progress bar with Mbp/s on stderr."""

  def __init__(self, stream=sys.stderr, width: int = 30, every_s: float = 0.25):
    self._stream, self._width, self._every = stream, width, every_s
    self._t0 = time.perf_counter()
    self._last = -1.0
    self.started = False  # True once a bar is on the line (an error then starts a new one).

  def __call__(self, file_index: int, n_files: int, letters: int, total: int,
               force: bool = False) -> None:
    now = time.perf_counter()
    if not force and now - self._last < self._every:
      return
    self._last = now
    self.started = True
    rate = letters / 1e6 / max(now - self._t0, 1e-9)
    frac = min(letters / total, 1.0) if total else 0.0
    if force:
      frac = 1.0
    bar = "#" * int(frac * self._width)
    self._stream.write(f"\rcounting [{bar:<{self._width}}] {frac:4.0%} file {file_index + 1}/"
                       f"{n_files} {letters / 1e6:8.1f} Mbp {rate:6.1f} Mbp/s")
    self._stream.flush()


def check_output_path(path: str) -> str:
  """Returns ``path`` if the table CSV (and the .npy files beside it) can be written there.

  Checked before counting, so a bad --output fails in a second, not after the count.

  Raises:
    NpmiError: the path is empty or a directory, a parent is a file, or the directory
      cannot be written.
  """
  if not path:
    raise NpmiError("--output is empty; expected the table's CSV path, e.g. /tmp/npmi/table.csv")
  for p in (path, *lookup_paths(path)):
    if os.path.isdir(p):
      raise NpmiError(f"--output={path}: {p} is a directory; expected a file path such as "
                      f"{os.path.join(path, 'table.csv') if p == path else path + '.csv'}")
  parent = os.path.dirname(os.path.abspath(path))
  existing = parent
  while not os.path.lexists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise NpmiError(f"--output={path}: {existing} is a file, not a directory")
  try:
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as e:
    raise NpmiError(f"--output={path}: cannot write in {existing}: {e.strerror or e}") from e
  return path


def _main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  progress = _Progress()
  try:
    _run(progress)
  except errors.UserError as e:
    if progress.started:
      sys.stderr.write("\n")
    sys.stderr.write(f"npmi: error: {e}\n")
    sys.exit(2)


def _run(progress: _Progress) -> None:
  f = flags.FLAGS
  # Every flag is checked before the count, which takes minutes on a genome.
  paths = [p for p in f.fasta if p]
  if not paths:
    raise NpmiError("--fasta is empty; expected one or more FASTA files, comma-separated")
  k = check_k(f.k)
  if f.min_count < 1:
    raise NpmiError(f"--min_count={f.min_count}: expected an integer >= 1 (k-mers seen fewer "
                    "times get no score)")
  if not 0.0 <= f.min_scored_fraction <= 1.0:
    raise NpmiError(f"--min_scored_fraction={f.min_scored_fraction}: expected a number in "
                    "[0, 1]")
  min_count = f.min_count
  if f.log_z is not None and not math.isfinite(f.log_z):
    raise NpmiError(f"--log_z must be finite, got {f.log_z}")
  if f.block_size < 1:
    raise NpmiError(f"--block_size must be >= 1, got {f.block_size}")
  check_output_path(f.output)
  t0 = time.perf_counter()
  counts = count_fasta(paths, k, block_size=f.block_size, progress=progress)
  progress(len(paths) - 1, len(paths), counts.letters, 0, force=True)
  t_count = time.perf_counter() - t0
  sys.stderr.write("\n")
  progress.started = False
  if f.both_strands:
    counts = both_strands(counts)
  source = (f"{', '.join(paths)}: {counts.letters:,} letters, {counts.total(1):,} of them "
            f"A/C/G/T{', both strands' if f.both_strands else ''}")
  fix = ((f"lower --min_count (now {min_count}) or " if min_count > 1 else "") +
         "count a larger genome; to pretrain without a table of your own, use the authors' "
         "table: --config=configs/pretrain.py:authors_npmi")
  table = score_counts(counts, log_z=f.log_z, min_count=min_count,
                       true_splits=f.true_splits, segmentation=f.segmentation,
                       min_scored_fraction=f.min_scored_fraction, source=source, fix=fix)
  write_table(table, f.output)
  rank_path, score_path = lookup_paths(f.output)
  t_all = time.perf_counter() - t0
  print(f"counted {counts.letters / 1e6:.1f} Mbp ({counts.total(1) / 1e6:.1f} Mbp ACGT, "
        f"{counts.total(k):,} {k}-mer windows{', both strands' if f.both_strands else ''}) in "
        f"{t_count:.2f} s = {counts.letters / 1e6 / t_count:.1f} Mbp/s; ln Z = {table.log_z:.4f}")
  print(f"wrote {f.output}, {rank_path}, {score_path} ({t_all:.2f} s in all)")
  print(format_extremes(table, 10))


def format_extremes(table: NpmiTable, n: int = 10) -> str:
  """Text listing the n best and n worst scored k-mers with their scores and counts."""
  ngrams = kmer_strings(table.k).astype(str)
  rank = rank_desc(table.npmi, lookup_size(table.k))
  scored = np.flatnonzero(~np.isnan(table.npmi))
  order = scored[np.argsort(rank[scored], kind="stable")]
  lines = [f"{len(scored)} of {4**table.k} {table.k}-mers scored (count >= {table.min_count})"]
  for title, idx in ((f"top {n}", order[:n]), (f"bottom {n}", order[::-1][:n][::-1])):
    lines.append(f"{title}:  rank  {table.k}-mer  norm_dp_true_pmi  dp.true.pmi  count")
    for i in idx:
      lines.append(f"  {rank[i]:6d}  {ngrams[i]}  {table.npmi[i]:16.4f}  {table.dp[i]:11.4f}  "
                   f"{int(table.count[i]):,}")
  return "\n".join(lines)


def _define_flags() -> None:
  flags.DEFINE_list("fasta", None, "FASTA files (plain or gzip), comma-separated.", required=True)
  flags.DEFINE_string("output", None, "Output CSV; <stem>.rank.npy and <stem>.score.npy are "
                      "written next to it.", required=True)
  flags.DEFINE_integer("k", 6, "k-mer length to score (1..10); n-grams 1..k are counted.")
  flags.DEFINE_integer("min_count", DEFAULT_MIN_COUNT, "k-mers seen fewer times get no NPMI.")
  flags.DEFINE_float("min_scored_fraction", DEFAULT_MIN_SCORED_FRACTION,
                     "Refuse to write a table that scores fewer than this share of the 4^k "
                     "k-mers (GeneMask would mask near-random spans); 0 = write any table.")
  flags.DEFINE_float("log_z", None, "ln Z, the normaliser of every n-gram probability; default "
                     f"ln(2 x number of k-mer windows). The authors' fit: {AUTHORS_LOG_Z}.")
  flags.DEFINE_bool("both_strands", False, "Also count the reverse-complement strand.")
  flags.DEFINE_enum("true_splits", "authors", list(TRUE_SPLITS), "true.pmi binary splits: "
                    "'authors' = i in 1..k-2 (their off-by-one), 'all' = i in 1..k-1.")
  flags.DEFINE_enum("segmentation", "genemask", list(SEGMENTATIONS), "dp.true.pmi (and the "
                    "NPMI): 'genemask' = pieces of length 1 or 2; 'levine' = any pieces "
                    "(PMI-Masking, Levine et al. 2021).")
  flags.DEFINE_integer("block_size", 1 << 22, "Letters per block while counting (memory bound).")


if __name__ == "__main__":
  _define_flags()
  app.run(_main)
