"""Reports of evaluation runs: summaries over seeds, CSV, Markdown and plots.

One place for what the few-shot binary (`genemask_jax.fewshot`), the own-task fine-tuning
command (`python -m genemask_jax.finetune`) and ``benchmarks/study.py`` write:

    stats = report.summarize(rows)                       # {(model, task, shot, metric): ...}
    stats = report.summarize(rows, keys=("arm", "mode", "task", "shot", "metric"))
    report.write_csv(rows, path, report.CSV_COLUMNS)

Every summary is the mean and the **sample** standard deviation (ddof=1, the spread an
independent rerun of a seed would show) over the rows of a cell, with their count; a cell
of one row has std 0.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import pathlib
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from genemask_jax import errors
from genemask_jax.finetune import metrics as metrics_lib

# Columns of the few-shot binary's results.csv (one row per model, task, shot, seed, metric).
CSV_COLUMNS = ("model", "task", "shot", "seed", "metric", "value", "mode", "n_train",
               "n_test", "n_test_full", "removed_overlaps", "test_set", "resampled")
FEWSHOT_KEYS = ("model", "task", "shot", "metric")

Stats = dict[tuple, tuple[float, float, int]]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
  v = np.asarray(values, np.float64)
  if len(v) == 0:
    raise ValueError("mean_std of no values")
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def summarize(rows: Sequence[dict[str, Any]], keys: Sequence[str] = FEWSHOT_KEYS) -> Stats:
  """{(row[k] for k in keys): (mean, sample std (ddof=1), n rows)} of the rows' "value"."""
  groups: dict[tuple, list[float]] = {}
  for r in rows:
    groups.setdefault(tuple(r[k] for k in keys), []).append(r["value"])
  return {k: (*mean_std(v), len(v)) for k, v in groups.items()}


def format_cell(stat: tuple[float, float, int] | None, digits: int = 4) -> str:
  """"mean ± std" of a `summarize` cell; "nan" for a nan mean, "failed" for no cell."""
  if stat is None:
    return "failed"
  mean, std, _ = stat
  return "nan" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def check_output_dir(path: str | os.PathLike,
                     error: type[Exception] = errors.UserError,
                     flag: str = "--output_dir") -> pathlib.Path:
  """Returns ``path`` if results can be written there, checked before any work.

  Nothing is created: the first existing ancestor must be a writable directory (a file or a
  read-only directory there raises ``error``).
  """
  out = pathlib.Path(path)
  if out.exists() and not out.is_dir():
    raise error(f"{flag}={path} is a file, not a directory")
  existing = out.absolute()
  while not existing.exists():
    existing = existing.parent
  if not existing.is_dir():
    raise error(f"{flag}={path}: {existing} is a file, not a directory")
  try:
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as e:
    raise error(f"{flag}={path}: cannot write in {existing}: {e.strerror or e}") from e
  return out


def write_csv(rows: Sequence[dict[str, Any]], path: pathlib.Path,
              columns: Sequence[str] = CSV_COLUMNS) -> None:
  """Writes the rows atomically (a temporary file renamed over ``path``); "value" as %.6f."""
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    for r in rows:
      w.writerow({**r, "value": f"{r['value']:.6f}"})
  os.replace(tmp, path)


# ------------------------------------------------------------------ few-shot binary
def markdown_table(rows: Sequence[dict[str, Any]], jobs: Sequence[Any], rc: Any,
                   models: Sequence[tuple[str, Any, Any, dict]],
                   failures: Sequence[dict[str, Any]] = ()) -> str:
  """The Markdown report: means ± std over seeds, test-set notes, settings."""
  stats = summarize(rows)
  seeds = len(rc.seeds)
  lines = [f"# Few-shot results ({rc.mode}, {seeds} seed(s): mean ± sample std)", ""]
  if rc.resample:
    lines += ["**Resampled**: each seed drew its own N-shot train set from the union of the "
              "task's shipped train sets; test sets exclude every sequence of that union.", ""]
  head = ["model", "task", "shot", *metrics_lib.METRICS, "test rows", "removed overlaps"]
  lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, *_ in models:
    for j in jobs:
      cells = [name, j.task.display_name + (" †" if j.task.proxy_test else ""), str(j.shot)]
      # No cell: the run diverged and has no metrics (see Failures).
      cells += [format_cell(stats.get((name, j.task.name, j.shot, m)))
                for m in metrics_lib.METRICS]
      n_test = f"{len(j.test[0])}" + (f" of {j.n_test_full}" if len(j.test[0]) < j.n_test_full
                                      else "")
      cells += [n_test, str(j.removed_overlaps)]
      lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  if any(j.task.proxy_test for j in jobs):
    lines += ["† Prom-300 is scored on the GUE prom_300_all proxy test set (the authors' "
              "test set is not public): not comparable with the paper's Prom-300 column.", ""]
  lines += ["Test sequences that also occur in the train set were removed before scoring "
            "(\"removed overlaps\"). Macro averages for F1/precision/recall; MCC is the "
            "multi-class R_K; ROC-AUC of P(class 1), or one-vs-one macro for Splice-40. "
            "± is the sample standard deviation (ddof=1) over seeds.", ""]
  if failures:
    lines += ["## Failures", "", "These runs diverged (NaN or infinite train loss or "
              "outputs) and have no metrics:", ""]
    lines += [f"- {f['error']}" for f in failures] + [""]
  lines += ["## Settings", "", "| task | shot | train rows | batch | LR | epochs | warm-up | "
            "wd | dropout | max_len |", "|---|---|---|---|---|---|---|---|---|---|"]
  for j in jobs:
    hp = j.hp
    lines.append(f"| {j.task.display_name} | {j.shot} | {len(j.train[0][0])} | "
                 f"{hp.batch_size} | {hp.learning_rate:g} | {hp.epochs} | {hp.warmup_frac:g} | "
                 f"{hp.weight_decay:g} | {hp.dropout:g} | {hp.max_len} |")
  lines += ["", "## Models", ""]
  for name, cfg, _, info in models:
    where = info.get("step_dir", "random init")
    lines.append(f"- **{name}**: {info.get('size')} ({cfg.num_layers} layers, hidden "
                 f"{cfg.hidden_size}), {where}")
  return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], path: pathlib.Path, metrics: Sequence[str]) -> None:
  """PNG grid: one row per metric, one column per task; metric vs shots, a line per model."""
  import matplotlib  # pylint: disable=g-import-not-at-top  (heavy: plots only)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top  (heavy: plots only)
  stats = summarize(rows)
  task_names = list(dict.fromkeys(r["task"] for r in rows))
  model_names = list(dict.fromkeys(r["model"] for r in rows))
  fig, axes = plt.subplots(len(metrics), len(task_names), squeeze=False,
                           figsize=(3.6 * len(task_names), 3.0 * len(metrics)))
  for mi, metric in enumerate(metrics):
    for ti, task in enumerate(task_names):
      ax = axes[mi][ti]
      for model in model_names:
        pts = sorted((k[2], v) for k, v in stats.items()
                     if k[0] == model and k[1] == task and k[3] == metric)
        if not pts:
          continue
        xs = [p[0] for p in pts]
        ax.errorbar(xs, [p[1][0] for p in pts], yerr=[p[1][1] for p in pts], marker="o",
                    capsize=3, label=model)
      ax.set_xscale("log")
      ax.set_title(task + (" (GUE proxy test)" if task == "prom_300" else ""), fontsize=9)
      ax.set_xlabel("shots")
      ax.set_ylabel(metric)
      ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_outputs(rows, jobs, models, rc: Any, out_dir: pathlib.Path,
                  failures: Sequence[dict[str, Any]] = ()) -> None:
  """The few-shot binary's results.csv, results.md, results.png and run.json in ``out_dir``."""
  write_csv(rows, out_dir / "results.csv")
  (out_dir / "results.md").write_text(markdown_table(rows, jobs, rc, models, failures))
  if rows:
    plot(rows, out_dir / "results.png", rc.plot_metrics)
  run_info = {
      "argv": sys.argv, "config": dataclasses.asdict(rc),
      "models": [{"name": n, "info": {k: v for k, v in info.items()}} for n, _, _, info
                 in models],
      "jobs": [{"task": j.task.name, "shot": j.shot, "hparams": dataclasses.asdict(j.hp),
                "n_train": len(j.train[0][0]), "n_test": len(j.test[0]),
                "n_test_full": j.n_test_full, "removed_overlaps": j.removed_overlaps,
                "test_set": j.test_set, "note": j.note} for j in jobs],
      "failures": list(failures)}
  (out_dir / "run.json").write_text(json.dumps(run_info, indent=2, default=str))


# ------------------------------------------------------------- own-task fine-tuning
# Columns of ``python -m genemask_jax.finetune``'s results.csv: one row per seed, split
# (dev at the selected epoch, test) and metric.
OWN_TASK_COLUMNS = ("model", "task", "task_type", "seed", "split", "metric", "value",
                    "best_epoch", "epochs_run", "n_train", "n_dev", "n_test")


def own_task_markdown(rows: Sequence[dict[str, Any]], settings: dict[str, Any]) -> str:
  """results.md of the own-task command: per-seed test metrics, then mean ± sample std.

  Args:
    rows: `OWN_TASK_COLUMNS` rows.
    settings: "model", "task", "task_type", "selection" (sentence), "hparams" (dict),
      "n_train", "n_dev", "n_test", "max_len", "windowed", "train_windows", "saved_model" (or None).
  """
  test = [r for r in rows if r["split"] == "test"]
  names = list(dict.fromkeys(r["metric"] for r in test))
  seeds = list(dict.fromkeys(r["seed"] for r in test))
  value = {(r["seed"], r["metric"]): r["value"] for r in test}
  epoch = {r["seed"]: r["best_epoch"] for r in test}
  stats = summarize(test, keys=("metric",))
  lines = [f"# Fine-tuning results: {settings['task']} ({settings['task_type']}, "
           f"{len(seeds)} seed(s))", "",
           f"Model: {settings['model']}. Test set: {settings['n_test']} rows; train "
           f"{settings['n_train']}, dev {settings['n_dev']}.", "",
           "| seed | best dev epoch | " + " | ".join(names) + " |",
           "|" + "---|" * (len(names) + 2)]
  for s in seeds:
    lines.append(f"| {s} | {epoch[s]} | "
                 + " | ".join(f"{value[(s, m)]:.4f}" for m in names) + " |")
  lines.append("| mean ± std | | " + " | ".join(format_cell(stats.get((m,))) for m in names)
               + " |")
  lines += ["", f"Model selection: {settings['selection']} ± is the sample standard "
            "deviation (ddof=1) over seeds.", ""]
  if settings.get("windowed"):
    lines += [f"**{settings['windowed']} sequence(s) were longer than the input "
              f"({settings['max_len']} tokens) and were split into windows: each window "
              "trains as a row with its sequence's label; dev/test score the mean of a "
              "sequence's window probabilities (regression: values).**", ""]
  hp = settings["hparams"]
  lines += ["## Settings", "", "| " + " | ".join(hp) + " |", "|" + "---|" * len(hp),
            "| " + " | ".join(f"{v:g}" if isinstance(v, float) else str(v)
                              for v in hp.values()) + " |", ""]
  if settings.get("saved_model"):
    lines += [f"Saved model (seed with the best dev score): `{settings['saved_model']}`", ""]
  return "\n".join(lines) + "\n"
