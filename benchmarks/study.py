r"""The reproduction study of issue #15: does GeneMask's masking show at block 512?

Four masking arms pretrained with everything else equal, two pretraining seeds each, plus
no pretraining; every model scored by Script-B fine-tuning and by a linear probe at 10, 50
and 100 shots; a paired test across cells and seeds. One script, two budgets, resumable
(rerun the same command after a crash; finished stages are kept):

    GENEMASK_DATA_DIR=../shared/data nice python benchmarks/study.py --budget=cpu
        # ~90 min on the 2-core dev machine; writes docs/results.md and docs/figures/

    GENEMASK_DATA_DIR=../shared/data python benchmarks/study.py --budget=gpu --pack=.study_pack
    ../shared/tools/gpu_wheels.sh .whl
        # here: the corpus, few-shot tasks and NPMI table (~38 MiB) and the wheels the
        # CUDA image lacks (~11 MB), both git-ignored, carried to the GPU machine; there:
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 \
      && python3 benchmarks/study.py --budget=gpu --data_dir=.study_pack \
         --npmi=.study_pack/npmi/table.csv --workdir=/tmp/study_gpu --docs_dir=$OUT/docs
        # one H200 (../shared/GPU.md): no stage starts after 8 min, none runs past 9;
        # writes DOCS/results_gpu.md, study_data_gpu.json and figures/*_gpu.png

    GENEMASK_DATA_DIR=... python benchmarks/study.py --budget=toy   # minutes, smoke size

Arms (same model, corpus, steps, batch, block, schedule and seeds; only the masking differs):

  (a) genemask           GeneMask, NPMI rank of the token at each position (ours)
  (b) genemask_position  GeneMask as the authors' repository HEAD (`:position` preset): rank
                         looked up by position, their defaultdict(int) table (positions 1-4
                         rank 0 = best), random replacement over the whole vocabulary. Their
                         first release (July 2023) also put every 11-token span on the last
                         centre; no arm reproduces that.
  (c) dnabert            DNABERT 6-token span masking
  (d) bert               BERT token masking
  (e) random             no pretraining (a random encoder per replicate)

Before pretraining, every arm's masks are drawn on real corpus rows (the training chunker,
block `max_len`): `max_predictions` is sized per arm so that at most 1% of rows overflow
it, and the realised masked fraction, overflow share and the share of rows where the NPMI
"better half" rule engaged (more than 8 centres) go into the report. `--equalise_rate=F`
solves each arm's centre probability so that every arm masks the fraction F of tokens.

Replicates: pretraining seed s = 0..S-1 with few-shot seeds s*F .. s*F+F-1 (the same
few-shot seeds for every arm, so replicate r of two arms shares its training data order).
Work goes to `--workdir` (never the repository); only the report and figures are written
into `--docs_dir`. The stages are budgeted: no stage starts after `--time_limit_min`, and
the report names the cells not reached.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import datetime
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import threading
import time
from typing import Any, Sequence

# This process only draws masks for the statistics: keep its JAX on the CPU so that it
# holds no accelerator memory (JAX preallocates 75% of a GPU); the children get the
# caller's setting back (`_child_env`).
_CALLER_JAX_PLATFORMS = os.environ.get("JAX_PLATFORMS")
os.environ["JAX_PLATFORMS"] = "cpu"
# This checkout's genemask_jax, as the children get it.
sys.path.insert(1, str(pathlib.Path(__file__).resolve().parent.parent))

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from genemask_jax import report  # pylint: disable=g-import-not-at-top,wrong-import-position
import study_plots  # pylint: disable=g-import-not-at-top,wrong-import-position
import study_stats as st  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = pathlib.Path(__file__).resolve().parent.parent
# A report cell: mean and sample std (ddof=1) over replicates (genemask_jax.report).
SUMMARY_KEYS = ("arm", "mode", "task", "shot", "metric")

# name -> (label, config presets, masking strategy, masking options as the config sets them)
ARMS: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "genemask": ("(a) GeneMask, content rank", "genemask", "genemask", {}),
    "genemask_position": ("(b) GeneMask, position rank (authors' HEAD)", "genemask,position",
                          "genemask", {"rank_source": "position", "specials_rank_zero": True,
                                       "random_over": "vocab"}),
    "dnabert": ("(c) DNABERT 6-token spans", "dnabert", "dnabert", {}),
    "bert": ("(d) BERT tokens", "bert", "bert", {}),
}
RANDOM = "random"
LABELS = {**{k: v[0] for k, v in ARMS.items()}, RANDOM: "(e) no pretraining"}
ORDER = [*ARMS, RANDOM]
COLORS = dict(zip(ORDER, ["C0", "C1", "C2", "C3", "C7"]))
TASKS = ["prom_core", "prom_300", "cohn_enh", "splice_40"]
TASK_DIRS = {"prom_core": "Prom-core", "prom_300": "Prom-300", "cohn_enh": "Cohn-enh",
             "splice_40": "Splice-40"}
MODES = ("finetune", "linear_probe")
PAIRS = [("genemask", "dnabert"), ("genemask", "genemask_position"), ("genemask", "bert"),
         ("dnabert", "bert"), ("genemask", RANDOM), ("dnabert", RANDOM),
         ("genemask_position", RANDOM), ("bert", RANDOM)]

# Budgets. cpu: sized from a measured 0.56-0.60 steps/s (1.7 s/step) of `tiny` at 8 x 512
# (steps 5-20 of a 20-step main.py run at nice 10, 1-min load 5.8-6.6 from other jobs on the
# 2-core dev machine, 2026-11-28): 8 pretraining runs x (120 steps x 1.7 s + ~40-60 s
# start-up, as the toy runs measured) ~ 35 min; Script-B on prom_core (the shortest
# promoter task) took 94 s per model at 100 shots in the previous study (docs/results.md,
# load 4.6), so ~3 min per model for 10+50+100 -> ~30 min for 10 models; the probe on all
# four tasks ~15 min; NPMI (2 s), two corpus builds (~20 s each), statistics ~2 min. No
# stage starts after 88 min.
# gpu: the `logo` model (the authors' Code-E LOGO-like size: MLP 3072 vs tiny's 1024, ~1.7x
# tiny's parameters) in bfloat16, 64 x 512 x 600 steps = 19.7 M tokens per run (40x the
# CPU budget's 0.49 M). GPU.md measured dnabert_base at 220k tokens/s (64 x 512); logo
# needs ~1/22 of its FLOPs per token, so even at a quarter of base's efficiency ~1.2 M
# tokens/s: ~16 s per run, 8 runs 4 at a time (compiles overlap) ~2.5 min with start-up;
# Script-B and the probe on all four tasks, whole test sets, 4 processes at a time, ~4-5
# min. An estimate from GPU.md figures (no GPU was at hand when it was sized): no stage
# starts after 8 min and a running one is stopped at 9, so the run and its report end
# inside a 10-minute device call.
BUDGETS: dict[str, dict[str, Any]] = {
    "toy": dict(model_size="tiny", dtype="float32", max_len=64, steps=4, batch_size=4,
                pretrain_seeds=2, fewshot_seeds=1, finetune_tasks="prom_core",
                probe_tasks="prom_core", shots="10", max_test_examples=32, stats_rows=64,
                eval_examples=8, jobs=1, time_limit_min=30.0, epochs=2),
    "cpu": dict(model_size="tiny", dtype="float32", max_len=512, steps=120, batch_size=8,
                pretrain_seeds=2, fewshot_seeds=1, finetune_tasks="prom_core",
                probe_tasks=",".join(TASKS), shots="10,50,100", max_test_examples=256,
                stats_rows=512, eval_examples=32, jobs=1, time_limit_min=88.0, epochs=0),
    "gpu": dict(model_size="logo", dtype="bfloat16", max_len=512, steps=600, batch_size=64,
                pretrain_seeds=2, fewshot_seeds=2, finetune_tasks=",".join(TASKS),
                probe_tasks=",".join(TASKS), shots="10,50,100", max_test_examples=0,
                stats_rows=512, eval_examples=512, jobs=4, time_limit_min=8.0, epochs=0),
}
MACHINE = {"toy": "this machine", "cpu": "the 2-core CPU dev machine (shared with other work)",
           "gpu": "one GPU"}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
  p.add_argument("--workdir", default=None, help="Default /tmp/genemask_study_BUDGET.")
  p.add_argument("--data_dir", default=os.environ.get("GENEMASK_DATA_DIR", ""),
                 help="Folder holding genome/ and fewshot/ (default $GENEMASK_DATA_DIR).")
  p.add_argument("--docs_dir", default=None,
                 help="Report and figures (default: the repo's docs/ for cpu and gpu, "
                 "WORKDIR/docs for toy).")
  p.add_argument("--npmi", default="corpus",
                 help="'corpus': compute one table from the study's FASTA (once, in the "
                 "workdir); else the path of a table every GeneMask arm reads.")
  p.add_argument("--pack", default="",
                 help="Copy what a run of this budget needs from --data_dir (corpus, "
                 "few-shot tasks, the NPMI table) into this folder of the repo, then stop.")
  p.add_argument("--arms", default=",".join(ORDER), help="Subset of " + ",".join(ORDER))
  p.add_argument("--equalise_rate", type=float, default=0.0,
                 help="> 0: every arm's centre probability solved so it masks this fraction "
                 "of tokens (e.g. 0.15); 0 = each arm's own default rate.")
  p.add_argument("--modes", default=",".join(MODES))
  p.add_argument("--report_only", action="store_true")
  for key, value in BUDGETS["cpu"].items():  # Each budget value can be overridden.
    p.add_argument(f"--{key}", type=type(value), default=None,
                   help=f"Override the budget's {key} (cpu: {value}).")
  a = p.parse_args(argv)
  for key, value in BUDGETS[a.budget].items():
    if getattr(a, key) is None:
      setattr(a, key, value)
  a.workdir = a.workdir or f"/tmp/genemask_study_{a.budget}"
  if a.docs_dir is None:
    a.docs_dir = (os.path.join(a.workdir, "docs") if a.budget == "toy"
                  else str(REPO / "docs"))
  if not a.data_dir:
    p.error("--data_dir or $GENEMASK_DATA_DIR is required (the folder holding genome/ and "
            "fewshot/)")
  a.arms = [x for x in a.arms.split(",") if x]
  a.modes = [x for x in a.modes.split(",") if x]
  bad = [x for x in a.arms if x not in ORDER] + [x for x in a.modes if x not in MODES]
  if bad:
    p.error(f"unknown arm(s) or mode(s) {bad}; arms: {ORDER}; modes: {list(MODES)}")
  if a.pretrain_seeds < 2 and a.budget != "toy":
    p.error(f"--pretrain_seeds must be >= 2 to measure a pretraining spread, got "
            f"{a.pretrain_seeds}")
  if not 0.0 <= a.equalise_rate < 1.0:
    p.error(f"--equalise_rate must be in [0, 1), got {a.equalise_rate}")
  return a


def shots(a) -> list[int]:
  return [int(s) for s in a.shots.split(",") if s.strip()]


def mode_tasks(a, mode: str) -> list[str]:
  return [t for t in (a.finetune_tasks if mode == "finetune" else a.probe_tasks).split(",")
          if t]


# ------------------------------------------------------------------------------ running
_print_lock = threading.Lock()


def _log(msg: str) -> None:
  with _print_lock:
    print(f"[study {datetime.datetime.now(datetime.timezone.utc):%H:%M:%S}Z] {msg}",
          flush=True)


class Clock:
  """The stage budget: no stage starts after the limit; a running one is stopped 60 s past
  it (its results are then missing and the report says so)."""

  def __init__(self, limit_min: float):
    self.t0 = time.time()
    self.limit = limit_min * 60

  def left(self) -> float:
    return self.limit - (time.time() - self.t0)


def _run(cmd: list[str], log_path: pathlib.Path, env: dict[str, str],
         timeout: float | None = None) -> float:
  """Runs `cmd` (output to `log_path`); returns wall seconds; raises on failure."""
  _log("$ " + " ".join(shlex.quote(c) for c in cmd))
  t0 = time.time()
  with open(log_path, "w", encoding="utf-8") as f:
    try:
      rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                          timeout=timeout, check=False).returncode
    except subprocess.TimeoutExpired as e:
      raise RuntimeError(f"stopped at the time budget after {time.time() - t0:.0f}s: "
                         f"see {log_path}") from e
  wall = time.time() - t0
  if rc:
    tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
    raise RuntimeError(f"exit {rc} after {wall:.0f}s ({log_path}): {' | '.join(tail)}")
  _log(f"  done in {wall:.0f}s: {log_path.name}")
  return wall


def _child_env(a) -> dict[str, str]:
  """The binaries' environment: the caller's (JAX_PLATFORMS as the caller had it), the
  data dir, and this checkout first on PYTHONPATH."""
  env = dict(os.environ, GENEMASK_DATA_DIR=a.data_dir,
             PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get(
                 "PYTHONPATH")])]))
  env.pop("JAX_PLATFORMS")
  if _CALLER_JAX_PLATFORMS is not None:
    env["JAX_PLATFORMS"] = _CALLER_JAX_PLATFORMS
  return env


def genome_files(data_dir: str) -> list[str]:
  files = sorted(str(p) for p in (pathlib.Path(data_dir) / "genome").glob("*.fa*"))
  if not files:
    raise SystemExit(f"no FASTA files in {data_dir}/genome")
  return files


def pack(a) -> pathlib.Path:
  """Copies the corpus, the few-shot files the budget reads and an NPMI table into a folder
  of the repository (git-ignored), so that a device run can carry them."""
  dest = (REPO / a.pack) if not os.path.isabs(a.pack) else pathlib.Path(a.pack)
  src = pathlib.Path(a.data_dir)
  (dest / "genome").mkdir(parents=True, exist_ok=True)
  for f in genome_files(a.data_dir):
    shutil.copy2(f, dest / "genome")
  wanted = {str(s) for s in shots(a)}
  for task in sorted({t for m in a.modes for t in mode_tasks(a, m)}):
    d = src / "fewshot" / TASK_DIRS[task]
    shutil.copytree(d, dest / "fewshot" / TASK_DIRS[task], dirs_exist_ok=True,
                    ignore=lambda where, names, d=d: [
                        n for n in names if pathlib.Path(where) == d
                        and (pathlib.Path(where) / n).is_dir() and n not in wanted])
  (dest / "npmi").mkdir(exist_ok=True)
  table = dest / "npmi" / "table.csv"
  if a.npmi == "corpus":
    if not table.exists():
      _run([sys.executable, "-m", "genemask_jax.npmi",
            f"--fasta={','.join(genome_files(a.data_dir))}", f"--output={table}"],
           dest / "npmi" / "npmi.log", _child_env(a))
  else:
    shutil.copy2(a.npmi, table)
  size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
  _log(f"packed {size / 2**20:.1f} MiB into {dest}")
  return dest


def pretrain_dir(a, arm: str, seed: int) -> pathlib.Path:
  return pathlib.Path(a.workdir) / "pretrain" / f"{arm}_s{seed}"


def pretrain_cmd(a, arm: str, seed: int, npmi_csv: str, masks: dict[str, Any]) -> list[str]:
  _, presets, _, _ = ARMS[arm]
  steps = a.steps
  cmd = [sys.executable, "main.py", f"--config=configs/pretrain.py:default,{presets}",
         f"--workdir={pretrain_dir(a, arm, seed)}",
         f"--config.seed={seed}",
         f"--config.model.size={a.model_size}",
         f"--config.model.dtype={a.dtype}",
         f"--config.data.fasta={','.join(genome_files(a.data_dir))}",
         f"--config.data.tfds_dir={pathlib.Path(a.workdir) / 'tfds'}",
         f"--config.data.max_len={a.max_len}",
         f"--config.masking.max_predictions={masks[arm]['max_predictions']}",
         f"--config.npmi.source={npmi_csv}",
         f"--config.train.batch_size={a.batch_size}",
         f"--config.train.num_steps={steps}",
         f"--config.train.log_every={max(1, min(20, steps // 10))}",
         f"--config.train.checkpoint_every={steps}",
         f"--config.optim.warmup_steps={max(1, steps // 10)}",
         f"--config.eval.every={max(1, steps // 5)}",
         f"--config.eval.batch_size={min(a.eval_examples, 64)}",
         f"--config.eval.num_examples={a.eval_examples}"]
  if a.equalise_rate:
    cmd.append(f"--config.masking.p={masks[arm]['p']}")
  return cmd


# Fine-tuning runs one process per task, costliest first (Splice-40's "N-shot" files hold
# 10 N rows per class; Cohn-enh has 497-token rows), so that a stage stopped at the budget
# loses one task and the long ones start first; the probe runs all tasks in one process.
_FINETUNE_ORDER = ["splice_40", "cohn_enh", "prom_300", "prom_core"]
DONE = "study_done"  # Written into a few-shot output dir once its process succeeded.


def eval_units(a) -> list[tuple[str, int, list[str]]]:
  """(mode, pretraining seed, tasks) of each few-shot process, in launch order."""
  units = []
  for mode in a.modes:
    tasks = mode_tasks(a, mode)
    if mode == "finetune":
      groups = [[t] for t in sorted(tasks, key=lambda t: (
          _FINETUNE_ORDER.index(t) if t in _FINETUNE_ORDER else len(_FINETUNE_ORDER)))]
    else:
      groups = [tasks]
    units += [(mode, s, g) for g in groups for s in range(a.pretrain_seeds)]
  return units


def fewshot_dir(a, mode: str, seed: int, tasks: Sequence[str]) -> pathlib.Path:
  name = f"{mode}_s{seed}" + (f"_{tasks[0]}" if mode == "finetune" else "")
  return pathlib.Path(a.workdir) / "fewshot" / name


def fewshot_cmd(a, mode: str, seed: int, tasks: Sequence[str]) -> list[str]:
  models = [f"{arm}={pretrain_dir(a, arm, seed)}" for arm in a.arms if arm in ARMS]
  if RANDOM in a.arms:
    models.append("random=random")
  cmd = [sys.executable, "-m", "genemask_jax.fewshot", f"--data_dir={a.data_dir}",
         f"--checkpoint={','.join(models)}", f"--model_size={a.model_size}",
         f"--tasks={','.join(tasks)}", f"--shots={a.shots}",
         f"--seeds={a.fewshot_seeds}", f"--seed_offset={seed * a.fewshot_seeds}",
         f"--mode={mode}", f"--output_dir={fewshot_dir(a, mode, seed, tasks)}", "--noprogress"]
  if a.max_test_examples:
    cmd.append(f"--max_test_examples={a.max_test_examples}")
  if a.epochs:
    cmd.append(f"--epochs={a.epochs}")
  return cmd


def masking_plan(a, npmi_csv: str) -> dict[str, Any]:
  """Per arm: p, max_predictions and the statistics (cached in WORK/masking.json, so a
  resumed run pretrains with the same settings)."""
  path = pathlib.Path(a.workdir) / "masking.json"
  if path.exists():
    plan = json.loads(path.read_text())
    if (plan.get("max_len") == a.max_len and plan.get("equalise_rate") == a.equalise_rate
        and all(arm in plan["arms"] for arm in a.arms if arm in ARMS)):
      return plan["arms"]
  from genemask_jax import npmi  # pylint: disable=g-import-not-at-top
  rank = npmi.load_lookup(npmi_csv).rank
  t0 = time.time()
  rows = st.corpus_rows(genome_files(a.data_dir), a.max_len,
                        max(1, a.stats_rows // len(genome_files(a.data_dir))))
  arms = {}
  for arm in ARMS:
    if arm not in a.arms:
      continue
    _, _, strategy, opts = ARMS[arm]
    p = (st.solve_p(rows, rank, strategy, opts, a.equalise_rate) if a.equalise_rate
         else None)
    # P is sized on 4 independent centre draws per row (the 99th percentile of 512 rows
    # alone is noisy), then checked on a fifth.
    s = st.masking_stats(np.tile(rows, (4, 1)), rank, strategy, opts, p=p, seed=1)
    # Check on an independent draw of centres: the overflow a run will see.
    check = st.masking_stats(rows, rank, strategy, opts, p=s.p,
                             max_predictions=s.max_predictions, seed=2)
    arms[arm] = {**s.as_dict(), "check_overflow_share": check.overflow_share}
    _log(f"masking {arm}: p={s.p:.5f} masked {s.masked_fraction:.4f}, P={s.max_predictions} "
         f"(overflow {s.overflow_share:.4f}, independent draw {check.overflow_share:.4f}), "
         f"NPMI rule engaged in {s.engaged_share} of rows")
  path.write_text(json.dumps({"max_len": a.max_len, "equalise_rate": a.equalise_rate,
                              "rows": int(rows.shape[0]), "seconds": time.time() - t0,
                              "arms": arms}, indent=2))
  return arms


def run_study(a) -> dict[str, Any]:
  """Runs every missing stage within the time budget; returns the timings."""
  clock = Clock(a.time_limit_min)
  work = pathlib.Path(a.workdir)
  (work / "logs").mkdir(parents=True, exist_ok=True)
  env = _child_env(a)
  if a.budget == "gpu":  # Several processes share the GPU: split its memory between them.
    env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / max(a.jobs, 1):.2f}"
  timings_path = work / "timings.json"
  timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
  lock = threading.Lock()

  def record(key, seconds):
    with lock:
      timings[key] = {"seconds": seconds, "load_after": os.getloadavg()[0]}
      timings_path.write_text(json.dumps(timings, indent=2))

  npmi_csv = a.npmi
  if a.npmi == "corpus":
    npmi_csv = str(work / "npmi" / "table.csv")
    if not pathlib.Path(npmi_csv).exists():
      pathlib.Path(npmi_csv).parent.mkdir(parents=True, exist_ok=True)
      record("npmi", _run([sys.executable, "-m", "genemask_jax.npmi",
                           f"--fasta={','.join(genome_files(a.data_dir))}",
                           f"--output={npmi_csv}"], work / "logs" / "npmi.log", env))
  t0 = time.time()
  masks = masking_plan(a, npmi_csv)
  timings.setdefault("masking statistics", {"seconds": time.time() - t0,
                                            "load_after": os.getloadavg()[0]})

  def stage(key, cmd, log_name, done, mark=None):
    """Runs `cmd` unless done(); `mark` (a file) is written after it succeeds."""
    if done():
      return
    if clock.left() <= 0:
      _log(f"{key}: not started, the {a.time_limit_min:g}-min budget is spent")
      return
    t0 = time.time()
    try:
      record(key, _run(cmd, work / "logs" / log_name, env, timeout=clock.left() + 60))
      if mark is not None:
        mark.write_text("done\n")
    except RuntimeError as e:
      _log(f"{key} FAILED: {e}")
      record(f"{key} (FAILED or stopped: {log_name}; partial results kept)", time.time() - t0)

  def in_parallel(jobs):
    with concurrent.futures.ThreadPoolExecutor(max(1, a.jobs)) as ex:
      list(ex.map(lambda j: stage(*j), jobs))

  pre = [(f"pretrain/{arm}_s{s}", pretrain_cmd(a, arm, s, npmi_csv, masks),
          f"pretrain_{arm}_s{s}.log",
          lambda arm=arm, s=s: (pretrain_dir(a, arm, s) / "checkpoints" / str(a.steps)).exists())
         for s in range(a.pretrain_seeds) for arm in ARMS if arm in a.arms]
  if pre:  # The first run builds the shared corpus; the others reuse it.
    stage(*pre[0])
    in_parallel(pre[1:])
  evals = []
  for mode, s, tasks in eval_units(a):
    out = fewshot_dir(a, mode, s, tasks)
    # The few-shot binary writes results.csv as it goes: a stopped run leaves a partial
    # one (reported, and rerun on the next call), so completion is our own marker.
    evals.append((f"fewshot/{out.name}", fewshot_cmd(a, mode, s, tasks),
                  f"fewshot_{out.name}.log", lambda out=out: (out / DONE).exists(), out / DONE))
  in_parallel(evals)
  return timings


# ------------------------------------------------------------------------------ analysis
def read_results(a) -> list[dict[str, Any]]:
  """Every few-shot row: arm, mode, task, shot, replicate (= few-shot seed), metric, value."""
  rows = []
  for path in sorted((pathlib.Path(a.workdir) / "fewshot").glob("*/results.csv")):
    with open(path, encoding="utf-8") as f:
      for r in csv.DictReader(f):
        rows.append({**r, "arm": r["model"], "shot": int(r["shot"]),
                     "replicate": int(r["seed"]), "value": float(r["value"])})
  return rows


# ------------------------------------------------------------------------------ report
def _fmt(v) -> str:
  return "—" if v is None else f"{v[0]:.3f} ± {v[1]:.3f} ({v[2]})"


def _pct(x) -> str:
  return "—" if x is None else f"{100 * x:.2f}%"


def report_name(a) -> str:
  return "results_gpu.md" if a.budget == "gpu" else "results.md"


def machine(a) -> str:
  if a.budget != "gpu":
    return MACHINE[a.budget]
  try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return "one " + out.strip().splitlines()[0]
  except (OSError, subprocess.SubprocessError, IndexError):
    return MACHINE["gpu"]


def write_report(a, timings: dict[str, Any], command: str) -> pathlib.Path:
  work = pathlib.Path(a.workdir)
  docs = pathlib.Path(a.docs_dir)
  figs = docs / "figures"
  figs.mkdir(parents=True, exist_ok=True)
  suffix = "_gpu" if a.budget == "gpu" else ""
  rows = read_results(a)
  summary = report.summarize(rows, keys=SUMMARY_KEYS)
  plan_path = work / "masking.json"
  plan = json.loads(plan_path.read_text()) if plan_path.exists() else {"arms": {}}
  masks = plan["arms"]
  arms = [x for x in ORDER if x in a.arms]
  tokens = a.steps * a.batch_size * a.max_len
  L = [f"# Reproduction study ({a.budget} budget): GeneMask vs DNABERT vs BERT masking at "
       f"block {a.max_len}", ""]
  now = datetime.datetime.now(datetime.timezone.utc)
  L.append(f"Generated by `{command}` on {now:%Y-%m-%d %H:%M} UTC on {machine(a)}. Design: "
           "issue #15; code: `benchmarks/study.py`.")
  L.append("")

  # --- Summary, from the paired tests only.
  tests = []
  for mode in a.modes:
    for x, y in PAIRS:
      if x in arms and y in arms:
        xs, ys, keys = st.pair_up(rows, x, y, "mcc", mode)
        if len(keys) >= 2:
          tests.append((mode, x, y, st.paired_test(xs, ys)))
  adjusted = st.holm([t["wilcoxon_p"] for _, _, _, t in tests])
  for (_, _, _, t), h in zip(tests, adjusted):
    t["holm_p"] = h
  constant = st.constant_runs(rows)
  L += ["## Summary", ""]
  if not tests:
    L.append("- No paired comparison has two or more matched cells yet.")
  for mode, x, y, t in tests:
    verdict = ("differ at the 5% level after Holm's correction" if t["holm_p"] < 0.05 else
               "do not differ detectably at the 5% level after Holm's correction")
    L.append(f"- {mode}: {LABELS[x]} vs {LABELS[y]}: mean MCC difference "
             f"{t['mean_diff']:+.3f} over {t['n']} matched cells (95% bootstrap interval "
             f"{t['boot_ci'][0]:+.3f} to {t['boot_ci'][1]:+.3f}); Wilcoxon p = "
             f"{t['wilcoxon_p']:.3g}, Holm-adjusted over the {len(tests)} tests "
             f"{t['holm_p']:.3g}: they {verdict}.")
  L.append(f"- Constant predictors (all test predictions one class): {len(constant)} of "
           f"{len({(r['arm'], r['replicate'], r['mode'], r['task'], r['shot']) for r in rows})}"
           " runs; listed below. Their MCC of 0 is kept in the means.")
  L.append(f"- Scale: {a.steps} steps x {a.batch_size} x {a.max_len} tokens = "
           f"{tokens / 1e6:.2f} M tokens per pretraining run of a `{a.model_size}` model, "
           f"against the paper's 10k x 250 x 512 = 1,280 M for DNABERT-base: read every "
           "difference as what this budget shows, not as a test of the paper's full-scale "
           "claim.")
  L.append("")

  # --- Masking.
  L += ["## Masking, measured on real corpus rows before pretraining", ""]
  L.append(f"{plan.get('rows', '?')} train rows of block {a.max_len} (the first rows of each "
           "FASTA file, cut by the training chunker: not a random sample of the corpus); P "
           "sized on 4 centre draws per "
           "row; centres drawn at the sampler's 16-bit "
           "resolution, spans by `masking.spans_from_centres`. `max_predictions` P is the "
           "smallest multiple of 8 with at most 1% of rows over it; the overflow is re-checked "
           "on an independent draw. \"NPMI rule engaged\" = rows with more than 8 centres "
           "(`few_threshold`; at or below it every centre gets the 11-token span and the NPMI "
           "ranking plays no part).")
  L.append("")
  if a.equalise_rate:
    L.append(f"**`--equalise_rate={a.equalise_rate}`**: each arm's centre probability p was "
             "solved so that it masks this fraction of tokens; the arms' default rates differ.")
    L.append("")
  L.append("| arm | p | masked fraction | masked/row mean (p99) | P | overflow (check) | "
           "targets lost | NPMI rule engaged |")
  L.append("|---|---|---|---|---|---|---|---|")
  for arm in arms:
    m = masks.get(arm)
    if m:
      L.append(f"| {LABELS[arm]} | {m['p']:.5f} | {_pct(m['masked_fraction'])} | "
               f"{m['mean_masked']:.1f} ({m['p99_masked']:.0f}) | {m['max_predictions']} | "
               f"{_pct(m['overflow_share'])} ({_pct(m['check_overflow_share'])}) | "
               f"{_pct(m['lost_target_share'])} | {_pct(m['engaged_share'])} |")
  L.append("")

  # --- What was run.
  L += ["## What was run", ""]
  L.append(f"- Pretraining, per arm and seed (seeds 0..{a.pretrain_seeds - 1}): `main.py "
           f"--config=configs/pretrain.py:default,<arm presets>`, model `{a.model_size}` "
           f"({a.dtype}), corpus = every FASTA in DATA/genome, block {a.max_len}, "
           f"{a.steps} steps x batch {a.batch_size}, AdamW peak LR 1e-3, "
           f"{max(1, a.steps // 10)} warm-up steps, P per arm as above, one NPMI table "
           f"({'computed from the same corpus' if a.npmi == 'corpus' else a.npmi}).")
  for arm in ARMS:
    if arm in arms:
      L.append(f"  - {LABELS[arm]}: presets `{ARMS[arm][1]}`")
  if RANDOM in arms:
    L.append(f"  - {LABELS[RANDOM]}: `--checkpoint=random=random` (a random `{a.model_size}` "
             "encoder, re-drawn per few-shot seed)")
  test_rows = (f"a fixed random subset of {a.max_test_examples} test rows per task (the same "
               "rows for every arm and seed)" if a.max_test_examples else "the whole test sets")
  for mode in a.modes:
    L.append(f"- `{mode}`: tasks {', '.join(mode_tasks(a, mode))}; shots {a.shots}; "
             f"{a.fewshot_seeds} few-shot seed(s) per pretraining seed, so "
             f"{a.pretrain_seeds * a.fewshot_seeds} replicates per cell; {test_rows}."
             + (" Script-B: full fine-tuning, the authors' epochs, batch and LR per shot"
                + (f" (epochs overridden to {a.epochs})" if a.epochs else "") + "."
                if mode == "finetune" else
                " Frozen encoder, mean-pooled last hidden states, logistic regression."))
  L.append("- Paired test: for two arms, one pair per (task, shot, replicate) both have, "
           "replicate r of both arms using the same few-shot seed; Wilcoxon signed-rank "
           "(scipy, two-sided) on the MCC differences and a paired bootstrap (10k resamples of "
           "the pairs) for the interval. The cells are not independent (one pretraining run "
           "serves every cell of its seed), so the p-values overstate the evidence.")
  L.append("")
  if timings:
    L += ["Wall time per stage (1-minute load average when it ended):", "",
          "| stage | wall | load |", "|---|---|---|"]
    L += [f"| {k} | {v['seconds'] / 60:.1f} min | {v['load_after']:.1f} |"
          for k, v in timings.items()]
    L.append("")

  # --- Results.
  L += ["## Results: MCC, mean ± sample std (replicates)", ""]
  missing = [f"{mode}/{task}@{shot} ({arm})" for mode in a.modes for task in mode_tasks(a, mode)
             for shot in shots(a) for arm in arms
             if (arm, mode, task, shot, "mcc") not in summary]
  if missing:
    L.append("**Not reached in this run** (budget spent or a stage failed; rerun the same "
             "command to add them): " + "; ".join(missing) + ".")
    L.append("")
  for mode in a.modes:
    tasks = [t for t in mode_tasks(a, mode) if any(k[1] == mode and k[2] == t for k in summary)]
    for task in tasks:
      L.append(f"### {mode}: {task}" + (" (GUE proxy test set)" if task == "prom_300" else ""))
      L.append("")
      L.append("| shot | " + " | ".join(LABELS[x] for x in arms) + " |")
      L.append("|---|" + "---|" * len(arms))
      for shot in shots(a):
        L.append(f"| {shot} | " + " | ".join(_fmt(summary.get((x, mode, task, shot, "mcc")))
                                            for x in arms) + " |")
      L.append("")
    if tasks:
      name = f"mcc_{mode}{suffix}.png"
      study_plots.plot_mcc(summary, mode, tasks, figs / name, arms, LABELS, COLORS, RANDOM)
      L += [f"![MCC vs shots, {mode}](figures/{name})", ""]
  L += ["## Paired tests (MCC)", "", "| mode | comparison | pairs | mean diff | first better / "
        "worse | Wilcoxon p | Holm p | bootstrap 95% | bootstrap p |",
        "|---|---|---|---|---|---|---|---|---|"]
  for mode, x, y, t in tests:
    L.append(f"| {mode} | {LABELS[x]} vs {LABELS[y]} | {t['n']} | {t['mean_diff']:+.4f} | "
             f"{t['wins']} / {t['losses']} | {t['wilcoxon_p']:.3g} | {t['holm_p']:.3g} | "
             f"{t['boot_ci'][0]:+.3f} to {t['boot_ci'][1]:+.3f} | "
             f"{'< 1e-4' if t['boot_p'] == 0 else format(t['boot_p'], '.3g')} |")
  L.append("")
  L.append("With n pairs, the smallest two-sided Wilcoxon p is 2/2^n (0.0625 at n = 4): few "
           "pairs cannot reach 5% whatever the differences. The bootstrap interval of a "
           "handful of pairs is too narrow (it ignores the spread it cannot see).")
  L.append("")
  L += ["## Sanity check of Script-B: constant predictors", ""]
  L.append("A run whose test predictions are all one class has MCC exactly 0 and macro recall "
           "exactly 1/C; these runs are flagged (results.csv holds metrics, not predictions).")
  L.append("")
  L += ([f"- {LABELS[k[0]]}, replicate {k[1]}, {k[2]} {k[3]}@{k[4]}" for k in constant]
        or ["- none"])
  L.append("")
  name = f"mlm_loss{suffix}.png"
  study_plots.plot_loss([(LABELS[arm] if s == 0 else None, COLORS[arm], 0.9 if s == 0 else 0.5,
                          st.series(st.read_log(pretrain_dir(a, arm, s)), "eval/loss"))
                         for arm in ARMS for s in range(a.pretrain_seeds)], figs / name)
  L += ["## MLM eval loss vs step", "",
        f"![MLM eval loss](figures/{name})", "",
        "Each arm's held-out loss is on its own masking (different targets and rates), so the "
        "curves show each run's progress, not which arm learned more.", ""]

  # --- Confounds.
  L += ["## Confounds that remain", ""]
  fr = {x: masks[x]["masked_fraction"] for x in masks}
  if fr and not a.equalise_rate:
    L.append("- Masking rate: the arms mask different fractions of tokens ("
             + ", ".join(f"{x} {_pct(v)}" for x, v in fr.items())
             + "); `--equalise_rate` removes this at the cost of the arms' own defaults.")
  ov = {x: masks[x]["check_overflow_share"] for x in masks}
  if ov:
    L.append("- Truncation: up to 1% of rows per arm overflow P by design (measured on an "
             "independent draw: " + ", ".join(f"{x} {_pct(v)}" for x, v in ov.items())
             + "); an overflowing row keeps a uniform random subset of its targets.")
  eng = {x: masks[x]["engaged_share"] for x in masks if masks[x]["engaged_share"] is not None}
  if eng:
    L.append("- The NPMI selection only acts in rows with more than 8 centres ("
             + ", ".join(f"{x} {_pct(v)}" for x, v in eng.items())
             + " of rows); elsewhere GeneMask differs from span masking only by where its "
             "11-token spans sit.")
  L.append(f"- Scale: {tokens / 1e6:.2f} M tokens per run of a `{a.model_size}` model, far "
           "below the paper's pretraining; arms that differ at this budget may not at theirs "
           "and the converse.")
  L.append("- The NPMI table is computed from ~88 Mbp of GRCh37 (Spearman ~0.998 with the "
           "authors' GRCh38 chr1-3 table), not theirs." if a.npmi == "corpus" else
           f"- NPMI table: {a.npmi}.")
  if a.max_test_examples:
    L.append(f"- Test sets subsampled to {a.max_test_examples} rows: an MCC then has a "
             "standard error near 0.04-0.06, so single cells say little; the paired test "
             "pools them.")
  L.append("- Prom-300 is scored on the GUE prom_300_all test split, a proxy with different "
           "negatives; Splice-40's \"N-shot\" files hold 10·N rows per class.")
  L.append("- The replicates share the corpus, the NPMI table and the few-shot train files "
           "(one draw per shot exists): the spread covers pretraining seeds and few-shot "
           "seeds only.")
  L.append("")
  L += ["## Reproduce", "", "```bash", f"GENEMASK_DATA_DIR=../shared/data {command}", "```",
        ""]
  out = docs / report_name(a)
  out.write_text("\n".join(L) + "\n", encoding="utf-8")
  data = {"command": command, "rows": rows, "masking": plan, "timings": timings,
          "paired_tests": [{"mode": m, "a": x, "b": y, **t} for m, x, y, t in tests],
          "constant_runs": constant,
          "eval_loss": {f"{arm}_s{s}": st.series(st.read_log(pretrain_dir(a, arm, s)),
                                                   "eval/loss")
                        for arm in ARMS for s in range(a.pretrain_seeds)}}
  (docs / f"study_data{suffix}.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
  return out


def main(argv: Sequence[str]) -> None:
  a = parse_args(argv)
  if a.pack:
    pack(a)
    return
  command = "python benchmarks/study.py " + " ".join(
      shlex.quote(x) for x in argv
      if not x.startswith(("--data_dir", "--report_only", "--docs_dir", "--workdir")))
  timings = {}
  if not a.report_only:
    _log(f"study ({a.budget}) in {a.workdir}: arms {a.arms}, {a.pretrain_seeds} seeds, "
         f"{a.steps} x {a.batch_size} x {a.max_len}, modes {a.modes}; load {os.getloadavg()}")
    timings = run_study(a)
  else:
    p = pathlib.Path(a.workdir) / "timings.json"
    timings = json.loads(p.read_text()) if p.exists() else {}
  out = write_report(a, timings, command.strip())
  _log(f"wrote {out}")


if __name__ == "__main__":
  main(sys.argv[1:])
