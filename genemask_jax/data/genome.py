"""Genome FASTA -> pretraining chunks of k-mer ids, as the GeneMask data preparation did.

Each record is upper-cased (soft-masked repeats count as ordinary bases) and cut at its
non-ACGT letters (N runs and other IUPAC codes) into ACGT-only *segments*; with
``join_across_n=True`` those letters are deleted instead and the pieces glued together,
which is what the GeneMask authors did. Each segment is then cut into consecutive
non-overlapping chunks whose lengths are ``max_chunk_bp`` (511) with probability
``p_max_chunk`` (0.5) and otherwise uniform in ``[min_chunk_bp, max_chunk_bp - 1]``
(6..510). The paper starts each sequence at a random offset in ``[0, max_offset)``; here
that offset places the chunk grid's start *before* the segment, and the chunk that
straddles the segment's start is kept as a shorter first chunk, so no base is dropped
(dropping the offset lost up to 999 bp of every segment: 59% of a corpus of 800-bp
records). Only a first or last piece shorter than ``min_chunk_bp`` is lost; `ChunkStats`
reports the share of A/C/G/T bases kept. A chunk of n bp becomes n-k+1 k-mer ids, packed as
``[CLS] ids [SEP] [PAD]...`` to ``max_len`` tokens (511 bp -> 506 k-mers -> 508 tokens of
512).

The work is in two stages so that a build can run the second in parallel: `iter_cuts`
(reading, segmenting and the seeded chunk lengths; cheap, sequential) yields `Cut`s, runs
of consecutive chunks as bases plus lengths; `pack_rows` turns chunks into token rows
(the costly part), independently per cut. `iter_chunks` chains the two in one process.

Everything is seeded and does not depend on iteration order or on how the FASTA reader
blocks the file: a segment's chunk lengths come from a generator seeded by (seed, record
name, segment start), and each chunk's train/validation split from a hash of (seed,
record name, chunk index) -- about ``validation_fraction`` (10%) go to validation.

Memory is bounded: records stream through `fasta.iter_named_blocks` (fixed read buffers,
whatever the line length) and only the unfinished tail of the current chunk is carried
between blocks, so a 250 Mbp chromosome, even on one line, never sits in memory whole.

The package ships a small real slice of the human genome (`default_genome_paths`); it is
regenerated from the shared GRCh37 files by `genemask_jax.data.sample`.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import pathlib
import zlib
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from genemask_jax import errors
from genemask_jax import tokenizer
from genemask_jax.data import fasta

TRAIN = "train"
VALIDATION = "validation"
SAMPLE_NAME = "genome_sample.fa.gz"

_ACGT = b"ACGT"
_NON_ACGT = bytes(b for b in range(256) if b not in _ACGT)
_FIRST_DRAW = 16  # Chunk lengths drawn when a segment opens (short segments need few).
_EMIT_BATCH = 1024  # Chunks packed at once.
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


class GenomeConfigError(errors.UserError):
  """Chunking parameters that cannot work together."""


@dataclasses.dataclass(frozen=True)
class ChunkConfig:
  """How genome records become pretraining examples.

  Attributes:
    seed: seeds start offsets, chunk lengths and the train/validation split.
    max_offset: the chunk grid of each segment starts a random [0, max_offset) bp before
      the segment (the paper's random start offset; the straddling chunk is kept, cut
      short).
    max_chunk_bp: length of a "full" chunk (511 bp -> 506 6-mers).
    min_chunk_bp: shortest chunk (6 bp -> one 6-mer).
    p_max_chunk: probability that a chunk is max_chunk_bp long; otherwise its length is
      uniform in [min_chunk_bp, max_chunk_bp - 1].
    validation_fraction: share of chunks in the validation split.
    join_across_n: False (default) cuts records at non-ACGT letters; True deletes those
      letters and glues the pieces (the GeneMask authors' behaviour).
    keep_tail: keep a segment's last, shorter-than-drawn piece as a chunk if it has at
      least min_chunk_bp bases.
    k: k-mer length.
    max_len: tokens per example including [CLS] and [SEP].
  """
  seed: int = 0
  max_offset: int = 1000
  max_chunk_bp: int = 511
  min_chunk_bp: int = 6
  p_max_chunk: float = 0.5
  validation_fraction: float = 0.1
  join_across_n: bool = False
  keep_tail: bool = True
  k: int = 6
  max_len: int = 512

  def validate(self) -> "ChunkConfig":
    """Raises GenomeConfigError naming the bad field; returns self."""
    tokenizer.vocab_size(self.k)  # Checks k.
    if self.min_chunk_bp < self.k:
      raise GenomeConfigError(f"min_chunk_bp={self.min_chunk_bp} is shorter than one k-mer "
                              f"(k={self.k})")
    if self.max_chunk_bp <= self.min_chunk_bp:
      raise GenomeConfigError(f"max_chunk_bp={self.max_chunk_bp} must exceed "
                              f"min_chunk_bp={self.min_chunk_bp}")
    if self.max_chunk_bp - self.k + 1 + 2 > self.max_len:
      raise GenomeConfigError(
          f"a {self.max_chunk_bp}-bp chunk gives {self.max_chunk_bp - self.k + 1} k-mers, "
          f"which with [CLS] and [SEP] do not fit max_len={self.max_len}")
    if self.max_offset < 1:
      raise GenomeConfigError(f"max_offset must be >= 1, got {self.max_offset}")
    if not 0.0 <= self.p_max_chunk <= 1.0:
      raise GenomeConfigError(f"p_max_chunk must be in [0, 1], got {self.p_max_chunk}")
    if not 0.0 <= self.validation_fraction < 1.0:
      raise GenomeConfigError(
          f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
    return self

  @classmethod
  def from_dict(cls, d) -> "ChunkConfig":
    """From a dict or ConfigDict; unknown keys are an error naming the key."""
    d = dict(d)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise GenomeConfigError(f"unknown chunking key(s) {unknown}; expected some of "
                              f"{sorted(names)}")
    return cls(**d).validate()


class Chunk(NamedTuple):
  """One pretraining example.

  Attributes:
    split: "train" or "validation".
    key: unique, stable id "file_index:record_name:chunk_index".
    input_ids: int32 (max_len,): [CLS] k-mer ids [SEP] [PAD]...
    length: number of non-pad tokens (k-mers + 2).
  """
  split: str
  key: str
  input_ids: np.ndarray
  length: int


class Cut(NamedTuple):
  """Consecutive chunks of one record, before tokenisation.

  Attributes:
    file_index: which FASTA file (0-based, in the order given).
    record_name: the record's name (first word of its header, made unique in the file).
    first_index: the chunk index, within the record, of the first chunk.
    bases: uint8 (sum(lengths),) upper-case ASCII A/C/G/T, the chunks back to back.
    lengths: int64 (m,) each chunk's length in bp.
  """
  file_index: int
  record_name: str
  first_index: int
  bases: np.ndarray
  lengths: np.ndarray


@dataclasses.dataclass
class ChunkStats:
  """What the chunker read and kept; filled in as chunks are produced.

  Attributes:
    letters: sequence letters read (any IUPAC letter, either case).
    acgt: of those, A/C/G/T in either case: the bases a chunk can hold.
    kept: bases inside chunks.
    chunks: chunks produced.
  """
  letters: int = 0
  acgt: int = 0
  kept: int = 0
  chunks: int = 0

  @property
  def share_kept(self) -> float:
    """kept / acgt (1.0 for no input)."""
    return self.kept / self.acgt if self.acgt else 1.0

  def as_dict(self) -> dict[str, float]:
    return {**dataclasses.asdict(self), "share_kept": self.share_kept}

  def describe(self) -> str:
    """One line, e.g. '5,299,309 letters, 5,299,291 A/C/G/T, 100.00% of those kept in
    14,463 chunks'."""
    if not self.acgt:
      return f"{self.letters:,} letters, none of them A/C/G/T (is this DNA?)"
    return (f"{self.letters:,} letters, {self.acgt:,} A/C/G/T, {100 * self.share_kept:.2f}% "
            f"of those kept in {self.chunks:,} chunks")


def default_genome_paths() -> list[str]:
  """The human genome slice shipped inside the package (see resources/README.md)."""
  ref = importlib.resources.files("genemask_jax.data") / "resources" / SAMPLE_NAME
  path = pathlib.Path(str(ref))
  if not path.is_file():
    raise FileNotFoundError(f"{path}: the embedded genome sample is missing from the "
                            "installed package (was it installed without package data?)")
  return [str(path)]


def _name_hash(name: str) -> int:
  return zlib.crc32(name.encode("utf-8"))


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """Vectorised splitmix64 finaliser on uint64 (wraps modulo 2^64)."""
  with np.errstate(over="ignore"):
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
    return x ^ (x >> np.uint64(31))


def is_validation(seed: int, record_name: str, chunk_index: np.ndarray,
                  fraction: float) -> np.ndarray:
  """Deterministic split: True where chunk (record, index) belongs to validation.

  Args:
    seed: the chunking seed.
    record_name: the FASTA record name (first word of the header).
    chunk_index: int array of chunk indices within the record.
    fraction: expected share of validation chunks.

  Returns:
    bool array, same shape as chunk_index.
  """
  index = np.asarray(chunk_index)
  return _split_hash(np.full(index.shape, _record_base(seed, [record_name])[0]), index, fraction)


def _record_base(seed: int, names: Sequence[str]) -> np.ndarray:
  hashes = np.array([_name_hash(n) for n in names], np.uint64)
  return _splitmix64(np.uint64((seed & 0xFFFFFFFF) << 32) | hashes)


def _split_hash(base: np.ndarray, index: np.ndarray, fraction: float) -> np.ndarray:
  h = _splitmix64(base ^ np.asarray(index).astype(np.uint64))
  u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
  return u < fraction


def validation_mask(seed: int, names: Sequence[str], first: np.ndarray, counts: np.ndarray,
                    fraction: float) -> np.ndarray:
  """`is_validation` for runs of chunks from many records at once.

  Args:
    seed: the chunking seed.
    names: record name of each run.
    first: int (r,) chunk index of each run's first chunk.
    counts: int (r,) chunks in each run.
    fraction: expected share of validation chunks.

  Returns:
    bool (sum(counts),): the runs' chunks in order.
  """
  counts = np.asarray(counts, np.int64)
  starts = np.cumsum(counts) - counts
  index = (np.arange(int(counts.sum())) - np.repeat(starts, counts)
           + np.repeat(np.asarray(first, np.int64), counts))
  return _split_hash(np.repeat(_record_base(seed, names), counts), index, fraction)


def draw_chunk_lengths(rng: np.random.Generator, n: int, cfg: ChunkConfig) -> np.ndarray:
  """n chunk lengths: max_chunk_bp w.p. p_max_chunk, else uniform min..max-1. int64 (n,).

  Each length uses the next two doubles of `rng`, so n draws followed by m draws give the
  same lengths as n + m draws at once: how many are drawn at a time never matters.
  """
  u = rng.random((n, 2))
  short = cfg.min_chunk_bp + (u[:, 1] * (cfg.max_chunk_bp - cfg.min_chunk_bp)).astype(np.int64)
  return np.where(u[:, 0] < cfg.p_max_chunk, cfg.max_chunk_bp, short)


class _Segmenter:
  """Cuts one record's stream of ACGT pieces into chunks; carries state across blocks."""

  def __init__(self, cfg: ChunkConfig, file_index: int, record_name: str,
               stats: ChunkStats):
    self.cfg = cfg
    self.file_index = file_index
    self.record_name = record_name
    self.name_hash = _name_hash(record_name)
    self.stats = stats
    self.chunk_index = 0  # Running over the whole record, across segments.
    self.open = False
    self.buf = np.zeros((0,), np.uint8)

  def start(self, position: int) -> None:
    """Opens a segment that starts at `position` (0-based) in the record."""
    cfg = self.cfg
    self.rng = np.random.default_rng([cfg.seed & 0xFFFFFFFF, self.name_hash, position])
    # The chunk grid starts `offset` bp before the segment; the chunk that straddles the
    # segment's start is kept, cut short (dropped only if under min_chunk_bp).
    offset = int(self.rng.integers(0, cfg.max_offset))
    lengths = draw_chunk_lengths(self.rng, _FIRST_DRAW, cfg)
    ends = np.cumsum(lengths) - offset
    while ends[-1] <= 0:  # Only for a large max_offset.
      more = draw_chunk_lengths(self.rng, lengths.shape[0], cfg)
      lengths = np.concatenate([lengths, more])
      ends = np.cumsum(lengths) - offset
    first = int(np.searchsorted(ends, 0, side="right"))  # First chunk ending after 0.
    self.lengths = lengths[first:].copy()
    self.lengths[0] = ends[first]
    self.drop_first = self.lengths[0] < cfg.min_chunk_bp
    self.buf = np.zeros((0,), np.uint8)
    self.open = True

  def feed(self, piece: np.ndarray) -> Iterator[Cut]:
    """Adds ACGT bases (uint8 ASCII, upper case) to the open segment; yields full chunks."""
    if not piece.shape[0]:
      return
    self.buf = np.concatenate([self.buf, piece]) if self.buf.shape[0] else piece
    n = self.buf.shape[0]
    have = int(self.lengths.sum())
    if have <= n:  # Enough for the buffer and some: lengths average ~385 bp.
      need = (n - have) // self.cfg.min_chunk_bp + 1
      need = min(need, (n - have) // 128 + 64)
      while have <= n:
        more = draw_chunk_lengths(self.rng, need, self.cfg)
        self.lengths = np.concatenate([self.lengths, more])
        have += int(more.sum())
    ends = np.cumsum(self.lengths)
    m = int(np.searchsorted(ends, n, side="right"))  # Chunks that fit completely.
    if m == 0:
      return
    lo = 0
    if self.drop_first:  # A first piece too short for one k-mer.
      lo, self.drop_first = 1, False
    if m > lo:
      yield self._cut(self.buf[ends[lo - 1] if lo else 0:ends[m - 1]], self.lengths[lo:m])
    self.buf = self.buf[ends[m - 1]:].copy()
    self.lengths = self.lengths[m:]

  def close(self) -> Iterator[Cut]:
    """Ends the open segment, emitting its tail if keep_tail and long enough."""
    n = self.buf.shape[0]
    if self.open and self.cfg.keep_tail and n >= self.cfg.min_chunk_bp:
      yield self._cut(self.buf, np.array([n], np.int64))
    self.open = False
    self.buf = np.zeros((0,), np.uint8)

  def _cut(self, bases: np.ndarray, lengths: np.ndarray) -> Cut:
    cut = Cut(self.file_index, self.record_name, self.chunk_index, bases,
              np.asarray(lengths, np.int64).copy())
    self.chunk_index += lengths.shape[0]
    self.stats.kept += bases.shape[0]
    self.stats.chunks += lengths.shape[0]
    return cut


def pack_rows(bases: np.ndarray, lengths: np.ndarray, k: int = 6, max_len: int = 512
              ) -> tuple[np.ndarray, np.ndarray]:
  """Token rows for chunks laid back to back in `bases`.

  Args:
    bases: uint8 ASCII A/C/G/T, the chunks' bases back to back (sum(lengths) bytes).
    lengths: int (m,) chunk lengths in bp, each in [k, max_len + k - 3].
    k: k-mer length.
    max_len: tokens per row.

  Returns:
    rows int32 (m, max_len) ``[CLS] k-mer ids [SEP] [PAD]...`` and ntok int32 (m,), the
    non-pad tokens of each row (k-mers + 2).
  """
  lengths = np.asarray(lengths, np.int64)
  starts = np.cumsum(lengths) - lengths
  ids = tokenizer.encode(bases, k)  # One vectorised pass; only k-mers inside chunks are used.
  nk = lengths - k + 1
  m = starts.shape[0]
  col = np.arange(max_len)[None, :]
  src = starts[:, None] + col - 1
  inside = (col >= 1) & (col <= nk[:, None])
  rows = np.where(inside, ids[np.clip(src, 0, max(ids.shape[0] - 1, 0))], tokenizer.PAD_ID)
  rows[:, 0] = tokenizer.CLS_ID
  rows[np.arange(m), nk + 1] = tokenizer.SEP_ID
  return rows.astype(np.int32), (nk + 2).astype(np.int32)


def validation_flags(cut: Cut, cfg: ChunkConfig) -> np.ndarray:
  """bool (m,): which of the cut's chunks belong to the validation split."""
  return validation_mask(cfg.seed, [cut.record_name], np.array([cut.first_index]),
                         np.array([cut.lengths.shape[0]]), cfg.validation_fraction)


def batches(lengths: np.ndarray, size: int = _EMIT_BATCH) -> Iterator[tuple[int, int, int, int]]:
  """(first chunk, end chunk, first base, end base) of consecutive batches of chunks."""
  ends = np.cumsum(lengths)
  for i in range(0, lengths.shape[0], size):
    j = min(i + size, lengths.shape[0])
    yield i, j, int(ends[i - 1]) if i else 0, int(ends[j - 1])


def _iter_file(path: str, file_index: int, cfg: ChunkConfig, block_size: int,
               stats: ChunkStats) -> Iterator[Cut]:
  names: set[str] = set()
  seg: _Segmenter | None = None
  current = -1
  position = 0  # Position in the current record, in the file's letters.
  for record, block in fasta.iter_named_blocks(path, block_size):
    if record.index != current:
      if seg is not None:
        yield from seg.close()
      words = record.name.split()
      name = words[0] if words else f"record{record.index}"
      if name in names:
        name = f"{name}#{record.index}"  # Keep keys unique with repeated names.
      names.add(name)
      seg = _Segmenter(cfg, file_index, name, stats)
      current, position = record.index, 0
      if cfg.join_across_n:
        seg.start(0)
    upper = block.upper()
    stats.letters += len(upper)
    if cfg.join_across_n:
      acgt = upper.translate(None, _NON_ACGT)
      stats.acgt += len(acgt)
      yield from seg.feed(np.frombuffer(acgt, np.uint8))
      continue
    arr = np.frombuffer(upper, np.uint8)
    good = tokenizer.base_codes(arr) < 4
    stats.acgt += int(np.count_nonzero(good))
    # Boundaries where good/bad flips, as half-open runs of good letters.
    edges = np.flatnonzero(np.diff(good.astype(np.int8))) + 1
    bounds = np.concatenate([[0], edges, [arr.shape[0]]])
    for a, b in zip(bounds[:-1], bounds[1:]):
      if good[a]:
        if not seg.open:
          seg.start(position + int(a))
        yield from seg.feed(arr[a:b])
      elif seg.open:
        yield from seg.close()
    position += arr.shape[0]
  if seg is not None:
    yield from seg.close()


def iter_cuts(paths: Sequence[str | os.PathLike], cfg: ChunkConfig = ChunkConfig(),
              block_size: int = 1 << 22, stats: ChunkStats | None = None) -> Iterator[Cut]:
  """Streams `Cut`s (runs of chunks as bases + lengths) from FASTA files, in file order.

  The chunks do not depend on ``block_size`` (only how they are grouped into cuts does).
  ``stats``, if given, is updated as the files are read. Arguments as for `iter_chunks`.
  """
  cfg.validate()
  paths = [os.fspath(p) for p in paths]
  fasta.check_files(paths)
  stats = stats if stats is not None else ChunkStats()
  for file_index, path in enumerate(paths):
    yield from _iter_file(path, file_index, cfg, block_size, stats)


def iter_chunks(paths: Sequence[str | os.PathLike], cfg: ChunkConfig = ChunkConfig(),
                block_size: int = 1 << 22, stats: ChunkStats | None = None
                ) -> Iterator[Chunk]:
  """Streams pretraining chunks from FASTA files (plain or gzip).

  Args:
    paths: FASTA files, read in order.
    cfg: chunking parameters.
    block_size: bytes of sequence read at a time (bounds memory; results do not depend
      on it).
    stats: if given, filled in with the letters read and the bases kept as chunks are
      produced (complete once the iterator is exhausted).

  Yields:
    `Chunk`s: split, a unique key, input_ids int32 (cfg.max_len,), length.

  Raises:
    fasta.FastaError: a malformed file (checked before any chunk of it is produced for
      the file's first line; later lines as they are reached).
  """
  for cut in iter_cuts(paths, cfg, block_size, stats):
    val = validation_flags(cut, cfg)
    for i, j, a, b in batches(cut.lengths):  # Bounds the (m, max_len) block.
      rows, ntok = pack_rows(cut.bases[a:b], cut.lengths[i:j], cfg.k, cfg.max_len)
      for r in range(j - i):
        yield Chunk(VALIDATION if val[i + r] else TRAIN,
                    f"{cut.file_index}:{cut.record_name}:{cut.first_index + i + r}", rows[r],
                    int(ntok[r]))
