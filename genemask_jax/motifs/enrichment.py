"""Sequence side of the motif analysis: 6-mer enrichment in the few-shot tasks' classes.

For a task, the rows of its few-shot training files (all shots by default, a sequence
repeated across files counted once; a sequence shipped with two labels is dropped) are split
by label. Each comparison is one positive label against label 0 (``1 vs 0`` for the binary
tasks; ``1 vs 0`` and ``2 vs 0`` for Splice-40's three classes). For every 6-mer w:

* a, b = number of positive / negative sequences that contain w on the forward strand
  (sequences, not windows, are the independent units; windows touching a non-ACGT letter
  are skipped); n_pos, n_neg = sequences per class;
* log-odds = ln((a + c) / (n_pos - a + c)) - ln((b + c) / (n_neg - b + c)), pseudo-count
  c = 0.5;
* Fisher p = scipy's two-sided exact test of [[a, n_pos - a], [b, n_neg - b]].

Then, over the scored 6-mers, Spearman's rho between NPMI and log-odds (scipy's, with its
asymptotic p-value) and two permutation p-values (two-sided, (1 + #|rho_perm| >= |rho|) /
(1 + permutations)): NPMI shuffled over all 6-mers, and shuffled only within 6-mers of
equal GC count, which asks whether NPMI tracks the enrichment beyond what GC content
explains (promoter and enhancer positives are GC-richer than their negatives).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from genemask_jax import tokenizer
from genemask_jax.data import tasks
from genemask_jax.motifs import table as table_lib
from genemask_jax.motifs.table import MotifsError

DEFAULT_PSEUDOCOUNT = 0.5

_LUT = np.full(256, 4, np.int64)  # Byte -> code in the tokenizer's order; 4 = not ACGT.
for _i, _b in enumerate(tokenizer.BASES):
  _LUT[ord(_b)] = _i
  _LUT[ord(_b.lower())] = _i


def presence_counts(sequences: list[str], k: int = table_lib.K) -> np.ndarray:
  """int64 (4^k,): for each k-mer (code order), the number of sequences that contain it."""
  counts = np.zeros(4**k, np.int64)
  if not sequences:
    return counts
  keys = []
  for seq in sequences:
    codes = _LUT[np.frombuffer(seq.encode("ascii", errors="replace"), np.uint8)]
    n = codes.shape[0] - k + 1
    if n <= 0:
      continue
    code = np.zeros(n, np.int64)
    bad = np.zeros(n, bool)
    for j in range(k):
      code = code * 4 + (codes[j:j + n] & 3)
      bad |= codes[j:j + n] > 3
    keys.append(np.unique(code[~bad]))  # Each k-mer once per sequence.
  if keys:
    counts += np.bincount(np.concatenate(keys), minlength=4**k)
  return counts


def log_odds(a: np.ndarray, n_a: int, b: np.ndarray, n_b: int,
             pseudocount: float = DEFAULT_PSEUDOCOUNT) -> np.ndarray:
  """ln((a + c) / (n_a - a + c)) - ln((b + c) / (n_b - b + c)), elementwise, float64."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  c = float(pseudocount)
  return np.log((a + c) / (n_a - a + c)) - np.log((b + c) / (n_b - b + c))


def fisher_p(a: np.ndarray, n_a: int, b: np.ndarray, n_b: int) -> np.ndarray:
  """Two-sided Fisher exact p of [[a, n_a - a], [b, n_b - b]] elementwise, float64.

  scipy's definition (`scipy.stats.fisher_exact`): the sum of the hypergeometric
  probabilities of all tables with the same margins that are at most as probable as the
  observed one (relative tolerance 1e-14), 1 when the observed table is the mode or a margin
  is 0. Computed once per column total a + b: the pmf over its support, sorted and summed
  from the smallest, then looked up for every observed a (one scipy call per distinct
  total instead of one `fisher_exact` per k-mer, which took ~30 s for Splice-40).
  """
  # The motifs extra, checked by the command.
  from scipy import stats  # pylint: disable=g-import-not-at-top
  a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
  total = a + b
  p = np.ones(a.shape[0])
  m = n_a + n_b
  for t in np.unique(total):
    idx = np.flatnonzero(total == t)
    if t == 0 or t == m or n_a == 0 or n_b == 0:
      continue  # A zero margin: p = 1.
    x = np.arange(max(0, t - n_b), min(t, n_a) + 1)
    pmf = stats.hypergeom.pmf(x, m, n_a, t)
    order = np.argsort(pmf, kind="stable")
    sorted_pmf = pmf[order]
    csum = np.cumsum(sorted_pmf)
    mode = int((t + 1) * (n_a + 1) / (m + 2))
    p_mode = pmf[mode - x[0]]
    p_obs = pmf[a[idx] - x[0]]
    k = np.searchsorted(sorted_pmf, p_obs * (1 + 1e-14), side="right")
    p_idx = np.minimum(csum[k - 1], 1.0)
    at_mode = np.abs(p_obs - p_mode) / np.maximum(p_obs, p_mode) <= 1e-14
    p[idx] = np.where(at_mode, 1.0, p_idx)
  return p


def _ranks(x: np.ndarray) -> np.ndarray:
  # The motifs extra, checked by the command.
  from scipy import stats  # pylint: disable=g-import-not-at-top
  return stats.rankdata(x)


@dataclasses.dataclass(frozen=True)
class Correlation:
  """Spearman's rho of NPMI vs log-odds with its p-values.

  Attributes:
    rho: Spearman's rho (average ranks for ties).
    p_asymptotic: scipy's p-value (t distribution).
    p_permutation: NPMI shuffled over all k-mers.
    p_permutation_gc: NPMI shuffled within k-mers of equal GC count.
    rho_within_gc: Spearman's rho within each GC-count stratum, averaged with the strata's
      sizes as weights (strata of fewer than 3 k-mers left out): the association that GC
      content does not explain.
    n: k-mers compared.
    permutations: shuffles per p-value.
  """
  rho: float
  p_asymptotic: float
  p_permutation: float
  p_permutation_gc: float
  rho_within_gc: float
  n: int
  permutations: int


def _perm_rhos(rx: np.ndarray, ry: np.ndarray, groups: np.ndarray, n_perm: int,
               rng: np.random.Generator, chunk: int = 200) -> np.ndarray:
  """Pearson correlations of ry with rx shuffled within groups, n_perm times."""
  cy = ry - ry.mean()
  cy /= np.linalg.norm(cy)
  out = []
  for s in range(0, n_perm, chunk):
    m = min(chunk, n_perm - s)
    perm = np.tile(rx, (m, 1))
    for g in np.unique(groups):
      idx = np.flatnonzero(groups == g)
      perm[:, idx] = rng.permuted(perm[:, idx], axis=1)
    cx = perm - perm.mean(axis=1, keepdims=True)
    out.append(cx @ cy / np.linalg.norm(cx, axis=1))
  return np.concatenate(out)


def spearman_permutation(x: np.ndarray, y: np.ndarray, *, gc: np.ndarray | None = None,
                         permutations: int = 1000, seed: int = 0) -> Correlation:
  """Spearman's rho of x and y with asymptotic and permutation p-values.

  Args:
    x: float (n,), e.g. NPMI.
    y: float (n,), e.g. log-odds.
    gc: int (n,), strata for the second permutation p-value (GC counts); None = one stratum.
    permutations: shuffles per permutation p-value.
    seed: seed of the shuffles.
  """
  # The motifs extra, checked by the command.
  from scipy import stats  # pylint: disable=g-import-not-at-top
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  res = stats.spearmanr(x, y)
  rho = float(res.statistic)
  rx, ry = _ranks(x), _ranks(y)
  rng = np.random.default_rng(seed)
  one = np.zeros(x.shape[0], np.int64)
  strata = one if gc is None else np.asarray(gc)
  def p_of(groups):
    r = _perm_rhos(rx, ry, groups, permutations, rng)
    return float((1 + np.sum(np.abs(r) >= abs(rho) - 1e-12)) / (1 + permutations))
  within, weights = [], []
  for g in np.unique(strata):
    idx = np.flatnonzero(strata == g)
    if idx.size >= 3 and np.ptp(x[idx]) > 0 and np.ptp(y[idx]) > 0:
      within.append(stats.spearmanr(x[idx], y[idx]).statistic)
      weights.append(idx.size)
  rho_gc = float(np.average(within, weights=weights)) if within else float("nan")
  return Correlation(rho=rho, p_asymptotic=float(res.pvalue), p_permutation=p_of(one),
                     p_permutation_gc=p_of(strata), rho_within_gc=rho_gc, n=int(x.shape[0]),
                     permutations=int(permutations))


@dataclasses.dataclass(frozen=True)
class Comparison:
  """One task's positive label against its negative label.

  Attributes:
    task: the task key.
    positive: the positive label.
    negative: the negative label (0).
    n_pos: positive sequences.
    n_neg: negative sequences.
    pos_count: int64 (4^k,), positive sequences containing each k-mer.
    neg_count: int64 (4^k,), negative sequences containing each k-mer.
    log_odds: float64 (4^k,).
    fisher_p: float64 (4^k,).
    correlation: NPMI vs log-odds over the scored k-mers.
    files: the training files read.
    dropped: sequences dropped for carrying two labels.
  """
  task: str
  positive: int
  negative: int
  n_pos: int
  n_neg: int
  pos_count: np.ndarray
  neg_count: np.ndarray
  log_odds: np.ndarray
  fisher_p: np.ndarray
  correlation: Correlation
  files: list[str]
  dropped: int

  @property
  def name(self) -> str:
    return f"{self.task} {self.positive} vs {self.negative}"


def parse_tasks(value: list[str] | str) -> list[tasks.TaskSpec]:
  """Task specs from names (``prom_core``, ``Prom-core``, ...); raises MotifsError."""
  names = value.split(",") if isinstance(value, str) else list(value)
  specs = []
  for name in (n.strip() for n in names):
    if not name:
      continue
    try:
      spec = tasks.get_task(name)
    except tasks.FewShotDataError as e:
      raise MotifsError(f"--tasks: {e}") from e
    if spec not in specs:
      specs.append(spec)
  return specs


@dataclasses.dataclass(frozen=True)
class TrainingSet:
  """A task's few-shot training rows, pooled over shots, each sequence once."""
  task: tasks.TaskSpec
  sequences: list[str]
  labels: np.ndarray
  files: list[str]
  dropped: int


def load_training(spec: tasks.TaskSpec, data_dir: str | os.PathLike,
                  shots: list[int] | None = None) -> TrainingSet:
  """Reads the task's training files (all its shots by default) and pools them.

  A sequence in several files counts once; one shipped with two labels is dropped.

  Raises:
    tasks.FewShotDataError: a missing or malformed file.
  """
  label_of: dict[str, set[int]] = {}
  files = []
  for shot in (spec.shots if shots is None else shots):
    split = tasks.load_split(spec, f"train_{tasks.check_shot(spec, shot)}", data_dir)
    files.append(split.source)
    for s, y in zip(split.sequences, split.labels.tolist()):
      label_of.setdefault(s, set()).add(int(y))
  seqs = [s for s, ys in label_of.items() if len(ys) == 1]
  labels = np.array([next(iter(label_of[s])) for s in seqs], np.int64)
  return TrainingSet(task=spec, sequences=seqs, labels=labels, files=files,
                     dropped=len(label_of) - len(seqs))


def compare(training: TrainingSet, table: table_lib.KmerTable, positive: int,
            negative: int = 0, *, pseudocount: float = DEFAULT_PSEUDOCOUNT,
            permutations: int = 1000, seed: int = 0) -> Comparison:
  """Enrichment of each k-mer in label ``positive`` vs ``negative`` and its NPMI correlation."""
  pos = [s for s, y in zip(training.sequences, training.labels) if y == positive]
  neg = [s for s, y in zip(training.sequences, training.labels) if y == negative]
  if not pos or not neg:
    raise MotifsError(f"{training.task.name}: no training sequence with label "
                      f"{positive if not pos else negative} in {', '.join(training.files)}")
  a, b = presence_counts(pos, table.k), presence_counts(neg, table.k)
  lo = log_odds(a, len(pos), b, len(neg), pseudocount)
  fp = fisher_p(a, len(pos), b, len(neg))
  scored = table.scored
  corr = spearman_permutation(table.score[scored], lo[scored],
                              gc=table_lib.gc_count(table.kmers[scored]),
                              permutations=permutations, seed=seed)
  return Comparison(task=training.task.name, positive=positive, negative=negative,
                    n_pos=len(pos), n_neg=len(neg), pos_count=a, neg_count=b, log_odds=lo,
                    fisher_p=fp, correlation=corr, files=training.files,
                    dropped=training.dropped)


def task_comparisons(training: TrainingSet, table: table_lib.KmerTable, **kwargs
                     ) -> list[Comparison]:
  """Every positive label of the task against label 0."""
  return [compare(training, table, y, 0, **kwargs)
          for y in range(1, training.task.num_classes)]
