r"""PNG plots of an NPMI table, to look at before trusting it for masking.

Two figures: a scatter of our k-mer scores against a reference table's (the authors') on
the k-mers both score, with Spearman's rho and the top-100 overlap in the title; and the
distribution of the scores (both tables overlaid when a reference is given). Any source
`genemask_jax.npmi.load_lookup` accepts works (our CSV, the authors' CSV, .npy/.npz).
Matplotlib draws through its Agg canvas directly (no pyplot state, no display needed).

Command::

    python -m genemask_jax.npmi_plot --table=/tmp/npmi/table.csv \
        --reference=$GENEMASK_DATA_DIR/npmi/genemask_grch38_chr1-3_6mer_npmi.csv \
        --output_dir=/tmp/npmi/plots

writes ``npmi_scatter.png`` (only with --reference) and ``npmi_distribution.png``.
"""

from __future__ import annotations

import os
from typing import Sequence

from absl import app
from absl import flags
import numpy as np

from genemask_jax import npmi


def spearman(a: np.ndarray, b: np.ndarray) -> float:
  """Spearman's rho of two 1-D float arrays (average ranks for ties)."""
  def ranks(x):
    order = np.argsort(x, kind="stable")
    r = np.empty(x.shape[0])
    r[order] = np.arange(x.shape[0])
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=r)
    return (sums / counts)[inverse]
  return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def compare(ours: npmi.NpmiLookup, ref: npmi.NpmiLookup, top: int = 100) -> dict[str, float]:
  """Agreement on the k-mers both tables score: Spearman rho and top-`top` overlap."""
  if ours.score.shape != ref.score.shape:
    raise npmi.NpmiError(f"tables of different k: {ours.k}-mers vs {ref.k}-mers")
  shared = np.isfinite(ours.score) & np.isfinite(ref.score)
  best = lambda lk: set(np.flatnonzero((lk.rank <= top) & np.isfinite(lk.score)).tolist())
  return {"shared": int(shared.sum()),
          "spearman": spearman(ours.score[shared], ref.score[shared]),
          "top_overlap": len(best(ours) & best(ref)), "top": top}


def _save(fig, path: str) -> None:
  # Heavy: plots only.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  FigureCanvasAgg(fig)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)


def plot_scatter(ours: npmi.NpmiLookup, ref: npmi.NpmiLookup, path: str, *,
                 ours_label: str = "ours", ref_label: str = "reference") -> dict[str, float]:
  """Writes a PNG scatter of ours vs the reference scores on shared k-mers; returns `compare`."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top  (heavy: plots only)
  stats = compare(ours, ref)
  shared = np.isfinite(ours.score) & np.isfinite(ref.score)
  x, y = ref.score[shared], ours.score[shared]
  top = (ref.rank[shared] <= stats["top"])
  fig = Figure(figsize=(5.5, 5))
  ax = fig.add_subplot()
  ax.scatter(x[~top], y[~top], s=3, alpha=0.4, color="tab:blue", label="other k-mers")
  ax.scatter(x[top], y[top], s=6, color="tab:red", label=f"{ref_label} top {stats['top']}")
  lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
  ax.plot([lo, hi], [lo, hi], color="gray", lw=0.8, ls="--")
  ax.set_xlabel(f"{ref_label} NPMI")
  ax.set_ylabel(f"{ours_label} NPMI")
  ax.set_title(f"{stats['shared']} shared {ours.k}-mers: Spearman {stats['spearman']:.4f}, "
               f"top-{stats['top']} overlap {stats['top_overlap']}", fontsize=9)
  ax.legend(fontsize=8, loc="upper left")
  fig.tight_layout()
  _save(fig, path)
  return stats


def plot_distribution(tables: dict[str, npmi.NpmiLookup], path: str, bins: int = 60) -> None:
  """Writes a PNG histogram of each table's finite scores, overlaid."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top  (heavy: plots only)
  fig = Figure(figsize=(6, 4))
  ax = fig.add_subplot()
  finite = {name: lk.score[np.isfinite(lk.score)] for name, lk in tables.items()}
  lo = min(float(s.min()) for s in finite.values() if s.size)
  hi = max(float(s.max()) for s in finite.values() if s.size)
  edges = np.linspace(lo, hi, bins + 1)
  for name, s in finite.items():
    unscored = 4**tables[name].k - s.size
    ax.hist(s, bins=edges, alpha=0.5, label=f"{name} ({s.size} scored, {unscored} unscored)")
  ax.set_xlabel("NPMI (norm_dp_true_pmi)")
  ax.set_ylabel("k-mers")
  ax.legend(fontsize=8)
  fig.tight_layout()
  _save(fig, path)


def _main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  try:
    ours = npmi.load_lookup(f.table)
    tables = {"ours": ours}
    if f.reference:
      ref = npmi.load_lookup(f.reference, k=ours.k)
      tables["reference"] = ref
      path = os.path.join(f.output_dir, "npmi_scatter.png")
      stats = plot_scatter(ours, ref, path)
      print(f"wrote {path}: {stats['shared']} shared k-mers, Spearman {stats['spearman']:.4f}, "
            f"top-{stats['top']} overlap {stats['top_overlap']}")
    path = os.path.join(f.output_dir, "npmi_distribution.png")
    plot_distribution(tables, path)
    print(f"wrote {path}")
  except npmi.NpmiError as e:
    raise SystemExit(f"error: {e}") from e


if __name__ == "__main__":
  flags.DEFINE_string("table", None, "Our NPMI table (.csv, .rank.npy or .npz).", required=True)
  flags.DEFINE_string("reference", None, "Reference table to compare with, e.g. the authors' "
                      "CSV; without it only the distribution is drawn.")
  flags.DEFINE_string("output_dir", None, "Directory for the PNG files.", required=True)
  app.run(_main)
