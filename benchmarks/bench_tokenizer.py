"""Tokenizer throughput: bases/s of `tokenizer.encode` on one core, next to a plain loop.

  python benchmarks/bench_tokenizer.py [--fasta=FILE] [--repeats=5]

Input: the real genome slice shipped in the package (or --fasta), upper and soft-masked
lower case as stored. The reference is a plain-Python per-k-mer dictionary lookup, run on
a smaller piece in the same process. Issue target: >= 20 M bases/s on one core.
"""
import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from genemask_jax import tokenizer  # noqa: E402
from genemask_jax.data import fasta  # noqa: E402
from genemask_jax.data import genome  # noqa: E402


def python_encode(seq: str, kmer_ids: dict[str, int], k: int = 6) -> list[int]:
  """The reference: one dictionary lookup per k-mer."""
  return [kmer_ids.get(seq[i:i + k], tokenizer.UNK_ID) for i in range(len(seq) - k + 1)]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--fasta", default=None)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--reference_bp", type=int, default=500_000)
  args = parser.parse_args()
  path = args.fasta or genome.default_genome_paths()[0]
  seq = b"".join(s for _, s in fasta.iter_records(path))
  print(f"input: {path}, {len(seq):,} bases")

  best = float("inf")
  for _ in range(args.repeats):
    t = time.perf_counter()
    ids = tokenizer.encode(seq)
    best = min(best, time.perf_counter() - t)
  vec = len(seq) / best

  small = seq[:args.reference_bp].decode().upper()
  kmer_ids = {w: i for i, w in enumerate(tokenizer.vocab(6))}
  t = time.perf_counter()
  ref = python_encode(small, kmer_ids)
  ref_rate = len(small) / (time.perf_counter() - t)
  assert np.array_equal(np.asarray(ref, np.int32), tokenizer.encode(small)), "mismatch"
  del ids

  print(f"tokenizer.encode (numpy, k=6):   {vec / 1e6:8.1f} M bases/s  "
        f"(best of {args.repeats}, {len(seq):,} bases)")
  print(f"plain-Python per-k-mer loop:     {ref_rate / 1e6:8.1f} M bases/s  "
        f"({len(small):,} bases)")
  print(f"speed-up: {vec / ref_rate:.0f}x; issue target 20 M bases/s: "
        f"{'met' if vec >= 20e6 else 'NOT met'}")


if __name__ == "__main__":
  main()
