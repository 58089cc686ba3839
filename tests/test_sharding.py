"""Sharding: same training numbers on every mesh, expected layouts, clear config errors.

Runs on the 8 simulated CPU devices that conftest.py sets up.
"""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genemask_jax import model as model_lib
from genemask_jax import optim
from genemask_jax import sharding
from genemask_jax import train_step as ts

# Small enough to compile fast; 8 heads so the model axis can be 1..8; vocab padded to a
# multiple of 8 so the vocab rows can be split over the model axis.
CFG = model_lib.ModelConfig(num_layers=2, hidden_size=64, num_heads=8, mlp_dim=128,
                            max_len=32, vocab_pad_multiple=8)
NUM_PREDICTIONS = 5
STEPS = 3
# Unoptimised XLA CPU code compiles about twice as fast; these steps run in milliseconds.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def stand_in_mask_fn(key, input_ids):
  """NUM_PREDICTIONS random non-special positions per row, replaced by [MASK] (id 4)."""
  b, length = input_ids.shape
  keys = jax.random.split(key, b)
  pos = jax.vmap(lambda k: jax.random.choice(
      k, jnp.arange(1, length - 1), (NUM_PREDICTIONS,), replace=False))(keys)
  pos = pos.astype(jnp.int32)
  labels = jnp.take_along_axis(input_ids, pos, axis=1)
  masked = jax.vmap(lambda row, p: row.at[p].set(4))(input_ids, pos)
  return types.SimpleNamespace(masked_ids=masked, masked_lm_positions=pos,
                               masked_lm_ids=labels,
                               masked_lm_weights=(labels != 0).astype(jnp.float32))


def _batch(rows=8, length=32, seed=0):
  ids = np.random.default_rng(seed).integers(5, 4101, (rows, length)).astype(np.int32)
  ids[:, 0] = 2  # [CLS]
  ids[:, -1] = 3  # [SEP]
  ids[: rows // 2, length - 7:] = 0  # Some padded rows.
  ids[: rows // 2, length - 8] = 3
  return ids


def _train(mesh_shape, cfg=CFG, num_microbatches=1, steps=STEPS):
  """Runs STEPS steps on a mesh over the first prod(mesh_shape) devices."""
  devices = jax.devices()[: int(np.prod(mesh_shape))]
  mesh = sharding.make_mesh(mesh_shape, devices=devices)
  rules = sharding.DEFAULT_RULES
  sharding.validate(cfg, mesh, rules, global_batch_size=8)
  model = model_lib.BertForMaskedLM(cfg)
  schedule = optim.make_lr_schedule(total_steps=10, warmup_steps=2, peak_learning_rate=1e-3)
  tx = optim.make_optimizer(schedule)
  state, shardings = ts.create_train_state(model, tx, jax.random.key(0), mesh, rules,
                                          compiler_options=FAST_COMPILE)
  step = ts.jit_train_step(
      ts.make_mlm_train_step(model, tx, stand_in_mask_fn, learning_rate_fn=schedule,
                             num_microbatches=num_microbatches),
      mesh, rules, shardings, compiler_options=FAST_COMPILE)
  history = []
  for i in range(steps):
    batch = sharding.global_batch_from_local({"input_ids": _batch(seed=i)}, mesh, rules)
    state, metrics = step(state, batch, jax.random.key(1))
    history.append({k: float(v) for k, v in metrics.items()})
  return state, shardings, history


@pytest.fixture(scope="module")
def single_device_run():
  return _train((1, 1))


def _assert_same_history(got, want):
  for step_got, step_want in zip(got, want, strict=True):
    for name in ("loss", "grad_norm", "accuracy", "learning_rate"):
      np.testing.assert_allclose(step_got[name], step_want[name], rtol=1e-5, err_msg=name)


def _expected_specs(rules_model_axis="model"):
  m = rules_model_axis
  return {
      "bert/embeddings/word_embeddings/embedding": (m, None),
      "bert/embeddings/position_embeddings/embedding": (None, None),
      "bert/embeddings/LayerNorm/scale": (None,),
      "bert/encoder/layer_0/attention/self/query/kernel": (None, m, None),
      "bert/encoder/layer_1/attention/self/value/bias": (m, None),
      "bert/encoder/layer_0/attention/output/dense/kernel": (m, None, None),
      "bert/encoder/layer_0/intermediate_dense/kernel": (None, m),
      "bert/encoder/layer_0/intermediate_dense/bias": (m,),
      "bert/encoder/layer_1/output_dense/kernel": (m, None),
      "bert/encoder/layer_1/output_LayerNorm/bias": (None,),
      "cls/bias": (m,),
      "cls/transform_dense/kernel": (None, m),
  }


@pytest.mark.parametrize("mesh_shape", [(8, 1), (4, 2), (2, 4), (1, 8)])
def test_every_mesh_trains_like_one_device(mesh_shape, single_device_run):
  state, shardings, history = _train(mesh_shape)
  _assert_same_history(history, single_device_run[2])
  assert history[0]["loss"] > 0 and history[0]["grad_norm"] > 0
  # After the steps, params (and Adam moments) still have the layout they started with.
  leaves = jax.tree.leaves(state)
  want = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  for arr, sh in zip(leaves, want, strict=True):
    assert arr.sharding.is_equivalent_to(sh, arr.ndim)
  table = sharding.sharding_table(shardings.params)
  for name, spec in _expected_specs().items():
    got = tuple(table[name]) + (None,) * (len(spec) - len(table[name]))
    assert got == spec, (name, got, spec)
  adam = state.opt_state[1][0]
  kernel = state.params["bert"]["encoder"]["layer_0"]["intermediate_dense"]["kernel"]
  mu = adam.mu["bert"]["encoder"]["layer_0"]["intermediate_dense"]["kernel"]
  assert mu.sharding.is_equivalent_to(kernel.sharding, 2)
  if mesh_shape[1] > 1:
    assert kernel.addressable_shards[0].data.shape == (64, 128 // mesh_shape[1])


def test_gradient_accumulation_matches_full_batch():
  cfg = model_lib.ModelConfig(**{**CFG.__dict__, "num_layers": 1, "dropout_rate": 0.0,
                                 "attention_dropout_rate": 0.0})
  _, _, full = _train((2, 1), cfg, steps=2)
  _, _, accumulated = _train((2, 1), cfg, num_microbatches=2, steps=2)
  _assert_same_history(accumulated, full)


def test_fsdp_rules_split_embed_dim_and_batch():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "model": 2})
  sharding.validate(CFG, mesh, sharding.FSDP_RULES)
  model = model_lib.BertForMaskedLM(CFG)
  abstract = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 8), jnp.int32))["params"],
                            jax.random.key(0))
  table = sharding.sharding_table(
      sharding.param_shardings(abstract, mesh, sharding.FSDP_RULES))
  assert table["bert/embeddings/word_embeddings/embedding"] == ("model", "fsdp")
  assert table["bert/encoder/layer_0/intermediate_dense/kernel"] == ("fsdp", "model")
  assert table["bert/encoder/layer_0/attention/output/dense/kernel"] == ("model", None, "fsdp")
  batch = sharding.batch_sharding(mesh, sharding.FSDP_RULES)
  assert tuple(batch.spec)[0] == ("data", "fsdp")


def test_global_batch_from_local_shards_rows_on_data_axis():
  mesh = sharding.make_mesh({"data": 4, "model": -1})
  ids = _batch()
  out = sharding.global_batch_from_local({"input_ids": ids}, mesh, sharding.DEFAULT_RULES)
  arr = out["input_ids"]
  assert arr.shape == ids.shape and arr.dtype == np.int32
  np.testing.assert_array_equal(np.asarray(arr), ids)
  assert {s.data.shape for s in arr.addressable_shards} == {(2, 32)}
  with pytest.raises(ValueError, match="input_ids"):
    sharding.global_batch_from_local({"input_ids": ids[:6]}, mesh, sharding.DEFAULT_RULES)


def test_make_mesh_fills_the_rest():
  mesh = sharding.make_mesh({"data": -1, "model": 2})
  assert dict(mesh.shape) == {"data": 4, "model": 2}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize("shape, match", [
    ((3, 2), "must equal the device count"),
    ({"data": -1, "model": 3}, "do not divide"),
    ({"data": -1, "model": -1}, "at most one"),
    ({"data": 0, "model": 8}, ">= 1"),
])
def test_bad_mesh_is_rejected(shape, match):
  with pytest.raises(sharding.ShardingConfigError, match=match):
    sharding.make_mesh(shape)


def test_rule_naming_unknown_mesh_axis_is_rejected():
  mesh = sharding.make_mesh((8, 1))
  with pytest.raises(sharding.ShardingConfigError, match="'fsdp'.*mesh has axes"):
    sharding.validate(CFG, mesh, sharding.FSDP_RULES)
  with pytest.raises(sharding.ShardingConfigError, match="logical axis 'hidden'"):
    sharding.validate(CFG, mesh, [("hidden", "model")])


def test_heads_not_divisible_by_model_axis_is_rejected():
  cfg = model_lib.ModelConfig(num_layers=1, hidden_size=96, num_heads=6, mlp_dim=128,
                              vocab_pad_multiple=8)
  mesh = sharding.make_mesh((2, 4))
  with pytest.raises(sharding.ShardingConfigError, match="num_heads=6 .* 4"):
    sharding.validate(cfg, mesh, sharding.DEFAULT_RULES)


def test_unpadded_vocab_on_model_axis_is_rejected_with_hint():
  mesh = sharding.make_mesh((4, 2))
  with pytest.raises(sharding.ShardingConfigError, match="vocab_pad_multiple"):
    sharding.validate(model_lib.model_config("tiny"), mesh, sharding.DEFAULT_RULES)
  # On a pure data-parallel mesh the HF-exact vocabulary of 4101 rows is fine.
  sharding.validate(model_lib.model_config("tiny"), sharding.make_mesh((8, 1)),
                    sharding.DEFAULT_RULES, global_batch_size=16)
  with pytest.raises(sharding.ShardingConfigError, match="global batch size=12"):
    sharding.validate(CFG, sharding.make_mesh((8, 1)), sharding.DEFAULT_RULES,
                      global_batch_size=12)


def test_rules_from_config_accepts_mapping_and_lists():
  rules = sharding.rules_from_config({"batch": ["data", "fsdp"], "mlp": "model", "kv": None})
  assert rules == (("batch", ("data", "fsdp")), ("mlp", "model"), ("kv", None))
  with pytest.raises(sharding.ShardingConfigError, match=r"logical_axis_rules\[0\]"):
    sharding.rules_from_config([("batch", 3)])


def _small_setup(mesh_shape=(4, 2)):
  cfg = model_lib.ModelConfig(**{**CFG.__dict__, "num_layers": 1})
  mesh = sharding.make_mesh(mesh_shape, devices=jax.devices()[: int(np.prod(mesh_shape))])
  model = model_lib.BertForMaskedLM(cfg)
  tx = optim.make_optimizer(optim.make_lr_schedule(total_steps=10, warmup_steps=2,
                                                   peak_learning_rate=1e-3))
  return mesh, sharding.DEFAULT_RULES, model, tx


def test_compiled_step_layouts_donation_and_compiler_options():
  """What jit_train_step promises beyond the numbers: a host batch is taken with its rows
  on the batch axis, key and metrics replicated, state in and out as state_shardings, the
  input state donated (unless donate=False), and compiler_options reaching XLA (an unknown
  option is XLA's error); create_train_state passes its options on as well."""
  mesh, rules, model, tx = _small_setup()
  state, shardings = ts.create_train_state(model, tx, jax.random.key(0), mesh, rules,
                                          compiler_options=FAST_COMPILE)
  step_fn = ts.make_mlm_train_step(model, tx, stand_in_mask_fn)
  step = ts.jit_train_step(step_fn, mesh, rules, shardings, compiler_options=FAST_COMPILE)
  host_batch = {"input_ids": _batch()}  # numpy: jit places it.
  compiled = step.jitted.lower(state, host_batch, jax.random.key(1)).compile()
  (state_in, batch_in, key_in), _ = compiled.input_shardings
  assert batch_in["input_ids"].is_equivalent_to(sharding.batch_sharding(mesh, rules), 2)
  assert not batch_in["input_ids"].is_fully_replicated
  assert key_in.is_fully_replicated
  for got, want, x in zip(jax.tree.leaves(state_in), jax.tree.leaves(shardings),
                          jax.tree.leaves(state), strict=True):
    assert got.is_equivalent_to(want, x.ndim)
  state_out, metrics_out = compiled.output_shardings
  assert all(s.is_fully_replicated for s in jax.tree.leaves(metrics_out))
  kernel = ("bert", "encoder", "layer_0", "intermediate_dense", "kernel")

  def leaf(tree):
    for k in kernel:
      tree = tree[k]
    return tree

  assert leaf(state_out.params).is_equivalent_to(leaf(shardings.params), 2)
  assert not leaf(state_out.params).is_fully_replicated

  batch = sharding.global_batch_from_local(host_batch, mesh, rules)
  new_state, _ = step(state, batch, jax.random.key(1))
  assert all(x.is_deleted() for x in jax.tree.leaves(state))  # Donated: memory reused.
  assert not any(x.is_deleted() for x in jax.tree.leaves(batch))
  kept = ts.jit_train_step(step_fn, mesh, rules, shardings, donate=False,
                           compiler_options=FAST_COMPILE)
  kept(new_state, batch, jax.random.key(2))
  assert not any(x.is_deleted() for x in jax.tree.leaves(new_state))

  bad = {"xla_no_such_option_for_this_test": True}
  with pytest.raises(Exception, match="xla_no_such_option_for_this_test"):
    ts.jit_train_step(step_fn, mesh, rules, shardings, donate=False,
                      compiler_options=bad)(new_state, batch, jax.random.key(2))
  with pytest.raises(Exception, match="xla_no_such_option_for_this_test"):
    ts.create_train_state(model, tx, jax.random.key(0), mesh, rules, compiler_options=bad)


def test_sharded_eval_step_and_abstract_state_match_the_plain_ones():
  """jit_eval_step on a (4, 2) mesh gives the unsharded eval step's sums, replicated; and
  abstract_train_state describes exactly the state create_train_state makes (shapes,
  dtypes, shardings), which ahead-of-time compilation relies on."""
  mesh, rules, model, tx = _small_setup()
  state, shardings = ts.create_train_state(model, tx, jax.random.key(0), mesh, rules,
                                          compiler_options=FAST_COMPILE)
  abstract, abstract_shardings = ts.abstract_train_state(model, tx, jax.random.key(0), mesh,
                                                         rules)
  for a, s, sh in zip(jax.tree.leaves(abstract), jax.tree.leaves(state),
                      jax.tree.leaves(abstract_shardings), strict=True):
    assert (a.shape, a.dtype) == (s.shape, s.dtype)
    assert a.sharding.is_equivalent_to(s.sharding, s.ndim)
    assert sh.is_equivalent_to(s.sharding, s.ndim)
  masks = stand_in_mask_fn(jax.random.key(3), jnp.asarray(_batch()))
  host = {"input_ids": np.asarray(masks.masked_ids),
          "masked_lm_positions": np.asarray(masks.masked_lm_positions),
          "masked_lm_ids": np.asarray(masks.masked_lm_ids),
          "masked_lm_weights": np.asarray(masks.masked_lm_weights)}
  eval_step = ts.make_mlm_eval_step(model)
  params = jax.device_get(state.params)
  want = jax.device_get(eval_step(params, host))
  run = ts.jit_eval_step(eval_step, mesh, rules, shardings.params)
  got = run(state.params, sharding.global_batch_from_local(host, mesh, rules))
  assert set(got) == set(want) == {"loss_sum", "weight_sum", "correct"}
  for k in want:
    assert got[k].sharding.is_fully_replicated
    np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-5, err_msg=k)
  assert float(want["weight_sum"]) == float(np.sum(host["masked_lm_weights"])) > 0
  compiled = run.jitted.lower(state.params, host).compile()
  (_, batch_in), _ = compiled.input_shardings
  assert batch_in["input_ids"].is_equivalent_to(sharding.batch_sharding(mesh, rules), 2)
