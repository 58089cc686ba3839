"""Train-step throughput of the JAX BERT vs HF transformers BertForMaskedLM (PyTorch).

    python benchmarks/bench_train_step.py                       # tiny, logo, dnabert_base
    python benchmarks/bench_train_step.py --sizes=tiny --batch=8 --length=512 --rounds=6
    python benchmarks/bench_train_step.py --full_head            # also JAX with all-L MLM head
    python benchmarks/bench_train_step.py --gpu                 # + dnabert_base 512 bf16, MFU
    python benchmarks/bench_train_step.py --gpu --profile=/tmp/prof   # + kernels by time

For each size both sides run the same model shape in float32 with the same optimizer
(AdamW, betas (0.9, 0.98), eps 1e-6, weight decay 0.01 off biases/LayerNorm, clip 1.0),
dropout as the size's config says, on the same batch. The JAX step includes the on-device
DNABERT masking (``masking.make_mask_fn``) and computes the last encoder layer and the MLM
head only at the masked positions (``max_predictions`` = 20% of L; the loss and gradients
are the same as computing every position); the PyTorch step gets pre-masked ids and labels
(-100 elsewhere), as HF's Trainer does, and uses its default attention (SDPA).

Timing: ``--rounds`` rounds, each running ``--steps_per_round`` steps of JAX then the same
of PyTorch; the first step of every round on each side is a switch-over warm-up and is not
counted (the other framework's threads and memory traffic were still winding down). The
median of the remaining steps gives tokens/s = batch * length / time. Interleaving rounds
keeps slow drifts of a shared machine's load from favouring either side.

``--gpu`` (default: on when JAX sees a GPU) adds ``dnabert_base`` at L=512 in bfloat16
(activations; float32 parameters and optimizer) with batch ``--gpu_batch``, PyTorch under
``torch.autocast(bfloat16)`` on the same GPU, and prints tokens/s and MFU per GPU: model
FLOPs of a standard step (6 x matmul parameters x tokens + 12 x layers x L^2 x hidden
per sequence for attention + the MLM decoder at the masked positions) over the chip's
dense bf16 peak (``PEAK_BF16``). The JAX step does fewer FLOPs than that (last layer at
the masked positions only), so its MFU is "useful model FLOPs", comparable across both.

``--gpu_also=pallas_gpu,...`` adds JAX runners with other attention implementations to the
GPU section, interleaved with the others (each costs one more compile, ~45 s for
dnabert_base on an H200).

``--profile=DIR`` then traces ``--profile_steps`` more JAX steps (of the GPU section when it
ran, else of the last size) with ``jax.profiler.trace(DIR, create_perfetto_trace=True)``
and prints the device kernels ranked by time (``profile_trace.py``; open the
``perfetto_trace.json.gz`` it names in https://ui.perfetto.dev for the timeline).

torch/transformers are optional (the ``hf`` extra); without them only JAX is timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from genemask_jax import flops as flops_lib
from genemask_jax import masking
from genemask_jax import model as model_lib
from genemask_jax import optim
from genemask_jax import sharding
from genemask_jax import train_step as ts

import profile_trace  # benchmarks/ is the script's directory, first on sys.path.

DEFAULT_SHAPES = {"tiny": (8, 512), "logo": (8, 512), "dnabert_base": (8, 128), "large": (8, 128)}

PEAK_BF16 = flops_lib.PEAK_BF16
peak_flops = flops_lib.peak_flops
model_flops_per_step = flops_lib.model_flops_per_step


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


def _torch_side(cfg, masks, device: str = "cpu", bf16: bool = False):
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
  model = transformers.BertForMaskedLM(hf_cfg).to(device).train()
  no_decay = ("bias", "LayerNorm.weight")
  groups = [
      {"params": [p for n, p in model.named_parameters()
                  if not any(s in n for s in no_decay)], "weight_decay": 0.01},
      {"params": [p for n, p in model.named_parameters()
                  if any(s in n for s in no_decay)], "weight_decay": 0.0},
  ]
  opt = torch.optim.AdamW(groups, lr=4e-4, betas=(0.9, 0.98), eps=1e-6)
  input_ids = torch.tensor(np.asarray(masks.masked_ids), dtype=torch.long, device=device)
  attention_mask = (input_ids != 0).long()
  labels = np.full(masks.masked_ids.shape, -100, np.int64)
  rows = np.arange(labels.shape[0])[:, None]
  w = np.asarray(masks.masked_lm_weights) > 0
  labels[np.broadcast_to(rows, w.shape)[w], np.asarray(masks.masked_lm_positions)[w]] = (
      np.asarray(masks.masked_lm_ids)[w])
  labels = torch.tensor(labels, device=device)

  def run():
    with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
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


def measure(runners: dict, *, rounds: int, steps_per_round: int, warmup: int) -> dict:
  """Median seconds per step of each runner, interleaved in rounds (see module doc)."""
  for run in runners.values():
    for _ in range(warmup):
      run()
  times = {k: [] for k in runners}
  for _ in range(rounds):
    for k, run in runners.items():
      run()  # switch-over warm-up, not counted
      for _ in range(max(1, steps_per_round - 1)):
        times[k].append(_time(run))
  return {k: statistics.median(v) for k, v in times.items()}


def _row(size, b, length, p, med, extra=""):
  tok = {k: b * length / v for k, v in med.items()}
  line = f"{size:<13}{f'{b}x{length}':>10}{p:>5}{tok['jax']:>12.0f}"
  if "jax_full" in tok:
    line += f"{tok['jax_full']:>12.0f}"
  if "torch" in tok:
    line += f"{tok['torch']:>13.0f}{tok['jax'] / tok['torch']:>10.2f}x"
  detail = ", ".join(f"{k} {1e3 * v:.0f} ms" for k, v in med.items())
  return line + f"   ({detail}{extra})"


def profile(run, directory: str, steps: int, label: str, top: int = 25) -> str:
  """Traces `steps` calls of `run` into `directory`; prints and returns the kernel ranking."""
  run()  # Nothing left to compile or warm inside the trace.
  with jax.profiler.trace(directory, create_perfetto_trace=True):
    for _ in range(steps):
      run()
  path = profile_trace.find_trace(directory)
  text = (f"\nProfile of {steps} JAX step(s) of {label}: {path}\n" + profile_trace.format_ranking(
      profile_trace.rank_kernels(profile_trace.load_events(path)), top=top, steps=steps))
  print(text, flush=True)
  return text


def gpu_section(args, have_torch: bool):
  """dnabert_base at L=512 in bfloat16 on the first GPU: tokens/s and MFU, JAX vs torch."""
  size, length, b = args.gpu_size, args.gpu_length, args.gpu_batch
  no_dropout = {} if args.gpu_dropout else {"dropout_rate": 0.0, "attention_dropout_rate": 0.0}
  cfg = model_lib.model_config(size, dtype="bfloat16", attention_impl=args.attention_impl,
                               **no_dropout)
  p = max(1, int(round(args.prediction_fraction * length)))
  ids = _ids(b, length)
  dev = jax.devices()[0]
  kind = getattr(dev, "device_kind", dev.platform)
  peak = peak_flops(kind)
  runners = {}
  runners["jax"], masks = _jax_side(cfg, ids, p, full_head=False)
  for impl in filter(None, args.gpu_also.split(",")):
    try:
      other = dataclasses.replace(cfg, attention_impl=impl)
    except ValueError as e:  # e.g. cudnn with attention dropout on
      print(f"--gpu_also={impl}: skipped ({e})")
      continue
    runners[f"jax_{impl}"], _ = _jax_side(other, ids, p, full_head=False)
  torch_device = None
  if have_torch:
    import torch  # pylint: disable=g-import-not-at-top
    if torch.cuda.is_available():
      torch_device = "cuda"
    elif dev.platform == "cpu":
      torch_device = "cpu"  # --gpu forced on a CPU machine: a smoke run of the section
    if torch_device:
      runners["torch"], _ = _torch_side(cfg, masks, torch_device, bf16=True)
  med = measure(runners, rounds=args.rounds, steps_per_round=args.steps_per_round,
                warmup=args.warmup)
  flops = model_flops_per_step(cfg, b, length, p)
  print(f"\n{size} {b}x{length} bfloat16 on {kind} (1 device; torch on "
        f"{torch_device or 'n/a'}; dropout {'on' if args.gpu_dropout else 'off'}; attention "
        f"{args.attention_impl}); model FLOPs per step {flops / 1e12:.2f} T; "
        f"peak {'%.0f TFLOP/s' % (peak / 1e12) if peak else 'unknown for this device'}")
  for k, sec in med.items():
    mfu = f"{100 * flops / sec / peak:5.1f}%" if peak else "  n/a"
    print(f"  {k:<6} {b * length / sec:>10.0f} tokens/s per device   MFU {mfu}   "
          f"({1e3 * sec:.1f} ms/step)")
  return runners["jax"], f"{size} {b}x{length} bfloat16 on {kind}"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", default="tiny,logo,dnabert_base")
  parser.add_argument("--batch", type=int, default=None, help="default: per size")
  parser.add_argument("--length", type=int, default=None, help="default: per size")
  parser.add_argument("--rounds", type=int, default=4)
  parser.add_argument("--steps_per_round", type=int, default=3,
                      help="steps per side per round; the first of each is not counted")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--prediction_fraction", type=float, default=0.2)
  parser.add_argument("--full_head", action="store_true",
                      help="also time JAX with the MLM head over all L positions")
  parser.add_argument("--no_torch", action="store_true")
  parser.add_argument("--attention_impl", default="auto",
                      help="auto (blockwise on CPU), blockwise or xla")
  parser.add_argument("--gpu", default=None, action=argparse.BooleanOptionalAction,
                      help="the bfloat16 MFU section (default: when JAX sees a GPU)")
  parser.add_argument("--gpu_size", default="dnabert_base")
  parser.add_argument("--gpu_length", type=int, default=512)
  parser.add_argument("--gpu_batch", type=int, default=32)
  parser.add_argument("--gpu_dropout", default=True, action=argparse.BooleanOptionalAction,
                      help="the GPU section's size keeps its dropout (--no-gpu_dropout: all "
                           "off, as --attention_impl=cudnn needs)")
  parser.add_argument("--gpu_also", default="",
                      help="comma-separated attention implementations to time as extra JAX "
                           "runners in the GPU section (e.g. pallas_gpu)")
  parser.add_argument("--profile", default="", metavar="DIR",
                      help="trace JAX steps into DIR and print kernels ranked by time")
  parser.add_argument("--profile_steps", type=int, default=3)
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
  counted = args.rounds * max(1, args.steps_per_round - 1)
  print(f"{os.cpu_count()} CPUs, 1-min load average {load:.1f} before the run")
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} x{jax.device_count()}, "
        f"float32, AdamW, median of {counted} steps per side ({args.rounds} interleaved "
        f"rounds of {args.steps_per_round}, first of each round not counted)")
  header = f"{'size':<13}{'B x L':>10}{'P':>5}{'jax tok/s':>12}"
  if args.full_head:
    header += f"{'jax all-L':>12}"
  if have_torch:
    header += f"{'torch tok/s':>13}{'jax/torch':>11}"
  sizes = [x for x in args.sizes.split(",") if x]
  to_profile = None
  for i, size in enumerate(sizes):
    b, length = DEFAULT_SHAPES.get(size, (8, 128))
    b, length = args.batch or b, args.length or length
    cfg = model_lib.model_config(size, attention_impl=args.attention_impl)
    p = max(1, int(round(args.prediction_fraction * length)))
    ids = _ids(b, length)
    runners = {}
    t0 = time.perf_counter()
    runners["jax"], masks = _jax_side(cfg, ids, p, full_head=False)
    if args.full_head:
      runners["jax_full"], _ = _jax_side(cfg, ids, p, full_head=True)
    threads = None
    if have_torch:
      runners["torch"], threads = _torch_side(cfg, masks)
    med = measure(runners, rounds=args.rounds, steps_per_round=args.steps_per_round,
                  warmup=args.warmup)
    if i == 0:
      print(header)
    print(_row(size, b, length, p, med, f"; setup+compile+measure "
               f"{time.perf_counter() - t0:.0f} s"), flush=True)
    to_profile = (runners["jax"], f"{size} {b}x{length} float32")
  if have_torch and sizes:
    print(f"torch threads: {threads}")
  gpu = args.gpu if args.gpu is not None else jax.default_backend() == "gpu"
  if gpu:
    to_profile = gpu_section(args, have_torch)
  else:
    print("\nNo GPU: the bfloat16 dnabert_base tokens/s and MFU section was not run "
          "(--gpu forces it).")
  if args.profile and to_profile:
    profile(to_profile[0], args.profile, args.profile_steps, to_profile[1])


if __name__ == "__main__":
  main()
