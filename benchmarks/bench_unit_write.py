"""CPU per work unit of the genome build: `shards.write_unit` alone, in one process.

    python benchmarks/bench_unit_write.py [--units 40] [--batch 1024] [--genome_dir DIR]

Plans 1 Mbp units of GRCh37_chrX_1-70M.fa.gz (reading and unpacking it first), loads the
first --units of them, then times writing each unit's array_record shards and marker:
packing --batch chunks at a time into token rows, encoding them as tf.Example bytes and
writing them. Prints CPU milliseconds per unit. docs/scaling.md's per-unit figures (the
encoder built once per process, the packing batch sizes tried) come from this script.
"""
import argparse
import os
import pathlib
import shutil
import tempfile
import time

from genemask_jax.data import genome
from genemask_jax.data import plan as plan_lib
from genemask_jax.data import shards


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--units", type=int, default=40)
  parser.add_argument("--batch", type=int, default=1024, help="chunks packed at a time")
  parser.add_argument("--genome_dir", default=None,
                      help="GRCh37 files (default $GENEMASK_DATA_DIR/genome or "
                      "../shared/data/genome)")
  args = parser.parse_args()
  genome_dir = pathlib.Path(
      args.genome_dir or os.path.join(os.environ.get("GENEMASK_DATA_DIR") or os.path.join(
          os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data"), "genome"))
  path = genome_dir / "GRCh37_chrX_1-70M.fa.gz"
  if not path.is_file():
    raise SystemExit(f"{path}: not found; set GENEMASK_DATA_DIR or --genome_dir")
  batches = genome.batches
  genome.batches = lambda lengths, size=args.batch: batches(lengths, size)
  work = tempfile.mkdtemp(prefix="bench_unit_write_")
  try:
    units = []
    for unit in plan_lib.plan_units([str(path)], genome.ChunkConfig(), 1 << 20,
                                    genome.ChunkStats(), work, plan_lib.run_now):
      units.append(unit.load() if isinstance(unit, shards.RangeUnit) else unit)
      if len(units) == args.units:
        break
    wall, cpu = time.perf_counter(), time.process_time()
    for unit in units:
      shards.write_unit(unit, work)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
  finally:
    shutil.rmtree(work, ignore_errors=True)
  print(f"write_unit, {len(units)} units of 1 Mbp (chrX), packing {args.batch} chunks at a "
        f"time: {cpu / len(units) * 1000:.1f} ms CPU per unit ({wall:.2f} s wall in all; "
        f"{os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
  main()
