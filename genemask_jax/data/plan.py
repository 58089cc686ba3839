"""Plans the genome corpus build: work units of chunks, from the files' structure and a
first pass that runs in the workers.

`plan_units` is what the main process of a build does (`genome_tfds`): it reads each file
once for its structure (`fasta.iter_spans`: headers and comment lines; a gzip file is
unpacked on the way) and sends the records, a batch at a time, to the workers for their
first pass. Records of up to ``_BATCH_BYTES // 4`` bytes go whole, several to a task
(`scan_records`): the worker checks and counts their letters, finds their runs of A/C/G/T,
turns the runs into segments and each segment into its seeded chunks (`cuts`),
so the main process of a genome of many short records (GRCh37's chr22 file here has 9,627)
only groups the chunks into units. Longer records are cut into tasks of byte ranges
(`shards.scan_ranges`), and the main process joins their runs across the ranges and
chunks their segments itself (few segments, whatever their length); their first ranges go
to the workers while the rest of the record is still being read (`fasta.iter_spans`'s
progress spans), so a chromosome is scanned as it is unpacked. The chunks are exactly
`genome.iter_cuts`'s, and the units depend on the input and the unit size only, never on
the number of workers.

This module imports neither TensorFlow Datasets nor JAX: a spawned worker that runs
`scan_records` starts fast.
"""

from __future__ import annotations

import collections
import os
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from genemask_jax.data import cuts
from genemask_jax.data import fasta
from genemask_jax.data import genome
from genemask_jax.data import shards

_RANGE_BYTES = 1 << 18  # Bytes of FASTA per range of the first pass.
_BATCH_BYTES = 8 << 20  # FASTA bytes per batch of records sent to the first pass.
_AHEAD = 4  # First-pass batches in flight ahead of the planning.
_READ_BYTES = 1 << 20  # Bytes the structure pass reads at a time.

# What the first pass gives per record: letters, A/C/G/T letters, the coordinate of each
# range's first letter then the record's end (int64 (q + 1,)), its segments [a, b), and
# the chunks of each segment that keeps any, (segment start, the first chunk's start in
# the segment, lengths: the chunks are consecutive), or None where the main process cuts
# them.
RecordScan = tuple[int, int, np.ndarray, list[tuple[int, int]],
                   "list[tuple[int, int, np.ndarray]] | None"]


def scan_records(path: str, display: str, records: Sequence[tuple[str, list[tuple[int, int]]]],
                 cfg: genome.ChunkConfig) -> tuple[np.ndarray, ...]:
  """The first pass over whole records, chunks included (in a worker).

  records: (name, byte ranges) of each record; the name seeds the chunks (the main process
  cuts them again in the rare case that it renames a duplicate). Bad bytes raise
  `fasta.FastaError` naming the file and line. Returns the records' `RecordScan`s packed
  into five flat arrays (`unpack_scans` restores them). A result goes back through a pipe
  of 64 KiB that the main process's executor thread drains between the main process's
  own unit writes, so its size sets how long the worker waits before its next task:
  packed, a task of ~2 MB of short records gives 28-35 KB, against ~210 KB as a list of
  ~1,000 tuples of small arrays, which kept the worker idle 20-40 ms after each such task
  of GRCh37's chr22 file, about as long as the task itself (measured on the 2-core dev
  machine).
  """
  got = shards.scan_ranges(path, display, [r for _, rs in records for r in rs])
  out: list[RecordScan] = []
  i = 0
  for name, rs in records:
    mine, i = got[i:i + len(rs)], i + len(rs)
    out.append(_record_scan(mine, name, cfg))
  return pack_scans(out)


def pack_scans(scans: Sequence[RecordScan]) -> tuple[np.ndarray, ...]:
  """Record scans of whole records (chunks cut) as five flat arrays, for the trip back.

  (head (r, 5): letters, A/C/G/T letters, coordinates, segments and chunked segments per
  record; coordinates; segments (s, 2); chunked segments (c, 3): segment start, first
  chunk's start, chunks; chunk lengths. Each in the smallest unsigned dtype that holds it:
  all are counts or places in a record.)
  """
  head = np.zeros((len(scans), 5), np.int64)
  coords, segments, kept, lengths = [], [], [], []
  for i, (letters, acgt, c, segs, chunks) in enumerate(scans):
    chunks = chunks or ()
    head[i] = letters, acgt, c.shape[0], len(segs), len(chunks)
    coords.append(c)
    segments.extend(segs)
    for a, first, ls in chunks:
      kept.append((a, first, ls.shape[0]))
      lengths.append(ls)
  return tuple(_small(np.asarray(x, np.int64)) for x in (
      head, np.concatenate(coords) if coords else (), np.reshape(segments, (-1, 2)),
      np.reshape(kept, (-1, 3)), np.concatenate(lengths) if lengths else ()))


def _small(a: np.ndarray) -> np.ndarray:
  """A non-negative int64 array in the smallest unsigned dtype that holds it."""
  return a.astype(np.min_scalar_type(int(a.max()) if a.size else 0))


def unpack_scans(packed: tuple[np.ndarray, ...]) -> list[RecordScan]:
  """`pack_scans`'s records back (arrays int64)."""
  head, coords, segments, kept, lengths = packed
  coords, lengths = coords.astype(np.int64), lengths.astype(np.int64)
  seg_list, kept_list = segments.tolist(), kept.tolist()
  c0 = s0 = k0 = n0 = 0  # Where the record's coordinates, segments, ... start.
  out: list[RecordScan] = []
  for letters, acgt, nc, ns, nk in head.tolist():
    chunks = []
    for a, first, n in kept_list[k0:k0 + nk]:
      chunks.append((a, first, lengths[n0:n0 + n]))
      n0 += n
    out.append((letters, acgt, coords[c0:c0 + nc], [tuple(x) for x in seg_list[s0:s0 + ns]],
                chunks))
    c0, s0, k0 = c0 + nc, s0 + ns, k0 + nk
  return out


def _record_scan(got, name: str | None, cfg: genome.ChunkConfig) -> RecordScan:
  letters = sum(g[0] for g in got)
  acgt = sum(g[1] for g in got)
  if not letters:
    return 0, 0, np.zeros(1, np.int64), [], None
  coords, segments = cuts.record_segments(got, cfg.join_across_n)
  chunks = cuts.record_chunks(cfg, name, segments) if name is not None else None
  return letters, acgt, coords, segments, chunks


class _UnitPlan:
  """Collects runs of chunks into `shards.RangeUnit`s of at least `bp` bases."""

  def __init__(self, cfg: genome.ChunkConfig, bp: int):
    self.cfg, self.bp, self.index = cfg, bp, 0
    self._reset()

  def _reset(self):
    self.names, self.first, self.starts, self.spans, self.lengths = [], [], [], [], []
    self.size = 0

  def flush(self, path: str, display: str, source: str) -> shards.RangeUnit | None:
    if not self.names:
      return None
    unit = shards.RangeUnit(
        self.index, path, display, source, self.names, np.array(self.first, np.int64),
        np.array([x.shape[0] for x in self.lengths], np.int64),
        np.array(self.starts, np.int64), self.spans, np.concatenate(self.lengths), self.cfg)
    self.index += 1
    self._reset()
    return unit

  def add(self, name: str, first: int, start: int, lengths: np.ndarray,
          coords: np.ndarray, ranges: list[tuple[int, int]], path: str, display: str,
          source: str) -> Iterator[shards.RangeUnit]:
    """Adds consecutive chunks of one segment (first at `start`); yields full units.

    coords: int64 (q + 1,) the coordinate of each of the record's ranges' first letter,
    then the record's end; ranges: their byte ranges.
    """
    total = int(lengths.sum())
    if len(ranges) == 1 and self.size + total < self.bp:  # A short record's segment.
      self.names.append(name)
      self.first.append(first)
      self.starts.append(start)
      self.spans.append([(int(ranges[0][0]), int(ranges[0][1]), 0)])
      self.lengths.append(lengths)
      self.size += total
      return
    cum = np.cumsum(lengths)
    done = 0
    while done < lengths.shape[0]:
      base = int(cum[done - 1]) if done else 0
      take = int(np.searchsorted(cum[done:] - base, self.bp - self.size, side="left")) + 1
      take = min(take, lengths.shape[0] - done)
      a = start + base
      b = start + int(cum[done + take - 1])
      i = int(np.searchsorted(coords, a, side="right")) - 1
      j = int(np.searchsorted(coords, b, side="left"))
      self.names.append(name)
      self.first.append(first + done)
      self.starts.append(a)
      self.spans.append([(int(ranges[q][0]), int(ranges[q][1]), int(coords[q]))
                         for q in range(max(i, 0), max(j, i + 1))])
      self.lengths.append(lengths[done:done + take])
      self.size += b - a
      done += take
      if self.size >= self.bp:
        yield self.flush(path, display, source)


class Done:
  """A finished future, for running the first pass in the main process (1 worker)."""

  def __init__(self, value):
    self._value = value

  def result(self):
    return self._value


def run_now(fn, *args) -> Done:
  return Done(fn(*args))


def plan_units(paths: Sequence[str], cfg: genome.ChunkConfig, bp: int,
               stats: genome.ChunkStats, work_dir: str,
               submit: Callable[..., Any] = run_now) -> Iterator[shards.RangeUnit]:
  """The corpus as `shards.RangeUnit`s, planned from a structure pass and a parallel scan.

  The main process reads each file once for its structure (`fasta.iter_spans`: headers
  and comment lines; a gzip file is unpacked into work_dir on the way, since a gzip
  stream cannot be read from the middle: the copy costs the uncompressed size on disk
  until the build completes, and a resumed build reuses a complete one). Batches of
  records go to `submit` (the workers' `pool.submit`) for the first pass, a few batches
  ahead: short records whole (`scan_records`: letters checked and counted, runs of
  A/C/G/T, segments and their seeded chunks), long ones as byte ranges
  (`shards.scan_ranges`), whose segments the main process chunks itself
  (`cuts.segment_chunks`, no bases touched). The main process groups the chunks into units
  while the workers write the units already planned; workers then read each unit's bases
  themselves. The chunks are exactly `genome.iter_cuts`'s; each unit holds one file's
  chunks.
  """
  plan = _UnitPlan(cfg, bp)
  for file_index, path in enumerate(paths):
    st = os.stat(path)
    source = f"{st.st_size}-{st.st_mtime_ns}"
    with open(path, "rb") as f:
      gz = f.read(2) == b"\x1f\x8b"
    read, copy_to = path, None
    if gz:
      read = os.path.join(work_dir, f"input-{file_index}-{source}.fa")
      if not os.path.isfile(read + ".done"):  # Else a complete copy from a killed build.
        copy_to = read
    # A gzip file is read (and unpacked) unless a complete copy exists; a plain one, as is.
    spans = fasta.iter_spans(read if gz and not copy_to else path, copy_to=copy_to,
                             read_size=_READ_BYTES, progress_bytes=_BATCH_BYTES // 2)
    yield from _plan_file(spans, read, path, source, cfg, stats, plan, submit)
    if copy_to:
      open(read + ".done", "w").close()
    unit = plan.flush(read, path, source)  # Units never span files.
    if unit is not None:
      yield unit


def _base_name(span: fasta.RecordSpan) -> str:
  words = span.name.split()
  return words[0] if words else f"record{span.index}"


def _ranges(parts: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
  """A record's byte ranges for the first pass: each part cut every `_RANGE_BYTES`."""
  return [(a, min(a + _RANGE_BYTES, e)) for s, e in parts for a in range(s, e, _RANGE_BYTES)]


def _plan_file(spans, read, path, source, cfg, stats, plan, submit):
  """Units of one file, from its spans (as they are read) and the workers' first pass."""
  inflight: collections.deque = collections.deque()
  # (span, its ranges, (the futures and number of ranges sent while it was read)).
  batch: list[tuple[fasta.RecordSpan, list[tuple[int, int]], tuple[list[Any], int]]] = []
  size = 0
  task_bytes = _BATCH_BYTES // 4  # A big record: several tasks, several workers.
  # The record being read: its first pass tasks sent so far, and how many ranges they hold.
  early: list[Any] = []
  early_ranges = 0

  def send_ranges(rs, last: bool):
    """Tasks of >= task_bytes for ranges rs; returns (futures, ranges not sent), and with
    `last` the remainder goes as one more task."""
    futures, task, n = [], [], 0
    for r in rs:
      task.append(r)
      n += r[1] - r[0]
      if n >= task_bytes:
        futures.append(submit(shards.scan_ranges, read, path, task))
        task, n = [], 0
    if last and task:
      futures.append(submit(shards.scan_ranges, read, path, task))
      task = []
    return futures, task

  def send():
    # jobs[i]: how record i of the batch comes back: ("whole", future, place in its
    # result) or ("ranges", [futures], 0).
    jobs: list[tuple[str, Any, int]] = []
    whole: list[tuple[str, list[tuple[int, int]]]] = []
    whole_size = 0

    def send_whole():
      nonlocal whole, whole_size
      fut = submit(scan_records, read, path, whole, cfg)
      jobs.extend(("whole", fut, i) for i in range(len(whole)))
      whole, whole_size = [], 0

    for span, rs, sent in batch:
      n = sum(e - s for s, e in rs)
      if n <= task_bytes and not sent[0]:
        whole.append((_base_name(span), rs))
        whole_size += n
        if whole_size >= task_bytes:
          send_whole()
        continue
      if whole:
        send_whole()
      futures, _ = send_ranges(rs[sent[1]:], last=True)
      jobs.append(("ranges", sent[0] + futures, 0))
    if whole:
      send_whole()
    inflight.append(([(span, rs) for span, rs, _ in batch], jobs))

  names: set[str] = set()
  for span in spans:
    rs = _ranges(span.parts)
    if not span.complete:  # A long record, still being read: start on its first ranges.
      futures, rest = send_ranges(rs[early_ranges:-1], last=False)  # The last may grow.
      early.extend(futures)
      early_ranges = len(rs) - 1 - len(rest)
      continue
    batch.append((span, rs, (early, early_ranges)))
    early, early_ranges = [], 0
    size += sum(e - s for s, e in span.parts)
    if size >= _BATCH_BYTES:
      send()
      batch, size = [], 0
    while len(inflight) > _AHEAD:
      yield from _plan_batch(*inflight.popleft(), cfg, stats, plan, names, read, path, source)
  if batch:
    send()
  while inflight:
    yield from _plan_batch(*inflight.popleft(), cfg, stats, plan, names, read, path, source)


def _plan_batch(batch, jobs, cfg, stats, plan, names, read, path, source):
  """Units from the first pass's results for a batch of records."""
  unpacked: dict[Any, list[RecordScan]] = {}  # Per `scan_records` task of the batch.
  for (span, rs), (kind, fut, place) in zip(batch, jobs):
    if kind == "whole":
      if fut not in unpacked:
        unpacked[fut] = unpack_scans(fut.result())
      letters, acgt, coords, segments, chunks = unpacked[fut][place]
    else:
      letters, acgt, coords, segments, chunks = _record_scan(
          [r for f in fut for r in f.result()], None, cfg)
    if not letters:
      continue  # No sequence: the sequential reader never sees this record either.
    stats.letters += letters
    stats.acgt += acgt
    name = _base_name(span)
    if name in names:
      name = f"{name}#{span.index}"
      chunks = None  # Seeded by the new name: cut again.
    names.add(name)
    if chunks is None:
      chunks = cuts.record_chunks(cfg, name, segments)
    chunk_index = 0
    for a, first, lengths in chunks:
      n = int(lengths.shape[0])
      stats.chunks += n
      yield from plan.add(name, chunk_index, a + first, lengths, coords, rs, read, path,
                          source)
      chunk_index += n
    stats.kept += sum(int(lengths.sum()) for _, _, lengths in chunks)
