"""AdamW with DNABERT's pretraining settings, linear warmup/decay and gradient clipping.

Defaults are DNABERT's ``run_pretrain`` settings, which GeneMask reuses: peak LR 4e-4,
betas (0.9, 0.98), eps 1e-6, weight decay 0.01 on kernels and embeddings only (not on
biases or LayerNorm parameters, as in the HF Trainer), global-norm clipping at 1.0. The
schedule is HF's ``get_linear_schedule_with_warmup``: 0 -> peak linearly over
``warmup_steps``, then linearly to 0 at ``total_steps``.

Gradient accumulation is not done here: ``train_step.make_mlm_train_step`` takes
``num_microbatches`` and sums gradients over micro-batches inside one jitted step, so one
call = one optimizer update and ``state.step`` counts updates.
"""

from __future__ import annotations

from typing import Any

import jax
import optax


def make_lr_schedule(*, total_steps: int, warmup_steps: int = 10_000,
                     peak_learning_rate: float = 4e-4) -> optax.Schedule:
  """Linear warmup from 0 to ``peak_learning_rate``, then linear decay to 0 at ``total_steps``.

  Raises:
    ValueError: ``total_steps`` < 1, ``warmup_steps`` < 0 or > ``total_steps``, or a
      negative peak.
  """
  if total_steps < 1:
    raise ValueError(f"total_steps must be >= 1, got {total_steps}")
  if not 0 <= warmup_steps <= total_steps:
    raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
  if peak_learning_rate < 0:
    raise ValueError(f"peak_learning_rate must be >= 0, got {peak_learning_rate}")
  decay = optax.linear_schedule(peak_learning_rate, 0.0, max(total_steps - warmup_steps, 1))
  if warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(0.0, peak_learning_rate, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


def decay_mask(params: Any) -> Any:
  """True for leaves that get weight decay: every ``kernel`` and ``embedding``.

  Biases and LayerNorm ``scale``/``bias`` are excluded (HF's no_decay list).
  """
  def is_decayed(path, _):
    last = path[-1]
    name = getattr(last, "key", getattr(last, "name", None))
    return name in ("kernel", "embedding")
  return jax.tree_util.tree_map_with_path(is_decayed, params)


def make_optimizer(learning_rate: float | optax.Schedule, *, b1: float = 0.9,
                   b2: float = 0.98, eps: float = 1e-6, weight_decay: float = 0.01,
                   clip_norm: float | None = 1.0) -> optax.GradientTransformation:
  """Clip by global norm, then AdamW with decoupled weight decay on kernels/embeddings.

  Args:
    learning_rate: a constant or a schedule of the update count (``make_lr_schedule``).
    b1, b2, eps: Adam moments (DNABERT: 0.9, 0.98, 1e-6).
    weight_decay: decoupled decay (scaled by the learning rate, as torch AdamW).
    clip_norm: global-norm clip of the gradient; None disables it.

  Returns:
    An optax transformation; its state has Adam's mu/nu shaped like the params.
  """
  adamw = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                      mask=decay_mask)
  if clip_norm is None:
    return adamw
  if clip_norm <= 0:
    raise ValueError(f"clip_norm must be > 0 or None, got {clip_norm}")
  return optax.chain(optax.clip_by_global_norm(clip_norm), adamw)
