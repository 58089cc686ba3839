r"""Benchmark of the NPMI statistics: genome FASTA (gzip) -> CSV + lookup, time and memory.

Prints, for the shared genome (chrX 1-70M and the chr22 blocks, 88 Mbp ACGT):
* wall time and Mbp/s of the whole command path (count, score, write CSV + .npy), and the
  parts: gzip decompression alone, the FASTA reader (`fasta.iter_blocks`) alone, counting;
* peak resident memory (ru_maxrss) of a fresh process per input size (chr22 only, both
  files), next to the size after imports, to show it does not grow with the input;
* a reference in the same run: plain-Python substring counting (collections.Counter) on a
  1 Mbp slice, in Mbp/s;
* agreement with the authors' table (Spearman rho, top-100 overlap).

    python benchmarks/bench_npmi.py [--data_dir=../shared/data]
"""

from __future__ import annotations

import collections
import gzip
import json
import math
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_DATA_DIR = flags.DEFINE_string(
    "data_dir", os.environ.get("GENEMASK_DATA_DIR", str(REPO.parent / "shared" / "data")),
    "Shared data directory (holds genome/ and npmi/).")
_CHILD = flags.DEFINE_string("child", None, "Internal: run one measurement in this process.")
_FILES = flags.DEFINE_list("files", None, "Internal: genome files for --child.")
_OUT = flags.DEFINE_string("out", None, "Internal: output CSV for --child.")
_BLOCK = flags.DEFINE_integer("block_size", 1 << 22, "Internal: FASTA block size for --child.")

GENOME = {"chr22": ["GRCh37_chr22_blocks.fa.gz"],
          "chrX": ["GRCh37_chrX_1-70M.fa.gz"],
          "both": ["GRCh37_chrX_1-70M.fa.gz", "GRCh37_chr22_blocks.fa.gz"]}
# (label, genome key, block size): peak memory follows the block size, not the input size.
RUNS = (("chr22", "chr22", 1 << 22), ("chrX", "chrX", 1 << 22), ("both", "both", 1 << 22),
        ("both, 1 MiB blocks", "both", 1 << 20))


def _maxrss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux.


def _cpu_s() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def _child_pipeline(files: list[str], out: str, block_size: int) -> dict:
  """The command's path: count, score, write CSV and lookup. Runs in a fresh process."""
  from genemask_jax import npmi
  import numpy as np  # noqa: F401
  rss_imports = _maxrss_mb()
  c0, t0 = _cpu_s(), time.perf_counter()
  counts = npmi.count_fasta(files, k=6, block_size=block_size)
  t1 = time.perf_counter()
  table = npmi.score_counts(counts)
  npmi.write_table(table, out)
  t2 = time.perf_counter()
  return {"letters": counts.letters, "acgt": counts.total(1), "count_s": t1 - t0,
          "score_write_s": t2 - t1, "wall_s": t2 - t0, "cpu_s": _cpu_s() - c0,
          "rss_imports_mb": rss_imports, "rss_peak_mb": _maxrss_mb()}


def _child_parts(files: list[str]) -> dict:
  """gzip alone and the FASTA reader alone, over the same files."""
  from genemask_jax.data import fasta
  t0 = _cpu_s()
  raw = 0
  for p in files:
    with gzip.open(p, "rb") as f:
      while chunk := f.read(1 << 22):
        raw += len(chunk)
  t1 = _cpu_s()
  letters = sum(len(b) for p in files for _, b in fasta.iter_blocks(p))
  t2 = _cpu_s()
  return {"gunzip_s": t1 - t0, "gunzip_bytes": raw, "reader_s": t2 - t1, "letters": letters}


def _reference_python(files: list[str], n_letters: int = 1_000_000) -> dict:
  """Plain-Python n-gram counting (n = 1..6) of the first n_letters ACGT letters."""
  from genemask_jax.data import fasta
  seq = []
  size = 0
  for _, b in fasta.iter_blocks(files[0]):
    seq.append(b.decode().upper())
    size += len(b)
    if size >= n_letters:
      break
  s = "".join(seq)[:n_letters]
  t0 = time.perf_counter()
  c = collections.Counter()
  for n in range(1, 7):
    c.update(w for w in (s[i:i + n] for i in range(len(s) - n + 1)) if w.strip("ACGT") == "")
  dt = time.perf_counter() - t0
  return {"letters": len(s), "s": dt}


def _run_child(kind: str, files: list[str], out: str = "", block_size: int = 1 << 22) -> dict:
  cmd = [sys.executable, __file__, f"--child={kind}", f"--files={','.join(files)}",
         f"--out={out or 'unused'}", f"--data_dir={_DATA_DIR.value}",
         f"--block_size={block_size}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"child {kind} failed:\n{proc.stderr}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  if _CHILD.value:
    fn = {"pipeline": lambda: _child_pipeline(_FILES.value, _OUT.value, _BLOCK.value),
          "parts": lambda: _child_parts(_FILES.value),
          "reference": lambda: _reference_python(_FILES.value)}[_CHILD.value]
    print(json.dumps(fn()))
    return
  data = pathlib.Path(_DATA_DIR.value)
  files = {name: [str(data / "genome" / f) for f in fs] for name, fs in GENOME.items()}
  for fs in files.values():
    for f in fs:
      if not os.path.isfile(f):
        raise app.UsageError(f"{f}: not found; pass --data_dir or set GENEMASK_DATA_DIR")
  print("NPMI benchmark (2-core CPU dev machine unless stated otherwise), k=6\n")
  with tempfile.TemporaryDirectory() as tmp:
    results = {}
    for label, key, block_size in RUNS:
      results[label] = _run_child("pipeline", files[key], os.path.join(tmp, f"{key}.csv"),
                                  block_size)
    parts = _run_child("parts", files["both"])
    ref = _run_child("reference", files["both"])

    print(f"{'input':19s} {'Mbp read':>9s} {'Mbp ACGT':>9s} {'count s':>8s} "
          f"{'score+write s':>14s} {'wall s':>7s} {'CPU s':>6s} {'Mbp/s':>7s} "
          f"{'RSS after imports':>18s} {'peak RSS':>9s}")
    for name, r in results.items():
      print(f"{name:19s} {r['letters'] / 1e6:9.1f} {r['acgt'] / 1e6:9.1f} {r['count_s']:8.2f} "
            f"{r['score_write_s']:14.2f} {r['wall_s']:7.2f} {r['cpu_s']:6.2f} "
            f"{r['letters'] / 1e6 / r['wall_s']:7.1f} {r['rss_imports_mb']:15.0f} MB "
            f"{r['rss_peak_mb']:6.0f} MB")
    both = results["both"]
    print(f"\nwhole genome -> CSV + lookup: {both['wall_s']:.2f} s wall (target <= 15 s), "
          f"{both['letters'] / 1e6 / both['wall_s']:.1f} Mbp/s")
    chrx = results["chrX"]
    print(f"peak RSS: chrX {chrx['rss_peak_mb']:.0f} MB vs both {both['rss_peak_mb']:.0f} MB "
          f"for {both['letters'] / chrx['letters']:.2f}x the input; it follows the block size "
          f"(both with 1 MiB blocks: {results['both, 1 MiB blocks']['rss_peak_mb']:.0f} MB; "
          f"chr22's records are shorter than a block)")
    print("\nparts (both files; CPU seconds, so other load on the machine does not count):")
    print(f"  gzip decompression alone : {parts['gunzip_s']:6.2f} s "
          f"({parts['gunzip_bytes'] / 1e6 / parts['gunzip_s']:.0f} MB/s of FASTA text)")
    print(f"  fasta.iter_blocks alone  : {parts['reader_s']:6.2f} s "
          f"({parts['letters'] / 1e6 / parts['reader_s']:.1f} Mbp/s), incl. gzip")
    print(f"  counting + scoring + CSV : {both['cpu_s'] - parts['reader_s']:6.2f} s "
          f"(pipeline CPU {both['cpu_s']:.2f} s - reader)")
    print(f"\nreference, plain-Python Counter over n = 1..6 on {ref['letters'] / 1e6:.1f} Mbp: "
          f"{ref['letters'] / 1e6 / ref['s']:.2f} Mbp/s vs ours "
          f"{both['letters'] / 1e6 / both['count_s']:.1f} Mbp/s counting "
          f"({both['letters'] / both['count_s'] / (ref['letters'] / ref['s']):.0f}x)")

    sys.path.insert(0, str(REPO))
    from genemask_jax import npmi, npmi_plot
    ours = npmi.load_lookup(os.path.join(tmp, "both.csv"))
    theirs = npmi.load_lookup(data / "npmi" / "genemask_grch38_chr1-3_6mer_npmi.csv")
    stats = npmi_plot.compare(ours, theirs)
    print(f"\nagreement with the authors' GRCh38 chr1-3 table: Spearman {stats['spearman']:.4f}, "
          f"top-100 overlap {stats['top_overlap']}/100 ({stats['shared']} shared 6-mers)")

    print("\nchoice of Z (p = c / Z), scored on the same counts; N = number of 6-mer windows:")
    counts = npmi.count_fasta(files["both"], k=6)
    n_windows = counts.total(6)
    for label, log_z in [("Z = N", math.log(n_windows)), ("Z = 1.5 N", math.log(1.5 * n_windows)),
                         ("Z = 2 N (default)", None), ("Z = 2.5 N", math.log(2.5 * n_windows)),
                         ("Z = 4 N", math.log(4 * n_windows)),
                         ("ln Z = 21.0146 (authors' fit)", npmi.AUTHORS_LOG_Z)]:
      table = npmi.score_counts(counts, log_z=log_z)
      s = npmi_plot.compare(npmi.lookup_from_table(table), theirs)
      print(f"  {label:30s} ln Z = {table.log_z:7.4f}  Spearman {s['spearman']:.4f}  "
            f"top-100 overlap {s['top_overlap']}")


if __name__ == "__main__":
  app.run(main)
