"""Placing parameters into a sharded train state: HF weights, or any host-side tree.

    state, shardings = train_step.create_train_state(model, tx, key, mesh, rules)
    state = init_state_from_hf(state, "DNA_bert_6", cfg)      # pretraining --init_from_hf
    state = state.replace(params=replace_params(state.params, numpy_params))

Each new leaf keeps the dtype and sharding of the leaf it replaces, and is built with
`jax.make_array_from_callback`, so that a sharding spanning other processes' devices works
(each process fills only its own shards).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from genemask_jax import hf
from genemask_jax import model as model_lib


def put_like(value: np.ndarray, like: jax.Array) -> jax.Array:
  """``value`` as an array with ``like``'s dtype and sharding (multi-process safe)."""
  value = np.asarray(value, dtype=like.dtype)
  if value.shape != like.shape:
    raise ValueError(f"shape {value.shape} does not match the model's {like.shape}")
  sharding = getattr(like, "sharding", None)
  if sharding is None:
    return jnp.asarray(value)
  # Equivalent to jax.device_put(value, sharding), but also valid when the sharding spans
  # devices of other processes: each process fills only its own shards.
  return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])


def replace_params(old: Any, new: Mapping[str, Any]) -> Any:
  """``new`` laid out as ``old``: same tree structure, each leaf with old's dtype/sharding.

  Raises:
    ValueError: the trees differ (names the extra/missing paths) or a shape differs.
  """
  old_paths = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(old)}
  new_paths = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(new)}
  if set(old_paths) != set(new_paths):
    raise ValueError("parameter trees differ: missing "
                     f"{sorted(set(old_paths) - set(new_paths))}, extra "
                     f"{sorted(set(new_paths) - set(old_paths))}")

  def put(path, like):
    name = jax.tree_util.keystr(path)
    try:
      return put_like(new_paths[name], like)
    except ValueError as e:
      raise ValueError(f"parameter {name}: {e}") from e

  return jax.tree_util.tree_map_with_path(put, old)


def init_state_from_hf(state: Any, hf_dir: str | os.PathLike, cfg: model_lib.ModelConfig, *,
                       k: int | None = None, check_vocab: bool = True) -> Any:
  """``state`` (a ``TrainState`` of ``BertForMaskedLM``) with params from an HF directory.

  Each new leaf keeps the dtype and sharding of the leaf it replaces; step and optimizer
  state are unchanged. Vocabulary rows are padded to ``cfg.padded_vocab_size``.

  Args:
    state: anything with ``params`` and ``.replace(params=...)`` (``TrainState``).
    hf_dir: the HF directory.
    cfg: the model config the state was built for.
    k: k-mer size of the tokenizer; None infers it from ``cfg.vocab_size``.
    check_vocab: compare ``vocab.txt`` with the tokenizer.

  Raises:
    HFImportError: the HF model's shape differs from ``cfg`` (differing fields listed), or
      a bad directory.
  """
  ckpt = hf.load_hf_for_init(hf_dir, cfg, k=k, check_vocab=check_vocab)
  return state.replace(params=replace_params(state.params, hf.mlm_params(ckpt)))
