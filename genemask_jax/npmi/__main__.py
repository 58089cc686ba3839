r"""The NPMI command: counts a genome, scores it, writes the table, prints the extremes.

Command (counts, scores, writes the CSV and the two .npy files, prints the top/bottom 10)::

    python -m genemask_jax.npmi \
        --fasta=$GENEMASK_DATA_DIR/genome/GRCh37_chrX_1-70M.fa.gz,$GENEMASK_DATA_DIR/genome/GRCh37_chr22_blocks.fa.gz \
        --output=/tmp/npmi/table.csv

Bad flags (k, --min_count < 1, an --output that is a directory or not writable) fail before
the count, and too few scored k-mers before anything is written: one line on stderr, exit 2.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Sequence

from absl import app
from absl import flags
import numpy as np

from genemask_jax import errors
from genemask_jax.npmi import checks
from genemask_jax.npmi import counting
from genemask_jax.npmi import scoring
from genemask_jax.npmi import table as table_lib
from genemask_jax.npmi.checks import NpmiError


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
  k = checks.check_k(f.k)
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
  table_lib.check_output_path(f.output)
  t0 = time.perf_counter()
  counts = counting.count_fasta(paths, k, block_size=f.block_size, progress=progress)
  progress(len(paths) - 1, len(paths), counts.letters, 0, force=True)
  t_count = time.perf_counter() - t0
  sys.stderr.write("\n")
  progress.started = False
  if f.both_strands:
    counts = counting.both_strands(counts)
  source = (f"{', '.join(paths)}: {counts.letters:,} letters, {counts.total(1):,} of them "
            f"A/C/G/T{', both strands' if f.both_strands else ''}")
  fix = ((f"lower --min_count (now {min_count}) or " if min_count > 1 else "") +
         "count a larger genome; to pretrain without a table of your own, use the authors' "
         "table: --config=configs/pretrain.py:authors_npmi")
  table = scoring.score_counts(counts, log_z=f.log_z, min_count=min_count,
                       true_splits=f.true_splits, segmentation=f.segmentation,
                       min_scored_fraction=f.min_scored_fraction, source=source, fix=fix)
  table_lib.write_table(table, f.output)
  rank_path, score_path = table_lib.lookup_paths(f.output)
  t_all = time.perf_counter() - t0
  print(f"counted {counts.letters / 1e6:.1f} Mbp ({counts.total(1) / 1e6:.1f} Mbp ACGT, "
        f"{counts.total(k):,} {k}-mer windows{', both strands' if f.both_strands else ''}) in "
        f"{t_count:.2f} s = {counts.letters / 1e6 / t_count:.1f} Mbp/s; ln Z = {table.log_z:.4f}")
  print(f"wrote {f.output}, {rank_path}, {score_path} ({t_all:.2f} s in all)")
  print(format_extremes(table, 10))


def format_extremes(table: scoring.NpmiTable, n: int = 10) -> str:
  """Text listing the n best and n worst scored k-mers with their scores and counts."""
  ngrams = scoring.kmer_strings(table.k).astype(str)
  rank = scoring.rank_desc(table.npmi, checks.lookup_size(table.k))
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
  flags.DEFINE_integer("min_count", checks.DEFAULT_MIN_COUNT,
                       "k-mers seen fewer times get no NPMI.")
  flags.DEFINE_float("min_scored_fraction", checks.DEFAULT_MIN_SCORED_FRACTION,
                     "Refuse to write a table that scores fewer than this share of the 4^k "
                     "k-mers (GeneMask would mask near-random spans); 0 = write any table.")
  flags.DEFINE_float("log_z", None, "ln Z, the normaliser of every n-gram probability; default "
                     f"ln(2 x number of k-mer windows). The authors' fit: {scoring.AUTHORS_LOG_Z}.")
  flags.DEFINE_bool("both_strands", False, "Also count the reverse-complement strand.")
  flags.DEFINE_enum("true_splits", "authors", list(scoring.TRUE_SPLITS), "true.pmi binary splits: "
                    "'authors' = i in 1..k-2 (their off-by-one), 'all' = i in 1..k-1.")
  flags.DEFINE_enum("segmentation", "genemask", list(scoring.SEGMENTATIONS), "dp.true.pmi (and the "
                    "NPMI): 'genemask' = pieces of length 1 or 2; 'levine' = any pieces "
                    "(PMI-Masking, Levine et al. 2021).")
  flags.DEFINE_integer("block_size", 1 << 22, "Letters per block while counting (memory bound).")


if __name__ == "__main__":
  _define_flags()
  app.run(_main)
