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
from genemask_jax import sharding
from genemask_jax import train_step as ts
import fixture_scope  # tests/ is on sys.path (rootdir-relative test modules).
import test_support

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


@pytest.mark.parametrize("change, message", [
    *[({name: 0}, rf"^ModelConfig\.{name} must be >= 1, got 0$")
      for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "mlp_dim",
                   "max_len", "vocab_pad_multiple")],
    ({"hidden_size": 60, "num_heads": 8},
     r"^ModelConfig\.hidden_size=60 is not divisible by num_heads=8$"),
    ({"dtype": "auto"}, r"^ModelConfig\.dtype='auto'; expected one of \['bfloat16', "
     r"'float16', 'float32'\] \(resolve 'auto' with model\.resolve_dtype\)$"),
    ({"param_dtype": "fp8"},
     r"^ModelConfig\.param_dtype='fp8'; expected one of \['bfloat16', 'float16', "
     r"'float32'\]$"),
    ({"attention_impl": "flash"}, r"^ModelConfig\.attention_impl='flash'; expected one of "
     r"\('auto', 'blockwise', 'xla', 'cudnn', 'pallas_gpu', 'pallas_tpu'\)$"),
    ({"attention_impl": "cudnn", "attention_dropout_rate": 0.1},
     r"^ModelConfig\.attention_impl='cudnn' has no attention dropout; set "
     r"attention_dropout_rate=0 \(got 0\.1\) or use 'auto'$"),
    ({"remat": "some"}, r"^ModelConfig\.remat='some'; expected one of \('none', 'full', "
     r"'dots'\)$"),
    *[({name: rate}, rf"^ModelConfig\.{name} must be in \[0, 1\), got {rate}$")
      for name in ("dropout_rate", "attention_dropout_rate") for rate in (-0.5, 1.0)],
])
def test_model_config_refuses_each_bad_field_with_its_name(change, message):
  with pytest.raises(ValueError, match=message):
    model_lib.ModelConfig(**change)


def test_model_config_accepts_the_edges_of_each_range():
  cfg = model_lib.ModelConfig(vocab_size=1, hidden_size=1, num_layers=1, num_heads=1,
                              mlp_dim=1, max_len=1, vocab_pad_multiple=1, dropout_rate=0.0,
                              attention_dropout_rate=0.0, attention_impl="cudnn")
  assert (cfg.head_dim, cfg.padded_vocab_size) == (1, 1)
  cfg = model_lib.ModelConfig(dropout_rate=0.999, attention_dropout_rate=0.999,
                              dtype="bfloat16", param_dtype="bfloat16", remat="dots")
  assert cfg.jnp_dtype == jnp.bfloat16 and cfg.jnp_param_dtype == jnp.bfloat16
  assert model_lib.ModelConfig(vocab_pad_multiple=8).padded_vocab_size == 4104


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


# --------------------------------------------------- what each entry point must pass on
MICRO = model_lib.ModelConfig(num_layers=1, hidden_size=32, num_heads=2, mlp_dim=64,
                              max_len=16, dropout_rate=0.0, attention_dropout_rate=0.0)


def _init(module, ids):
  return nn.unbox(module.init(jax.random.key(3), ids)["params"])


def _constraint_specs(jaxpr) -> list[tuple]:
  """The partition specs of every sharding constraint in a jaxpr, nested ones included."""
  return [tuple(e.params["sharding"].spec) for e in test_support.iter_eqns(jaxpr)
          if e.primitive.name == "sharding_constraint"]


def _traced_under_named_axes(fn, *args):
  """``fn``'s jaxpr traced where each logical axis is bound to a mesh axis of its own short
  name (b, l, e, h, k, m, v; all of size 1), so a constraint's spec spells out the logical
  names the model gave it; and the logical -> short name map."""
  names = ("b", "l", "e", "h", "k", "m", "v")
  mesh = jax.make_mesh((1,) * 7, names, axis_types=(jax.sharding.AxisType.Auto,) * 7)
  with sharding.axis_rules(mesh, tuple(zip(sharding.LOGICAL_AXES, names))):
    jaxpr = jax.make_jaxpr(fn)(*args)
  return jaxpr.jaxpr, dict(zip(sharding.LOGICAL_AXES, names))


def test_every_parameter_and_activation_carries_its_logical_axes():
  """The sharding rules (genemask_jax.sharding) split what these names say: a parameter or
  activation with a wrong or missing name is silently replicated on a real mesh."""
  def want(path: str) -> tuple:
    leaf, owner = path.rsplit("/", 2)[-1], path.rsplit("/", 2)[-2]
    if "LayerNorm" in owner:
      return ("embed",)
    if owner in ("query", "key", "value"):
      return ("embed", "heads", "kv") if leaf == "kernel" else ("heads", "kv")
    if "attention/output/dense" in path:
      return ("heads", "kv", "embed") if leaf == "kernel" else ("embed",)
    if owner in ("intermediate_dense", "transform_dense", "dense"):  # dense: the pooler.
      return ("embed", "mlp") if leaf == "kernel" else ("mlp",)
    if owner == "output_dense":
      return ("mlp", "embed") if leaf == "kernel" else ("embed",)
    return {"word_embeddings": ("vocab", "embed"), "position_embeddings": (None, "embed"),
            "token_type_embeddings": (None, "embed"), "cls": ("vocab",),
            "classifier": ("embed", None) if leaf == "kernel" else (None,)}[owner]

  ids = jnp.full((2, 8), 7, jnp.int32)
  for module in (model_lib.BertForMaskedLM(MICRO),
                 model_lib.BertForSequenceClassification(MICRO, num_labels=3)):
    boxed = jax.eval_shape(module.init, jax.random.key(0), ids)["params"]
    specs = jax.tree_util.tree_flatten_with_path(
        nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]
    assert len(specs) == len(jax.tree.leaves(boxed))
    for path, spec in specs:
      name = "/".join(k.key for k in path)
      assert tuple(spec) == want(name), name
  # Activations.
  module = model_lib.BertForMaskedLM(MICRO)
  params = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), ids)["params"])
  jaxpr, _ = _traced_under_named_axes(lambda p: module.apply({"params": p}, ids), params)
  # Embeddings, attention output and layer output (b, l, e); q, k, v and context
  # (b, l, h, k); the MLP's hidden units (b, l, m).
  assert sorted(_constraint_specs(jaxpr)) == sorted(
      [("b", "l", "e")] * 3 + [("b", "l", "h", "k")] * 4 + [("b", "l", "m")])


@pytest.mark.parametrize("dtype, param_dtype", [("bfloat16", "float32"),
                                                ("bfloat16", "bfloat16")])
def test_every_module_computes_in_the_config_dtype(dtype, param_dtype):
  """Each embedding, dense layer and LayerNorm computes in ``dtype`` and stores params in
  ``param_dtype`` (a module left at flax's default would promote to float32 or store
  float32 params)."""
  cfg = dataclasses.replace(MICRO, dtype=dtype, param_dtype=param_dtype)
  ids = _ids(length=8)
  for module in (model_lib.BertForMaskedLM(cfg),
                 model_lib.BertForSequenceClassification(cfg, num_labels=3)):
    params = _init(module, ids)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(param_dtype)}
    _, state = module.apply({"params": params}, ids, capture_intermediates=True,
                            mutable=["intermediates"])
    outs = jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
    assert len(outs) > 10
    for path, out in outs:
      assert out.dtype == jnp.dtype(dtype), jax.tree_util.keystr(path)


def test_token_types_reach_the_output_through_every_entry_point():
  cfg = MICRO
  ids = _ids(length=8)
  types = jnp.ones_like(ids)
  mlm = model_lib.BertForMaskedLM(cfg)
  clf = model_lib.BertForSequenceClassification(cfg, num_labels=3)
  p_mlm, p_clf = _init(mlm, ids), _init(clf, ids)
  positions = jnp.array([[1, 2], [3, 4]], jnp.int32)
  calls = [
      (mlm, p_mlm, {}),                                    # full logits
      (mlm, p_mlm, {"masked_positions": positions}),       # last layer at P rows only
      (mlm, p_mlm, {"method": "encode"}),
      (clf, p_clf, {}),
      (clf, p_clf, {"method": "pooled_features"}),
  ]
  for module, params, kw in calls:
    plain = module.apply({"params": params}, ids, **kw)
    typed = module.apply({"params": params}, ids, token_type_ids=types, **kw)
    assert not np.allclose(plain, typed, atol=1e-4), kw
  no_types = dataclasses.replace(cfg, type_vocab_size=0)
  module = model_lib.BertForMaskedLM(no_types)
  params = _init(module, ids)
  assert "token_type_embeddings" not in params["bert"]["embeddings"]
  with pytest.raises(ValueError, match=r"^token_type_ids given but ModelConfig\.type_vocab_size "
                     r"is 0"):
    module.apply({"params": params}, ids, token_type_ids=types)


def test_input_shape_errors_name_the_limit():
  module = model_lib.BertForMaskedLM(MICRO)  # max_len=16
  params = _init(module, _ids(length=8))
  assert module.apply({"params": params}, _ids(length=16)).shape == (2, 16, 4101)
  with pytest.raises(ValueError, match=r"^sequence length 17 exceeds max_len=16"):
    module.apply({"params": params}, _ids(length=17))
  with pytest.raises(ValueError, match=r"^input_ids must be \(batch, length\), got shape "
                     r"\(8,\)"):
    module.apply({"params": params}, jnp.full((8,), 7, jnp.int32))


def test_return_hidden_with_masked_positions_gives_the_picked_logits():
  module = model_lib.BertForMaskedLM(MICRO)
  ids = _ids(length=8)
  params = _init(module, ids)
  positions = jnp.array([[1, 6], [0, 3]], jnp.int32)
  picked = module.apply({"params": params}, ids, masked_positions=positions)
  logits, hidden = module.apply({"params": params}, ids, masked_positions=positions,
                                return_hidden=True)
  assert logits.shape == (2, 2, 4101) and hidden.shape == (2, 8, 32)
  np.testing.assert_allclose(logits, picked, atol=1e-5)
  np.testing.assert_allclose(hidden, module.apply({"params": params}, ids, method="encode"),
                             atol=1e-6)


def test_masked_positions_and_cls_run_the_last_layer_on_those_rows_only():
  """The cheap paths the train step and the classifier rely on: fewer FLOPs than running
  every row through the last layer (same numbers: the tests above)."""
  cfg = dataclasses.replace(MICRO, num_layers=2)
  ids = _ids(length=16)
  mlm = model_lib.BertForMaskedLM(cfg)
  clf = model_lib.BertForSequenceClassification(cfg, num_labels=2)
  p_mlm, p_clf = _init(mlm, ids), _init(clf, ids)
  positions = jnp.array([[1, 6], [0, 3]], jnp.int32)

  def flops(fn, params):
    return jax.jit(fn).lower(params).compile().cost_analysis()["flops"]

  full = flops(lambda p: mlm.apply({"params": p}, ids), p_mlm)
  gathered = flops(lambda p: jnp.take_along_axis(
      mlm.apply({"params": p}, ids), positions[..., None], 1), p_mlm)
  picked = flops(lambda p: mlm.apply({"params": p}, ids, masked_positions=positions), p_mlm)
  assert picked < 0.5 * gathered <= 0.5 * full
  encoder = flops(lambda p: mlm.apply({"params": p}, ids, method="encode"), p_mlm)
  cls = flops(lambda p: clf.apply({"params": p}, ids), p_clf)
  assert cls < 0.8 * encoder


def test_bert_model_alone_is_deterministic_by_default():
  """``BertModel(cfg).apply(params, ids)`` (how `first_layers`' cut encoder is run) needs no
  dropout rng and gives the MLM model's encoder output."""
  cfg = dataclasses.replace(MICRO, dropout_rate=0.5, attention_dropout_rate=0.5)
  mlm = model_lib.BertForMaskedLM(cfg)
  ids = _ids(length=8)
  params = _init(mlm, ids)
  alone = model_lib.BertModel(cfg).apply({"params": params["bert"]}, ids)
  np.testing.assert_allclose(alone, mlm.apply({"params": params}, ids, method="encode"),
                             atol=1e-6)


def test_attention_gets_the_configured_implementation_and_dropout(monkeypatch):
  seen = []
  real = model_lib.attention_lib.dot_product_attention

  def recording(*args, **kwargs):
    seen.append((kwargs["implementation"], kwargs["dropout_rate"], kwargs["seed"] is None))
    return real(*args, **kwargs)

  monkeypatch.setattr(model_lib.attention_lib, "dot_product_attention", recording)
  cfg = dataclasses.replace(MICRO, attention_impl="xla", attention_dropout_rate=0.25)
  module = model_lib.BertForMaskedLM(cfg)
  ids = _ids(length=8)
  params = _init(module, ids)
  seen.clear()
  a = module.apply({"params": params}, ids)
  assert seen == [("xla", 0.0, True)]
  seen.clear()
  b = module.apply({"params": params}, ids, deterministic=False,
                   rngs={"dropout": jax.random.key(1)})
  assert seen == [("xla", 0.25, False)]
  assert not np.allclose(a, b, atol=1e-3)  # Attention dropout alone (hidden dropout is 0).


def test_classifier_dropout_drops_pooled_features_at_its_rate():
  cfg = dataclasses.replace(MICRO, dropout_rate=0.5)
  module = model_lib.BertForSequenceClassification(cfg, num_labels=2)
  ids = _ids(rows=64, length=8)
  params = _init(module, ids)
  _, state = module.apply({"params": params}, ids, deterministic=False,
                          rngs={"dropout": jax.random.key(2)}, capture_intermediates=True,
                          mutable=["intermediates"])
  inter = state["intermediates"]
  pooled = np.asarray(inter["bert"]["pooler"]["__call__"][0])
  dropped = np.asarray(inter["dropout"]["__call__"][0])
  kept = dropped != 0
  assert 0.4 < kept.mean() < 0.6
  np.testing.assert_allclose(dropped[kept], pooled[kept] / 0.5, rtol=1e-6)


def test_pool_reads_the_cls_row_of_full_hidden_states():
  module = model_lib.BertModel(MICRO, add_pooling_layer=True)
  hidden = jax.random.normal(jax.random.key(4), (2, 8, 32))
  params = nn.unbox(module.init(jax.random.key(5), hidden, method="pool")["params"])
  dense = params["pooler"]["dense"]
  np.testing.assert_allclose(module.apply({"params": params}, hidden, method="pool"),
                             jnp.tanh(hidden[:, 0] @ dense["kernel"] + dense["bias"]),
                             atol=1e-5)


def test_scanned_layers_keep_each_parameters_axes_with_the_layer_axis_unsplit():
  cfg = dataclasses.replace(MICRO, num_layers=3, scan_layers=True)
  module = model_lib.BertForMaskedLM(cfg)
  ids = jnp.full((2, 8), 7, jnp.int32)
  boxed = jax.eval_shape(module.init, jax.random.key(0), ids)["params"]
  layer_specs = [tuple(s) for s in jax.tree.leaves(
      nn.get_partition_spec(boxed["bert"]["encoder"]["layer_0"]),
      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))]
  jaxpr, short = _traced_under_named_axes(lambda p: module.apply({"params": p}, ids),
                                          _init(module, ids))
  stacked = [s for s in _constraint_specs(jaxpr) if s[0] is None]
  assert sorted(stacked, key=repr) == sorted(
      [(None, *(short[a] if a else None for a in spec)) for spec in layer_specs], key=repr)


def test_first_layers_cut_the_encoder_where_the_next_layer_takes_over():
  cfg = dataclasses.replace(MICRO, num_layers=3)
  mlm = model_lib.BertForMaskedLM(cfg)
  ids = _ids(length=8)
  params = _init(mlm, ids)
  bert = params["bert"]
  hidden = {}
  for n in (1, 2, 3):
    cfg_n, p_n = model_lib.first_layers(cfg, bert, n)
    assert cfg_n == dataclasses.replace(cfg, num_layers=n)
    assert sorted(p_n) == ["embeddings", "encoder"]
    assert sorted(p_n["encoder"]) == [f"layer_{i}" for i in range(n)]
    hidden[n] = model_lib.BertModel(cfg_n).apply({"params": p_n}, ids)
  np.testing.assert_allclose(hidden[3], mlm.apply({"params": params}, ids, method="encode"),
                             atol=1e-6)
  mask = ids != model_lib.PAD_ID
  for n in (1, 2):  # Layer n + 1 applied to the cut encoder's output: the next cut's.
    nxt = model_lib.BertLayer(cfg).apply(
        {"params": bert["encoder"][f"layer_{n}"]}, hidden[n], mask, True)
    np.testing.assert_allclose(nxt, hidden[n + 1], atol=1e-5)
    assert not np.allclose(hidden[n], hidden[n + 1], atol=1e-3)
  for n in (0, 4):
    with pytest.raises(ValueError, match=rf"^layers to keep must be in 1\.\.3, got {n}$"):
      model_lib.first_layers(cfg, bert, n)


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
