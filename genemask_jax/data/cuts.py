"""Chunks of a genome segment from its place and length alone, without its bases.

The chunks `genome` cuts from a run of A/C/G/T (its `_Segmenter`: a seeded generator of
chunk lengths, a random offset, a short first chunk dropped, the tail kept or not) depend
only on the record's name, the run's start and its length. The parallel build (`plan`)
uses that to plan work units from the first pass's runs, and to plan a chromosome while
it is still being read (`SegmentCutter.advance`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from genemask_jax.data import genome


class SegmentCutter:
  """Cuts one segment into its seeded chunks from its place and length, as it grows.

  Exactly the chunks `genome` cuts from the same segment (its `_Segmenter`: the same
  seeded generator, draws and rules), computed without the bases. A chunk that ends
  within the part of the segment known so far is the same whatever the segment's final
  length (the lengths come from one seeded stream, however many are drawn at a time:
  `genome.draw_chunk_lengths`); only the tail waits for the end. So a segment still being
  read gives its chunks in installments (`advance`), then the rest (`finish`).
  """

  def __init__(self, cfg: genome.ChunkConfig, name_hash: int, position: int):
    self.cfg = cfg
    self.rng = np.random.default_rng([cfg.seed & 0xFFFFFFFF, name_hash, position])
    offset = int(self.rng.integers(0, cfg.max_offset))
    lengths = genome.draw_chunk_lengths(self.rng, genome._FIRST_DRAW, cfg)  # pylint: disable=protected-access
    ends = np.cumsum(lengths) - offset
    while ends[-1] <= 0:
      lengths = np.concatenate([lengths, genome.draw_chunk_lengths(self.rng, lengths.shape[0],
                                                                   cfg)])
      ends = np.cumsum(lengths) - offset
    first = int(np.searchsorted(ends, 0, side="right"))
    self.pending = lengths[first:].copy()  # Drawn, not yet given; the first starts at `at`.
    self.pending[0] = ends[first]
    self.at = 0
    self.drop_first = bool(self.pending[0] < cfg.min_chunk_bp)  # Once it is complete.

  def advance(self, known: int) -> tuple[int, np.ndarray]:
    """The chunks not given yet that end by `known` bp: (first one's start, lengths)."""
    have = self.at + int(self.pending.sum())
    parts = [self.pending]
    while have <= known:
      more = genome.draw_chunk_lengths(self.rng, (known - have) // 256 + 64, self.cfg)
      parts.append(more)
      have += int(more.sum())
    if len(parts) > 1:
      self.pending = np.concatenate(parts)
    ends = self.at + np.cumsum(self.pending)
    m = int(np.searchsorted(ends, known, side="right"))  # Chunks that end by `known`.
    start, out = self.at, self.pending[:m]
    if m:
      if self.drop_first:  # Shorter than min_chunk_bp: never kept.
        start, out = int(ends[0]), out[1:]
        self.drop_first = False
      self.at, self.pending = int(ends[m - 1]), self.pending[m:]
    return start, out.astype(np.int64)

  def finish(self, n: int) -> tuple[int, np.ndarray]:
    """The rest of an n-bp segment: chunks not given yet, and the tail if it is kept."""
    start, out = self.advance(n)
    tail = n - self.at
    if self.cfg.keep_tail and tail >= self.cfg.min_chunk_bp:
      start = start if out.shape[0] else self.at
      out = np.append(out, np.int64(tail))
    return start, out


def segment_chunks(cfg: genome.ChunkConfig, name_hash: int, position: int, n: int
                   ) -> tuple[np.ndarray, np.ndarray]:
  """The kept chunks of an n-bp segment that starts at `position` of its record.

  `SegmentCutter`'s, at once. Returns int64 (starts from the segment's start, lengths).
  """
  start, lengths = SegmentCutter(cfg, name_hash, position).finish(n)
  return start + np.cumsum(lengths) - lengths, lengths


def record_segments(got: Sequence[tuple[int, int, np.ndarray]], join: bool
                    ) -> tuple[np.ndarray, list[tuple[int, int]]]:
  """A record's range coordinates and segments from its ranges' first-pass results.

  got: per range (letters, A/C/G/T letters, runs) as `shards.scan_ranges` gives them.
  Returns the coordinate of each range's first letter then the record's end (in A/C/G/T
  letters with `join`), and the segments [a, b): the runs of A/C/G/T, joined where a run
  goes on in the next range (with `join`: the whole record).
  """
  coords = np.concatenate([[0], np.cumsum([g[1] if join else g[0] for g in got])]
                          ).astype(np.int64)
  if join:
    return coords, [(0, int(coords[-1]))]
  segments: list[tuple[int, int]] = []
  for g, off in zip(got, coords[:-1].tolist()):
    for a, b in g[2].tolist():
      a, b = a + off, b + off
      if segments and segments[-1][1] == a:  # A run that goes on in the next range.
        segments[-1] = (segments[-1][0], b)
      else:
        segments.append((a, b))
  return coords, segments


def record_chunks(cfg: genome.ChunkConfig, name: str, segments: Sequence[tuple[int, int]]
                  ) -> list[tuple[int, np.ndarray, np.ndarray]]:
  """(segment start, chunk starts, chunk lengths) of each segment that keeps a chunk."""
  name_hash = genome._name_hash(name)  # pylint: disable=protected-access
  out = []
  for a, b in segments:
    starts, lengths = segment_chunks(cfg, name_hash, a, b - a)
    if lengths.shape[0]:
      out.append((a, starts, lengths))
  return out
