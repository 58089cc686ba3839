"""Model FLOPs of a BERT MLM train step and the peak FLOP/s of known chips, for MFU.

    flops = flops.model_flops_per_step(cfg, batch=64, length=512, num_predictions=80)
    peak = flops.peak_flops(jax.devices()[0].device_kind)   # None when the chip is unknown
    mfu = flops / seconds_per_step / (peak * num_devices)

The count is the standard one (forward + backward = 3 x forward matmul FLOPs; attention
scores and the weighted sum included; the MLM head at the predicted positions only), so an
MFU computed with it is comparable between implementations that skip different work.
"""

from __future__ import annotations

# Dense bfloat16 peak FLOP/s per chip (vendor datasheets, no sparsity), by device_kind.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12, "L4": 121e12,
             "A10": 125e12, "V100": 125e12, "TPU v4": 275e12, "TPU v5 lite": 197e12,
             "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12}


def peak_flops(device_kind: str) -> float | None:
  """Dense bf16 peak of a device_kind such as "NVIDIA H100 80GB HBM3"; None if unknown."""
  best = None
  for name, peak in PEAK_BF16.items():
    if name.lower() in device_kind.lower() and (best is None or len(name) > len(best[0])):
      best = (name, peak)
  return best[1] if best else None


def model_flops_per_step(cfg, batch: int, length: int, num_predictions: int) -> float:
  """Training FLOPs of a standard BERT MLM step (forward + backward = 3 x forward).

  Args:
    cfg: a `model.ModelConfig` (hidden_size, mlp_dim, vocab_size, num_layers).
    batch: sequences per step (global).
    length: tokens per sequence.
    num_predictions: MLM head rows per sequence (`masking.max_predictions`).
  """
  e, m, v = cfg.hidden_size, cfg.mlp_dim, cfg.vocab_size
  layer_matmul_params = 4 * e * e + 2 * e * m
  per_seq = 2 * length * cfg.num_layers * layer_matmul_params  # forward matmuls
  per_seq += 2 * cfg.num_layers * 2 * length * length * e  # scores + weighted sum
  per_seq += 2 * num_predictions * (e * e + e * v)  # MLM transform + decoder
  return 3.0 * batch * per_seq
