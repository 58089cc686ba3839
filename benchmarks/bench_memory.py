"""Compile-only memory estimate of a BERT-base train gradient (the figure in docs/scaling.md).

    python benchmarks/bench_memory.py [--size=dnabert_base] [--length=512]

Prints XLA's `memory_analysis()` temporaries for batch 1 and 4 in float32 and bfloat16;
the difference per extra sequence is the activation cost the scaling guide plans with.
Nothing runs: the gradient is only lowered and compiled for the local backend.
"""
import argparse
import time

import jax
import jax.numpy as jnp

from genemask_jax import model as model_lib


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--size", default="dnabert_base")
  ap.add_argument("--length", type=int, default=512)
  ap.add_argument("--predictions", type=int, default=80)
  args = ap.parse_args()
  print(f"{args.size}, L={args.length}, P={args.predictions}, backend "
        f"{jax.devices()[0].platform}; compile only")
  for dtype in ("float32", "bfloat16"):
    model = model_lib.BertForMaskedLM(model_lib.model_config(args.size, dtype=dtype))
    params = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 8), jnp.int32)),
                            jax.random.key(0))["params"]

    def loss(p, ids, pos, key):
      logits = model.apply({"params": p}, ids, masked_positions=pos, deterministic=False,
                           rngs={"dropout": key})
      return jnp.mean(logits.astype(jnp.float32) ** 2)

    temps = {}
    for batch in (1, 4):
      t0 = time.time()
      compiled = jax.jit(jax.grad(loss)).lower(
          params, jax.ShapeDtypeStruct((batch, args.length), jnp.int32),
          jax.ShapeDtypeStruct((batch, args.predictions), jnp.int32),
          jax.random.key(0)).compile()
      temps[batch] = compiled.memory_analysis().temp_size_in_bytes / 1e9
      print(f"{dtype:9s} batch {batch}: temporaries {temps[batch]:.2f} GB "
            f"(compile {time.time() - t0:.0f} s)", flush=True)
    print(f"{dtype:9s} per extra sequence: {(temps[4] - temps[1]) / 3:.2f} GB")


if __name__ == "__main__":
  main()
