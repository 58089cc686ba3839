"""Input-pipeline throughput: chunking, TFDS build, and grain batches from array_record.

  python benchmarks/bench_pipeline.py [--tfds_dir=DIR] [--batch=8] [--batches=300]

Uses the genome slice shipped in the package. Prints examples/s of the training iterator
(worker_count=0, i.e. read in the training process) next to what the train step consumes:
the tiny model takes ~0.5 s per step at 8x512 on the 2-core dev machine (bench_train_step.py,
2026-11-25), ~16 examples/s.
"""
import argparse
import os
import tempfile
import time

from genemask_jax.data import fasta
from genemask_jax.data import genome
from genemask_jax.data import genome_tfds
from genemask_jax.data import pipeline

TRAIN_STEP_EXAMPLES_PER_S = 16.0  # Tiny BERT, 8x512, 2-core CPU: 503 ms/step measured.


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tfds_dir", default=None)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--batches", type=int, default=300)
  args = parser.parse_args()
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()

  paths = genome.default_genome_paths()
  t = time.perf_counter()
  n_chunks = sum(1 for _ in genome.iter_chunks(paths))
  dt = time.perf_counter() - t
  bases = sum(len(seq) for path in paths for _, seq in fasta.iter_records(path))
  print(f"chunking (genome.iter_chunks):  {n_chunks / dt:10.0f} examples/s "
        f"({bases / dt / 1e6:.1f} M bases/s; {n_chunks} examples in {dt:.2f} s)")

  tfds_dir = args.tfds_dir or tempfile.mkdtemp(prefix="bench_tfds_")
  t = time.perf_counter()
  builder = genome_tfds.build(tfds_dir, None)
  dt = time.perf_counter() - t
  sources = genome_tfds.data_sources(builder)
  print(f"TFDS build (2 passes + write):   {n_chunks / dt:10.0f} examples/s "
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


if __name__ == "__main__":
  main()
