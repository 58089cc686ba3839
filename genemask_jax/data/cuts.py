"""Chunks of a genome segment from its place and length alone, without its bases.

The chunks `genome` cuts from a run of A/C/G/T (its `_Segmenter`: a seeded generator of
chunk lengths, a random offset, a short first chunk dropped, the tail kept or not) depend
only on the record's name, the run's start and its length. The parallel build (`plan`)
uses that to plan work units from the first pass's runs, without the bases.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from genemask_jax.data import genome


def segment_chunks(cfg: genome.ChunkConfig, name_hash: int, position: int, n: int
                   ) -> tuple[np.ndarray, np.ndarray]:
  """The kept chunks of an n-bp segment that starts at `position` of its record.

  Exactly the chunks `genome` cuts from the same segment (its `_Segmenter`: the same
  seeded generator, draws and rules), computed from the segment's place and length alone,
  without its bases. Returns int64 (starts from the segment's start, lengths).
  """
  rng = np.random.default_rng([cfg.seed & 0xFFFFFFFF, name_hash, position])
  offset = int(rng.integers(0, cfg.max_offset))
  lengths = genome.draw_chunk_lengths(rng, genome._FIRST_DRAW, cfg)  # pylint: disable=protected-access
  ends = np.cumsum(lengths) - offset
  while ends[-1] <= 0:
    lengths = np.concatenate([lengths, genome.draw_chunk_lengths(rng, lengths.shape[0], cfg)])
    ends = np.cumsum(lengths) - offset
  first = int(np.searchsorted(ends, 0, side="right"))
  lengths = lengths[first:].copy()
  lengths[0] = ends[first]
  drop_first = lengths[0] < cfg.min_chunk_bp
  parts, have = [lengths], int(lengths.sum())
  while have <= n:  # How many are drawn at a time does not change the lengths.
    more = genome.draw_chunk_lengths(rng, (n - have) // 256 + 64, cfg)
    parts.append(more)
    have += int(more.sum())
  lengths = np.concatenate(parts)
  ends = np.cumsum(lengths)
  m = int(np.searchsorted(ends, n, side="right"))  # Chunks that end inside the segment.
  lo = 1 if drop_first and m else 0
  starts, lengths = (ends - lengths)[lo:m], lengths[lo:m]
  tail = n - (int(ends[m - 1]) if m else 0)
  if cfg.keep_tail and tail >= cfg.min_chunk_bp:
    starts = np.append(starts, n - tail)
    lengths = np.append(lengths, tail)
  return starts.astype(np.int64), lengths.astype(np.int64)


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
                  ) -> list[tuple[int, int, np.ndarray]]:
  """(segment start, first chunk's start in it, chunk lengths) of each segment that keeps a
  chunk; a segment's chunks are consecutive, so the lengths place the rest."""
  name_hash = genome._name_hash(name)  # pylint: disable=protected-access
  out = []
  for a, b in segments:
    starts, lengths = segment_chunks(cfg, name_hash, a, b - a)
    if lengths.shape[0]:
      out.append((a, int(starts[0]), lengths))
  return out
