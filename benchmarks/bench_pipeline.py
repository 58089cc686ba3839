"""Input-pipeline throughput: chunking, TFDS build, grain batches, and build scaling.

  python benchmarks/bench_pipeline.py [--tfds_dir=DIR] [--batch=8] [--batches=300]
  python benchmarks/bench_pipeline.py --scaling_only --workers=1,2   # the build-scaling part
  python benchmarks/bench_pipeline.py --scaling_only --copies=3      # 264 Mbp: less start-up
  python benchmarks/bench_pipeline.py --scaling_only --genome_like=/tmp/gl  # 750 Mbp, hg38-shaped

The first part uses the genome slice shipped in the package. It prints examples/s of the
training iterator (worker_count=0, i.e. read in the training process) next to what the
train step consumes: the tiny model takes ~0.5 s per step at 8x512 on the 2-core dev
machine (bench_train_step.py, 2026-11-25), ~16 examples/s.

The build-scaling part (#22) builds the TFDS corpus from the shared GRCh37 files
(``$GENEMASK_DATA_DIR/genome``, default ../shared/data/genome: 88 Mbp of A/C/G/T) once per
worker count, each build in a fresh subprocess, and prints Mbp/s (A/C/G/T bases per second
of build), the speed-up over one worker, the peak memory of the whole process tree (RSS
summed over the build process and its workers, sampled every 0.1 s), bytes on disk per
Mbp, the rate of the main process's serial part alone (reading the files for their
structure while unpacking gzip, planning the chunks: what caps the speed-up), and the projected GRCh38 (3.1 Gbp)
build time per core count. Each worker count is built ``--repeats`` times (default 3),
and the median and range are printed; then the data command itself (``python -m
genemask_jax.data.prepare``) as many times per worker count, its build seconds. The load average is printed next to each figure:
the dev machine is shared.
"""
import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from genemask_jax.data import fasta
from genemask_jax.data import genome
from genemask_jax.data import genome_tfds
from genemask_jax.data import pipeline

TRAIN_STEP_EXAMPLES_PER_S = 16.0  # Tiny BERT, 8x512, 2-core CPU: 503 ms/step measured.
GRCH38_MBP = 3100.0
GENOME_FILES = ("GRCh37_chrX_1-70M.fa.gz", "GRCh37_chr22_blocks.fa.gz")
_BUILD_SCRIPT = """
import json, os, sys, time
from genemask_jax.data import genome_tfds
if __name__ == "__main__":
  if int(sys.argv[4]):  # Force the unit size (what a 3 Gbp genome gets: 16 Mbp).
    genome_tfds._MIN_UNIT_BP = genome_tfds._MAX_UNIT_BP = int(sys.argv[4]) << 20
  t, c = time.perf_counter(), os.times()
  b = genome_tfds.build(sys.argv[1], sys.argv[3].split(","), num_workers=int(sys.argv[2]))
  s = genome_tfds.summary(b)
  e = os.times()
  s["wall"] = time.perf_counter() - t
  s["main_cpu"] = e.user + e.system - c.user - c.system
  s["workers_cpu"] = e.children_user + e.children_system - c.children_user - c.children_system
  import psutil  # The workers are children of multiprocessing's fork server, still running.
  for p in psutil.Process().children():
    u = p.cpu_times()
    s["workers_cpu"] += u.user + u.system + u.children_user + u.children_system
  print("RESULT " + json.dumps(s))
"""
_PLAN_SCRIPT = """
import json, os, sys, tempfile, shutil
from genemask_jax.data import fasta, genome, plan
def cpu():
  t = os.times()
  return t.user + t.system
paths = sys.argv[1].split(",")
work = tempfile.mkdtemp(prefix="bench_plan_")
try:
  c = cpu()
  for i, p in enumerate(paths):  # Reading for structure, unpacking gzip on the way.
    for _ in fasta.iter_spans(p, copy_to=os.path.join(work, f"copy{i}.fa")):
      pass
  structure = cpu() - c
  scan = [0.0]
  def timed_submit(fn, *args):  # The first pass runs in workers: not the main's CPU.
    c0 = cpu()
    r = fn(*args)
    scan[0] += cpu() - c0
    return plan.Done(r)
  stats = genome.ChunkStats()
  os.makedirs(os.path.join(work, "w"))
  c = cpu()
  n = sum(1 for _ in plan.plan_units(paths, genome.ChunkConfig(), 1 << 20, stats,
                                            os.path.join(work, "w"), timed_submit))
  # plan_units reads the files for structure too; 0 at most (CPU-s vary by a few 10 ms).
  planning = max(cpu() - c - scan[0] - structure, 0.0)
finally:
  shutil.rmtree(work, ignore_errors=True)
print("RESULT " + json.dumps({"structure": structure, "plan": planning, "scan": scan[0],
                              "acgt": stats.acgt}))
"""


def _tree_rss(pid: int) -> int:
  import psutil  # pylint: disable=g-import-not-at-top
  try:
    p = psutil.Process(pid)
    procs = [p] + p.children(recursive=True)
  except psutil.Error:
    return 0
  total = 0
  for q in procs:
    try:
      total += q.memory_info().rss
    except psutil.Error:
      pass
  return total


def _run_measured(script: str, args: list[str]) -> tuple[dict, int]:
  """Runs a script in a fresh process; returns its RESULT json and the tree's peak RSS."""
  proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  peak = 0
  done = threading.Event()

  def sample():
    nonlocal peak
    while not done.is_set():
      peak = max(peak, _tree_rss(proc.pid))
      time.sleep(0.1)

  th = threading.Thread(target=sample, daemon=True)
  th.start()
  out, err = proc.communicate()
  done.set()
  th.join()
  if proc.returncode != 0:
    raise RuntimeError(f"build failed: {err[-2000:]}")
  line = next(l for l in out.splitlines() if l.startswith("RESULT "))
  return json.loads(line[len("RESULT "):]), peak


def _run_together(script: str, argsets: list[list[str]]) -> list[dict]:
  """Runs one script per argument list, all at once; returns their RESULT jsons."""
  procs = [subprocess.Popen([sys.executable, "-c", script, *a], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for a in argsets]
  out = []
  for proc in procs:
    o, err = proc.communicate()
    if proc.returncode != 0:
      raise RuntimeError(f"build failed: {err[-2000:]}")
    line = next(l for l in o.splitlines() if l.startswith("RESULT "))
    out.append(json.loads(line[len("RESULT "):]))
  return out


def genome_like(genome_dir: pathlib.Path, out_dir: str, copies: int = 10) -> str:
  """One gzip FASTA shaped like hg38.fa.gz, from the shared files: the 70 Mbp chrX record
  `copies` times under distinct names (chromosome-length records), then the chr22 file's
  9,627 short records (like hg38's alt and unplaced contigs); ~750 Mbp at 10 copies.
  Written once into out_dir (gzip level 6, as UCSC's; ~100 s here) and reused."""
  path = os.path.join(out_dir, f"genome_like_{copies}x.fa.gz")
  if os.path.isfile(path):
    return path
  import gzip  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  part = path + ".part"
  with gzip.open(part, "wb", compresslevel=6) as out:
    for i in range(copies):
      with gzip.open(genome_dir / GENOME_FILES[0], "rb") as f:
        f.readline()  # Its header.
        out.write(f">chrX_copy{i + 1}\n".encode())
        shutil.copyfileobj(f, out, 1 << 20)
    with gzip.open(genome_dir / GENOME_FILES[1], "rb") as f:
      shutil.copyfileobj(f, out, 1 << 20)
  os.replace(part, path)
  return path


def scaling(genome_dir: pathlib.Path, workers: list[int], unit_mbp: int = 0,
            repeats: int = 3, copies: int = 1, fasta: list[str] | None = None) -> None:
  """The #22 build-scaling section (copies > 1: the files given that many times over;
  fasta: other files than the shared two)."""
  names = [os.path.basename(f) for f in fasta] if fasta else list(GENOME_FILES)
  files = (list(fasta) if fasta else [str(genome_dir / f) for f in GENOME_FILES]) * copies
  for f in files:
    if not os.path.isfile(f):
      raise SystemExit(f"{f}: not found; set GENEMASK_DATA_DIR or --genome_dir")
  print(f"\n== Build scaling on {', '.join(names)}"
        + (f", each {copies} times over" if copies > 1 else "")
        + (f", units forced to {unit_mbp} Mbp" if unit_mbp else "") + " "
        f"({os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.1f} at start)")
  plan, _ = _run_measured(_PLAN_SCRIPT, [",".join(files)])
  acgt_mbp = plan["acgt"] / 1e6
  seq_rate = acgt_mbp / (plan["structure"] + plan["plan"])
  print(f"main process alone (reading for structure and unpacking gzip {plan['structure']:.2f} "
        f"+ planning {plan['plan']:.2f} CPU-s): {seq_rate:6.1f} Mbp per CPU-s ({acgt_mbp:.1f} "
        f"Mbp A/C/G/T; the workers' first pass took {plan['scan']:.2f} CPU-s; load "
        f"{os.getloadavg()[0]:.1f})")
  one, _ = _run_measured(_PLAN_SCRIPT, [files[0]])
  whole_rate = one["acgt"] / 1e6 / (one["structure"] + one["plan"])
  print(f"  on {names[0]} alone"
        + ("" if fasta else " (one 70 Mbp record, like GRCh38's chromosomes)")
        + f": {whole_rate:6.1f} Mbp per CPU-s (structure {one['structure']:.2f}, plan "
        f"{one['plan']:.2f})" + ("" if fasta else "; the other file has 9,627 short records"))
  rates, results, runs, ceiling = {}, {}, {}, []
  for rep in range(repeats):
    for n in workers:
      tmp = tempfile.mkdtemp(prefix=f"bench_build_{n}_")
      try:
        load0 = os.getloadavg()[0]
        res, peak = _run_measured(_BUILD_SCRIPT, [tmp, str(n), ",".join(files), str(unit_mbp)])
      finally:
        shutil.rmtree(tmp, ignore_errors=True)
      res["rate"], res["peak"], res["load"] = acgt_mbp / res["seconds"], peak, load0
      runs.setdefault(n, []).append(res)
      cpu = res["main_cpu"] + res["workers_cpu"]
      if n == 2 and 1 in workers:
        # The machine's own ceiling, in the same run: two independent one-worker builds at
        # once share nothing but the machine (caches, memory bandwidth, the host's other
        # tenants), so their combined Mbp/s over one build's alone is the most any
        # two-process build can reach here.
        tmps = [tempfile.mkdtemp(prefix=f"bench_ceiling_{i}_") for i in range(2)]
        try:
          both = _run_together(_BUILD_SCRIPT, [[t, "1", ",".join(files), str(unit_mbp)]
                                               for t in tmps])
        finally:
          for t in tmps:
            shutil.rmtree(t, ignore_errors=True)
        ceiling.append(2 * acgt_mbp / max(b["seconds"] for b in both))
        each = ", ".join(f"{b['seconds']:.1f}" for b in both)
        print(f"[{rep + 1}/{repeats}] ceiling: two 1-worker builds at once, "
              f"{ceiling[-1]:6.2f} Mbp/s together ({each} s each)")
      print(f"[{rep + 1}/{repeats}] {n:2d} worker(s): {res['rate']:6.2f} Mbp/s wall "
            f"({res['rate'] / n:5.2f} per worker); {res['seconds']:6.1f} s build "
            f"({res['wall']:.1f} s with start-up); CPU-s: main {res['main_cpu']:.2f}, workers "
            f"{res['workers_cpu']:.2f} ({acgt_mbp / cpu:.2f} Mbp per CPU-s in all); peak RSS "
            f"{peak / 2**20:5.0f} MiB (tree); {res['bytes'] / acgt_mbp / 1e6:.2f} MB on disk "
            f"per Mbp; {sum(res['examples'].values())} examples, {res['units']} units; load "
            f"{load0:.1f} -> {os.getloadavg()[0]:.1f}")
  for n in workers:
    rs = sorted(runs[n], key=lambda r: r["rate"])
    # Each figure's median over the runs (CPU-seconds vary by ~10% under load).
    results[n] = dict(rs[len(rs) // 2], **{
        k: sorted(r[k] for r in rs)[len(rs) // 2] for k in ("main_cpu", "workers_cpu")})
    rates[n] = results[n]["rate"]
    loads = [r["load"] for r in runs[n]]
    print(f"{n:2d} worker(s), median of {len(rs)}: {rates[n]:6.2f} Mbp/s (range "
          f"{rs[0]['rate']:.2f}-{rs[-1]['rate']:.2f}), x{rates[n] / rates[workers[0]] * workers[0]:.2f}"
          f" vs {workers[0]} worker (medians); main CPU-s {results[n]['main_cpu']:.2f}, all "
          f"{results[n]['main_cpu'] + results[n]['workers_cpu']:.2f}; peak RSS "
          f"{max(r['peak'] for r in rs) / 2**20:.0f} MiB; load averages "
          f"{min(loads):.1f}-{max(loads):.1f}")
  if ceiling and 1 in rates and 2 in rates:
    c = sorted(ceiling)[len(ceiling) // 2]
    print(f"ceiling, median of {len(ceiling)}: {c:6.2f} Mbp/s (range {min(ceiling):.2f}-"
          f"{max(ceiling):.2f}), x{c / rates[1]:.2f} vs 1 worker: what two independent "
          f"processes reach on this machine; 2 workers reach {rates[2] / c:.0%} of it")
  if not unit_mbp:  # The command has no unit-size knob.
    command_scaling(files, workers, repeats, acgt_mbp)
    main_module_cost()
  par = [n for n in workers if n > 1]
  if par:
    # On c idle cores the build's CPU spreads over the c processes (the main process writes
    # units too), except the main process's reading and planning, which is serial:
    # T(c) = max(serial CPU, all CPU / c), from the CPU-seconds measured at n workers and
    # the serial part measured alone (above).
    n = max(par)
    all_cpu = results[n]["main_cpu"] + results[n]["workers_cpu"]
    per_mbp_all, serial = all_cpu / acgt_mbp, 1 / seq_rate
    # Whole chromosomes: the serial part runs at whole_rate instead.
    serial_whole = 1 / whole_rate
    all_whole = per_mbp_all - serial + serial_whole
    print(f"Projected from the median CPU-seconds at {n} workers ({per_mbp_all:.3f} CPU-s/Mbp "
          f"in all, {serial:.4f} of it serial: reading and planning), on idle cores; first as "
          f"measured on this corpus, then with the serial part at the whole-chromosome rate:")
    if 1 in results:
      t2 = max(serial, per_mbp_all / 2)
      print(f"  this genome on 2 idle cores: {acgt_mbp * t2:.1f} s, x{cpu_1(results) / t2:.2f} "
            f"vs 1 worker ({acgt_mbp * cpu_1(results):.1f} CPU-s); per worker "
            f"{1 / cpu_1(results):.2f} Mbp per CPU-s")
    one_1 = cpu_1(results) if 1 in results else per_mbp_all
    for c in (1, 2, 4, 8, 16, 32, 64, 96):
      t = GRCH38_MBP * (max(serial, per_mbp_all / c) if c > 1 else one_1)
      tw = GRCH38_MBP * (max(serial_whole, all_whole / c) if c > 1 else
                         one_1 - serial + serial_whole)
      star = "*" if c > 1 and serial >= per_mbp_all / c else " "
      star_w = "*" if c > 1 and serial_whole >= all_whole / c else " "
      print(f"  GRCh38 {GRCH38_MBP / 1000:.1f} Gbp on {c:3d} cores: {t / 60:6.1f} min{star} "
            f"{tw / 60:6.1f} min{star_w}")
    print("  (* the main process's reading for structure, unpacking gzip and planning is the "
          "bound)")


_MAIN_MODULE_SCRIPT = """
import os, runpy
import psutil  # Resident memory now (ru_maxrss would carry a forking parent's peak).
import genemask_jax.data.plan  # What the build's fork server has imported already.
me = psutil.Process()
t, r = os.times(), me.memory_info().rss
runpy.run_module("genemask_jax.data.prepare", run_name="__mp_main__")  # What a child did.
e = os.times()
print("RESULT", e.user + e.system - t.user - t.system, (me.memory_info().rss - r) / 2**20)
"""


def main_module_cost() -> None:
  """What each worker would pay if it imported the data command's main module, as
  multiprocessing has its children do (data/pool.py starts them without it)."""
  proc = subprocess.run([sys.executable, "-c", _MAIN_MODULE_SCRIPT], capture_output=True,
                        text=True)
  line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
  if proc.returncode != 0 or line is None:
    raise RuntimeError(f"measuring the main module failed: {proc.stderr[-2000:]}")
  cpu, mib = (float(x) for x in line.split()[1:])
  print(f"the data command's main module, imported in a worker: {cpu:.2f} CPU-s, "
        f"+{mib:.0f} MiB resident (what each worker saves: data/pool.py starts them "
        "without it)")


def command_scaling(files: list[str], workers: list[int], repeats: int, acgt_mbp: float
                    ) -> None:
  """The data command as users run it, `python -m genemask_jax.data.prepare`, per worker
  count (alternating, fresh process and directory each): its build seconds (the dataset's
  metadata). Unlike the `python -c` builds above, the command has a main module that
  multiprocessing would have every worker import (TFDS, absl)."""
  runs: dict[int, list[float]] = {n: [] for n in workers}
  for _ in range(repeats):
    for n in workers:
      tmp = tempfile.mkdtemp(prefix=f"bench_command_{n}_")
      try:
        proc = subprocess.run(
            [sys.executable, "-m", "genemask_jax.data.prepare", f"--tfds_dir={tmp}",
             f"--fasta={','.join(files)}", f"--num_workers={n}"],
            capture_output=True, text=True,  # Without a data dir: no few-shot builds first.
            env={k: v for k, v in os.environ.items() if k != "GENEMASK_DATA_DIR"})
        if proc.returncode != 0:
          raise RuntimeError(f"the data command failed: {proc.stderr[-2000:]}")
        meta = next(pathlib.Path(tmp).glob("genemask_genome/*/*/metadata.json"))
        runs[n].append(json.loads(meta.read_text())["seconds"])
      finally:
        shutil.rmtree(tmp, ignore_errors=True)
  med = {n: sorted(v)[len(v) // 2] for n, v in runs.items()}
  for n in workers:
    print(f"data command, {n:2d} worker(s), median of {repeats}: {med[n]:.2f} s build "
          f"({acgt_mbp / med[n]:6.2f} Mbp/s; range {min(runs[n]):.2f}-{max(runs[n]):.2f} s), "
          f"x{med[workers[0]] / med[n] * workers[0]:.2f} vs {workers[0]} worker")


def cpu_1(results: dict) -> float:
  """CPU-seconds per Mbp of A/C/G/T of the one-worker (in-process) build."""
  r = results[1]
  return (r["main_cpu"] + r["workers_cpu"]) / (r["stats"]["acgt"] / 1e6)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tfds_dir", default=None)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--batches", type=int, default=300)
  parser.add_argument("--genome_dir", default=None,
                      help="GRCh37 files (default $GENEMASK_DATA_DIR/genome or "
                      "../shared/data/genome)")
  parser.add_argument("--workers", default="1,2", help="worker counts for build scaling")
  parser.add_argument("--fasta", default="",
                      help="comma-separated FASTA files to build instead of the shared two")
  parser.add_argument("--genome_like", default="",
                      help="a directory: build one gzip FASTA shaped like hg38.fa.gz from "
                      "the shared files there (~750 Mbp: ten renamed copies of the 70 Mbp "
                      "chrX record, then chr22's short records; reused) and scale on it")
  parser.add_argument("--scaling_only", action="store_true")
  parser.add_argument("--copies", type=int, default=1,
                      help="build the files this many times over (3: 264 Mbp), so that "
                      "start-up weighs less, as in a whole-genome build")
  parser.add_argument("--unit_mbp", type=int, default=0,
                      help="force the work-unit size (16: what GRCh38 gets), for memory")
  parser.add_argument("--skip_scaling", action="store_true")
  parser.add_argument("--repeats", type=int, default=3,
                      help="builds per worker count (median and range are printed)")
  args = parser.parse_args()
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  genome_dir = pathlib.Path(
      args.genome_dir or os.path.join(os.environ.get("GENEMASK_DATA_DIR") or os.path.join(
          os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data"), "genome"))
  workers = [int(w) for w in args.workers.split(",")]
  if args.genome_like:
    args.fasta = genome_like(genome_dir, os.path.expanduser(args.genome_like))
  if args.scaling_only:
    scaling(genome_dir, workers, args.unit_mbp, args.repeats, args.copies,
            [f for f in args.fasta.split(",") if f])
    return

  paths = genome.default_genome_paths()
  t = time.perf_counter()
  n_chunks = sum(1 for _ in genome.iter_chunks(paths))
  dt = time.perf_counter() - t
  bases = sum(len(seq) for path in paths for _, seq in fasta.iter_records(path))
  print(f"chunking (genome.iter_chunks):  {n_chunks / dt:10.0f} examples/s "
        f"({bases / dt / 1e6:.1f} M bases/s; {n_chunks} examples in {dt:.2f} s)")

  tfds_dir = args.tfds_dir or tempfile.mkdtemp(prefix="bench_tfds_")
  t = time.perf_counter()
  builder = genome_tfds.build(tfds_dir, None, num_workers=1)
  dt = time.perf_counter() - t
  sources = genome_tfds.data_sources(builder)
  print(f"TFDS build (1 worker):           {n_chunks / dt:10.0f} examples/s "
        f"({dt:.2f} s into {tfds_dir}; a build that exists is reused)")

  src = sources["train"]
  t = time.perf_counter()
  n = min(2000, len(src))
  for i in range(n):
    src[(i * 7919) % len(src)]
  dt = time.perf_counter() - t
  print(f"random access source[i]:         {n / dt:10.0f} examples/s")

  for prefetch in (0, 2):
    it = pipeline.train_iterator(src, local_batch_size=args.batch, seed=0, prefetch=prefetch)
    next(it)  # Start-up.
    t = time.perf_counter()
    for _ in range(args.batches):
      next(it)
    dt = time.perf_counter() - t
    rate = args.batches * args.batch / dt
    print(f"grain train_iterator (batch {args.batch}, workers 0, prefetch {prefetch}): "
          f"{rate:8.0f} examples/s = {rate / TRAIN_STEP_EXAMPLES_PER_S:.0f}x the "
          f"~{TRAIN_STEP_EXAMPLES_PER_S:.0f} examples/s the tiny model's train step consumes")
  print(f"(2-core CPU dev machine, {os.cpu_count()} CPUs visible)")
  if not args.skip_scaling:
    scaling(genome_dir, workers, args.unit_mbp, args.repeats, args.copies,
            [f for f in args.fasta.split(",") if f])


if __name__ == "__main__":
  main()
