"""Masking throughput: sequences/s of the jit'd masking next to the plain-Python port.

  python benchmarks/bench_masking.py [--batch=64] [--length=512] [--rounds=7]
      [--npmi=PATH/genemask_grch38_chr1-3_6mer_npmi.csv] [--train_step]

Input: 506-k-mer sequences ([CLS] 506 k-mers [SEP] [PAD]*4 at L = 512) cut from the real
genome slice shipped in the package; the rank lookup is the NPMI table given by --npmi, or a
random permutation (the speed does not depend on which). The reference is the per-sequence
plain-Python port in tests/masking_oracle.py (a rank table, Python's RNG, one sequence at a
time, like the authors' host loop minus their tokenizer's decode).

Rounds alternate the port and the JAX function so that both see the same machine load;
the table shows the best and the median round. Issue 4's target: >= 4x the port at B = 64,
L = 512. With --train_step (needs genemask_jax.model / train_step) it also times a `tiny`
MLM train step at 8 x 512 with the GeneMask masking inside and with precomputed masks, and
the masking alone at that batch, to give masking's share of a step.
"""
import argparse
import os
import pathlib
import random
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from genemask_jax import masking
from genemask_jax import tokenizer
from genemask_jax.data import fasta
from genemask_jax.data import genome

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
import masking_oracle  # noqa: E402  (the plain-Python port lives with the tests)


def genome_batch(batch: int, length: int) -> np.ndarray:
  """(batch, length) ids of ACGT-only chunks of length - 1 bp (length - 6 k-mers)."""
  seq = b"".join(s for _, s in fasta.iter_records(genome.default_genome_paths()[0])).upper()
  bp, chunks, start = length - 1, [], 0
  while len(chunks) < batch:
    piece = seq[start:start + bp]
    if len(piece) < bp:
      raise ValueError(f"genome slice too short for {batch} chunks of {bp} bp")
    if not piece.translate(None, b"ACGT"):
      chunks.append(piece)
    start += 7919
  return tokenizer.pack([tokenizer.encode(c) for c in chunks], length)


def rank_lookup(path: str | None) -> np.ndarray:
  if path:
    from genemask_jax import npmi  # pylint: disable=g-import-not-at-top
    return npmi.load_lookup(path).rank
  vocab = tokenizer.vocab_size(6)
  rank = np.full(vocab, vocab, np.int32)
  rank[tokenizer.NUM_SPECIAL:] = np.random.default_rng(0).permutation(vocab - 5) + 1
  return rank


def time_port(rows: list[list[int]], rank: list[int], rng: random.Random, **kw) -> float:
  t = time.perf_counter()
  for r in rows:
    masking_oracle.mask_sequence(r, rank, rng, **kw)
  return time.perf_counter() - t


def time_jax(fn, key, ids, reps: int) -> float:
  out = fn(key, ids)
  jax.block_until_ready(out)
  t = time.perf_counter()
  for i in range(reps):
    out = fn(jax.random.fold_in(key, i), ids)
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / reps


def fmt(name: str, seconds: list[float], batch: int, ref: list[float] | None = None) -> str:
  best, med = min(seconds), statistics.median(seconds)
  line = (f"{name:<34} {batch / best:>10,.0f} {batch / med:>10,.0f} "
          f"{best / batch * 1e6:>9.1f} {med / batch * 1e6:>9.1f}")
  if ref:
    line += f" {min(ref) / best:>8.1f}x {statistics.median(ref) / med:>6.1f}x"
  return line


def bench_masking(args, ids: np.ndarray, rank: np.ndarray) -> None:
  batch, length = ids.shape
  rows, rank_list = [r.tolist() for r in ids], rank.tolist()
  rng = random.Random(0)
  key = jax.random.key(0)
  ids_dev = jnp.asarray(ids)
  variants = [("jax genemask P=L", "genemask", None), ("jax genemask P=80", "genemask", 80),
              ("jax dnabert P=L", "dnabert", None), ("jax bert P=L", "bert", None)]
  fns = {name: jax.jit(masking.make_mask_fn(rank, s, p_max)) for name, s, p_max in variants}
  port = {"genemask": [], "dnabert": [], "bert": []}
  port_p = {"genemask": 0.0176, "dnabert": 0.025, "bert": 0.15}
  times = {name: [] for name in fns}
  for _ in range(args.rounds):
    for s in port:
      port[s].append(time_port(rows, rank_list, rng, strategy=s, p=port_p[s]))
    for name, fn in fns.items():
      times[name].append(time_jax(fn, key, ids_dev, args.reps))
  print(f"\nB={batch}, L={length}, {args.rounds} alternating rounds; "
        f"{jax.devices()[0].platform} backend, {os.cpu_count()} CPU cores")
  print(f"{'':<34} {'seq/s best':>10} {'seq/s med':>10} {'us/seq b':>9} {'us/seq m':>9}"
        f" {'vs port (best, median)':>17}")
  for s in port:
    print(fmt(f"python port {s}", port[s], batch))
  for name, s, _ in variants:
    print(fmt(name, times[name], batch, port[s]))


def bench_train_step(args, rank: np.ndarray) -> None:
  try:
    from genemask_jax import model as model_lib  # pylint: disable=g-import-not-at-top
    from genemask_jax import optim  # pylint: disable=g-import-not-at-top
    from genemask_jax import train_step as ts  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    print(f"\n(train step not timed: {e})")
    return
  ids = jnp.asarray(genome_batch(8, 512))
  cfg = model_lib.model_config("tiny")
  model = model_lib.BertForMaskedLM(cfg)
  tx = optim.make_optimizer(1e-4)
  params = model.init(jax.random.key(0), ids[:, :8])["params"]
  mask_fn = masking.make_mask_fn(rank, "genemask", 80)
  fixed = mask_fn(jax.random.key(1), ids)  # Precomputed masks: the "no masking" step.
  steps = {"with genemask masking": jax.jit(ts.make_mlm_train_step(model, tx, mask_fn)),
           "with precomputed masks": jax.jit(ts.make_mlm_train_step(model, tx,
                                                                    lambda k, x: fixed))}
  mask_alone = jax.jit(mask_fn)
  state = ts.init_train_state(params, tx)
  times = {name: [] for name in steps}
  for name, step in steps.items():
    jax.block_until_ready(step(state, {"input_ids": ids}, jax.random.key(2)))
  alone = []
  for _ in range(args.step_rounds):
    for name, step in steps.items():
      t = time.perf_counter()
      jax.block_until_ready(step(state, {"input_ids": ids}, jax.random.key(2)))
      times[name].append(time.perf_counter() - t)
    alone.append(time_jax(mask_alone, jax.random.key(3), ids, 20))
  print(f"\ntiny MLM train step (2 layers, hidden 256), B=8, L=512, P=80, "
        f"{args.step_rounds} rounds (best / median):")
  for name, t in times.items():
    print(f"  step {name:<26} {min(t) * 1e3:8.1f} ms {statistics.median(t) * 1e3:8.1f} ms")
  step_ms = statistics.median(times["with genemask masking"]) * 1e3
  diff = (statistics.median(times["with genemask masking"])
          - statistics.median(times["with precomputed masks"])) * 1e3
  print(f"  masking alone (jit, B=8)         {min(alone) * 1e3:8.3f} ms "
        f"{statistics.median(alone) * 1e3:8.3f} ms  = "
        f"{statistics.median(alone) * 1e3 / step_ms:.2%} of the step")
  print(f"  step difference (with - without) {diff:8.1f} ms (within run-to-run noise)")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--length", type=int, default=512)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--reps", type=int, default=10, help="JAX calls per round")
  parser.add_argument("--npmi", default=None, help="NPMI table (.csv/.npz); default random")
  parser.add_argument("--train_step", action="store_true")
  parser.add_argument("--step_rounds", type=int, default=5)
  args = parser.parse_args()
  rank = rank_lookup(args.npmi)
  ids = genome_batch(args.batch, args.length)
  bench_masking(args, ids, rank)
  if args.train_step:
    bench_train_step(args, rank)


if __name__ == "__main__":
  main()
