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
chunks their segments itself (few segments, whatever their length). A record that is
still being read (`fasta.iter_spans`'s progress spans: a chromosome) is planned as it is
read (`_LongRecord`): its ranges go to the workers as they are unpacked, and the chunks
that end within the part scanned so far go to the units at once (`cuts.SegmentCutter`), so
the workers write a chromosome's first units while the main process still unpacks the
rest. The chunks are exactly
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
_LONG_LAG = 2  # A long record's first-pass tasks in flight ahead of its planning.
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
  chunks = _firsts(cuts.record_chunks(cfg, name, segments)) if name is not None else None
  return letters, acgt, coords, segments, chunks


def _firsts(chunks: list[tuple[int, np.ndarray, np.ndarray]]
            ) -> list[tuple[int, int, np.ndarray]]:
  """`record_chunks`'s triples with each segment's chunk starts as the first one's."""
  return [(a, int(starts[0]), lengths) for a, starts, lengths in chunks]


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
  """Units of one file, from its spans (as they are read) and the workers' first pass.

  Records that come whole go in batches, a few batches ahead of the planning. A record
  long enough to come in installments (`fasta.iter_spans`'s progress spans) is planned as
  it is read (`_LongRecord`), once every record before it is planned.
  """
  inflight: collections.deque = collections.deque()
  batch: list[tuple[fasta.RecordSpan, list[tuple[int, int]]]] = []
  size = 0
  task_bytes = _BATCH_BYTES // 4  # A big record: several tasks, several workers.
  names: set[str] = set()
  long: _LongRecord | None = None  # The record being read in installments.

  def send_ranges(rs, last: bool):
    """Tasks of >= task_bytes for ranges rs: (futures, ranges in each); with `last` the
    remainder goes as one more task, else it waits for more."""
    futures, counts, task, n = [], [], [], 0
    for i, r in enumerate(rs):
      task.append(r)
      n += r[1] - r[0]
      if n >= task_bytes or (last and i == len(rs) - 1):
        futures.append(submit(shards.scan_ranges, read, path, task))
        counts.append(len(task))
        task, n = [], 0
    return futures, counts

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

    for span, rs in batch:
      n = sum(e - s for s, e in rs)
      if n <= task_bytes:
        whole.append((_base_name(span), rs))
        whole_size += n
        if whole_size >= task_bytes:
          send_whole()
        continue
      if whole:
        send_whole()
      jobs.append(("ranges", send_ranges(rs, last=True)[0], 0))
    if whole:
      send_whole()
    inflight.append((batch, jobs))

  for span in spans:
    rs = _ranges(span.parts)
    if not span.complete or long is not None:  # A long record: planned as it is read.
      if long is None:  # Units keep corpus order: every record before it goes first.
        if batch:
          send()
          batch, size = [], 0
        while inflight:
          yield from _plan_batch(*inflight.popleft(), cfg, stats, plan, names, read, path,
                                 source)
        long = _LongRecord(span, cfg, names, stats, plan, read, path, source)
      # Its last range may still grow until the record is complete.
      new = rs[len(long.ranges):] if span.complete else rs[len(long.ranges):-1]
      futures, counts = send_ranges(new, last=span.complete)
      long.add(futures, counts, new[:sum(counts)])
      if span.complete:
        yield from long.plan(keep=0)
        long.finish()
        long = None
      else:
        yield from long.plan(keep=_LONG_LAG)
      continue
    batch.append((span, rs))
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


class _LongRecord:
  """A record planned while it is read: its ranges' first-pass results, taken in order,
  close its segments and grow the open one, and each segment's chunks go to the units as
  soon as they are certain (`cuts.SegmentCutter`). What is planned depends on the bytes read
  and the tasks sent, never on how fast the workers are, so the units are the same for
  any number of workers."""

  def __init__(self, span: fasta.RecordSpan, cfg: genome.ChunkConfig, names: set[str],
               stats: genome.ChunkStats, plan: _UnitPlan, read: str, path: str, source: str):
    name = _base_name(span)
    # Every record before this one is planned, so `names` holds theirs.
    self.name = f"{name}#{span.index}" if name in names else name
    self.name_hash = genome._name_hash(self.name)  # pylint: disable=protected-access
    self.cfg, self.names, self.stats, self.units = cfg, names, stats, plan
    self.where = (read, path, source)
    self.tasks: collections.deque = collections.deque()  # (future, ranges in it)
    self.ranges: list[tuple[int, int]] = []  # Sent to the first pass, in order.
    self.coords = [0]  # Each planned range's first letter's coordinate, then their end.
    self.letters = self.acgt = self.chunk_index = 0
    self.open: tuple[int, int, cuts.SegmentCutter] | None = None  # Segment [a, b) that may grow.
    if cfg.join_across_n:  # One segment: the record's A/C/G/T letters.
      self.open = (0, 0, cuts.SegmentCutter(cfg, self.name_hash, 0))

  def add(self, futures, counts, ranges) -> None:
    self.tasks.extend(zip(futures, counts))
    self.ranges.extend(ranges)

  def plan(self, keep: int) -> Iterator[shards.RangeUnit]:
    """Takes the results of all but the newest `keep` tasks sent; yields full units."""
    while len(self.tasks) > keep:
      fut, _ = self.tasks.popleft()
      for letters, acgt, runs in fut.result():
        yield from self._range(letters, acgt, runs)
      if self.open is not None:
        a, b, cutter = self.open
        if not self.cfg.join_across_n and b < self.coords[-1]:  # Ended in this range.
          self.open = None
          yield from self._give(a, *cutter.finish(b - a))
        else:
          yield from self._give(a, *cutter.advance(b - a))
    if not self.tasks and not keep and self.open is not None:  # The record's end.
      a, b, cutter = self.open
      self.open = None
      yield from self._give(a, *cutter.finish(b - a))

  def finish(self) -> None:
    if self.letters:  # A record without sequence is skipped, as the reader skips it.
      self.names.add(self.name)
      self.stats.letters += self.letters
      self.stats.acgt += self.acgt

  def _range(self, letters: int, acgt: int, runs: np.ndarray) -> Iterator[shards.RangeUnit]:
    off = self.coords[-1]
    self.letters += letters
    self.acgt += acgt
    if self.cfg.join_across_n:
      self.coords.append(off + acgt)
      a, _, cutter = self.open
      self.open = (a, off + acgt, cutter)
      return
    self.coords.append(off + letters)
    for a, b in runs.tolist():
      a, b = a + off, b + off
      if self.open is not None and self.open[1] == a:  # A run that goes on from before.
        self.open = (self.open[0], b, self.open[2])
        continue
      if self.open is not None:
        s, e, cutter = self.open
        yield from self._give(s, *cutter.finish(e - s))
      self.open = (a, b, cuts.SegmentCutter(self.cfg, self.name_hash, a))

  def _give(self, a: int, first: int, lengths: np.ndarray) -> Iterator[shards.RangeUnit]:
    """Chunks of the segment at `a` (consecutive from `first`) into the units."""
    n = int(lengths.shape[0])
    if not n:
      return
    self.stats.chunks += n
    self.stats.kept += int(lengths.sum())
    done = len(self.coords) - 1  # Ranges planned; the chunks end within them.
    yield from self.units.add(self.name, self.chunk_index, a + first, lengths,
                             np.array(self.coords, np.int64), self.ranges[:done], *self.where)
    self.chunk_index += n


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
      chunks = _firsts(cuts.record_chunks(cfg, name, segments))
    chunk_index = 0
    for a, first, lengths in chunks:
      n = int(lengths.shape[0])
      stats.chunks += n
      yield from plan.add(name, chunk_index, a + first, lengths, coords, rs, read, path,
                          source)
      chunk_index += n
    stats.kept += sum(int(lengths.sum()) for _, _, lengths in chunks)
