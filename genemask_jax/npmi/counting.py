"""n-gram counts (n = 1..k) of a genome, streamed from FASTA or sequences in memory.

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
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Iterable, Sequence

import numpy as np

from genemask_jax import tokenizer
from genemask_jax.data import fasta
from genemask_jax.npmi import checks
from genemask_jax.npmi.checks import NpmiError

# Byte -> 2-bit base code in the tokenizer's order (A=0 T=1 C=2 G=3); 4 = not ACGT.
_LUT = np.full(256, 4, dtype=np.uint8)
for _i, _b in enumerate(tokenizer.BASES):
  _LUT[ord(_b)] = _i
  _LUT[ord(_b.lower())] = _i


_CHUNK = 1 << 18  # k-mer starts per bincount.
_SEPARATOR = np.zeros(1, np.uint8)  # Byte 0 is no base: put between records.


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
    self.k = checks.check_k(k)
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
  k = checks.check_k(k)
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

