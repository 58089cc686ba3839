"""Train-step throughput of the JAX BERT vs HF transformers BertForMaskedLM (PyTorch).

    python benchmarks/bench_train_step.py                       # tiny, logo, dnabert_base
    python benchmarks/bench_train_step.py --sizes=tiny --batch=8 --length=512 --repeats=7
    python benchmarks/bench_train_step.py --full_head            # also JAX with all-L MLM head

For each size both sides run the same model shape in float32 with the same optimizer
(AdamW, betas (0.9, 0.98), eps 1e-6, weight decay 0.01 off biases/LayerNorm, clip 1.0),
dropout as the size's config says, on the same batch. The JAX step includes the on-device
DNABERT masking (``masking.make_mask_fn``) and projects only the masked positions
(``max_predictions`` = 20% of L); the PyTorch step gets pre-masked ids and labels
(-100 elsewhere), as HF's Trainer does. Steps are interleaved (JAX, torch, JAX, ...) after
warm-up; the median step time gives tokens/s = batch * length / time.

torch/transformers are optional (the ``hf`` extra); without them only JAX is timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from genemask_jax import masking
from genemask_jax import model as model_lib
from genemask_jax import optim
from genemask_jax import sharding
from genemask_jax import train_step as ts

DEFAULT_SHAPES = {"tiny": (8, 512), "logo": (8, 512), "dnabert_base": (8, 128), "large": (8, 128)}


def _ids(batch: int, length: int, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, 4101, (batch, length)).astype(np.int32)
  ids[:, 0], ids[:, -1] = 2, 3
  return ids


def _jax_side(cfg, ids, num_predictions, full_head):
  """Returns (step_fn() -> None that runs one step and blocks, masks for torch)."""
  mesh = sharding.make_mesh({"data": -1, "model": 1})
  rules = sharding.DEFAULT_RULES
  sharding.validate(cfg, mesh, rules, global_batch_size=ids.shape[0])
  model = model_lib.BertForMaskedLM(cfg)
  tx = optim.make_optimizer(optim.make_lr_schedule(total_steps=10_000, warmup_steps=100))
  rank = np.arange(1, cfg.vocab_size + 1, dtype=np.int32)
  mask_fn = masking.make_mask_fn(rank, "dnabert", max_predictions=num_predictions)
  if full_head:
    # The same masks, but the MLM head over all L positions (weights zero elsewhere).
    def full_mask_fn(key, input_ids):
      m = mask_fn(key, input_ids)
      b, length = input_ids.shape
      labels = jnp.zeros((b, length), jnp.int32)
      weights = jnp.zeros((b, length), jnp.float32)
      rows = jnp.arange(b)[:, None]
      labels = labels.at[rows, m.masked_lm_positions].set(m.masked_lm_ids)
      weights = weights.at[rows, m.masked_lm_positions].max(m.masked_lm_weights)
      positions = jnp.tile(jnp.arange(length, dtype=jnp.int32)[None], (b, 1))
      return m._replace(masked_lm_positions=positions, masked_lm_ids=labels,
                        masked_lm_weights=weights)
    step_mask_fn = full_mask_fn
  else:
    step_mask_fn = mask_fn
  state, shardings = ts.create_train_state(model, tx, jax.random.key(0), mesh, rules)
  step = ts.jit_train_step(ts.make_mlm_train_step(model, tx, step_mask_fn), mesh, rules,
                           shardings)
  batch = sharding.global_batch_from_local({"input_ids": ids}, mesh, rules)
  key = jax.random.key(1)
  holder = {"state": state}

  def run():
    holder["state"], metrics = step(holder["state"], batch, key)
    jax.block_until_ready(metrics["loss"])
    return float(metrics["loss"])

  masks = jax.device_get(mask_fn(jax.random.key(2), jnp.asarray(ids)))
  return run, masks


def _torch_side(cfg, masks):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  hf_cfg = transformers.BertConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      intermediate_size=cfg.mlp_dim, max_position_embeddings=cfg.max_len,
      type_vocab_size=cfg.type_vocab_size, hidden_dropout_prob=cfg.dropout_rate,
      attention_probs_dropout_prob=cfg.attention_dropout_rate,
      layer_norm_eps=cfg.layer_norm_eps, hidden_act="gelu", pad_token_id=0)
  torch.manual_seed(0)
  model = transformers.BertForMaskedLM(hf_cfg).train()
  no_decay = ("bias", "LayerNorm.weight")
  groups = [
      {"params": [p for n, p in model.named_parameters()
                  if not any(s in n for s in no_decay)], "weight_decay": 0.01},
      {"params": [p for n, p in model.named_parameters()
                  if any(s in n for s in no_decay)], "weight_decay": 0.0},
  ]
  opt = torch.optim.AdamW(groups, lr=4e-4, betas=(0.9, 0.98), eps=1e-6)
  input_ids = torch.tensor(np.asarray(masks.masked_ids), dtype=torch.long)
  attention_mask = (input_ids != 0).long()
  labels = np.full(masks.masked_ids.shape, -100, np.int64)
  rows = np.arange(labels.shape[0])[:, None]
  w = np.asarray(masks.masked_lm_weights) > 0
  labels[np.broadcast_to(rows, w.shape)[w], np.asarray(masks.masked_lm_positions)[w]] = (
      np.asarray(masks.masked_lm_ids)[w])
  labels = torch.tensor(labels)

  def run():
    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()

  return run, torch.get_num_threads()


def _time(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", default="tiny,logo,dnabert_base")
  parser.add_argument("--batch", type=int, default=None, help="default: per size")
  parser.add_argument("--length", type=int, default=None, help="default: per size")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--prediction_fraction", type=float, default=0.2)
  parser.add_argument("--full_head", action="store_true",
                      help="also time JAX with the MLM head over all L positions")
  parser.add_argument("--no_torch", action="store_true")
  args = parser.parse_args()

  try:
    if args.no_torch:
      raise ImportError("--no_torch")
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import transformers  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    have_torch = True
  except ImportError as e:
    print(f"torch/transformers not available ({e}); timing JAX only. "
          "pip install '.[hf]' for the side-by-side numbers.")
    have_torch = False

  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  print(f"{os.cpu_count()} CPUs, 1-min load average {load:.1f} before the run")
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} x{jax.device_count()}, "
        "float32, AdamW, median of", args.repeats, "interleaved steps")
  header = f"{'size':<13}{'B x L':>10}{'P':>5}{'jax tok/s':>12}"
  if args.full_head:
    header += f"{'jax all-L':>12}"
  if have_torch:
    header += f"{'torch tok/s':>13}{'jax/torch':>11}"
  rows = []
  for size in args.sizes.split(","):
    b, length = DEFAULT_SHAPES.get(size, (8, 128))
    b, length = args.batch or b, args.length or length
    cfg = model_lib.model_config(size)
    p = max(1, int(round(args.prediction_fraction * length)))
    ids = _ids(b, length)
    runners = {}
    t0 = time.perf_counter()
    runners["jax"], masks = _jax_side(cfg, ids, p, full_head=False)
    if args.full_head:
      runners["jax_full"], _ = _jax_side(cfg, ids, p, full_head=True)
    if have_torch:
      runners["torch"], threads = _torch_side(cfg, masks)
    for run in runners.values():
      for _ in range(args.warmup):
        run()
    setup_s = time.perf_counter() - t0
    times = {k: [] for k in runners}
    for _ in range(args.repeats):
      for k, run in runners.items():
        times[k].append(_time(run))
    med = {k: statistics.median(v) for k, v in times.items()}
    tok = {k: b * length / v for k, v in med.items()}
    line = f"{size:<13}{f'{b}x{length}':>10}{p:>5}{tok['jax']:>12.0f}"
    if args.full_head:
      line += f"{tok['jax_full']:>12.0f}"
    if have_torch:
      line += f"{tok['torch']:>13.0f}{tok['jax'] / tok['torch']:>10.2f}x"
    detail = ", ".join(f"{k} {1e3 * v:.0f} ms" for k, v in med.items())
    rows.append(line + f"   ({detail}; setup+compile {setup_s:.0f} s)")
    print(header if len(rows) == 1 else "", end="\n" if len(rows) == 1 else "")
    print(rows[-1], flush=True)
  if have_torch:
    print(f"torch threads: {threads}")


if __name__ == "__main__":
  main()
