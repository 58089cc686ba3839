r"""Runs every benchmark script and writes `docs/benchmarks.md` from what they print.

    python benchmarks/run_all.py                      # modest settings, ~10-15 min on 2 cores
    python benchmarks/run_all.py --full               # each script's own defaults + few-shot grid
    python benchmarks/run_all.py --only=masking,npmi --output=/tmp/b.md

Each benchmark runs as its own subprocess (so one crash or one slow import does not
touch the others), in the order below, with its output captured verbatim into the doc
with a one-line reading drawn from the printed figures. The doc states the machine (CPU
model, cores, memory, library versions, date) and the 1-minute load average before and
after each script, because on a shared 2-core machine other work changes every timing.

Modest settings (the default), chosen so that the whole run fits ~15 minutes:
  tokenizer    defaults (--repeats=5)
  masking      --batch=64 --length=512 --rounds=5 --train_step --step_rounds=3
  npmi         defaults (the whole 88 Mbp shared genome; child process per input size)
  pipeline     --batches=200
  train_step   --sizes=tiny,logo,dnabert_base --rounds=4 (per-size default shapes:
               tiny/logo 8x512, dnabert_base 8x128), HF PyTorch side by side if installed
  fewshot      --seeds=3 --max_test_examples=500 (one 10-shot fine-tune, 3 seeds)
`--full` drops these overrides (scripts' defaults) and adds the few-shot default grid
(`bench_fewshot.py --grid --seeds=3 --max_test_examples=500`: hours on a 2-core CPU).

The GPU figures come from a separate record, `docs/gpu_check.txt`, written on a GPU
machine by `benchmarks/gpu_check.sh`; when it exists it is copied in with the device named.
The train-step section gets a plot, `docs/figures/train_step_speed.png` (CPU sizes, and the
GPU bf16 step when the record has it); `--plot_only` redraws it from the current doc and
record without running anything.

Data: `--data_dir` or $GENEMASK_DATA_DIR (the folder holding genome/, fewshot/, npmi/).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import os
import pathlib
import platform
import re
import subprocess
import sys
import time
from typing import Callable, Sequence

REPO = pathlib.Path(__file__).resolve().parent.parent
# The whole few-shot grid takes an hour or more on the CPU, so it is measured separately
# (`bench_fewshot.py --grid ... --grid_log=docs/fewshot_grid.txt`) and copied in here.
GRID_LOG = REPO / "docs" / "fewshot_grid.txt"
# Written on a GPU machine by benchmarks/gpu_check.sh (this machine has none).
GPU_RECORD = REPO / "docs" / "gpu_check.txt"
DESIGN_NOTES = REPO / "docs" / "benchmarks_design.md"
STEP_PLOT = REPO / "docs" / "figures" / "train_step_speed.png"


@dataclasses.dataclass(frozen=True)
class Bench:
  """One benchmark script.

  Attributes:
    name: short name (for --only).
    script: file in benchmarks/.
    title: section title.
    what: one sentence on what is compared.
    modest: extra arguments for the default (modest) run.
    full: extra arguments for --full.
    reading: output text -> one-line reading (may return None: no reading found).
  """
  name: str
  script: str
  title: str
  what: str
  modest: Callable[[str], list[str]]
  full: Callable[[str], list[str]]
  reading: Callable[[str], str | None]


def _num(pattern: str, text: str, group: int = 1) -> str | None:
  m = re.search(pattern, text, re.MULTILINE)
  return m.group(group) if m else None


def _read_tokenizer(out: str) -> str | None:
  ours = _num(r"tokenizer\.encode.*?:\s+([\d.]+) M bases/s", out)
  ref = _num(r"plain-Python per-k-mer loop:\s+([\d.]+) M bases/s", out)
  up = _num(r"speed-up: (\d+)x; issue target 20 M bases/s: (met|NOT met)", out)
  met = _num(r"issue target 20 M bases/s: (met|NOT met)", out)
  if not ours:
    return None
  return (f"`tokenizer.encode` runs at {ours} M bases/s on one core, {up}x the plain-Python "
          f"loop ({ref} M bases/s); the 20 M bases/s target is {met}.")


def _read_masking(out: str) -> str | None:
  lines = [l for l in out.splitlines() if "x /" in l or re.search(r"\d+\.\d+x", l)]
  gm = next((l for l in out.splitlines()
             if l.strip().lower().startswith(("jax genemask", "genemask"))), None)
  share = _num(r"masking alone \(jit, B=8\).*=\s*([\d.]+%) of the step", out)
  parts = []
  if gm:
    ratios = re.findall(r"([\d.]+)x", gm)
    if len(ratios) >= 2:
      parts.append(f"jit'd GeneMask masking (B=64, L=512) runs {ratios[0]}x (best round) / "
                   f"{ratios[1]}x (median) the sequences/s of the plain-Python port")
  if share:
    parts.append(f"masking alone is {share} of a tiny 8x512 train step")
  if not parts and lines:
    parts.append("speed-ups over the port are in the last column")
  return ("; ".join(parts) + ".") if parts else None


def _read_npmi(out: str) -> str | None:
  whole = _num(r"whole genome -> CSV \+ lookup: ([\d.]+ s wall.*?Mbp/s)", out)
  peak = _num(r"peak RSS: (chrX \d+ MB vs both \d+ MB)", out)
  ref = _num(r"reference, plain-Python Counter.*\((\d+x)\)", out)
  rho = _num(r"Spearman ([\d.]+), top-100 overlap (\d+)/100", out)
  if not whole:
    return None
  s = f"The whole 88 Mbp genome becomes an NPMI table in {whole}"
  if peak:
    s += f"; peak memory {peak} (flat in the input size)"
  if ref:
    s += f"; counting is {ref} a plain-Python Counter"
  if rho:
    s += f"; Spearman {rho} with the authors' GRCh38 table"
  return s + "."


def _read_pipeline(out: str) -> str | None:
  m = re.findall(r"grain train_iterator \(batch (\d+), workers 0, prefetch (\d+)\):\s+(\d+) "
                 r"examples/s = (\d+)x", out)
  build = _num(r"TFDS build \(1 worker\):\s+(\d+) examples/s", out)
  if not m:
    return None
  best = max(m, key=lambda r: int(r[2]))
  s = (f"grain delivers {best[2]} examples/s in the training process (prefetch {best[1]}), "
       f"{best[3]}x what the tiny model's train step consumes, so input is not the bottleneck")
  if build:
    s += f"; building the TFDS array_record dataset runs at {build} examples/s"
  return s + "."


def _read_train_step(out: str) -> str | None:
  rows = re.findall(r"^(\w+)\s+(\d+x\d+)\s+\d+\s+(\d+)\s+(\d+)\s+([\d.]+)x", out, re.MULTILINE)
  gpu = re.findall(r"^\s+(jax\w*|torch)\s+(\d+) tokens/s per device\s+MFU\s+([\d.]+%|n/a)", out,
                   re.MULTILINE)
  gpu_text = ("; GPU bfloat16 " + ", ".join(f"{k} {t} tokens/s (MFU {m})" for k, t, m in gpu)
              if gpu else "")
  if rows:
    return ("JAX vs HF PyTorch tokens/s, same shapes and optimizer: " + "; ".join(
        f"{size} {shape}: {jax_t} vs {torch_t} ({ratio}x)"
        for size, shape, jax_t, torch_t, ratio in rows) + gpu_text + ".")
  rows = re.findall(r"^(\w+)\s+(\d+x\d+)\s+\d+\s+(\d+)", out, re.MULTILINE)
  if rows:
    return "JAX tokens/s (no PyTorch side): " + "; ".join(
        f"{size} {shape}: {t}" for size, shape, t in rows) + "."
  return None


def train_step_rows(out: str) -> list[tuple[str, float, float]]:
  """(label, JAX tokens/s, torch tokens/s) per size of bench_train_step.py's CPU table."""
  rows = re.findall(r"^(\w+)\s+(\d+x\d+)\s+\d+\s+(\d+)\s+(\d+)\s+[\d.]+x", out, re.MULTILINE)
  return [(f"{size} {shape}", float(j), float(t)) for size, shape, j, t in rows]


_GPU_HEAD = re.compile(r"^(\w+) (\d+x\d+) bfloat16 on (.+?) \((.*?)\); model FLOPs", re.MULTILINE)
_GPU_ROW = re.compile(r"^\s+(jax\w*|torch)\s+(\d+) tokens/s per device\s+MFU\s+([\d.]+%|n/a)",
                      re.MULTILINE)


def _gpu_blocks(out: str) -> list[tuple[re.Match, dict[str, tuple[str, str]]]]:
  """Each GPU section of bench_train_step.py output: (header match, {side: (tok/s, MFU)})."""
  heads = list(_GPU_HEAD.finditer(out))
  blocks = []
  for i, head in enumerate(heads):
    end = heads[i + 1].start() if i + 1 < len(heads) else len(out)
    rows = {k: (t, m) for k, t, m in _GPU_ROW.findall(out[head.end():end])}
    if "jax" in rows:
      blocks.append((head, rows))
  return blocks


def gpu_rows(out: str) -> tuple[list[tuple[str, float, float]], str | None]:
  """([(label, JAX tokens/s, torch tokens/s)], device) of the first GPU bench section."""
  blocks = _gpu_blocks(out)
  if not blocks:
    return [], None
  head, rows = blocks[0]
  label = f"{head.group(1)} {head.group(2)} bf16"
  return [(label, float(rows["jax"][0]), float(rows.get("torch", ("nan",))[0]))], head.group(3)


def read_gpu_record(text: str) -> str | None:
  """One-line reading of a gpu_check.sh record: device, benches, main.py and tests."""
  device = _num(r"^device: (.+)$", text)
  if not device:
    return None
  parts = [f"on {device}"]
  for head, rows in _gpu_blocks(text):
    how = "; ".join(x.strip() for x in head.group(4).split(";")[1:])  # dropout, attention
    parts.append(f"{head.group(1)} {head.group(2)} bf16 ({how}): " + ", ".join(
        f"{k} {int(t):,} tokens/s (MFU {m})" for k, (t, m) in rows.items()))
  last = _num(r"^main\.py last log line: (step .*)$", text)
  if last:
    tps = _num(r"([\d,]+) tokens/s", last)
    mfu = _num(r"MFU ([\d.]+%)", last)
    steps = _num(r"^step (\d+/\d+)", last)
    parts.append(f"main.py :paper step {steps}: {tps} tokens/s" + (f", MFU {mfu}" if mfu else ""))
  for title in ("GPU test subset", "Pallas kernel tests"):
    body = _step_output(text, title)
    if body is None:
      continue
    summary = re.findall(r"^=*\s*(\d+ (?:passed|failed|error)[^=\n]* in [\d.]+s[^=\n]*?)\s*=*$",
                         body, re.MULTILINE)
    status = _num(rf"^=== {title}: (exit .*)$", text)
    parts.append(f"{title}: {summary[-1] if summary else 'no pytest summary'}"
                 + (f" ({status})" if status and "exit 0 " not in status + " " else ""))
  return "; ".join(parts) + "."


def _step_output(text: str, title: str) -> str | None:
  """What one gpu_check.sh step printed: from its '=== TITLE' line to its '=== TITLE:' line."""
  m = re.search(rf"^=== {re.escape(title)}\b.*?$(.*?)^=== {re.escape(title)}:", text,
                re.MULTILINE | re.DOTALL)
  return m.group(1) if m else None


def plot_step_speed(cpu: list[tuple[str, float, float]], gpu: list[tuple[str, float, float]],
                    device: str | None, path: pathlib.Path) -> bool:
  """Bar chart of JAX vs HF PyTorch tokens/s (CPU sizes; GPU bf16 if measured) -> PNG."""
  if not cpu and not gpu:
    return False
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  panels = [(f"CPU ({os.cpu_count()} cores), float32", cpu)] if cpu else []
  if gpu:
    panels.append((f"{device or 'GPU'}, bfloat16", gpu))
  fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels) + 1, 3.6), squeeze=False)
  for ax, (title, rows) in zip(axes[0], panels):
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r[1] for r in rows], 0.4, label="JAX", color="#1f77b4")
    ax.bar([i + 0.2 for i in x], [r[2] for r in rows], 0.4, label="HF PyTorch", color="#ff7f0e")
    for i, (_, j, t) in enumerate(rows):
      if t == t and t > 0:  # not NaN
        ax.annotate(f"{j / t:.2f}x", (i, max(j, t)), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), [r[0] for r in rows], fontsize=8)
    ax.set_ylabel("tokens/s (train step)")
    ax.set_title(title, fontsize=9)
    ax.margins(y=0.15)
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def _train_step_block(doc: str) -> str:
  """The verbatim output block of the train-step section of an existing benchmarks.md."""
  m = re.search(r"^## Train step .*?^```\n(.*?)^```", doc, re.MULTILINE | re.DOTALL)
  return m.group(1) if m else ""


def _read_fewshot(out: str) -> str | None:
  one = _num(r"prom_core 10-shot Script-B \((\d+ steps).*?: total ([\d.]+)s", out)
  total = _num(r"prom_core 10-shot Script-B .*?: total ([\d.]+)s", out)
  ratio = _num(r"vmapped/loop = ([\d.]+)", out)
  grid = _num(r"default grid: .*?: (\d+)s \(([\d.]+) min\)", out, 2)
  if not total:
    return None
  seeds = _num(r"(\d+) seed\(s\)", out) or "?"
  s = (f"One Script-B 10-shot Prom-core fine-tune of the tiny model ({one}, {seeds} seed(s) "
       f"vmapped) takes {total} s including compilation")
  if ratio:
    s += f"; vmapping the seeds takes {ratio}x the time of running them one after another"
  if grid:
    s += f"; the default grid takes {grid} min"
  return s + "."


def _read_aot(out: str) -> str | None:
  m = re.search(r"\| paper \| v5e-16 [^\n]*?\| ([\d.]+) \| (fits|does not fit)[^|]*\| "
                r"(\d+) / (\d+) \|", out)
  if not m:
    return None
  return (f"`:paper` (bf16, 16 sequences per chip) on a v5e-16 needs {m.group(1)} GiB per "
          f"chip ({m.group(2)}); its compile took {m.group(3)} s wall, {m.group(4)} s CPU.")


def benches(data_dir: str) -> list[Bench]:
  d = [f"--data_dir={data_dir}"] if data_dir else []
  npmi_csv = os.path.join(data_dir, "npmi", "genemask_grch38_chr1-3_6mer_npmi.csv")
  npmi = [f"--npmi={npmi_csv}"] if data_dir and os.path.exists(npmi_csv) else []
  return [
      Bench("tokenizer", "bench_tokenizer.py", "Tokenizer",
            "`tokenizer.encode` (numpy) vs a plain-Python per-k-mer dictionary loop.",
            lambda _: [], lambda _: [], _read_tokenizer),
      Bench("masking", "bench_masking.py", "Masking",
            "jit'd GeneMask/DNABERT/BERT masking vs the plain-Python port of the authors' "
            "per-sequence loop (alternating rounds), plus masking's share of a train step.",
            lambda _: ["--batch=64", "--length=512", "--rounds=5", "--train_step",
                       "--step_rounds=3"] + npmi,
            lambda _: ["--train_step"] + npmi, _read_masking),
      Bench("npmi", "bench_npmi.py", "NPMI statistics",
            "Mbp/s and peak memory at two corpus sizes, vs plain-Python counting.",
            lambda _: d, lambda _: d, _read_npmi),
      Bench("pipeline", "bench_pipeline.py", "Input pipeline",
            "chunking, TFDS array_record build and grain examples/s vs the train step's needs.",
            lambda _: ["--batches=200"], lambda _: [], _read_pipeline),
      Bench("train_step", "bench_train_step.py", "Train step",
            "JAX BERT train step vs HF transformers `BertForMaskedLM` in PyTorch, same sizes, "
            "batch and optimizer, interleaved, median of several steps.",
            lambda _: ["--sizes=tiny,logo,dnabert_base", "--rounds=4"], lambda _: [],
            _read_train_step),
      Bench("fewshot", "bench_fewshot.py", "Few-shot fine-tuning",
            "wall time of one Script-B fine-tune; with --full also seeds vmapped vs one after "
            "another and the whole default grid. The linear-probe grid's measured wall time "
            "and the fine-tune grid's extrapolated cost are in results.md.",
            lambda _: d + ["--seeds=3", "--max_test_examples=500"],
            lambda _: d + ["--seeds=3", "--compare_vmap", "--grid", "--max_test_examples=500"],
            _read_fewshot),
      Bench("aot", "bench_aot.py", "TPU compile check (ahead of time, on this CPU)",
            "per-chip memory of the `:paper`/`:large` train step compiled for TPU slices "
            "(`python -m genemask_jax.aot`), from the committed record docs/aot_compiles.jsonl "
            "(each compile takes minutes: rerun `bench_aot.py` itself to add rows).",
            lambda _: ["--table_only"], lambda _: ["--table_only"], _read_aot),
  ]


def _version(dist: str) -> str:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def machine() -> dict[str, str]:
  """CPU model, cores, memory, OS, library versions, git commit (no jax import here)."""
  cpu = "unknown"
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
  except OSError:
    pass
  mem = "unknown"
  try:
    with open("/proc/meminfo", encoding="utf-8") as f:
      kb = int(next(l for l in f if l.startswith("MemTotal")).split()[1])
      mem = f"{kb / 2**20:.1f} GiB"
  except (OSError, StopIteration):
    pass
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                            capture_output=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    commit = "unknown"
  return {"CPU": cpu, "cores": str(os.cpu_count()), "memory": mem,
          "OS": platform.platform(), "python": platform.python_version(),
          "jax": _version("jax"), "jaxlib": _version("jaxlib"), "flax": _version("flax"),
          "torch": _version("torch"), "transformers": _version("transformers"),
          "git commit": commit}


def accelerator(env: dict[str, str]) -> str:
  """The platform jax sees in a fresh process ("cpu", "gpu", "tpu")."""
  try:
    out = subprocess.run([sys.executable, "-c", "import jax; print(jax.devices()[0].platform)"],
                         env=env, text=True, capture_output=True, timeout=120, check=True)
    return out.stdout.strip().splitlines()[-1]
  except (OSError, subprocess.SubprocessError, IndexError):
    return "unknown"


def _clean(text: str) -> str:
  """Drops progress-bar redraws and absl/jax warnings noise, keeps printed figures."""
  keep = []
  for line in text.replace("\r\n", "\n").split("\n"):
    if "\r" in line:
      line = line.rsplit("\r", 1)[-1]
    if re.match(r"^[IWE]\d{4} \d\d:\d\d:\d\d", line) or "WARNING: All log messages" in line:
      continue
    keep.append(line.rstrip())
  return "\n".join(keep).strip("\n")


def run_one(b: Bench, args: list[str], env: dict[str, str], timeout: int) -> tuple[str, str, float, int]:
  """Runs one script; returns (cleaned stdout, stderr tail, wall seconds, return code)."""
  cmd = [sys.executable, str(REPO / "benchmarks" / b.script)] + args
  print(f"[run_all] {' '.join(cmd)}", flush=True)
  t0 = time.time()
  try:
    p = subprocess.run(cmd, cwd=REPO, env=env, text=True, capture_output=True, timeout=timeout)
    out, err, rc = p.stdout, p.stderr, p.returncode
  except subprocess.TimeoutExpired as e:
    out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    err, rc = f"timed out after {timeout} s", -1
  wall = time.time() - t0
  print(_clean(out), flush=True)
  print(f"[run_all] {b.name}: exit {rc}, {wall:.0f} s", flush=True)
  return _clean(out), _clean(err)[-3000:], wall, rc


def out_dir_of(output: str) -> pathlib.Path:
  """The folder of the written doc (image links are relative to it)."""
  return pathlib.Path(output).resolve().parent


def main(argv: Sequence[str]) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data_dir", default=os.environ.get("GENEMASK_DATA_DIR", ""),
                 help="Folder holding genome/, fewshot/, npmi/ (default $GENEMASK_DATA_DIR).")
  p.add_argument("--output", default=str(REPO / "docs" / "benchmarks.md"))
  p.add_argument("--only", default="", help="Comma-separated benchmark names (default all).")
  p.add_argument("--full", action="store_true",
                 help="The scripts' own defaults and the few-shot grid (hours on 2 cores).")
  p.add_argument("--timeout", type=int, default=1800, help="Seconds per script.")
  p.add_argument("--plot_only", action="store_true",
                 help=f"Only redraw {STEP_PLOT.relative_to(REPO)} from --output and the GPU "
                      "record; run nothing.")
  a = p.parse_args(argv)

  record = GPU_RECORD.read_text(encoding="utf-8").strip() if GPU_RECORD.exists() else ""
  gpu, device = gpu_rows(record)
  if a.plot_only:
    doc = pathlib.Path(a.output).read_text(encoding="utf-8")
    ok = plot_step_speed(train_step_rows(_train_step_block(doc)), gpu, device, STEP_PLOT)
    print(f"[run_all] {'wrote ' + str(STEP_PLOT) if ok else 'no train-step figures to plot'}")
    return

  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  if a.data_dir:
    env["GENEMASK_DATA_DIR"] = a.data_dir
  all_b = benches(a.data_dir)
  chosen = [b for b in all_b if not a.only or b.name in a.only.split(",")]
  unknown = set(filter(None, a.only.split(","))) - {b.name for b in all_b}
  if unknown:
    p.error(f"--only: unknown benchmark(s) {sorted(unknown)}; known: "
            f"{[b.name for b in all_b]}")

  started = datetime.datetime.now(datetime.timezone.utc)
  load0 = os.getloadavg()
  info = machine()
  platform_ = accelerator(env)
  results = []
  for b in chosen:
    extra = (b.full if a.full else b.modest)(a.data_dir)
    l_before = os.getloadavg()[0]
    out, err, wall, rc = run_one(b, extra, env, a.timeout)
    results.append((b, extra, out, err, wall, rc, l_before, os.getloadavg()[0]))
  load1 = os.getloadavg()
  total = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()

  L = ["# Benchmarks", ""]
  L.append(f"Generated by `python benchmarks/run_all.py{' --full' if a.full else ''}"
           f"{' --only=' + a.only if a.only else ''}` on "
           f"{started:%Y-%m-%d %H:%M} UTC in {total / 60:.1f} min. Every figure below is "
           "printed by the script named in its section and copied verbatim; each script "
           "runs its reference side by side in the same process, so the ratios are fairer "
           "than the absolute numbers on a shared machine.")
  L.append("")
  L.append("## Machine")
  L.append("")
  L.append("| | |")
  L.append("|---|---|")
  for k, v in info.items():
    L.append(f"| {k} | {v} |")
  L.append(f"| jax platform | {platform_} |")
  L.append(f"| load average (1, 5, 15 min) at start | {load0[0]:.2f}, {load0[1]:.2f}, {load0[2]:.2f} |")
  L.append(f"| load average at end | {load1[0]:.2f}, {load1[1]:.2f}, {load1[2]:.2f} |")
  L.append("")
  L.append(f"This is the 2-core CPU dev machine. A load average above {info['cores']} means "
           "other processes (other sessions' tests and runs) shared the cores during the "
           "measurement, which slows every absolute figure below; the per-section load is "
           "given with each.")
  L.append("")
  L.append("**GPU.** " + (
      "No GPU was available in this run (jax platform: "
      f"{platform_}). " if platform_ not in ("gpu", "cuda", "rocm") else
      f"A GPU was available (jax platform {platform_}). ") + (
          f"The GPU figures (measured on {device or 'a GPU'} by `benchmarks/gpu_check.sh`) "
          "are in the section [GPU check](#gpu-check-benchmarksgpu_checksh) below."
          if record else
          "No GPU record exists yet: `bash benchmarks/gpu_check.sh` on one GPU (see its "
          "header) writes `docs/gpu_check.txt`, which this document then includes."))
  L.append("")
  for b, extra, out, err, wall, rc, lb, la in results:
    L.append(f"## {b.title} (`benchmarks/{b.script}`)")
    L.append("")
    L.append(f"What: {b.what}")
    L.append("")
    L.append(f"Command: `{' '.join(['python', 'benchmarks/' + b.script] + extra)}`" +
             f" — {wall:.0f} s wall, load average {lb:.1f} before / {la:.1f} after.")
    L.append("")
    if rc != 0:
      L.append(f"**The script failed (exit {rc}).** Last lines of its stderr:")
      L.append("")
      L.append("```")
      L.append(err.strip()[-2000:] or "(empty)")
      L.append("```")
      L.append("")
    L.append("```")
    L.append(out or "(no output)")
    L.append("```")
    L.append("")
    reading = b.reading(out) if rc == 0 else None
    L.append("Reading: " + (reading or "see the figures above (no summary line could be "
                                       "extracted automatically)."))
    L.append("")
    if b.name == "train_step" and rc == 0 and plot_step_speed(train_step_rows(out), gpu,
                                                              device, STEP_PLOT):
      L.append(f"![train step tokens/s, JAX vs HF PyTorch]"
               f"({os.path.relpath(STEP_PLOT, out_dir_of(a.output))})")
      L.append("")
    if b.name == "fewshot" and GRID_LOG.exists():
      grid = GRID_LOG.read_text(encoding="utf-8").strip()
      L.append("### The whole default grid (measured separately)")
      L.append("")
      L.append(f"Copied verbatim from `{GRID_LOG.relative_to(REPO)}`, written by the command "
               "on its first line:")
      L.append("")
      L.append("```")
      L.append(grid)
      L.append("```")
      L.append("")
      minutes = _num(r"default grid: .*?: (\d+)s \(([\d.]+) min\)", grid, 2)
      if minutes:
        L.append(f"Reading: the whole default grid of Script-B fine-tunes took {minutes} min "
                 "(see its first two lines for the date, commit and load).")
        L.append("")
  if record:
    L.append("## GPU check (`benchmarks/gpu_check.sh`)")
    L.append("")
    L.append(f"Measured on {device or 'a GPU (device not named in the record)'}; copied "
             f"verbatim from `{GPU_RECORD.relative_to(REPO)}`, written there by the script "
             "named on its first line:")
    L.append("")
    L.append("```")
    L.append(record)
    L.append("```")
    L.append("")
    L.append("Reading: " + (read_gpu_record(record) or "see the record above (no device "
                                                      "line found)."))
    L.append("")
  if DESIGN_NOTES.exists():  # Hand-written: the measurements behind choices in the code.
    L.extend(DESIGN_NOTES.read_text(encoding="utf-8").rstrip("\n").split("\n"))
    L.append("")
  L.append("## Reproduce")
  L.append("")
  L.append("```bash")
  L.append("GENEMASK_DATA_DIR=../shared/data python benchmarks/run_all.py          # this document")
  L.append("GENEMASK_DATA_DIR=../shared/data python benchmarks/run_all.py --full   # scripts' defaults + few-shot grid (hours on CPU)")
  L.append("```")
  L.append("")
  L.append("The reproduction study (what GeneMask buys in few-shot accuracy) is in "
           "[results.md](results.md), from `benchmarks/study.py`.")
  out_path = pathlib.Path(a.output)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  out_path.write_text("\n".join(L) + "\n", encoding="utf-8")
  print(f"[run_all] wrote {out_path} ({total / 60:.1f} min)", flush=True)
  if any(r[5] != 0 for r in results):
    sys.exit(1)


if __name__ == "__main__":
  main(sys.argv[1:])
