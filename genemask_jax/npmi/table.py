"""NPMI table files: the CSV and .npy files written, and the lookup arrays read from any table.

Ranks: every rank column of our CSV ranks within the k-mers only (1 = highest score); the
authors' ``*.rank`` columns rank within all 2..10-grams, their ``norm_pmi_rank_rel`` within
the 6-mers. In ours ``norm_pmi_rank_rel`` equals ``norm_dp_true_pmi_rank``;
``adv_pmi_rank_drop`` = dp rank - naive rank and ``norm_adv_pmi_rank_drop`` = norm rank - dp
rank, as in theirs. A k-mer without a score gets the worst rank, ``4^k + 5`` (the vocabulary
size), in every rank column and in the lookup.

Lookup (`NpmiLookup`, `load_lookup`): ``score`` float32 (4^k + 5,) and ``rank`` int32
(4^k + 5,), indexed by token id (`genemask_jax.tokenizer`: five specials, then the k-mers in
``itertools.product("ATCG")`` order). Specials, ``[UNK]`` and unscored k-mers have score
-inf and rank 4^k + 5, so they are never picked first. `write_table` writes the CSV and, next
to it, ``<stem>.rank.npy`` and ``<stem>.score.npy``; `load_lookup` reads either of those,
an ``.npz`` holding ``rank`` and ``score``, our CSV or the authors' CSV.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import tempfile
import zipfile

import numpy as np

from genemask_jax import tokenizer
from genemask_jax.npmi import checks
from genemask_jax.npmi import scoring
from genemask_jax.npmi.checks import NpmiError

CSV_COLUMNS = ("ngram", "naive.pmi", "true.pmi", "dp.true.pmi", "norm_dp_true_pmi",
               "ngram_size", "naive.pmi.rank", "dp.true.pmi.rank", "norm_dp_true_pmi_rank",
               "adv_pmi_rank_drop", "norm_adv_pmi_rank_drop", "norm_pmi_rank_rel")


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


def lookup_from_table(table: scoring.NpmiTable) -> NpmiLookup:
  """The lookup arrays of a computed table."""
  worst = checks.lookup_size(table.k)
  rank = np.full(worst, worst, np.int32)
  score = np.full(worst, -np.inf, np.float32)
  scored = ~np.isnan(table.npmi)
  rank[tokenizer.NUM_SPECIAL:] = scoring.rank_desc(table.npmi, worst)
  score[tokenizer.NUM_SPECIAL:][scored] = table.npmi[scored]
  return NpmiLookup(rank=rank, score=score)


def _fmt(v: float) -> str:
  return repr(float(v)) if not math.isnan(v) else "nan"


def lookup_paths(csv_path: str | os.PathLike) -> tuple[str, str]:
  """The (rank, score) .npy paths written next to a table CSV: <stem>.rank.npy, <stem>.score.npy."""
  stem = os.path.splitext(os.fspath(csv_path))[0]
  return stem + ".rank.npy", stem + ".score.npy"


def write_table(table: scoring.NpmiTable, path: str | os.PathLike) -> NpmiLookup:
  """Writes the CSV (authors' columns, best first) and the lookup .npy files next to it.

  Returns:
    The lookup written.
  """
  path = os.fspath(path)
  worst = checks.lookup_size(table.k)
  naive_rank = scoring.rank_desc(table.naive, worst)
  dp_rank = scoring.rank_desc(table.dp, worst)
  norm_rank = scoring.rank_desc(table.npmi, worst)
  order = np.lexsort((np.arange(norm_rank.shape[0]), norm_rank))
  ngrams = scoring.kmer_strings(table.k)
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
  if n != 4**k + tokenizer.NUM_SPECIAL or not checks.MIN_K <= k <= checks.MAX_K:
    raise NpmiError(f"{where}: length {n} is not 4^k + {tokenizer.NUM_SPECIAL} for a k in "
                    f"{checks.MIN_K}..{checks.MAX_K}")
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
          if not checks.MIN_K <= k <= checks.MAX_K:
            raise NpmiError(f"{path}:{lineno}: ngram {row[ci]!r} is not a k-mer with k in "
                            f"{checks.MIN_K}..{checks.MAX_K}")
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
  ngrams = scoring.kmer_strings(k).astype(str)
  absent = [g for g in ngrams if g not in rows]
  if absent:
    raise NpmiError(f"{path}: {len(absent)} of the {4**k} {k}-mers have no row (e.g. "
                    f"{', '.join(absent[:5])}); the table must list every {k}-mer once")
  worst = checks.lookup_size(k)
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
                min_scored_fraction: float = checks.DEFAULT_MIN_SCORED_FRACTION) -> NpmiLookup:
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
    checks.check_k(k)
  min_scored_fraction = checks.check_min_scored_fraction(min_scored_fraction)
  if not os.path.isfile(path):
    raise NpmiError(f"{path}: no such file (expected an NPMI table .csv, .npz or .rank.npy)")
  if path.endswith(".npz"):
    try:
      with np.load(path) as z:
        if "rank" not in z or "score" not in z:
          raise NpmiError(f"{path}: expected arrays 'rank' and 'score', found {sorted(z.files)}")
        lookup = _check_lookup(z["rank"], z["score"], path)
    except (OSError, ValueError, zipfile.BadZipFile) as e:  # A damaged .npz: BadZipFile.
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
  if k is not None and lookup.rank.shape[0] != checks.lookup_size(k):
    raise NpmiError(f"{path}: holds a {lookup.k}-mer table, expected k={k}")
  fix = "recompute it with a lower min_count or " + checks.FLOOR_FIX.split(" or ", 1)[1]
  checks.check_scored_fraction(scored_count(lookup), lookup.k, min_scored_fraction, path, fix)
  return lookup



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
