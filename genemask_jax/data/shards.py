"""Writes pretraining chunks as array_record shards, one work unit at a time, in any process.

The genome corpus build (`genome_tfds`) plans *work units* of a few Mbp of chunks in the
main process and hands each to `write_unit`, in the same process or a worker process. A
`RangeUnit` says where its chunks lie in an uncompressed FASTA file (byte ranges, chunk
starts and lengths): the worker reads and upper-cases the bases itself (`RangeUnit.load`),
so the main process never touches them; `scan_ranges` is the workers' first pass that the
plan is made from (letters checked and counted, runs of A/C/G/T). A `Unit` carries its
bases (the sequential reader's path). `write_unit` does the costly part: k-mer ids, packed
rows, tf.Example bytes, and one array_record file per split, written under a temporary
name and renamed, then a small JSON marker written last. A unit whose marker is there with
the same digest is finished, so an interrupted build resumes from its finished units.

This module imports neither TensorFlow Datasets nor JAX, so a spawned worker starts fast.
The tf.Example bytes are built here with numpy (`ExampleEncoder`) for the features
``{"input_ids": int32 (max_len,), "length": int32 ()}``: TFDS decodes them to the same
values, and they have the size of what TFDS's serializer writes (tests/test_genome_tfds.py),
at a small fraction of its cost. Unlike TFDS's serializer, whose protobuf map puts the two
entries in either order, the entry order here is fixed, so the bytes are deterministic.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import zlib
from typing import Any

from array_record.python import array_record_module
import numpy as np

from genemask_jax import tokenizer
from genemask_jax.data import fasta
from genemask_jax.data import genome

SPLITS = (genome.TRAIN, genome.VALIDATION)
# group_size:1 (one record per chunk) is what TFDS writes, for random access; snappy
# instead of the default zstd:3 writes 5x faster for 6% more disk (measured on the
# embedded sample: 840 vs 791 bytes per example).
ARRAY_RECORD_OPTIONS = "group_size:1,snappy"


@dataclasses.dataclass
class Unit:
  """A run of consecutive chunks, possibly from several records: one shard per split.

  Attributes:
    index: position of the unit in the corpus (0-based); names its files.
    bases: uint8 ASCII A/C/G/T, the chunks' bases back to back.
    lengths: int64 (m,) chunk lengths in bp.
    names: the record of each run of chunks (one run per `genome.Cut`).
    first: int64 (r,) chunk index, within its record, of each run's first chunk.
    counts: int64 (r,) chunks in each run.
    cfg: the chunking settings (seed and validation_fraction decide the split; k, max_len
      the rows).
  """
  index: int
  bases: np.ndarray
  lengths: np.ndarray
  names: list[str]
  first: np.ndarray
  counts: np.ndarray
  cfg: genome.ChunkConfig

  def num_bases(self) -> int:
    return int(self.bases.shape[0])

  def validation(self) -> np.ndarray:
    """bool (m,): which chunks go to the validation split."""
    return genome.validation_mask(self.cfg.seed, self.names, self.first, self.counts,
                                  self.cfg.validation_fraction)

  def digest(self) -> str:
    """A checksum of everything the unit's files depend on."""
    h = zlib.crc32(json.dumps([self.index, dataclasses.asdict(self.cfg), self.names],
                              sort_keys=True).encode())
    for a in (self.bases, self.lengths, self.first, self.counts):
      h = zlib.crc32(memoryview(np.ascontiguousarray(a, np.int64 if a.dtype != np.uint8
                                                     else np.uint8)).cast("B"), h)
    return f"{h:08x}-{self.bases.shape[0]}-{self.lengths.shape[0]}"


_GOOD = np.zeros(256, bool)
_GOOD[np.frombuffer(b"ACGTacgt", np.uint8)] = True


def scan_ranges(path: str, display: str, ranges: list[tuple[int, int]]
                ) -> list[tuple[int, int, np.ndarray]]:
  """The first pass of a parallel build over byte ranges of an uncompressed FASTA file.

  Each range holds sequence lines of one record (`fasta.index_records`). Returns per
  range (letters, A/C/G/T letters, runs): runs are int64 (r, 2) [start, end) of the
  maximal runs of A/C/G/T (either case), in letters from the range's first letter. Bad
  bytes raise `fasta.FastaError` naming the file and line.
  """
  out = []
  with open(path, "rb") as f:
    for start, end in ranges:
      letters = fasta.read_letters(f, start, end, display, path)
      n = len(letters)
      if not letters.translate(None, b"ACGTacgt"):
        out.append((n, n, np.array([[0, n]], np.int64) if n else np.zeros((0, 2), np.int64)))
        continue
      good = _GOOD[np.frombuffer(letters, np.uint8)]
      edges = np.flatnonzero(np.diff(good.astype(np.int8))) + 1
      bounds = np.concatenate([[0], edges, [n]]).astype(np.int64)
      keep = good[bounds[:-1]]
      runs = np.stack([bounds[:-1][keep], bounds[1:][keep]], axis=1)
      out.append((n, int(np.count_nonzero(good)), runs))
  return out


@dataclasses.dataclass
class RangeUnit:
  """A work unit described by where its chunks lie in a FASTA file, not by their bases.

  The worker that writes it reads the bases itself (`load`), so the main process of a
  parallel build only plans. Chunks form runs, each a stretch of consecutive chunks of one
  segment of one record, back to back.

  Attributes:
    index: position of the unit in the corpus (0-based); names its files.
    path: the uncompressed FASTA file to read (the input, or its unpacked copy).
    display: the input file's name for messages; `source` its identity (size, mtime).
    names, first, counts: per run, as in `Unit`.
    starts: int64 (r,) each run's first base, in letters of its record (in A/C/G/T
      letters with ``join_across_n``).
    spans: per run, the byte ranges to read: (start byte, end byte, coordinate of the
      range's first letter), in order.
    lengths: int64 (m,) every chunk's length in bp.
    cfg: the chunking settings.
  """
  index: int
  path: str
  display: str
  source: str
  names: list[str]
  first: np.ndarray
  counts: np.ndarray
  starts: np.ndarray
  spans: list[list[tuple[int, int, int]]]
  lengths: np.ndarray
  cfg: genome.ChunkConfig

  def num_bases(self) -> int:
    return int(self.lengths.sum())

  def digest(self) -> str:
    """A checksum of the input's identity and of every chunk's place and length."""
    h = zlib.crc32(json.dumps([self.index, dataclasses.asdict(self.cfg), self.names,
                               self.display, self.source, self.spans],
                              sort_keys=True).encode())
    for a in (self.lengths, self.first, self.counts, self.starts):
      h = zlib.crc32(memoryview(np.ascontiguousarray(a, np.int64)).cast("B"), h)
    return f"{h:08x}-{self.num_bases()}-{self.lengths.shape[0]}"

  def load(self) -> Unit:
    """Reads the chunks' bases (upper case) from the file: the same unit, as a `Unit`."""
    bases = np.empty(self.num_bases(), np.uint8)
    ends = np.cumsum(self.counts)
    cum = np.concatenate([[0], np.cumsum(self.lengths)])
    cache: dict[int, bytes] = {}
    with open(self.path, "rb") as f:
      for r, (a, spans) in enumerate(zip(self.starts.tolist(), self.spans)):
        lo, hi = int(cum[ends[r] - self.counts[r]]), int(cum[ends[r]])
        b = a + hi - lo
        parts = []
        for start, end, c0 in spans:
          letters = cache.get(start)
          if letters is None:
            letters = fasta.read_letters(f, start, end, self.display, self.path,
                                         acgt_only=self.cfg.join_across_n)
            cache = {start: letters}  # Runs in order: keep only the last range read.
          parts.append(letters[max(a - c0, 0):max(b - c0, 0)])
        got = b"".join(parts)
        if len(got) != hi - lo:
          raise RuntimeError(f"{self.path}: read {len(got)} bases for a run of {hi - lo} "
                             "(the file changed during the build?)")
        bases[lo:hi] = np.frombuffer(got, np.uint8)
    np.bitwise_and(bases, 0xDF, out=bases)  # a/c/g/t -> A/C/G/T.
    return Unit(self.index, bases, self.lengths, self.names, self.first, self.counts,
                self.cfg)


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    b = n & 0x7F
    n >>= 7
    if n:
      out.append(b | 0x80)
    else:
      out.append(b)
      return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
  return bytes([tag]) + _varint(len(payload)) + payload


class ExampleEncoder:
  """tf.Example bytes for rows of token ids, vectorised over a batch of rows.

  The layout is Example{features{feature["length"]: int64_list, feature["input_ids"]:
  int64_list (packed varints)}}, always in that entry order.
  """

  def __init__(self, max_len: int, max_id: int):
    self.max_len = max_len
    self.nbytes = max(1, (int(max_id).bit_length() + 6) // 7)  # Varint bytes of the largest id.
    # The "length" entry for every possible length, whole.
    self._length_entry = [
        _field(0x0A, _field(0x0A, b"length") + _field(0x12, _field(0x1A, _field(
            0x0A, _varint(v))))) for v in range(max_len + 1)]
    self._ids_head: dict[int, tuple[bytes, int]] = {}
    self._outer: dict[int, bytes] = {}

  def _head(self, n: int) -> tuple[bytes, int]:
    """The bytes of the "input_ids" entry before its n packed bytes, and the entry's size."""
    head = self._ids_head.get(n)
    if head is None:
      lst = b"\x0a" + _varint(n)  # Int64List.value, packed.
      feat = b"\x1a" + _varint(len(lst) + n)  # Feature.int64_list.
      entry = (_field(0x0A, b"input_ids") + b"\x12" + _varint(len(feat) + len(lst) + n)
               + feat + lst)
      outer = b"\x0a" + _varint(len(entry) + n)  # Features.feature map entry.
      head = (outer + entry, len(outer) + len(entry) + n)
      self._ids_head[n] = head
    return head

  def _packed(self, rows: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Each row's values as packed varints, rows back to back, and each row's byte count."""
    if self.nbytes <= 2:  # Ids under 16384 (k <= 6): one or two bytes each.
      v = np.asarray(rows).astype(np.uint16)
      two = v >= 0x80
      parts = np.empty(v.shape + (2,), np.uint8)
      parts[..., 0] = (v & 0x7F) | (two << 7)
      parts[..., 1] = v >> 7
      keep = np.empty(v.shape + (2,), bool)
      keep[..., 0] = True
      keep[..., 1] = two
      return parts[keep].tobytes(), v.shape[1] + np.count_nonzero(two, axis=1)
    v = np.asarray(rows).astype(np.uint32)
    nb = np.ones(v.shape, np.int64)
    for j in range(1, self.nbytes):
      nb += v >= (1 << (7 * j))
    parts = np.empty(v.shape + (self.nbytes,), np.uint8)
    for j in range(self.nbytes):
      parts[..., j] = ((v >> (7 * j)) & 0x7F) | ((nb > j + 1) << 7).astype(np.uint32)
    keep = np.arange(self.nbytes) < nb[..., None]
    return parts[keep].tobytes(), nb.sum(axis=1)

  def encode(self, rows: np.ndarray, ntok: np.ndarray) -> list[bytes]:
    """Serialized examples for int (m, max_len) rows and their (m,) token counts."""
    flat, sizes = self._packed(rows)
    ends = np.cumsum(sizes).tolist()
    sizes = sizes.tolist()
    ntok = np.asarray(ntok).tolist()
    out = []
    length_entry = self._length_entry
    heads = self._ids_head
    outer = self._outer
    for r, n in enumerate(sizes):
      head = heads.get(n) or self._head(n)
      first = length_entry[ntok[r]]
      total = len(first) + head[1]
      prefix = outer.get(total)
      if prefix is None:
        prefix = outer[total] = b"\x0a" + _varint(total)
      e = ends[r]
      out.append(b"".join((prefix, first, head[0], flat[e - n:e])))
    return out


@functools.lru_cache(maxsize=8)
def _encoder(max_len: int, max_id: int) -> ExampleEncoder:
  """One encoder per shape for the whole process: its tables of entry heads fill once, not
  once per unit (that cost ~5 ms of a unit's ~28 ms: benchmarks/bench_unit_write.py)."""
  return ExampleEncoder(max_len, max_id)


def shard_path(work_dir: str, index: int, split: str) -> str:
  return os.path.join(work_dir, f"unit-{index:06d}.{split}.array_record")


def _marker_path(work_dir: str, index: int) -> str:
  return os.path.join(work_dir, f"unit-{index:06d}.json")


def finished_indices(work_dir: str) -> list[int]:
  """Indices of the units with a marker in work_dir (finished, if their digest matches)."""
  out = []
  for name in os.listdir(work_dir) if os.path.isdir(work_dir) else ():
    if name.startswith("unit-") and name.endswith(".json"):
      try:
        out.append(int(name[len("unit-"):-len(".json")]))
      except ValueError:
        pass
  return sorted(out)


def finished(work_dir: str, unit: Unit | RangeUnit) -> dict[str, Any] | None:
  """The unit's result if its files are complete and from the same input, else None."""
  try:
    with open(_marker_path(work_dir, unit.index)) as f:
      done = json.load(f)
  except (OSError, ValueError):
    return None
  if done.get("digest") != unit.digest():
    return None
  for split in SPLITS:
    n, size = done["examples"][split], done["bytes"][split]
    path = shard_path(work_dir, unit.index, split)
    if n and not (os.path.isfile(path) and os.path.getsize(path) == size):
      return None
  return done


def write_unit(unit: Unit | RangeUnit, work_dir: str) -> dict[str, Any]:
  """Writes a unit's shards (one per split that gets examples) and its marker.

  A `RangeUnit` is read from its file first (`RangeUnit.load`).

  Returns:
    {"index", "digest", "examples": {split: n}, "bytes": {split: file size}}.
  """
  digest = unit.digest()
  if isinstance(unit, RangeUnit):
    unit = unit.load()
  k, max_len = unit.cfg.k, unit.cfg.max_len
  encoder = _encoder(max_len, tokenizer.vocab_size(k) - 1)
  validation = unit.validation()
  writers: dict[str, Any] = {}
  counts = {split: 0 for split in SPLITS}
  try:
    for i, j, a, b in genome.batches(unit.lengths):
      rows, ntok = genome.pack_rows(unit.bases[a:b], unit.lengths[i:j], k, max_len)
      records = encoder.encode(rows, ntok)
      for r, rec in enumerate(records):
        split = genome.VALIDATION if validation[i + r] else genome.TRAIN
        w = writers.get(split)
        if w is None:
          w = writers[split] = array_record_module.ArrayRecordWriter(
              shard_path(work_dir, unit.index, split) + ".tmp", ARRAY_RECORD_OPTIONS)
        w.write(rec)
        counts[split] += 1
  finally:
    for w in writers.values():
      w.close()
  sizes = {}
  for split in SPLITS:
    path = shard_path(work_dir, unit.index, split)
    if counts[split]:
      os.replace(path + ".tmp", path)
      sizes[split] = os.path.getsize(path)
    else:
      sizes[split] = 0
  result = {"index": unit.index, "digest": digest, "examples": counts, "bytes": sizes}
  marker = _marker_path(work_dir, unit.index)
  with open(marker + ".tmp", "w") as f:
    json.dump(result, f)
  os.replace(marker + ".tmp", marker)  # Written last: the unit is finished.
  return result
