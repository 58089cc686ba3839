"""BERT model semantics (HF BertForMaskedLM), named sizes, optimizer and eval step.

Float32 comparisons run at full float32 matmul precision on every backend (a GPU's default
is TF32-class, a TPU's bfloat16 passes), so the tolerances below mean the same on all.
"""
import dataclasses
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genemask_jax import model as model_lib
from genemask_jax import optim
from genemask_jax import train_step as ts
import fixture_scope  # tests/ is on sys.path (rootdir-relative test modules).

@pytest.fixture(autouse=True, scope="module")
def _full_precision_matmuls():
  with jax.default_matmul_precision("highest"):
    yield


CFG = model_lib.ModelConfig(num_layers=2, hidden_size=64, num_heads=4, mlp_dim=128,
                            max_len=32)


def _ids(rows=2, length=16, seed=0):
  ids = np.random.default_rng(seed).integers(5, 4101, (rows, length)).astype(np.int32)
  ids[:, 0], ids[:, -1] = 2, 3
  return jnp.asarray(ids)


@pytest.fixture(scope=fixture_scope.module_unless_mutmut)
def mlm():
  model = model_lib.BertForMaskedLM(CFG)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), _ids())["params"])
  return model, params


@pytest.mark.parametrize("name", sorted(model_lib.MODEL_SIZES))
def test_param_count_matches_formula(name):
  cfg = model_lib.model_config(name)
  model = model_lib.BertForMaskedLM(cfg)
  shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 8), jnp.int32)),
                          jax.random.key(0))["params"]
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  assert count == model_lib.param_count_formula(cfg)
  if name == "dnabert_base":  # The "~89 M parameters with the tied decoder".
    assert 88.5e6 < count < 89.5e6


def test_classifier_param_count_matches_formula():
  model = model_lib.BertForSequenceClassification(CFG, num_labels=3)
  shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 8), jnp.int32)),
                          jax.random.key(0))["params"]
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  assert count == model_lib.param_count_formula(CFG, num_labels=3)


def test_named_sizes_and_overrides():
  logo = model_lib.model_config("logo")
  assert (logo.num_layers, logo.hidden_size, logo.num_heads, logo.mlp_dim) == (2, 256, 8, 3072)
  assert logo.dropout_rate == 0.0 and logo.vocab_size == 4101 and logo.max_len == 512
  assert model_lib.model_config("tiny", dtype="bfloat16").dtype == "bfloat16"
  with pytest.raises(ValueError, match="unknown model size 'huge'"):
    model_lib.model_config("huge")
  with pytest.raises(ValueError, match="unknown ModelConfig key.*'layers'"):
    model_lib.model_config("tiny", layers=3)
  with pytest.raises(ValueError, match="hidden_size=100 is not divisible by num_heads=8"):
    model_lib.model_config("tiny", hidden_size=100)
  with pytest.raises(ValueError, match="dtype='fp8'"):
    model_lib.model_config("tiny", dtype="fp8")


def test_auto_dtype_is_bfloat16_on_accelerators_float32_on_cpu():
  for platform, want in (("cpu", "float32"), ("gpu", "bfloat16"), ("cuda", "bfloat16"),
                         ("rocm", "bfloat16"), ("tpu", "bfloat16")):
    assert model_lib.resolve_dtype("auto", platform) == want
  assert model_lib.resolve_dtype("auto") == "float32"  # The tests run on CPU.
  assert model_lib.resolve_dtype("float32", "tpu") == "float32"  # An explicit name wins.
  assert model_lib.resolve_dtype("bfloat16", "cpu") == "bfloat16"
  with pytest.raises(ValueError, match="dtype='fp8'; expected 'auto' or one of"):
    model_lib.resolve_dtype("fp8", "gpu")
  with pytest.raises(ValueError, match="resolve 'auto'"):
    model_lib.model_config("tiny", dtype="auto")


def test_mlm_head_is_dense_gelu_layernorm_tied_decoder(mlm):
  model, params = mlm
  ids = _ids()
  logits, hidden = model.apply({"params": params}, ids, return_hidden=True)
  head = params["cls"]
  x = hidden @ head["transform_dense"]["kernel"] + head["transform_dense"]["bias"]
  x = jax.nn.gelu(x, approximate=False)
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  x = (x - mean) / jnp.sqrt(var + 1e-12) * head["transform_LayerNorm"]["scale"] \
      + head["transform_LayerNorm"]["bias"]
  embedding = params["bert"]["embeddings"]["word_embeddings"]["embedding"]
  want = x @ embedding.T + head["bias"]
  assert logits.shape == (2, 16, 4101)
  np.testing.assert_allclose(logits, want, atol=2e-4, rtol=2e-4)


def test_masked_positions_give_the_same_logits_as_full_projection(mlm):
  model, params = mlm
  ids = _ids()
  full = model.apply({"params": params}, ids)
  positions = jnp.array([[3, 1, 7], [0, 15, 3]], jnp.int32)
  picked = model.apply({"params": params}, ids, masked_positions=positions)
  assert picked.shape == (2, 3, 4101)
  np.testing.assert_allclose(picked, jnp.take_along_axis(full, positions[..., None], 1),
                             atol=1e-5)


def test_padding_does_not_change_real_token_outputs(mlm):
  model, params = mlm
  ids = _ids(length=12)
  padded = jnp.concatenate([ids, jnp.zeros((2, 6), jnp.int32)], axis=1)
  short = model.apply({"params": params}, ids)
  long = model.apply({"params": params}, padded)
  np.testing.assert_allclose(long[:, :12], short, atol=1e-4)


def test_token_types_default_to_type_zero(mlm):
  model, params = mlm
  ids = _ids()
  none = model.apply({"params": params}, ids)
  zeros = model.apply({"params": params}, ids, token_type_ids=jnp.zeros_like(ids))
  ones = model.apply({"params": params}, ids, token_type_ids=jnp.ones_like(ids))
  np.testing.assert_allclose(none, zeros, atol=1e-6)
  assert not np.allclose(none, ones, atol=1e-3)


def test_dropout_only_when_not_deterministic(mlm):
  model, params = mlm
  ids = _ids()
  a = model.apply({"params": params}, ids)
  b = model.apply({"params": params}, ids)
  np.testing.assert_array_equal(a, b)
  c = model.apply({"params": params}, ids, deterministic=False,
                  rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(a, c, atol=1e-3)


def test_bfloat16_activations_float32_params(mlm):
  _, params = mlm
  model = model_lib.BertForMaskedLM(dataclasses.replace(CFG, dtype="bfloat16"))
  ids = _ids()
  logits = model.apply({"params": params}, ids)
  assert logits.dtype == jnp.bfloat16
  want = model_lib.BertForMaskedLM(CFG).apply({"params": params}, ids)
  np.testing.assert_allclose(np.asarray(logits, np.float32), want, atol=0.15)
  fresh = model.init(jax.random.key(0), ids)["params"]
  assert {x.dtype for x in jax.tree.leaves(nn.unbox(fresh))} == {jnp.dtype("float32")}


def test_padded_vocab_keeps_logit_width():
  cfg = dataclasses.replace(CFG, num_layers=1, vocab_pad_multiple=128)
  model = model_lib.BertForMaskedLM(cfg)
  params = nn.unbox(model.init(jax.random.key(0), _ids())["params"])
  assert params["bert"]["embeddings"]["word_embeddings"]["embedding"].shape == (4224, 64)
  assert model.apply({"params": params}, _ids()).shape == (2, 16, 4101)


def test_classifier_pools_cls_with_tanh_and_shares_bert_names(mlm):
  _, mlm_params = mlm
  model = model_lib.BertForSequenceClassification(CFG, num_labels=3)
  params = nn.unbox(model.init(jax.random.key(1), _ids())["params"])
  # A pretrained MLM checkpoint's encoder drops in (only the pooler is new).
  params["bert"] = {**mlm_params["bert"], "pooler": params["bert"]["pooler"]}
  ids = _ids()
  logits = model.apply({"params": params}, ids)
  assert logits.shape == (2, 3)
  pooled = model.apply({"params": params}, ids, method=model.pooled_features)
  hidden = model_lib.BertForMaskedLM(CFG).apply({"params": mlm_params}, ids,
                                                method="encode")
  pool = params["bert"]["pooler"]["dense"]
  np.testing.assert_allclose(pooled, jnp.tanh(hidden[:, 0] @ pool["kernel"] + pool["bias"]),
                             atol=1e-5)
  clf = params["classifier"]
  np.testing.assert_allclose(logits, pooled @ clf["kernel"] + clf["bias"], atol=1e-5)


def test_lr_schedule_warms_up_then_decays_to_zero():
  schedule = optim.make_lr_schedule(total_steps=100, warmup_steps=10,
                                    peak_learning_rate=4e-4)
  np.testing.assert_allclose(
      [schedule(s) for s in (0, 5, 10, 55, 100)], [0, 2e-4, 4e-4, 2e-4, 0], atol=1e-9)
  with pytest.raises(ValueError, match="warmup_steps"):
    optim.make_lr_schedule(total_steps=10, warmup_steps=20)


def test_weight_decay_skips_biases_and_layernorm(mlm):
  _, params = mlm
  mask = optim.decay_mask(params)
  assert mask["bert"]["encoder"]["layer_0"]["intermediate_dense"]["kernel"]
  assert mask["bert"]["embeddings"]["word_embeddings"]["embedding"]
  assert not mask["bert"]["encoder"]["layer_0"]["intermediate_dense"]["bias"]
  assert not mask["bert"]["encoder"]["layer_0"]["output_LayerNorm"]["scale"]
  assert not mask["cls"]["bias"]
  # With a zero gradient only decayed leaves move, by lr * wd * value.
  tx = optim.make_optimizer(0.1, weight_decay=0.01)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
  k = params["bert"]["encoder"]["layer_0"]["output_dense"]["kernel"]
  np.testing.assert_allclose(
      updates["bert"]["encoder"]["layer_0"]["output_dense"]["kernel"], -0.1 * 0.01 * k,
      rtol=1e-5)
  assert not np.any(updates["bert"]["encoder"]["layer_0"]["output_LayerNorm"]["scale"])


def test_gradient_is_clipped_to_global_norm_before_adam():
  params = {"w": jnp.ones((4,))}
  big = {"w": jnp.full((4,), 10.0)}  # Global norm 20 -> scaled to norm 1 (0.5 each).
  for clip, want_g in ((1.0, 0.5), (None, 10.0)):
    tx = optim.make_optimizer(1.0, weight_decay=0.0, clip_norm=clip)
    _, state = tx.update(big, tx.init(params), params)
    adam = state[1][0] if clip else state[0]
    np.testing.assert_allclose(adam.nu["w"], (1 - 0.98) * want_g**2, rtol=1e-6)


def _fixed_mask_fn(key, input_ids):
  del key
  positions = jnp.tile(jnp.array([[1, 4, 6]], jnp.int32), (input_ids.shape[0], 1))
  labels = jnp.take_along_axis(input_ids, positions, axis=1)
  masked = input_ids.at[:, jnp.array([1, 4, 6])].set(4)
  weights = jnp.tile(jnp.array([[1.0, 1.0, 0.0]]), (input_ids.shape[0], 1))
  return types.SimpleNamespace(masked_ids=masked, masked_lm_positions=positions,
                               masked_lm_ids=labels, masked_lm_weights=weights)


def test_train_step_loss_matches_eval_step_and_learns():
  cfg = dataclasses.replace(CFG, num_layers=1, dropout_rate=0.0, attention_dropout_rate=0.0)
  model = model_lib.BertForMaskedLM(cfg)
  params = nn.unbox(model.init(jax.random.key(0), _ids())["params"])
  tx = optim.make_optimizer(1e-3, weight_decay=0.0)
  step = jax.jit(ts.make_mlm_train_step(model, tx, _fixed_mask_fn))
  eval_step = jax.jit(ts.make_mlm_eval_step(model))
  ids = _ids(rows=4)
  m = _fixed_mask_fn(None, ids)
  eval_batch = {"input_ids": m.masked_ids, "masked_lm_positions": m.masked_lm_positions,
                "masked_lm_ids": m.masked_lm_ids, "masked_lm_weights": m.masked_lm_weights}
  before = eval_step(params, eval_batch)
  assert float(before["weight_sum"]) == 8.0  # 4 rows x 2 weighted predictions.
  state = ts.init_train_state(params, tx)
  losses = []
  for _ in range(5):
    state, metrics = step(state, {"input_ids": ids}, jax.random.key(0))
    losses.append(float(metrics["loss"]))
  np.testing.assert_allclose(losses[0], before["loss_sum"] / before["weight_sum"], rtol=1e-5)
  assert int(state.step) == 5
  assert losses[-1] < losses[0]
  after = eval_step(state.params, eval_batch)
  assert float(after["loss_sum"]) < float(before["loss_sum"])
  assert 0.0 <= float(metrics["accuracy"]) <= 1.0
  assert float(metrics["num_masked"]) == 8.0


def _to_hf_state_dict(params, cfg):
  """The mapping documented in model.py's docstring (MLM model)."""
  import torch  # pylint: disable=g-import-not-at-top
  e = cfg.hidden_size
  t = lambda x: torch.tensor(np.asarray(x, np.float32))  # noqa: E731
  sd = {}
  emb = params["bert"]["embeddings"]
  for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
    sd[f"bert.embeddings.{name}.weight"] = t(emb[name]["embedding"])
  sd["bert.embeddings.LayerNorm.weight"] = t(emb["LayerNorm"]["scale"])
  sd["bert.embeddings.LayerNorm.bias"] = t(emb["LayerNorm"]["bias"])
  for i in range(cfg.num_layers):
    p, h = params["bert"]["encoder"][f"layer_{i}"], f"bert.encoder.layer.{i}."
    for qkv in ("query", "key", "value"):
      sd[h + f"attention.self.{qkv}.weight"] = t(
          p["attention"]["self"][qkv]["kernel"].reshape(e, e).T)
      sd[h + f"attention.self.{qkv}.bias"] = t(p["attention"]["self"][qkv]["bias"].reshape(e))
    out = p["attention"]["output"]
    sd[h + "attention.output.dense.weight"] = t(out["dense"]["kernel"].reshape(e, e).T)
    sd[h + "attention.output.dense.bias"] = t(out["dense"]["bias"])
    sd[h + "attention.output.LayerNorm.weight"] = t(out["LayerNorm"]["scale"])
    sd[h + "attention.output.LayerNorm.bias"] = t(out["LayerNorm"]["bias"])
    for ours, theirs in (("intermediate_dense", "intermediate.dense"),
                         ("output_dense", "output.dense")):
      sd[h + theirs + ".weight"] = t(p[ours]["kernel"].T)
      sd[h + theirs + ".bias"] = t(p[ours]["bias"])
    sd[h + "output.LayerNorm.weight"] = t(p["output_LayerNorm"]["scale"])
    sd[h + "output.LayerNorm.bias"] = t(p["output_LayerNorm"]["bias"])
  c = params["cls"]
  sd["cls.predictions.transform.dense.weight"] = t(c["transform_dense"]["kernel"].T)
  sd["cls.predictions.transform.dense.bias"] = t(c["transform_dense"]["bias"])
  sd["cls.predictions.transform.LayerNorm.weight"] = t(c["transform_LayerNorm"]["scale"])
  sd["cls.predictions.transform.LayerNorm.bias"] = t(c["transform_LayerNorm"]["bias"])
  sd["cls.predictions.bias"] = t(c["bias"])
  sd["cls.predictions.decoder.weight"] = sd["bert.embeddings.word_embeddings.weight"]
  sd["cls.predictions.decoder.bias"] = sd["cls.predictions.bias"]
  return sd


def test_logits_match_hf_bert_for_masked_lm(mlm):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  model, params = mlm
  hf = transformers.BertForMaskedLM(transformers.BertConfig(
      vocab_size=CFG.vocab_size, hidden_size=CFG.hidden_size,
      num_hidden_layers=CFG.num_layers, num_attention_heads=CFG.num_heads,
      intermediate_size=CFG.mlp_dim, max_position_embeddings=CFG.max_len,
      type_vocab_size=CFG.type_vocab_size, layer_norm_eps=CFG.layer_norm_eps,
      hidden_act="gelu", pad_token_id=0)).eval()
  missing, unexpected = hf.load_state_dict(_to_hf_state_dict(params, CFG), strict=False)
  assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
  ids = np.array(_ids(length=16))
  ids[0, 10:] = 0  # A padded row exercises the attention mask.
  with torch.no_grad():
    want = hf(input_ids=torch.tensor(ids, dtype=torch.long),
              attention_mask=torch.tensor(ids != 0, dtype=torch.long)).logits.numpy()
  got = model.apply({"params": params}, jnp.asarray(ids))
  np.testing.assert_allclose(got[0, :10], want[0, :10], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(got[1], want[1], atol=1e-4, rtol=1e-4)
