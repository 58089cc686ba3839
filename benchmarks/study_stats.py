"""Numbers behind benchmarks/study.py: masking statistics, slot sizing, paired tests.

- `corpus_rows`: real pretraining rows (the training chunker on the study's FASTA files).
- `masking_stats`: per arm, on those rows, the realised masked fraction, the share of rows
  over `max_predictions` (overflow) and the share where GeneMask's NPMI "better half" rule
  engaged. The centres are drawn here with NumPy at the sampler's 16-bit resolution and
  the spans come from `genemask_jax.masking.spans_from_centres`, the deterministic core of
  the training path, so the statistics are those of the training masks' distribution.
- `size_max_predictions`: the smallest slot count (a multiple of 8) with overflow <= 1%.
- `solve_p`: the centre probability that gives an arm a target masked fraction
  (``--equalise_rate``).
- `paired_test`: Wilcoxon signed-rank (scipy) and a paired bootstrap over matched
  (mode, task, shot, replicate) cells of two arms; `holm` adjusts a family of p-values.
- `series`: a metric's curve in a log.jsonl (means and sample stds per cell are
  `genemask_jax.report.summarize`).
- `constant_runs`: few-shot runs whose predictions were all one class.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import pathlib
from typing import Any, Sequence

import numpy as np

from genemask_jax import masking
from genemask_jax import tokenizer
from genemask_jax.data import genome

U16 = 1 << 16


def corpus_rows(fasta: Sequence[str], max_len: int, rows_per_file: int,
                seed: int = 0) -> np.ndarray:
  """(n, max_len) int32 token rows: the first `rows_per_file` train chunks of each file,
  cut exactly as pretraining cuts them (block max_len, the paper's chunk lengths)."""
  cfg = genome.ChunkConfig(seed=seed, max_chunk_bp=max_len - 1, max_len=max_len)
  out = []
  for path in fasta:
    got = itertools.islice((c.input_ids for c in genome.iter_chunks([path], cfg)
                            if c.split == genome.TRAIN), rows_per_file)
    out.extend(got)
  if not out:
    raise ValueError(f"no pretraining rows in {list(fasta)}")
  return np.stack(out).astype(np.int32)


def eligible(ids: np.ndarray, vocab: int) -> np.ndarray:
  """k-mer positions ([UNK] or a k-mer id), as masking.py defines them."""
  return (ids == tokenizer.UNK_ID) | ((ids >= tokenizer.NUM_SPECIAL) & (ids < vocab))


def draw_centres(uniform16: np.ndarray, p: float, elig: np.ndarray) -> np.ndarray:
  """Centres at the sampler's resolution: u16 < round(p * 2^16), eligible positions only."""
  return (uniform16 < round(p * U16)) & elig


@dataclasses.dataclass
class MaskStats:
  """Masking statistics of one arm on a set of rows."""
  p: float
  rows: int
  masked_fraction: float  # masked positions / eligible positions
  mean_masked: float  # per row
  p99_masked: float
  max_masked: int
  engaged_share: float | None  # rows with more than few_threshold centres (GeneMask only)
  max_predictions: int
  overflow_share: float  # rows with num_masked > max_predictions
  lost_target_share: float  # masked positions beyond the slots / all masked positions

  def as_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def num_masked(ids: np.ndarray, rank: np.ndarray, strategy: str, options: dict[str, Any],
               p: float, uniform16: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per row: (masked positions, centres) for centres drawn from `uniform16` at `p`."""
  elig = eligible(ids, rank.shape[0])
  centres = draw_centres(uniform16, p, elig)
  span_opts = {k: v for k, v in options.items() if k != "p"}
  masked = np.asarray(masking.spans_from_centres(ids, rank, centres, strategy, **span_opts))
  return masked.sum(axis=1), centres.sum(axis=1)


def size_max_predictions(counts: np.ndarray, length: int, max_overflow: float = 0.01,
                         multiple: int = 8) -> int:
  """Smallest P (a multiple of `multiple`, at most `length`) with share(counts > P) <=
  max_overflow."""
  counts = np.asarray(counts)
  for p in range(multiple, length + multiple, multiple):
    p = min(p, length)
    if np.mean(counts > p) <= max_overflow:
      return p
  return length


def masking_stats(ids: np.ndarray, rank: np.ndarray, strategy: str, options: dict[str, Any],
                  p: float | None = None, max_predictions: int | None = None,
                  max_overflow: float = 0.01, seed: int = 0) -> MaskStats:
  """Statistics of one arm's masks on `ids`; P sized from them when not given."""
  p = float(p if p is not None else options.get("p", masking.DEFAULTS[strategy]["p"]))
  u = np.random.default_rng(seed).integers(0, U16, ids.shape)
  counts, centres = num_masked(ids, rank, strategy, options, p, u)
  if max_predictions is None:
    max_predictions = size_max_predictions(counts, ids.shape[1], max_overflow)
  elig = eligible(ids, rank.shape[0]).sum()
  few = options.get("few_threshold", masking.DEFAULTS["genemask"]["few_threshold"])
  engaged = None
  if strategy == "genemask":
    # masking._span_mask: all centres are high when num <= few_threshold and
    # all_high_if_few; the NPMI ranking picks the better half only above that.
    engaged = (float(np.mean(centres > few)) if options.get("all_high_if_few", True)
               else float(np.mean(centres > 0)))
  return MaskStats(
      p=p, rows=int(ids.shape[0]), masked_fraction=float(counts.sum() / max(elig, 1)),
      mean_masked=float(counts.mean()), p99_masked=float(np.percentile(counts, 99)),
      max_masked=int(counts.max()), engaged_share=engaged, max_predictions=int(max_predictions),
      overflow_share=float(np.mean(counts > max_predictions)),
      lost_target_share=float(np.maximum(counts - max_predictions, 0).sum()
                              / max(counts.sum(), 1)))


def solve_p(ids: np.ndarray, rank: np.ndarray, strategy: str, options: dict[str, Any],
            target: float, seed: int = 0, iters: int = 18) -> float:
  """Centre probability whose realised masked fraction on `ids` is `target` (bisection in
  log p, the same uniforms at every step so the fraction is monotone in p)."""
  if not 0.0 < target < 1.0:
    raise ValueError(f"target masked fraction must be in (0, 1), got {target}")
  u = np.random.default_rng(seed).integers(0, U16, ids.shape)
  elig = eligible(ids, rank.shape[0]).sum()
  lo, hi = math.log(2.0 / U16), math.log(0.5)
  for _ in range(iters):
    mid = (lo + hi) / 2
    counts, _ = num_masked(ids, rank, strategy, options, math.exp(mid), u)
    if counts.sum() / elig < target:
      lo = mid
    else:
      hi = mid
  return round(math.exp(hi) * U16) / U16


# --------------------------------------------------------------------------- paired tests
def paired_test(x: Sequence[float], y: Sequence[float], n_boot: int = 10_000,
                seed: int = 0) -> dict[str, Any]:
  """Paired comparison of x[i] against y[i].

  Returns {n, mean_diff (x - y), wins (x > y), losses, wilcoxon_p (two-sided, scipy's
  wilcoxon with zero_method="wilcox"; 1.0 when every difference is 0), boot_ci (95%
  percentile interval of the mean difference over 10k resamples of the pairs), boot_p
  (two-sided: twice the smaller share of resampled means on either side of 0)}.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  d = np.asarray(x, np.float64) - np.asarray(y, np.float64)
  if d.ndim != 1 or d.size == 0:
    raise ValueError(f"paired_test needs two equal-length non-empty sequences, got {d.shape}")
  if np.all(d == 0):
    wp = 1.0
  else:
    wp = float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
  rng = np.random.default_rng(seed)
  boot = d[rng.integers(0, d.size, (n_boot, d.size))].mean(axis=1)
  lo, hi = np.percentile(boot, [2.5, 97.5])
  bp = min(1.0, 2 * min(float(np.mean(boot <= 0)), float(np.mean(boot >= 0))))
  return {"n": int(d.size), "mean_diff": float(d.mean()), "wins": int((d > 0).sum()),
          "losses": int((d < 0).sum()), "wilcoxon_p": wp, "boot_ci": (float(lo), float(hi)),
          "boot_p": bp}


def holm(pvalues: Sequence[float]) -> list[float]:
  """Holm-Bonferroni adjusted p-values (family-wise error over all the tests given)."""
  m = len(pvalues)
  order = sorted(range(m), key=lambda i: pvalues[i])
  out = [0.0] * m
  running = 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (m - rank) * pvalues[i]))
    out[i] = running
  return out


def pair_up(rows: Sequence[dict[str, Any]], a: str, b: str, metric: str,
            mode: str | None = None) -> tuple[list[float], list[float], list[tuple]]:
  """Matched values of arms a and b: one pair per (mode, task, shot, replicate) both have."""
  def index(arm):
    return {(r["mode"], r["task"], r["shot"], r["replicate"]): r["value"] for r in rows
            if r["arm"] == arm and r["metric"] == metric and (mode is None or r["mode"] == mode)}
  ia, ib = index(a), index(b)
  keys = sorted(set(ia) & set(ib))
  return [ia[k] for k in keys], [ib[k] for k in keys], keys


# --------------------------------------------------------------------------- logs
def read_log(workdir: pathlib.Path) -> list[dict[str, Any]]:
  path = workdir / "log.jsonl"
  if not path.exists():
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def series(log, key: str) -> list[tuple[int, float]]:
  """(step, value) of `key`; the last write of a step wins (a resumed run rewrites steps)."""
  d = {}
  for row in log:
    if isinstance(row.get(key), (int, float)):
      d[row["step"]] = float(row[key])
  return sorted(d.items())


# --------------------------------------------------------------------------- sanity
NUM_CLASSES = {"prom_core": 2, "prom_300": 2, "cohn_enh": 2, "splice_40": 3}


def constant_runs(rows: Sequence[dict[str, Any]]) -> list[tuple]:
  """(arm, replicate, mode, task, shot) of runs whose predictions were all one class.

  results.csv holds metrics, not predictions; a constant predictor has MCC exactly 0 and a
  macro recall of exactly 1/C (recall 1 on its class, 0 on the C - 1 others), which is
  what is checked.
  """
  runs: dict[tuple, dict[str, float]] = {}
  for r in rows:
    runs.setdefault((r["arm"], r["replicate"], r["mode"], r["task"], r["shot"]),
                    {})[r["metric"]] = r["value"]
  out = []
  for key, m in sorted(runs.items()):
    c = NUM_CLASSES.get(key[3], 2)
    if ("mcc" in m and "recall" in m and abs(m["mcc"]) < 1e-9
        and abs(m["recall"] - 1.0 / c) < 1e-6):
      out.append(key)
  return out
