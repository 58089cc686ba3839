r"""The reproduction study: does GeneMask masking buy few-shot accuracy at laptop scale?

One command pretrains four variants with everything else equal, evaluates them and a
no-pretraining baseline with the few-shot binary, and regenerates `docs/results.md` and
`docs/figures/*.png`:

    GENEMASK_DATA_DIR=/path/to/data python benchmarks/study.py               # size run here
    GENEMASK_DATA_DIR=... python benchmarks/study.py --steps=2000 --seeds=5 \
        --max_test_examples=2000                                             # full size
    GENEMASK_DATA_DIR=... python benchmarks/study.py --quick                  # smoke test

Variants (same `tiny` model, same corpus = every FASTA in DATA/genome, same steps, batch,
length, learning-rate schedule and seed; only the masking differs):

  (a) genemask           GeneMask, NPMI rank looked up by token content (ours)
  (b) genemask_position  GeneMask as the authors' released code: rank by position (`:position`)
  (c) dnabert            DNABERT 6-token span masking
  (d) bert               BERT token masking (15%)
  (e) random             no pretraining (`--init=random` in the few-shot binary)

(a) and (c) also run the in-training linear probe (`config.probe.*`) every
`--probe_every` steps. Every pretraining reads one NPMI table computed once from the same
corpus (`python -m genemask_jax.npmi`) and one shared TFDS build of the corpus.

Work goes to `--workdir` (default /tmp/genemask_study, never the repository); only
`docs/results.md` and `docs/figures/` are written into the repository. The script is
resumable: a variant whose workdir holds the final checkpoint is not pretrained again, and
a few-shot evaluation whose results.csv exists is not rerun (`--report_only` just rebuilds
the report from what is there).
"""

from __future__ import annotations

import argparse
import collections
import csv
import datetime
import glob
import json
import math
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time
from typing import Any, Sequence

REPO = pathlib.Path(__file__).resolve().parent.parent

# name -> (label, config presets, in-training probe?)
VARIANTS: dict[str, tuple[str, str, bool]] = {
    "genemask": ("(a) GeneMask, content rank (ours)", "default,genemask", True),
    "genemask_position": ("(b) GeneMask, position rank (authors' code)",
                          "default,genemask,position", False),
    "dnabert": ("(c) DNABERT span masking", "default,dnabert", True),
    "bert": ("(d) BERT token masking", "default,bert", False),
}
RANDOM = "random"
LABELS = {**{k: v[0] for k, v in VARIANTS.items()}, RANDOM: "(e) no pretraining"}
ORDER = ["genemask", "genemask_position", "dnabert", "bert", RANDOM]
COLORS = dict(zip(ORDER, ["C0", "C1", "C2", "C3", "C4"]))  # Same colour per model in every plot.
TASKS = ["prom_core", "prom_300", "cohn_enh", "splice_40"]
TASK_DIRS = {"prom_core": "Prom-core", "prom_300": "Prom-300", "cohn_enh": "Cohn-enh",
             "splice_40": "Splice-40"}
PROXY_NOTE = "Prom-300 is scored on the GUE prom_300_all test split, a proxy (see the data README)"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default="/tmp/genemask_study",
                 help="Pretraining workdirs, few-shot outputs, logs (outside the repo).")
  p.add_argument("--data_dir", default=os.environ.get("GENEMASK_DATA_DIR", ""),
                 help="Folder holding genome/ and fewshot/ (default $GENEMASK_DATA_DIR).")
  p.add_argument("--docs_dir", default=None,
                 help="Where results.md and figures/ go (default: the repo's docs/; with "
                 "--quick, WORKDIR/docs).")
  p.add_argument("--steps", type=int, default=500, help="Pretraining steps per variant.")
  p.add_argument("--batch_size", type=int, default=16, help="Pretraining sequences/step.")
  p.add_argument("--max_len", type=int, default=128, help="Pretraining tokens/sequence.")
  p.add_argument("--model_size", default="tiny")
  p.add_argument("--seed", type=int, default=0, help="Pretraining seed (all variants).")
  p.add_argument("--probe_every", type=int, default=100,
                 help="In-training probe period for (a) and (c); 0 = off.")
  p.add_argument("--probe_tasks", default="prom_core")
  p.add_argument("--probe_shots", default="10,100")
  p.add_argument("--probe_max_test_examples", type=int, default=1000)
  p.add_argument("--seeds", type=int, default=3, help="Few-shot seeds per cell.")
  p.add_argument("--mode", default="linear_probe", choices=["linear_probe", "finetune"])
  p.add_argument("--max_test_examples", type=int, default=500,
                 help="Test rows scored per task (fixed random subset).")
  p.add_argument("--tasks", default=",".join(TASKS))
  p.add_argument("--shots", default="", help="Empty = every shot each task ships.")
  p.add_argument("--resample", type=int, default=-1,
                 help="1/0: few-shot --resample; -1 = on for linear_probe (a frozen encoder "
                 "with one fixed train file gives identical seeds), off for finetune.")
  p.add_argument("--finetune_timing", type=int, default=1,
                 help="1: time one Script-B fine-tune (model (a), prom_core 100-shot, 1 "
                 "seed) so the doc can state what the full fine-tune grid would cost.")
  p.add_argument("--quick", action="store_true",
                 help="Smoke size: 12 steps x 8 x 64 tokens, 2 seeds, 2 tasks, 10-shot, "
                 "64 test rows, in WORKDIR_quick (report in WORKDIR_quick/docs).")
  p.add_argument("--report_only", action="store_true",
                 help="Only rebuild the report from the workdir.")
  a = p.parse_args(argv)
  if a.quick:
    a.steps, a.batch_size, a.max_len, a.seeds = 12, 8, 64, 2
    a.probe_every, a.probe_max_test_examples = 6, 64
    a.max_test_examples, a.tasks, a.shots, a.finetune_timing = 64, "prom_core,splice_40", "10", 0
    if a.workdir == p.get_default("workdir"):
      a.workdir += "_quick"
  if a.docs_dir is None:
    a.docs_dir = os.path.join(a.workdir, "docs") if a.quick else str(REPO / "docs")
  if not a.data_dir:
    p.error("--data_dir or $GENEMASK_DATA_DIR is required (the folder holding genome/ and "
            "fewshot/)")
  if a.resample < 0:
    a.resample = int(a.mode == "linear_probe")
  if a.seeds < 2:
    p.error(f"--seeds must be >= 2 to measure a seed-to-seed spread, got {a.seeds}")
  return a


# ------------------------------------------------------------------------------- running
def _log(msg: str) -> None:
  print(f"[study {datetime.datetime.now(datetime.timezone.utc):%H:%M:%S}Z] {msg}", flush=True)


def _run(cmd: list[str], log_path: pathlib.Path, env: dict[str, str]) -> float:
  """Runs `cmd` with output teed to `log_path`; returns wall seconds; raises on failure."""
  _log("$ " + " ".join(shlex.quote(c) for c in cmd))
  t0 = time.time()
  with open(log_path, "w", encoding="utf-8", buffering=1) as f:
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
      f.write(line)
      if not line.startswith(("\r", " ")) and ("step" in line or "Error" in line
                                                or "error" in line or "done" in line):
        sys.stdout.write("    " + line)
    rc = proc.wait()
  wall = time.time() - t0
  if rc:
    raise RuntimeError(f"exit {rc} after {wall:.0f}s: {' '.join(cmd)}; see {log_path}")
  _log(f"  done in {wall / 60:.1f} min")
  return wall


def genome_files(data_dir: str) -> list[str]:
  files = sorted(glob.glob(os.path.join(data_dir, "genome", "*.fa*")))
  if not files:
    raise SystemExit(f"no FASTA files in {data_dir}/genome")
  return files


def final_checkpoint(workdir: pathlib.Path, steps: int) -> pathlib.Path:
  return workdir / "checkpoints" / str(steps)


def pretrain_cmd(a: argparse.Namespace, name: str, fasta: list[str], npmi_csv: pathlib.Path,
                 tfds_dir: pathlib.Path) -> list[str]:
  _, presets, probe = VARIANTS[name]
  cmd = [sys.executable, "main.py", f"--config=configs/pretrain.py:{presets}",
         f"--workdir={pathlib.Path(a.workdir) / name}",
         f"--config.seed={a.seed}",
         f"--config.model.size={a.model_size}",
         f"--config.data.fasta={','.join(fasta)}",
         f"--config.data.tfds_dir={tfds_dir}",
         f"--config.data.max_len={a.max_len}",
         f"--config.masking.max_predictions={max(4, a.max_len // 4)}",
         f"--config.npmi.source={npmi_csv}",
         f"--config.train.batch_size={a.batch_size}",
         f"--config.train.num_steps={a.steps}",
         f"--config.train.log_every={max(1, min(20, a.steps // 10))}",
         f"--config.train.checkpoint_every={max(1, a.steps // 2)}",
         f"--config.optim.warmup_steps={max(1, a.steps // 10)}",
         f"--config.eval.every={max(1, a.probe_every or a.steps // 5)}",
         f"--config.eval.batch_size={min(16, a.batch_size)}",
         f"--config.eval.num_examples={4 * min(16, a.batch_size)}"]
  if probe and a.probe_every > 0:
    cmd += [f"--config.probe.every={a.probe_every}",
            f"--config.probe.tasks={a.probe_tasks}",
            f"--config.probe.shots={a.probe_shots}",
            f"--config.probe.data_dir={a.data_dir}",
            f"--config.probe.max_test_examples={a.probe_max_test_examples}"]
  return cmd


def shipped_shots(data_dir: str, task: str) -> list[int]:
  """The N-shot train folders the task ships (e.g. [10, 50, 100, 500])."""
  d = pathlib.Path(data_dir) / "fewshot" / TASK_DIRS[task]
  return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit())


def eval_plan(a: argparse.Namespace) -> list[tuple[int, list[str]]]:
  """[(shot, tasks having it)], smallest shot first, so a cut-short run has every task."""
  wanted = {int(s) for s in a.shots.split(",") if s.strip()}
  by_shot = collections.defaultdict(list)
  for task in a.tasks.split(","):
    for shot in shipped_shots(a.data_dir, task):
      if not wanted or shot in wanted:
        by_shot[shot].append(task)
  return sorted(by_shot.items())


def fewshot_cmd(a: argparse.Namespace, name: str, out: pathlib.Path, shot: int,
                tasks: Sequence[str]) -> list[str]:
  cmd = [sys.executable, "-m", "genemask_jax.fewshot", f"--data_dir={a.data_dir}",
         f"--tasks={','.join(tasks)}", f"--shots={shot}", f"--seeds={a.seeds}",
         f"--mode={a.mode}", f"--max_test_examples={a.max_test_examples}",
         f"--output_dir={out}", "--noprogress", f"--resample={bool(a.resample)}"]
  if name == RANDOM:
    cmd += ["--init=random", f"--model_size={a.model_size}"]
  else:
    cmd += [f"--checkpoint={name}={pathlib.Path(a.workdir) / name}"]
  return cmd


def run_study(a: argparse.Namespace) -> dict[str, Any]:
  """Runs every missing stage; returns the timings (also kept in WORKDIR/timings.json)."""
  work = pathlib.Path(a.workdir)
  (work / "logs").mkdir(parents=True, exist_ok=True)
  env = dict(os.environ, GENEMASK_DATA_DIR=a.data_dir, PYTHONPATH=str(REPO))
  timings_path = work / "timings.json"
  timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}

  def record(key, seconds):
    timings[key] = {"seconds": seconds, "load_after": os.getloadavg()[0]}
    timings_path.write_text(json.dumps(timings, indent=2))

  fasta = genome_files(a.data_dir)
  npmi_csv = work / "npmi" / "table.csv"
  if not npmi_csv.exists():
    npmi_csv.parent.mkdir(parents=True, exist_ok=True)
    record("npmi", _run([sys.executable, "-m", "genemask_jax.npmi", f"--fasta={','.join(fasta)}",
                         f"--output={npmi_csv}"], work / "logs" / "npmi.log", env))
  tfds_dir = work / "tfds"
  for name in ["genemask", "dnabert", "genemask_position", "bert"]:  # Key pair first.
    if final_checkpoint(work / name, a.steps).exists():
      _log(f"{name}: final checkpoint {a.steps} exists, not pretraining again")
      continue
    record(f"pretrain/{name}", _run(pretrain_cmd(a, name, fasta, npmi_csv, tfds_dir),
                                    work / "logs" / f"pretrain_{name}.log", env))
  if a.finetune_timing and a.mode != "finetune":
    out = work / "finetune_timing"
    if not (out / "results.csv").exists():
      cmd = [sys.executable, "-m", "genemask_jax.fewshot", f"--data_dir={a.data_dir}",
             "--tasks=prom_core", "--shots=100", "--seeds=1", "--mode=finetune",
             f"--max_test_examples={a.max_test_examples}", f"--output_dir={out}",
             "--noprogress", f"--checkpoint=genemask={work / 'genemask'}"]
      record("finetune_timing", _run(cmd, work / "logs" / "finetune_timing.log", env))
  for shot, tasks in eval_plan(a):  # Small shots for every model first.
    for name in ["genemask", "dnabert", RANDOM, "genemask_position", "bert"]:
      out = work / "fewshot" / name / f"shot{shot}"
      if (out / "results.csv").exists():
        _log(f"{name} {shot}-shot: few-shot results exist, not evaluating again")
        continue
      record(f"fewshot/{name}/{shot}", _run(fewshot_cmd(a, name, out, shot, tasks),
                                            work / "logs" / f"fewshot_{name}_{shot}.log", env))
  return timings


# Script-B per shot: epochs; rows per class = shot (Splice-40: 10 x shot); tokens = k-mers + 2.
_TASK_ROWS = {"prom_core": (2, 1), "prom_300": (2, 1), "cohn_enh": (2, 1), "splice_40": (3, 10)}
def measured_grid_lines(num_models: int) -> list[str]:
  """A paragraph on the measured whole fine-tune grid (docs/fewshot_grid.txt), if any."""
  path = REPO / "docs" / "fewshot_grid.txt"
  if not path.exists():
    return []
  text = path.read_text(encoding="utf-8")
  grid = re.search(r"default grid: .*? x (\d+) seed\(s\), test rows (\w+): (\d+)s", text)
  started = re.search(r"started (.*? UTC), git commit (\w+)", text)
  if not grid:
    return []
  minutes = int(grid.group(3)) / 60
  when = f" on {started.group(1)} at commit {started.group(2)}" if started else ""
  return [f"Measured{when} (`docs/fewshot_grid.txt`, from `benchmarks/bench_fewshot.py "
          f"--grid`): the whole default Script-B fine-tune grid of one tiny model, "
          f"{grid.group(1)} seeds, {grid.group(2)} test rows, took {minutes:.0f} min on this "
          f"CPU, so the {num_models} models of this study would need about "
          f"{num_models * minutes / 60:.1f} hours of fine-tuning.", ""]


_TASK_TOKENS = {"prom_core": 67, "prom_300": 297, "cohn_enh": 497, "splice_40": 37}


def finetune_grid_units(a: argparse.Namespace, only: tuple[str, int] | None = None) -> float:
  """Training tokens of one seed of the Script-B grid (rows x epochs x length)."""
  total = 0.0
  for shot, tasks in eval_plan(a):
    for task in tasks:
      if only and (task, shot) != only:
        continue
      classes, per = _TASK_ROWS[task]
      epochs = 20 if shot <= 100 else 5
      total += classes * per * shot * epochs * _TASK_TOKENS[task]
  return total


# ------------------------------------------------------------------------------- analysis
def read_results(work: pathlib.Path) -> list[dict[str, Any]]:
  """Rows of every few-shot results.csv, `model` set to the variant name."""
  rows = []
  for name in ORDER:
    for path in sorted((work / "fewshot" / name).glob("shot*/results.csv")):
      with open(path, encoding="utf-8") as f:
        for r in csv.DictReader(f):
          r["model"] = name
          r["shot"] = int(r["shot"])
          r["value"] = float(r["value"])
          rows.append(r)
  return rows


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
  n = len(values)
  m = sum(values) / n
  s = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
  return m, s


def summarize(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str, int, str], tuple[float, float, int]]:
  """{(model, task, shot, metric): (mean, sample std, n seeds)}."""
  groups = collections.defaultdict(list)
  for r in rows:
    groups[(r["model"], r["task"], r["shot"], r["metric"])].append(r["value"])
  return {k: (*mean_std(v), len(v)) for k, v in groups.items()}


def compare(summary, a: str, b: str, metric: str, factor: float = 2.0) -> list[dict[str, Any]]:
  """Per (task, shot): mean(a) - mean(b), pooled std, and whether |diff| > factor * pooled.

  pooled = sqrt((s_a^2 + s_b^2) / 2) with sample stds over seeds.
  """
  out = []
  for (m, task, shot, met), (mean_a, std_a, n) in sorted(summary.items()):
    if m != a or met != metric or (b, task, shot, metric) not in summary:
      continue
    mean_b, std_b, _ = summary[(b, task, shot, metric)]
    pooled = math.sqrt((std_a ** 2 + std_b ** 2) / 2)
    diff = mean_a - mean_b
    out.append({"task": task, "shot": shot, "diff": diff, "pooled": pooled,
                "exceeds": abs(diff) > factor * pooled})
  return out


def read_log(workdir: pathlib.Path) -> list[dict[str, Any]]:
  path = workdir / "log.jsonl"
  if not path.exists():
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def series(log: Sequence[dict[str, Any]], key: str) -> list[tuple[int, float]]:
  """(step, value) of `key`, last write per step wins (a resumed run rewrites steps)."""
  d = {}
  for row in log:
    if key in row and isinstance(row[key], (int, float)):
      d[row["step"]] = float(row[key])
  return sorted(d.items())


def first_step_reaching(points: Sequence[tuple[int, float]], threshold: float) -> int | None:
  for step, v in points:
    if v >= threshold:
      return step
  return None


# ------------------------------------------------------------------------------- plots
def plot_fewshot(summary, tasks: Sequence[str], metric: str, path: pathlib.Path) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.8), squeeze=False)
  for ax, task in zip(axes[0], tasks):
    for model in ORDER:
      pts = sorted((shot, m, s) for (mo, t, shot, met), (m, s, _) in summary.items()
                   if mo == model and t == task and met == metric)
      if not pts:
        continue
      x, y, e = zip(*pts)
      ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=LABELS[model], color=COLORS[model],
                  linestyle="--" if model == RANDOM else "-")
    ax.set_xscale("log")
    ax.set_xlabel("shots (Splice-40: x10 per class)" if task == "splice_40" else "shots")
    ax.set_title(task + (" (GUE proxy test)" if task == "prom_300" else ""))
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
  fig.suptitle(f"Few-shot {metric} (mean ± sample std over seeds)")
  fig.tight_layout(rect=(0, 0.07, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_training(logs: dict[str, list], probe_keys: Sequence[str], path: pathlib.Path) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  n = len(probe_keys) + 1
  fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.8), squeeze=False)
  ax = axes[0][0]
  for name, log in logs.items():
    pts = series(log, "eval/loss")
    if pts:
      ax.plot(*zip(*pts), marker=".", label=LABELS[name], color=COLORS[name])
  ax.set_title("held-out MLM loss (own masking)")
  ax.set_xlabel("pretraining step")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  for ax, key in zip(axes[0][1:], probe_keys):
    for name, log in logs.items():
      pts = series(log, key)
      if pts:
        ax.plot(*zip(*pts), marker="o", label=LABELS[name], color=COLORS[name])
    ax.set_title(key.removeprefix("fewshot/"))
    ax.set_xlabel("pretraining step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle("In-training linear probe vs pretraining step")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ------------------------------------------------------------------------------- report
def _fmt(summary, model, task, shot, metric) -> str:
  v = summary.get((model, task, shot, metric))
  return "—" if v is None else f"{v[0]:.3f} ± {v[1]:.3f}"


def write_report(a: argparse.Namespace, timings: dict[str, Any], command: str) -> pathlib.Path:
  work = pathlib.Path(a.workdir)
  docs = pathlib.Path(a.docs_dir)
  figs = docs / "figures"
  figs.mkdir(parents=True, exist_ok=True)
  rows = read_results(work)
  summary = summarize(rows)
  tasks = [t for t in a.tasks.split(",") if any(r["task"] == t for r in rows)]
  models = [m for m in ORDER if any(r["model"] == m for r in rows)]
  meta = {}
  for r in rows:
    meta.setdefault((r["task"], r["shot"]), r)

  logs = {n: read_log(work / n) for n in VARIANTS}
  probe_keys = sorted({k for n in ("genemask", "dnabert") for row in logs[n] for k in row
                       if k.startswith("fewshot/") and k.endswith("/mcc")})
  L = []
  L.append("# Reproduction study: GeneMask vs DNABERT vs BERT masking at laptop scale")
  L.append("")
  L.append(f"Generated by `{command}` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC "
           f"(2-core CPU dev machine, no GPU). Regenerate with the same command; the "
           f"full-size command is at the end.")
  L.append("")
  L.append("## Summary")
  L.append("")
  key_pairs = [("genemask", "dnabert"), ("genemask", "genemask_position"), ("genemask", "bert"),
               ("genemask", RANDOM), ("dnabert", RANDOM)]
  for x, y in key_pairs:
    if x not in models or y not in models:
      continue
    c = compare(summary, x, y, "mcc")
    up = sum(r["exceeds"] and r["diff"] > 0 for r in c)
    down = sum(r["exceeds"] and r["diff"] < 0 for r in c)
    wins = sum(r["diff"] > 0 for r in c)
    L.append(f"- {LABELS[x]} vs {LABELS[y]}: higher mean MCC in {wins} of {len(c)} "
             f"task × shot cells; the difference exceeds 2 × the pooled seed std in {up} "
             f"cell(s) in favour of {x} and {down} in favour of {y}; the other "
             f"{len(c) - up - down} are within the seed-to-seed spread.")
  if "bert" in models and "genemask" in models:
    c = compare(summary, "genemask", "bert", "mcc")
    if sum(r["exceeds"] and r["diff"] < 0 for r in c) > sum(r["exceeds"] and r["diff"] > 0
                                                            for r in c):
      L.append("- BERT token masking gives the best frozen features at this budget. A single "
               "masked overlapping 6-mer is fully determined by its unmasked neighbours (the "
               "reason DNABERT masks 6-token spans), so BERT's objective is the easiest one "
               "to learn in a few hundred steps; this run does not show whether that ordering "
               "survives longer pretraining or fine-tuning.")
  L.append(f"- Scale: {a.steps} pretraining steps of a {a.model_size} model is a tiny fraction of "
           "the paper's pretraining, and the evaluation is a frozen-encoder linear probe"
           if a.mode == "linear_probe" else f"- Scale: {a.steps} pretraining steps")
  L[-1] += ("; read the numbers as what this budget shows, not as a test of the paper's "
            "full-scale claims.")
  L.append("")
  L.append("## What was run")
  L.append("")
  L.append(f"- Pretraining, identical for every variant except the masking: model "
           f"`{a.model_size}`, corpus = both shared genome files "
           f"({', '.join(os.path.basename(f) for f in genome_files(a.data_dir))}, ~88 Mbp ACGT), "
           f"**{a.steps} steps x batch {a.batch_size} x {a.max_len} tokens** "
           f"({a.steps * a.batch_size * a.max_len / 1e6:.2f} M tokens, far below the paper's "
           f"10k x 250 x 512), AdamW peak LR 1e-3 with {max(1, a.steps // 10)} warm-up steps, "
           f"seed {a.seed}, one NPMI table computed from the same corpus for (a) and (b).")
  for n in ORDER:
    presets = VARIANTS[n][1] if n in VARIANTS else "—"
    L.append(f"  - {LABELS[n]}: " + (f"`--config=configs/pretrain.py:{presets}`"
                                        if n in VARIANTS else "`--init=random` in the few-shot binary"))
  shots_txt = a.shots or "every shot each task ships (10, 50, 100, 500, 1000 for the promoter tasks; 10, 50, 100, 500 for Cohn-enh and Splice-40)"
  L.append(f"- Few-shot evaluation: `python -m genemask_jax.fewshot --mode={a.mode}` on "
           f"{', '.join(tasks)}, shots: {shots_txt}; **{a.seeds} seeds**; test sets "
           f"subsampled to a fixed **{a.max_test_examples} rows** per task (the same rows "
           f"for every model).")
  if a.mode == "linear_probe":
    L.append("- Mode `linear_probe`: frozen encoder, mean-pooled last hidden states, logistic "
             "regression; this measures the pretrained *features*, not Script-B fine-tuning. "
             "It was chosen because it fits the CPU budget (fine-tune timing below).")
  if a.resample:
    L.append("- `--resample`: each seed draws its own N-shot training set (same size per "
             "class) from the union of the task's shipped train files, and the test set "
             "excludes every sequence of that union. A frozen encoder on one fixed train file "
             "would give identical numbers for every seed, so the seed spread here is the "
             "spread over training-set draws (and over random encoders for (e)).")
  L.append(f"- {PROXY_NOTE}: its numbers are not comparable with the paper's Prom-300 column.")
  L.append("- Splice-40's \"N-shot\" files hold 10·N examples per class.")
  if a.probe_every:
    L.append(f"- In-training probe for (a) and (c): every {a.probe_every} steps, linear probe "
             f"on {a.probe_tasks} at {a.probe_shots} shots, {a.probe_max_test_examples} test "
             "rows (logged as `fewshot/<task>_<shot>shot/<metric>` in each workdir's log.jsonl).")
  L.append("")
  if timings:
    L.append("Wall time of each stage (2-core CPU shared with other work; 1-minute load "
             "average when the stage ended in brackets):")
    L.append("")
    L.append("| stage | wall | load |")
    L.append("|---|---|---|")
    for k, v in timings.items():
      L.append(f"| {k} | {v['seconds'] / 60:.1f} min | {v['load_after']:.1f} |")
    L.append("")
  ft = work / "finetune_timing" / "results.csv"
  if ft.exists() and "finetune_timing" in timings:
    with open(ft, encoding="utf-8") as f:
      frows = list(csv.DictReader(f))
    acc = [r["value"] for r in frows if r["metric"] == "accuracy"]
    mcc = [r["value"] for r in frows if r["metric"] == "mcc"]
    secs = timings["finetune_timing"]["seconds"]
    est = secs * finetune_grid_units(a) / finetune_grid_units(a, only=("prom_core", 100)) / 3600
    L.append(f"One Script-B fine-tune of (a) on prom_core 100-shot (1 seed, 20 epochs, batch "
             f"5, 200 train rows, {a.max_test_examples} test rows) took {secs:.0f} s of wall "
             f"time including start-up (accuracy {float(acc[0]):.3f}, MCC {float(mcc[0]):.3f}). "
             f"Scaled by training tokens (rows x epochs x length; a rough extrapolation that "
             f"ignores attention's quadratic cost, so low for Cohn-enh), the full fine-tune grid "
             f"({len(ORDER)} models x {sum(len(t) for _, t in eval_plan(a))} task-shots x "
             f"{a.seeds} seeds) would take about **{est * len(ORDER) * a.seeds:.0f} hours** on "
             "this CPU, which is why the grid below is a linear probe.")
    L.append("")
  L.extend(measured_grid_lines(len(ORDER)))

  L.append("## Results: mean ± sample std over seeds")
  L.append("")
  missing = [f"{task}@{shot} ({', '.join(m for m in ORDER if (m, task, shot, 'mcc') not in summary)})"
             for shot, ts in eval_plan(a) for task in ts
             if any((m, task, shot, "mcc") not in summary for m in ORDER)]
  if missing:
    L.append("**Not evaluated in this run** (the run was stopped at its time budget; rerun "
             "the same command to add them, finished cells are kept): " + "; ".join(missing)
             + ".")
    L.append("")
  for task in tasks:
    shots = sorted({s for (m, t, s, met) in summary if t == task})
    first = meta[(task, shots[0])]
    title = task + (" — **scored on the GUE proxy test set**" if task == "prom_300" else "")
    L.append(f"### {title}")
    L.append("")
    L.append(f"Test rows scored: {first['n_test']} of {first['n_test_full']} "
             f"(test set: {first['test_set']}).")
    L.append("")
    for metric in ("mcc", "accuracy"):
      L.append(f"{metric.upper() if metric == 'mcc' else 'Accuracy'}:")
      L.append("")
      L.append("| shot | " + " | ".join(LABELS[m] for m in models) + " |")
      L.append("|---|" + "---|" * len(models))
      for shot in shots:
        L.append(f"| {shot} | " + " | ".join(_fmt(summary, m, task, shot, metric)
                                            for m in models) + " |")
      L.append("")
  L.append("![few-shot MCC](figures/fewshot_mcc.png)")
  L.append("")
  L.append("![few-shot accuracy](figures/fewshot_accuracy.png)")
  L.append("")
  plot_fewshot(summary, tasks, "mcc", figs / "fewshot_mcc.png")
  plot_fewshot(summary, tasks, "accuracy", figs / "fewshot_accuracy.png")

  L.append("## Which differences exceed the seed-to-seed spread")
  L.append("")
  L.append("Rule: a difference of means counts only if |mean diff| > 2 × pooled std, "
           "pooled = sqrt((s₁² + s₂²)/2) over the seeds of each cell (sample stds). With "
           f"{a.seeds} seeds this is a rough screen, not a significance test; every model is "
           "scored on the same fixed test subset, so test-sampling noise is not in the "
           "spread.")
  L.append("")
  pairs = [("genemask", "dnabert"), ("genemask", "genemask_position"), ("genemask", "bert"),
           ("dnabert", "bert"), ("genemask", RANDOM), ("dnabert", RANDOM),
           ("genemask_position", RANDOM), ("bert", RANDOM)]
  L.append("| comparison (MCC) | cells | exceed, first better | exceed, second better | within spread |")
  L.append("|---|---|---|---|---|")
  details = []
  for x, y in pairs:
    if x not in models or y not in models:
      continue
    c = compare(summary, x, y, "mcc")
    up = [r for r in c if r["exceeds"] and r["diff"] > 0]
    down = [r for r in c if r["exceeds"] and r["diff"] < 0]
    cells = lambda rs: ", ".join(f"{r['task']}@{r['shot']} ({r['diff']:+.3f})" for r in rs) or "none"
    L.append(f"| {LABELS[x]} vs {LABELS[y]} | {len(c)} | {len(up)} | {len(down)} | "
             f"{len(c) - len(up) - len(down)} |")
    details.append(f"- {LABELS[x]} vs {LABELS[y]}: first better in {cells(up)}; second "
                   f"better in {cells(down)}.")
  L.append("")
  L += details
  L.append("")
  L.append("(Prom-300 cells are on the GUE proxy test set.)")
  L.append("")

  if probe_keys:
    plot_training({n: logs[n] for n in VARIANTS if logs[n]}, probe_keys,
                  figs / "probe_vs_step.png")
    L.append("## In-training probe: (a) GeneMask vs (c) DNABERT against pretraining steps")
    L.append("")
    L.append("The step at which each run first reaches a given few-shot score is the measured "
             "form of the paper's \"under a tenth of the epochs\" claim. Threshold = 90% of "
             "the lower of the two runs' best probe MCC (so both reach it).")
    L.append("")
    L.append("| probe | (a) best MCC | (c) best MCC | threshold | (a) first step | (c) first step |")
    L.append("|---|---|---|---|---|---|")
    for key in probe_keys:
      pa, pc = series(logs["genemask"], key), series(logs["dnabert"], key)
      if not pa or not pc:
        continue
      ba, bc = max(v for _, v in pa), max(v for _, v in pc)
      thr = 0.9 * min(ba, bc)
      L.append(f"| {key.removeprefix('fewshot/')} | {ba:.3f} | {bc:.3f} | {thr:.3f} | "
               f"{first_step_reaching(pa, thr)} | {first_step_reaching(pc, thr)} |")
    L.append("")
    L.append("Probe values per step (MCC), (a) / (c):")
    L.append("")
    steps = sorted({s for key in probe_keys for n in ("genemask", "dnabert")
                    for s, _ in series(logs[n], key)})
    L.append("| step | " + " | ".join(k.removeprefix("fewshot/") + " (a) / (c)"
                                       for k in probe_keys) + " |")
    L.append("|---|" + "---|" * len(probe_keys))
    for s in steps:
      cells = []
      for key in probe_keys:
        da, dc = dict(series(logs["genemask"], key)), dict(series(logs["dnabert"], key))
        cells.append(f"{da.get(s, float('nan')):.3f} / {dc.get(s, float('nan')):.3f}")
      L.append(f"| {s} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("Each probe point is one linear probe on one fixed train file (no seed spread "
             "is measured for it); read small differences as noise.")
    L.append("")
    L.append("![probe vs step](figures/probe_vs_step.png)")
    L.append("")
  final = []
  for n in VARIANTS:
    ev = series(logs[n], "eval/loss")
    if ev:
      final.append(f"{LABELS[n]} {ev[-1][1]:.3f}")
  if final:
    L.append("Final held-out MLM loss (each on its own masking, so not comparable across "
             "variants as a quality measure): " + "; ".join(final) + ".")
    L.append("")
  L.append("## Reproduce")
  L.append("")
  L.append("Size run here:")
  L.append("")
  L.append("```bash")
  L.append(f"GENEMASK_DATA_DIR=../shared/data {command}")
  L.append("```")
  L.append("")
  pre = sum(v["seconds"] for k, v in timings.items() if k.startswith("pretrain/"))
  ev = sum(v["seconds"] for k, v in timings.items() if k.startswith("fewshot/"))
  L.append(f"This run's stages took {pre / 60:.0f} min of pretraining and {ev / 60:.0f} min of "
           f"few-shot evaluation, {(pre + ev) / 60:.0f} min together (wall, on a machine shared "
           "with other work; the issue's budget is about 2 hours of CPU). A larger run (more steps, seeds and "
           "test rows; resumable, rerun the same command after a crash) — by the stage times "
           f"above roughly {(pre * 2000 / max(a.steps, 1) + ev * 5 / a.seeds * 1.5) / 3600:.0f} "
           "hours here (pretraining scales with steps, evaluation with seeds and, partly, test "
           "rows; an estimate, not a measurement):")
  L.append("")
  L.append("```bash")
  L.append("GENEMASK_DATA_DIR=../shared/data python benchmarks/study.py --steps=2000 "
           "--seeds=5 --max_test_examples=2000 --workdir=/tmp/genemask_study_full")
  L.append("```")
  L.append("")
  L.append("`--mode=finetune` runs Script-B fine-tuning instead of the linear probe (hours "
           "to days on this CPU; meant for an accelerator).")
  out = docs / "results.md"
  out.write_text("\n".join(L) + "\n", encoding="utf-8")
  return out


def main(argv: Sequence[str]) -> None:
  a = parse_args(argv)
  command = "python benchmarks/study.py " + " ".join(
      shlex.quote(x) for x in argv
      if not x.startswith(("--data_dir", "--report_only", "--docs_dir")))
  timings = {}
  if not a.report_only:
    _log(f"study in {a.workdir}: {a.steps} steps x {a.batch_size} x {a.max_len}, "
         f"{a.mode}, {a.seeds} seeds; load average {os.getloadavg()}")
    timings = run_study(a)
  else:
    p = pathlib.Path(a.workdir) / "timings.json"
    timings = json.loads(p.read_text()) if p.exists() else {}
  out = write_report(a, timings, command.strip())
  _log(f"wrote {out}")


if __name__ == "__main__":
  main(sys.argv[1:])
