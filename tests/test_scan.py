"""config.model.scan_layers: the encoder as one lax.scan changes compile time, never the
parameters or the numbers (dropout and every remat policy included), and keeps the
parameter layout on a model-parallel mesh (8 simulated CPU devices, see conftest.py)."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genemask_jax import model as model_lib
from genemask_jax import optim
from genemask_jax import sharding
from genemask_jax import train_step as ts
import test_sharding  # tests/ is on sys.path (rootdir-relative test modules).
from test_remat import _batch  # The same masked batch: padding in one row, 6 targets.

# Three layers: with masked positions two of them run in the scan and the last apart.
CFG = model_lib.ModelConfig(num_layers=3, hidden_size=32, num_heads=2, mlp_dim=64,
                            max_len=32, attention_impl="blockwise")


def _run(scan_layers, remat="none", all_positions=False):
  """Init params, then (loss, grads) of a dropout-on MLM loss, and the hidden states."""
  cfg = dataclasses.replace(CFG, remat=remat, scan_layers=scan_layers)
  model = model_lib.BertForMaskedLM(cfg)
  ids, positions, labels = _batch()
  params = nn.unbox(model.init(jax.random.key(0), ids)["params"])

  def loss(p):
    logits = model.apply({"params": p}, ids, deterministic=False,
                         masked_positions=None if all_positions else positions,
                         rngs={"dropout": jax.random.key(1)})
    if all_positions:
      logits = model_lib.gather_positions(logits, positions)
    s, w, _ = ts.mlm_loss_terms(logits, labels, jnp.ones(labels.shape))
    return s / w

  hidden = jax.jit(lambda p: model.apply({"params": p}, ids, method="encode"))(params)
  return params, jax.jit(jax.value_and_grad(loss))(params), hidden


@pytest.fixture(scope="module")
def unrolled():
  return _run(False)


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_scan_gives_the_unrolled_params_loss_gradients_and_outputs(remat, unrolled):
  params0, (loss0, grads0), hidden0 = unrolled
  params, (loss, grads), hidden = _run(True, remat)
  # Same tree and values: checkpoints, HF conversion and sharding rules need no change.
  assert jax.tree.structure(params) == jax.tree.structure(params0)
  assert "layer_2" in params["bert"]["encoder"]
  for p, p0 in zip(jax.tree.leaves(params), jax.tree.leaves(params0)):
    np.testing.assert_array_equal(p, p0)
  np.testing.assert_allclose(hidden, hidden0, rtol=1e-5, atol=1e-5)
  # Dropout is on: the same masks are drawn in every layer.
  np.testing.assert_allclose(loss, loss0, rtol=1e-6)
  for g, g0 in zip(jax.tree.leaves(grads), jax.tree.leaves(grads0)):
    np.testing.assert_allclose(g, g0, rtol=1e-4, atol=1e-6)


def test_scan_over_every_layer_matches_unrolled_with_dropout():
  """Without masked positions all three layers run in the scan."""
  _, (loss0, grads0), _ = _run(False, all_positions=True)
  _, (loss, grads), _ = _run(True, all_positions=True)
  np.testing.assert_allclose(loss, loss0, rtol=1e-6)
  for g, g0 in zip(jax.tree.leaves(grads), jax.tree.leaves(grads0)):
    np.testing.assert_allclose(g, g0, rtol=1e-4, atol=1e-6)


def test_dropout_differs_between_layers_under_scan():
  """Each scanned layer gets its own dropout key (not one mask repeated)."""
  cfg = dataclasses.replace(CFG, scan_layers=True)
  model = model_lib.BertForMaskedLM(cfg)
  ids, _, _ = _batch()
  params = model.init(jax.random.key(0), ids)["params"]
  a = model.apply({"params": params}, ids, deterministic=False,
                  rngs={"dropout": jax.random.key(1)})
  b = model.apply({"params": params}, ids, deterministic=False,
                  rngs={"dropout": jax.random.key(2)})
  c = model.apply({"params": params}, ids, deterministic=True)
  assert not np.allclose(a, b) and not np.allclose(a, c)


def _sharded_step(scan_layers, mesh_shape=(2, 4)):
  cfg = dataclasses.replace(test_sharding.CFG, num_layers=3, scan_layers=scan_layers)
  mesh = sharding.make_mesh(mesh_shape, devices=jax.devices()[:8])
  rules = sharding.DEFAULT_RULES
  model = model_lib.BertForMaskedLM(cfg)
  schedule = optim.make_lr_schedule(total_steps=10, warmup_steps=2, peak_learning_rate=1e-3)
  tx = optim.make_optimizer(schedule)
  state, shardings = ts.create_train_state(model, tx, jax.random.key(0), mesh, rules,
                                          compiler_options=test_sharding.FAST_COMPILE)
  step = ts.jit_train_step(
      ts.make_mlm_train_step(model, tx, test_sharding.stand_in_mask_fn,
                             learning_rate_fn=schedule),
      mesh, rules, shardings, compiler_options=test_sharding.FAST_COMPILE)
  batch = sharding.global_batch_from_local({"input_ids": test_sharding._batch()}, mesh, rules)
  with sharding.axis_rules(mesh, rules):  # Compiled once, run once.
    compiled = step.jitted.lower(state, batch, jax.random.key(1)).compile()
  state, metrics = compiled(state, batch, jax.random.key(1))
  return state, shardings, {k: float(v) for k, v in metrics.items()}, compiled.as_text()


def test_scan_on_a_model_parallel_mesh_keeps_layouts_and_numbers():
  _, _, want, _ = _sharded_step(False)
  state, shardings, got, hlo = _sharded_step(True)
  test_sharding._assert_same_history([got], [want])
  for arr, sh in zip(jax.tree.leaves(state), jax.tree.leaves(
      shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)), strict=True):
    assert arr.sharding.is_equivalent_to(sh, arr.ndim)
  # The two scanned layers' stacked MLP kernels (2, 64, 128) stay split over the model
  # axis of 4 inside the compiled step: shards (2, 64, 32), never the whole stack.
  assert "f32[2,64,32]" in hlo
  assert "f32[2,64,128]" not in hlo
