"""Database side of the motif analysis: top-NPMI 6-mers against JASPAR with Tomtom.

* JASPAR: the SQLite releases that `pyjaspar` ships (JASPAR2014..JASPAR2026), read
  directly with `sqlite3` (one query for the matrices instead of pyjaspar's five per
  motif); `load_jaspar` keeps the latest version of each matrix in a collection and,
  optionally, a taxonomic group. Nothing is fetched over the network.
* Matching: every 6-mer (a one-hot 4 x 6 matrix) is compared with every selected JASPAR
  matrix (counts normalised to probabilities) by `memelite.tomtom` (Tomtom's complete
  score, both strands). Each query's p-values against all targets get Benjamini-Hochberg
  q-values, per query (our choice, so that a 6-mer's q-value does not depend on which other
  6-mers are analysed and the background draws can reuse it). A 6-mer "matches" when its best target has
  q <= ``q_threshold`` (0.05).
* Background: all 4^6 6-mers are matched once (about 1-3 s warm), so a background draw is
  only indexing. A draw takes, for each GC count 0..6, as many 6-mers as the top-K hold from
  the scored 6-mers outside the top-K with that GC count (without replacement): every draw
  has the top-K's GC-count distribution exactly. The share of matched 6-mers in the top-K
  is compared with the draws' shares (one-sided permutation p-value, (1 + #draws with a
  share >= the top's) / (1 + draws)) and, without GC matching, with the rest of the table by
  Fisher's exact test (one-sided, greater).
* Assembled motifs (second view): the top-K 6-mers that overlap by 5 letters are chained
  into the unitigs of their de Bruijn graph (maximal non-branching paths, cycles included);
  each unitig of two or more 6-mers is a longer motif and is matched the same way. A unitig
  whose reverse complement was already kept is dropped.

The first Tomtom call in a fresh environment compiles memelite's numba kernels (95 s on
the idle 2-core dev machine, 513 s at load average 15); numba caches them, and later
processes load them in seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import warnings

import numpy as np

from genemask_jax.motifs import table as table_lib
from genemask_jax.motifs.table import MotifsError

DEFAULT_RELEASE = "JASPAR2024"
DEFAULT_COLLECTION = "CORE"
DEFAULT_TAX_GROUP = "vertebrates"
MIN_TARGETS = 25  # Tomtom's p-values take the target columns as background; memelite warns below.
_LETTERS = "ACGT"  # Row order of every matrix here (JASPAR's and memelite's).
_QUERY_CHUNK = 1024


@dataclasses.dataclass(frozen=True)
class JasparMotif:
  """One JASPAR matrix.

  Attributes:
    matrix_id: e.g. ``MA0139.2``.
    name: the transcription factor's name, e.g. ``CTCF``.
    counts: float64 (4, L), rows A, C, G, T.
  """
  matrix_id: str
  name: str
  counts: np.ndarray

  @property
  def probabilities(self) -> np.ndarray:
    """float64 (4, L): each column's counts divided by their sum."""
    total = self.counts.sum(axis=0, keepdims=True)
    return self.counts / np.where(total > 0, total, 1.0)

  @property
  def consensus(self) -> str:
    return "".join(_LETTERS[i] for i in self.counts.argmax(axis=0))


# ------------------------------------------------------------------------------ JASPAR


def releases() -> list[str]:
  """The JASPAR releases pyjaspar ships, newest first."""
  import pyjaspar  # pylint: disable=g-import-not-at-top  (the motifs extra, checked by the command)
  return list(pyjaspar.jaspar_releases)


def _connect(release: str) -> sqlite3.Connection:
  known = releases()
  if release not in known:
    raise MotifsError(f"--jaspar={release!r}: unknown JASPAR release; pyjaspar ships "
                      f"{', '.join(known)}")
  import pyjaspar  # pylint: disable=g-import-not-at-top  (the motifs extra, checked by the command)
  from pyjaspar import utils  # pylint: disable=g-import-not-at-top  (the motifs extra)
  path = utils.get_jaspardb_path(pyjaspar.jaspar_releases[release])
  return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def collections(release: str) -> list[str]:
  """The collections (CORE, UNVALIDATED, ...) of a release."""
  with contextlib.closing(_connect(release)) as conn:
    return sorted(r[0] for r in conn.execute("SELECT DISTINCT COLLECTION FROM MATRIX"))


def tax_groups(release: str, collection: str) -> list[str]:
  """The taxonomic groups (vertebrates, plants, ...) present in a release's collection."""
  with contextlib.closing(_connect(release)) as conn:
    rows = conn.execute(
        "SELECT DISTINCT a.VAL FROM MATRIX_ANNOTATION a JOIN MATRIX m ON m.ID = a.ID "
        "WHERE a.TAG = 'tax_group' AND m.COLLECTION = ? COLLATE NOCASE", (collection,))
    return sorted(r[0] for r in rows)


def check_selection(release: str, collection: str, tax_group: str | None) -> None:
  """Raises MotifsError unless the release, collection and tax group exist together."""
  known = collections(release)
  if collection.upper() not in [c.upper() for c in known]:
    raise MotifsError(f"--collection={collection!r}: {release} has no such collection; it has "
                      f"{', '.join(known)}")
  if tax_group:
    groups = tax_groups(release, collection)
    if tax_group.lower() not in [g.lower() for g in groups]:
      raise MotifsError(f"--tax_group={tax_group!r}: {release} {collection.upper()} has no such "
                        f"taxonomic group; it has {', '.join(groups)}")


def load_jaspar(release: str = DEFAULT_RELEASE, collection: str = DEFAULT_COLLECTION,
                tax_group: str | None = DEFAULT_TAX_GROUP, *,
                all_versions: bool = False) -> list[JasparMotif]:
  """The matrices of one release, collection and (optionally) taxonomic group.

  Args:
    release: a name from `releases()`, e.g. ``JASPAR2024``.
    collection: e.g. ``CORE`` or ``UNVALIDATED``.
    tax_group: e.g. ``vertebrates``; None or "" for every group.
    all_versions: keep every version of a matrix, not only its latest.

  Returns:
    The motifs sorted by matrix ID.

  Raises:
    MotifsError: unknown release, collection or tax group, or fewer than 25 matrices.
  """
  check_selection(release, collection, tax_group)
  where = ["m.COLLECTION = ? COLLATE NOCASE"]
  args: list[str] = [collection]
  if tax_group:
    where.append("m.ID IN (SELECT ID FROM MATRIX_ANNOTATION WHERE TAG = 'tax_group' AND "
                 "VAL = ? COLLATE NOCASE)")
    args.append(tax_group)
  if not all_versions:
    where.append("m.VERSION = (SELECT MAX(VERSION) FROM MATRIX m2 WHERE m2.BASE_ID = "
                 "m.BASE_ID AND m2.COLLECTION = m.COLLECTION)")
  with contextlib.closing(_connect(release)) as conn:
    heads = conn.execute(
        f"SELECT m.ID, m.BASE_ID, m.VERSION, m.NAME FROM MATRIX m WHERE {' AND '.join(where)}",
        args).fetchall()
    ids = [h[0] for h in heads]
    data: dict[int, list[tuple[str, int, float]]] = {i: [] for i in ids}
    for chunk in range(0, len(ids), 500):
      part = ids[chunk:chunk + 500]
      rows = conn.execute(
          f"SELECT ID, ROW, COL, VAL FROM MATRIX_DATA WHERE ID IN "
          f"({','.join('?' * len(part))})", part)
      for i, row, col, val in rows:
        data[i].append((row, col, val))
  motifs = []
  for i, base, version, name in heads:
    cells = data[i]
    if not cells:
      continue
    length = max(c[1] for c in cells)
    counts = np.zeros((4, length))
    for row, col, val in cells:
      counts[_LETTERS.index(row.upper()), col - 1] = float(val)
    motifs.append(JasparMotif(matrix_id=f"{base}.{version}", name=name, counts=counts))
  motifs.sort(key=lambda m: m.matrix_id)
  what = f"{release} {collection.upper()}" + (f" {tax_group}" if tax_group else "")
  if len(motifs) < MIN_TARGETS:
    raise MotifsError(f"{what} holds {len(motifs)} matrices; Tomtom's p-values need at least "
                      f"{MIN_TARGETS} targets (choose a wider --collection or --tax_group)")
  return motifs


# ------------------------------------------------------------------------------ Tomtom


def one_hot(seq: str) -> np.ndarray:
  """float64 (4, len(seq)): the probability matrix of an ACGT string (rows A, C, G, T)."""
  m = np.zeros((4, len(seq)))
  try:
    m[[_LETTERS.index(c) for c in seq], np.arange(len(seq))] = 1.0
  except ValueError as e:
    raise MotifsError(f"motif {seq!r} holds a letter other than A, C, G, T") from e
  return m


def bh_qvalues(p: np.ndarray) -> np.ndarray:
  """Benjamini-Hochberg q-values along the last axis (each row is one family of tests)."""
  p = np.asarray(p, np.float64)
  n = p.shape[-1]
  order = np.argsort(p, axis=-1, kind="stable")
  ranked = np.take_along_axis(p, order, axis=-1) * n / np.arange(1, n + 1)
  ranked = np.minimum.accumulate(ranked[..., ::-1], axis=-1)[..., ::-1]
  q = np.empty_like(ranked)
  np.put_along_axis(q, order, np.minimum(ranked, 1.0), axis=-1)
  return q


@dataclasses.dataclass(frozen=True)
class Matches:
  """The best JASPAR target of each query.

  Attributes:
    queries: the query motifs (ACGT strings).
    motifs: the targets.
    target: int64 (Q,), index into ``motifs`` of the best target (smallest p-value).
    p: float64 (Q,), Tomtom's p-value of that match (both strands merged).
    q: float64 (Q,), its q-value (Benjamini-Hochberg over the query's p-values against all
      targets).
    offset: int64 (Q,), where the query's first letter lies in the target (on the target's
      reverse complement when ``strand`` is 1); negative = the query overhangs to the left.
    overlap: int64 (Q,), aligned columns.
    strand: int64 (Q,), 0 = the query matches the target as stored, 1 = its reverse
      complement.
  """
  queries: list[str]
  motifs: list[JasparMotif]
  target: np.ndarray
  p: np.ndarray
  q: np.ndarray
  offset: np.ndarray
  overlap: np.ndarray
  strand: np.ndarray

  def matched(self, q_threshold: float = 0.05) -> np.ndarray:
    """bool (Q,): the best target's q-value is at most ``q_threshold``."""
    return self.q <= q_threshold


def match(queries: list[str], motifs: list[JasparMotif]) -> Matches:
  """Tomtom of each query string against every motif; keeps each query's best target.

  Args:
    queries: ACGT strings (any lengths >= 1).
    motifs: the targets (at least `MIN_TARGETS`).

  Returns:
    `Matches`, one entry per query, in order.
  """
  # The motifs extra; heavy (numba).
  from memelite import tomtom  # pylint: disable=g-import-not-at-top
  if len(motifs) < MIN_TARGETS:
    raise MotifsError(f"{len(motifs)} target matrices; Tomtom needs at least {MIN_TARGETS}")
  targets = [np.ascontiguousarray(m.probabilities) for m in motifs]
  n = len(queries)
  out = {k: np.zeros(n, np.int64) for k in ("target", "offset", "overlap", "strand")}
  out.update({k: np.zeros(n) for k in ("p", "q")})
  for s in range(0, n, _QUERY_CHUNK):
    qs = [one_hot(x) for x in queries[s:s + _QUERY_CHUNK]]
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", category=UserWarning)
      res = tomtom(qs, targets)  # (5, Q, T): p, score, offset, overlap, strand.
    p = res[0]
    best = np.argmin(p, axis=1)
    rows = np.arange(p.shape[0])
    sl = slice(s, s + len(qs))
    out["target"][sl] = best
    out["p"][sl] = p[rows, best]
    out["q"][sl] = bh_qvalues(p).min(axis=1)
    out["offset"][sl] = res[2][rows, best]
    out["overlap"][sl] = res[3][rows, best]
    out["strand"][sl] = res[4][rows, best]
  return Matches(queries=list(queries), motifs=motifs, **out)


# ------------------------------------------------------------------------------ background


def gc_matched_draws(table: table_lib.KmerTable, top: np.ndarray, n_draws: int,
                     rng: np.random.Generator) -> np.ndarray:
  """Background sets of k-mers with the top-K's GC-count distribution.

  Args:
    table: the NPMI table.
    top: int64 (K,), code indices of the top-K k-mers.
    n_draws: number of background sets.
    rng: the random generator.

  Returns:
    int64 (n_draws, K): each row holds, for every GC count g, as many scored k-mers outside
    ``top`` with g G/C letters as ``top`` holds, drawn without replacement.

  Raises:
    MotifsError: some GC count has fewer k-mers outside the top-K than inside it.
  """
  check_gc_background(table, top)
  gc = table_lib.gc_count(table.kmers)
  rest = table.scored.copy()
  rest[top] = False
  need = np.bincount(gc[top], minlength=table.k + 1)
  parts = []
  for g in np.flatnonzero(need):
    pool = np.flatnonzero(rest & (gc == g))
    keys = rng.random((n_draws, pool.shape[0]))
    pick = np.argpartition(keys, need[g] - 1, axis=1)[:, :need[g]] if need[g] < pool.shape[0] \
        else np.broadcast_to(np.arange(pool.shape[0]), (n_draws, pool.shape[0]))
    parts.append(pool[pick])
  return np.concatenate(parts, axis=1)


def check_gc_background(table: table_lib.KmerTable, top: np.ndarray) -> None:
  """Raises MotifsError if the rest of the table cannot match the top-K's GC counts."""
  gc = table_lib.gc_count(table.kmers)
  rest = table.scored.copy()
  rest[top] = False
  need = np.bincount(gc[top], minlength=table.k + 1)
  have = np.bincount(gc[rest], minlength=table.k + 1)
  short = np.flatnonzero(need > have)
  if short.size:
    g = short[0]
    raise MotifsError(
        f"--top={len(top)}: the top {len(top)} hold {need[g]} {table.k}-mers with {g} G/C, but "
        f"the rest of the table only {have[g]}, so no GC-matched background exists; lower --top")


@dataclasses.dataclass(frozen=True)
class BackgroundTest:
  """Share of matched k-mers in the top-K against GC-matched draws and the rest.

  Attributes:
    n_top: K.
    n_top_matched: top-K k-mers with a match.
    n_rest: scored k-mers outside the top-K.
    n_rest_matched: those with a match.
    background_shares: float64 (draws,), the matched share of each GC-matched draw.
    permutation_p: (1 + #draws with share >= the top's) / (1 + draws).
    fisher_odds_ratio: sample odds ratio of the 2 x 2 table top/rest x matched/not.
    fisher_p: Fisher's exact test of that table, one-sided (top more often matched).
  """
  n_top: int
  n_top_matched: int
  n_rest: int
  n_rest_matched: int
  background_shares: np.ndarray
  permutation_p: float
  fisher_odds_ratio: float
  fisher_p: float

  @property
  def top_share(self) -> float:
    return self.n_top_matched / self.n_top

  @property
  def rest_share(self) -> float:
    return self.n_rest_matched / max(self.n_rest, 1)


def background_test(matched: np.ndarray, scored: np.ndarray, top: np.ndarray,
                    draws: np.ndarray) -> BackgroundTest:
  """Compares the top-K's matched share with GC-matched draws and with the rest.

  Args:
    matched: bool (4^k,), k-mers with a database match.
    scored: bool (4^k,), k-mers with an NPMI score.
    top: int64 (K,), the top-K.
    draws: int64 (n_draws, K), from `gc_matched_draws`.
  """
  # The motifs extra, checked by the command.
  from scipy import stats  # pylint: disable=g-import-not-at-top
  in_top = np.zeros(matched.shape[0], bool)
  in_top[top] = True
  rest = scored & ~in_top
  a, b = int(matched[top].sum()), len(top)
  c, d = int(matched[rest].sum()), int(rest.sum())
  shares = matched[draws].mean(axis=1)
  perm_p = (1.0 + np.sum(shares >= a / b)) / (1.0 + shares.shape[0])
  res = stats.fisher_exact([[a, b - a], [c, d - c]], alternative="greater")
  return BackgroundTest(n_top=b, n_top_matched=a, n_rest=d, n_rest_matched=c,
                        background_shares=shares, permutation_p=float(perm_p),
                        fisher_odds_ratio=float(res.statistic), fisher_p=float(res.pvalue))


# ------------------------------------------------------------------------------ assembly


def assemble(kmers: list[str]) -> list[list[str]]:
  """Unitigs of the de Bruijn graph of a set of k-mers (edges: a k-1 letter overlap).

  Returns:
    Lists of member k-mers in path order; every k-mer is in exactly one list. A path's
    sequence is its first k-mer followed by the last letter of each next one.
  """
  nodes = list(dict.fromkeys(kmers))
  present = set(nodes)
  succ = {x: [x[1:] + b for b in _LETTERS if x[1:] + b in present] for x in nodes}
  pred = {x: [b + x[:-1] for b in _LETTERS if b + x[:-1] in present] for x in nodes}

  def continues(x: str) -> str | None:
    """The next k-mer if the path through x goes on without a branch, else None."""
    if len(succ[x]) != 1:
      return None
    y = succ[x][0]
    return y if len(pred[y]) == 1 else None

  paths, seen = [], set()
  starts = [x for x in nodes if not (len(pred[x]) == 1 and continues(pred[x][0]) == x)]
  for x in starts + nodes:  # Nodes left after the starts lie on isolated cycles.
    if x in seen:
      continue
    path = [x]
    seen.add(x)
    y = continues(x)
    while y is not None and y not in seen:
      path.append(y)
      seen.add(y)
      y = continues(y)
    paths.append(path)
  return paths


def path_sequence(path: list[str]) -> str:
  """The sequence spelled by overlapping k-mers."""
  return path[0] + "".join(x[-1] for x in path[1:])


def assembled_motifs(kmers: list[str]) -> list[list[str]]:
  """Unitigs of two or more k-mers, one of each reverse-complement pair, longest first."""
  kept, seen = [], set()
  for path in sorted(assemble(kmers), key=lambda p: (-len(p), path_sequence(p))):
    if len(path) < 2:
      continue
    seq = path_sequence(path)
    if table_lib.reverse_complement(seq) in seen:
      continue
    seen.add(seq)
    kept.append(path)
  return kept


def assembled_count(kmers: list[str]) -> int:
  """Number of k-mers that lie on a unitig of two or more k-mers."""
  return sum(len(p) for p in assemble(kmers) if len(p) >= 2)


# ------------------------------------------------------------------------------ analysis


@dataclasses.dataclass(frozen=True)
class DatabaseResult:
  """Everything the database side found.

  Attributes:
    selection: e.g. ``JASPAR2024 CORE vertebrates``.
    top: int64 (K,), code indices of the top-K k-mers, best first.
    kmers: `Matches` of all 4^k k-mers (query i = code i).
    q_threshold: the q-value at which a k-mer counts as matched.
    test: the top-K against the GC-matched background and the rest.
    contigs: the assembled motifs (lists of member k-mers).
    contig_matches: `Matches` of the assembled motifs' sequences (None if there is none).
    top_assembled: top-K k-mers that lie on an assembled motif.
    background_assembled: int64 (draws,), the same count in each background draw.
  """
  selection: str
  top: np.ndarray
  kmers: Matches
  q_threshold: float
  test: BackgroundTest
  contigs: list[list[str]]
  contig_matches: Matches | None
  top_assembled: int
  background_assembled: np.ndarray


def analyse(table: table_lib.KmerTable, motifs: list[JasparMotif], top_k: int, *,
            n_draws: int = 1000, q_threshold: float = 0.05, seed: int = 0,
            selection: str = "", assembly_draws: int | None = None) -> DatabaseResult:
  """The database side for one table: matches, background test, assembled motifs.

  Args:
    table: the NPMI table.
    motifs: the JASPAR matrices.
    top_k: K.
    n_draws: GC-matched background draws.
    q_threshold: a k-mer with a best q-value at most this counts as matched.
    seed: seed of the background draws.
    selection: a label of the database selection for reports.
    assembly_draws: draws whose assembled k-mers are counted (default: all).
  """
  top = table.top(top_k)
  check_gc_background(table, top)
  draws = gc_matched_draws(table, top, n_draws, np.random.default_rng(seed))
  kmer_matches = match(list(table.kmers), motifs)
  test = background_test(kmer_matches.matched(q_threshold), table.scored, top, draws)
  top_kmers = list(table.kmers[top])
  contigs = assembled_motifs(top_kmers)
  contig_matches = match([path_sequence(p) for p in contigs], motifs) if contigs else None
  n_asm = n_draws if assembly_draws is None else min(assembly_draws, n_draws)
  background_assembled = np.array(
      [assembled_count(list(table.kmers[d])) for d in draws[:n_asm]], np.int64)
  return DatabaseResult(selection=selection, top=top, kmers=kmer_matches,
                        q_threshold=q_threshold, test=test, contigs=contigs,
                        contig_matches=contig_matches,
                        top_assembled=assembled_count(top_kmers),
                        background_assembled=background_assembled)


def describe_selection(release: str, collection: str, tax_group: str | None,
                       n_motifs: int) -> str:
  return (f"{release} {collection.upper()}" + (f" {tax_group}" if tax_group else "")
          + f" ({n_motifs} matrices, latest versions)")

