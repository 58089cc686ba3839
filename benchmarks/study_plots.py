"""Figures of benchmarks/study.py: MCC vs shots per task, MLM eval loss vs step."""

from __future__ import annotations

import pathlib
from typing import Sequence


def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_mcc(summary: dict[tuple, tuple[float, float, int]], mode: str, tasks: Sequence[str],
             path: pathlib.Path, arms: Sequence[str], labels: dict[str, str],
             colors: dict[str, str], baseline: str = "random") -> None:
  """MCC vs shots per task, mean ± sample std over replicates, one line per arm.

  summary: {(arm, mode, task, shot, metric): (mean, std, n)} (genemask_jax.report.summarize, ddof=1).
  """
  plt = _plt()
  fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.8), squeeze=False)
  for ax, task in zip(axes[0], tasks):
    for arm in arms:
      pts = sorted((k[3], v[0], v[1]) for k, v in summary.items()
                   if k[0] == arm and k[1] == mode and k[2] == task and k[4] == "mcc")
      if pts:
        x, y, e = zip(*pts)
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=labels[arm],
                    color=colors[arm], linestyle="--" if arm == baseline else "-")
    ax.set_xscale("log")
    ax.set_xlabel("shots" + (" (x10 per class)" if task == "splice_40" else ""))
    ax.set_title(task + (" (GUE proxy test)" if task == "prom_300" else ""))
    ax.set_ylabel("MCC")
    ax.grid(alpha=0.3)
  handles, names = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, names, loc="lower center", ncol=max(1, len(names)), fontsize=8)
  fig.suptitle(f"{mode}: MCC vs shots (mean ± sample std over replicates)")
  fig.tight_layout(rect=(0, 0.08, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_loss(curves: Sequence[tuple[str | None, str, float, Sequence[tuple[int, float]]]],
              path: pathlib.Path) -> None:
  """Held-out MLM loss vs step: one line per (legend label or None, colour, alpha, points)."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, color, alpha, pts in curves:
    if pts:
      ax.plot(*zip(*pts), marker=".", color=color, alpha=alpha, label=label)
  ax.set_xlabel("pretraining step")
  ax.set_ylabel("held-out MLM loss (nats)")
  ax.set_title("MLM eval loss per arm (each on its own masking)")
  ax.grid(alpha=0.3)
  if any(label and pts for label, _, _, pts in curves):
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
