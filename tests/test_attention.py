"""Blockwise attention and hashed dropout: same numbers as the textbook computation.

Implementations are compared at full float32 matmul precision on every backend (GPUs
default to TF32-class matmuls, TPUs to bfloat16 passes), so the CPU tolerances hold on a
GPU too; ``test_default_precision_matches_float64`` checks the backend's default precision
against float64 with a tolerance set by that precision.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genemask_jax import attention
from genemask_jax import model as model_lib

ON_GPU = jax.default_backend() == "gpu"


@pytest.fixture(autouse=True, scope="module")
def _full_precision_matmuls():
  with jax.default_matmul_precision("highest"):
    yield


def _default_matmul_rtol() -> float:
  """Relative error of one float32 matmul at the backend's default precision."""
  backend = jax.default_backend()
  if backend == "cpu":
    return 1e-5
  return 2.0**-9 if backend == "gpu" else 2.0**-7  # TF32 (10-bit mantissa); bf16 passes.


def _qkv(b, lq, lk, n, d, seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((b, lq, n, d)).astype(dtype)
  k = rng.standard_normal((b, lk, n, d)).astype(dtype)
  v = rng.standard_normal((b, lk, n, d)).astype(dtype)
  return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)


def _key_mask(b, lk):
  mask = np.ones((b, lk), bool)
  mask[0, lk // 2:] = False  # padded tail
  mask[1, 0] = False  # a hole
  return jnp.asarray(mask)


@pytest.mark.parametrize("lq,lk,block", [(50, 50, 16), (64, 64, 64), (7, 40, 4), (33, 33, 200)])
def test_blockwise_equals_dot_product_attention_forward_and_gradients(lq, lk, block):
  q, k, v = _qkv(3, lq, lk, 4, 8)
  mask = _key_mask(3, lk)
  w = jnp.cos(jnp.arange(8.0))

  def loss(fn):
    return lambda q, k, v: (fn(q, k, v) * w).sum()

  blockwise = lambda q, k, v: attention.blockwise_attention(q, k, v, mask, block_q=block)
  reference = lambda q, k, v: jax.nn.dot_product_attention(q, k, v,
                                                            mask=mask[:, None, None, :])
  np.testing.assert_allclose(blockwise(q, k, v), reference(q, k, v), atol=2e-6, rtol=1e-5)
  got = jax.grad(loss(blockwise), argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, atol=5e-6, rtol=1e-4)


def test_masked_keys_get_no_weight_and_all_masked_rows_attend_uniformly():
  q, k, v = _qkv(2, 6, 6, 1, 4)
  mask = jnp.asarray([[True, True, False, False, False, False], [False] * 6])
  out = attention.blockwise_attention(q, k, v, mask, block_q=4)
  # Changing a masked key/value changes nothing.
  k2 = k.at[0, 3].add(100.0)
  v2 = v.at[0, 3].add(100.0)
  np.testing.assert_allclose(attention.blockwise_attention(q, k2, v2, mask, block_q=4)[0],
                             out[0], atol=1e-6)
  np.testing.assert_allclose(out[1], jnp.broadcast_to(v[1].mean(0), out[1].shape), atol=1e-5)
  assert np.isfinite(np.asarray(out)).all()


def test_bfloat16_inputs_keep_their_dtype_and_stay_close():
  q, k, v = _qkv(2, 32, 32, 2, 16)
  mask = _key_mask(2, 32)
  want = attention.blockwise_attention(q, k, v, mask, block_q=8)
  got = attention.blockwise_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), mask,
                                      block_q=8)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(got.astype(np.float32), want, atol=5e-2)


def test_keep_mask_rate_blocks_and_seeds():
  seed = attention.dropout_seed(jax.random.key(0))
  full = attention.keep_mask(seed, (4, 3, 64, 50), 0.1)
  n = full.size
  # Binomial(n, 0.9): 6 standard deviations.
  assert abs(float(full.mean()) - 0.9) < 6 * np.sqrt(0.09 / n)
  block = attention.keep_mask(seed, (4, 3, 16, 50), 0.1, (0, 0, 32, 0), (4, 3, 64, 50))
  np.testing.assert_array_equal(block, full[:, :, 32:48])
  other = attention.keep_mask(attention.dropout_seed(jax.random.key(1)), (4, 3, 64, 50), 0.1)
  agreement = float((other == full).mean())
  assert abs(agreement - (0.9**2 + 0.1**2)) < 0.01  # independent masks, not the same one
  assert bool(attention.keep_mask(seed, (1000,), 0.0).all())
  # Neighbouring elements are not correlated (a weak mixer would show it here).
  bits = np.asarray(full, np.float64).ravel()
  assert abs(np.corrcoef(bits[:-1], bits[1:])[0, 1]) < 0.02


def test_dropout_keeps_the_expectation():
  x = jnp.ones((200_000,))
  y = attention.dropout(x, 0.25, attention.dropout_seed(jax.random.key(3)))
  assert set(np.unique(np.asarray(y)).tolist()) <= {0.0, float(np.float32(4.0 / 3.0))}
  assert abs(float(y.mean()) - 1.0) < 0.01
  np.testing.assert_array_equal(attention.dropout(x, 0.25, None), x)


@pytest.mark.parametrize("lq", [40, 24])  # 24: fewer queries than keys (the last layer's
def test_blockwise_dropout_equals_reference_with_the_same_mask(lq):  # masked positions).
  q, k, v = _qkv(2, lq, 40, 3, 8, seed=4)
  mask = _key_mask(2, 40)
  seed = attention.dropout_seed(jax.random.key(7))
  w = jnp.sin(jnp.arange(8.0))
  blockwise = lambda q, k, v: (attention.blockwise_attention(
      q, k, v, mask, dropout_rate=0.2, seed=seed, block_q=16) * w).sum()
  reference = lambda q, k, v: (attention.reference_attention(
      q, k, v, mask, dropout_rate=0.2, seed=seed) * w).sum()
  np.testing.assert_allclose(blockwise(q, k, v), reference(q, k, v), rtol=1e-5)
  got = jax.grad(blockwise, argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(reference, argnums=(0, 1, 2))(q, k, v)
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, atol=5e-6, rtol=1e-4)
  no_dropout = attention.blockwise_attention(q, k, v, mask, block_q=16)
  assert not np.allclose(attention.blockwise_attention(
      q, k, v, mask, dropout_rate=0.2, seed=seed, block_q=16), no_dropout)


def _np_attention(q, k, v, key_mask):
  """Float64 numpy reference: (B, L, N, D) in and out."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  s = np.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(q.shape[-1])
  s = np.where(np.asarray(key_mask)[:, None, None, :], s, -1e30)
  p = np.exp(s - s.max(-1, keepdims=True))
  return np.einsum("bnqk,bknd->bqnd", p / p.sum(-1, keepdims=True), v)


@pytest.mark.parametrize("impl", ["blockwise", "xla"])
def test_default_precision_matches_float64(impl):
  q, k, v = _qkv(2, 48, 48, 4, 16, seed=9)
  mask = _key_mask(2, 48)
  with jax.default_matmul_precision("default"):  # What the backend computes unless told.
    got = jax.jit(lambda q, k, v: attention.dot_product_attention(
        q, k, v, mask, implementation=impl, block_q=16))(q, k, v)
  want = _np_attention(q, k, v, mask)
  # Scores of |q.k| / 4 ~ 4 carry ~4 x rtol absolute error; outputs are weighted means of v.
  tol = 20 * _default_matmul_rtol()
  np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("lq", [40, 12])
def test_cudnn_wrapper_equals_reference_forward_and_gradients(lq):
  # The wrapper's mask layout, run through jax's XLA lowering (cuDNN itself needs a GPU).
  q, _, _ = _qkv(2, lq, 40, 3, 8, seed=5)
  _, k, v = _qkv(2, 40, 40, 3, 8, seed=6)
  mask = _key_mask(2, 40)
  w = jnp.cos(jnp.arange(8.0))
  wrapped = lambda q, k, v: (attention.cudnn_attention(q, k, v, mask, implementation="xla")
                             * w).sum()
  blockwise = lambda q, k, v: (attention.blockwise_attention(q, k, v, mask, block_q=16)
                               * w).sum()
  np.testing.assert_allclose(
      attention.cudnn_attention(q, k, v, mask, implementation="xla"),
      attention.blockwise_attention(q, k, v, mask, block_q=16), atol=2e-6, rtol=1e-5)
  got = jax.grad(wrapped, argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(blockwise, argnums=(0, 1, 2))(q, k, v)
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, atol=5e-6, rtol=1e-4)


def test_auto_picks_cudnn_on_gpu_only_where_its_constraints_hold():
  bf16 = jnp.bfloat16
  pick = lambda **kw: attention.resolve_implementation(
      "auto", **{"platform": "gpu", "dtype": bf16, "head_dim": 64, "q_len": 512,
                 "kv_len": 512, "dropout_rate": 0.0, **kw})
  assert pick() == "cudnn"
  assert pick(q_len=102) == "cudnn"  # The last layer's queries at the masked positions.
  assert pick(dtype=jnp.float16) == "cudnn"
  assert pick(dropout_rate=0.1) == "blockwise"  # cuDNN's dropout is not keep_mask.
  assert pick(dtype=jnp.float32) == "blockwise"
  assert pick(head_dim=12) == "blockwise"
  assert pick(head_dim=128) == "cudnn"  # The largest cuDNN takes everywhere.
  assert pick(head_dim=136) == "blockwise"
  assert pick(head_dim=256) == "blockwise"
  assert pick(q_len=101) == "blockwise"
  assert pick(platform="cpu") == "blockwise"
  assert pick(platform="tpu") == "pallas_tpu"
  assert pick(platform="METAL") == "xla"  # Any other backend.
  for impl in ("blockwise", "xla", "cudnn"):  # An explicit choice is kept.
    assert attention.resolve_implementation(impl, platform="gpu", dropout_rate=0.1) == impl


def test_cudnn_with_dropout_is_an_error():
  q, k, v = _qkv(1, 4, 4, 1, 8)
  with pytest.raises(ValueError, match="'cudnn' has no dropout"):
    attention.dot_product_attention(
        q, k, v, jnp.ones((1, 4), bool), dropout_rate=0.1,
        seed=attention.dropout_seed(jax.random.key(0)), implementation="cudnn")
  with pytest.raises(ValueError, match="attention_dropout_rate=0"):
    model_lib.model_config("tiny", attention_impl="cudnn")
  assert model_lib.model_config("tiny", attention_impl="cudnn",
                                attention_dropout_rate=0.0).attention_impl == "cudnn"


@pytest.mark.skipif(not ON_GPU, reason="cuDNN flash attention needs an NVIDIA GPU")
def test_cudnn_kernel_on_gpu_matches_blockwise_in_bfloat16():
  q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(2, 64, 64, 4, 64, seed=11))
  mask = _key_mask(2, 64)
  w = jnp.cos(jnp.arange(64.0)).astype(jnp.bfloat16)
  loss = lambda fn: lambda q, k, v: (fn(q, k, v).astype(jnp.float32) * w).sum()
  cudnn = lambda q, k, v: attention.cudnn_attention(q, k, v, mask)
  blockwise = lambda q, k, v: attention.blockwise_attention(q, k, v, mask, block_q=16)
  # Both compute softmax in float32 from bfloat16 inputs; outputs round to bfloat16 (2^-8).
  np.testing.assert_allclose(np.asarray(cudnn(q, k, v), np.float32),
                             np.asarray(blockwise(q, k, v), np.float32), atol=2e-2)
  got = jax.grad(loss(cudnn), argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(loss(blockwise), argnums=(0, 1, 2))(q, k, v)
  for g, r in zip(got, want):
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32),
                               atol=5e-2, rtol=5e-2)


def test_bad_implementation_and_missing_seed_are_errors():
  with pytest.raises(ValueError, match="attention implementation 'flash'"):
    attention.resolve_implementation("flash")
  with pytest.raises(ValueError, match="attention_impl"):
    model_lib.model_config("tiny", attention_impl="flash")
  q, k, v = _qkv(1, 4, 4, 1, 2)
  with pytest.raises(ValueError, match="needs a seed"):
    attention.blockwise_attention(q, k, v, jnp.ones((1, 4), bool), dropout_rate=0.1)


@pytest.mark.parametrize("impl", ["blockwise", "xla"])
def test_model_implementations_agree_and_last_layer_shortcut_is_exact(impl):
  cfg = model_lib.model_config("tiny", num_layers=2, hidden_size=32, num_heads=4, mlp_dim=64,
                               max_len=64, attention_impl=impl)
  ref_cfg = model_lib.model_config("tiny", num_layers=2, hidden_size=32, num_heads=4,
                                   mlp_dim=64, max_len=64, attention_impl="xla")
  rng = np.random.default_rng(0)
  ids = rng.integers(5, 4101, (3, 40)).astype(np.int32)
  ids[0, 30:] = 0
  positions = jnp.asarray(rng.integers(0, 40, (3, 6)), jnp.int32)
  model = model_lib.BertForMaskedLM(cfg)
  params = model.init(jax.random.key(0), ids)["params"]
  full = model_lib.BertForMaskedLM(ref_cfg).apply({"params": params}, ids)
  picked = model.apply({"params": params}, ids, masked_positions=positions)
  np.testing.assert_allclose(picked, jnp.take_along_axis(full, positions[..., None], 1),
                             atol=2e-4, rtol=1e-4)
  # Training mode: the dropout masks depend only on the rng, and gradients are finite.
  grad = jax.grad(lambda p: model.apply({"params": p}, ids, masked_positions=positions,
                                        deterministic=False,
                                        rngs={"dropout": jax.random.key(1)}).sum())(params)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grad))


def test_defaults_are_exact_attention_without_dropout():
  # Called with defaults only, the dispatcher is plain attention (mutmut, #21: the model
  # always passes both options, so no test reached the defaults).
  rng = np.random.default_rng(3)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 16, 2, 8)), jnp.float32) for _ in range(3))
  mask = jnp.asarray(np.arange(16)[None, :] < np.array([[16], [9]]))
  np.testing.assert_allclose(attention.dot_product_attention(q, k, v, mask),
                             attention.reference_attention(q, k, v, mask),
                             rtol=1e-5, atol=1e-6)


class _Recorder:
  """Stands in for an implementation: records its call, returns a marker array."""

  def __init__(self, value):
    self.calls, self.value = [], value

  def __call__(self, *args, **kwargs):
    self.calls.append((args, kwargs))
    return self.value


def test_dispatcher_calls_each_implementation_with_the_calls_arguments(monkeypatch):
  """Each implementation name reaches its own function with q, k, v, the mask, the rate
  and the seed (the GPU and TPU kernels are replaced by recorders: their numbers are
  tested in test_attention_gpu.py and test_pallas_attention.py); "auto" asks
  gpu_implementation about this call's dtype, head size, lengths and rate."""
  from genemask_jax import attention_gpu  # pylint: disable=g-import-not-at-top
  q, k, v = _qkv(2, 16, 16, 2, 8)
  mask = _key_mask(2, 16)
  seed = attention.dropout_seed(jax.random.key(7))
  marker = jnp.full(q.shape, 7.0)
  for name, fn in (("pallas_tpu", "pallas_tpu_attention"), ("cudnn", "cudnn_attention")):
    rec = _Recorder(marker)
    monkeypatch.setattr(attention, fn, rec)
    rate, s = (0.25, seed) if name == "pallas_tpu" else (0.0, None)
    out = attention.dot_product_attention(q, k, v, mask, dropout_rate=rate, seed=s,
                                          implementation=name)
    assert out is marker and len(rec.calls) == 1, name
    (args, kwargs), = rec.calls
    assert all(a is b for a, b in zip(args, (q, k, v, mask), strict=True)), name
    if name == "pallas_tpu":
      assert kwargs == {"dropout_rate": 0.25, "seed": seed}
  # Pallas on a GPU: the kernel where it takes the shapes (interpreted off a GPU)...
  flash = _Recorder(marker)
  monkeypatch.setattr(attention_gpu, "flash_attention", flash)
  seen = []
  monkeypatch.setattr(attention_gpu, "supported",
                      lambda *a: seen.append(a) or a[0] == 16)
  out = attention.dot_product_attention(q, k, v, mask, dropout_rate=0.25, seed=seed,
                                        implementation="pallas_gpu")
  assert out is marker and seen == [(16, 16, 8)]
  (args, kwargs), = flash.calls
  assert all(a is b for a, b in zip(args, (q, k, v, mask), strict=True))
  assert kwargs == {"dropout_rate": 0.25, "seed": seed,
                    "interpret": jax.default_backend() != "gpu"}
  # ...and blockwise attention, with the same dropout, where it does not.
  q8 = q[:, :8]
  got = attention.dot_product_attention(q8, k, v, mask, dropout_rate=0.25, seed=seed,
                                        implementation="pallas_gpu")
  assert seen[-1] == (8, 16, 8) and len(flash.calls) == 1
  np.testing.assert_array_equal(got, attention.blockwise_attention(
      q8, k, v, mask, dropout_rate=0.25, seed=seed))
  # "auto" on a GPU: the call's own shapes and rate decide.
  asked = _Recorder("blockwise")
  monkeypatch.setattr(attention.jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(attention, "gpu_implementation", asked)
  qb = q[:, :12].astype(jnp.bfloat16)  # 12 queries, 16 keys, head size 8: all different.
  attention.dot_product_attention(qb, k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), mask,
                                  dropout_rate=0.25, seed=seed)
  attention.dot_product_attention(qb, k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), mask)
  assert [c[0] for c in asked.calls] == [(jnp.bfloat16, 8, 12, 16, 0.25),
                                         (jnp.bfloat16, 8, 12, 16, 0.0)]
  # On a GPU the Pallas kernel runs compiled, not interpreted.
  attention.dot_product_attention(q, k, v, mask, implementation="pallas_gpu")
  assert flash.calls[-1][1]["interpret"] is False and len(flash.calls) == 2


@pytest.mark.parametrize("impl", ["blockwise", "xla"])
def test_dispatcher_passes_rate_and_seed_and_a_rate_needs_a_seed(impl):
  """blockwise and xla get the call's rate and seed (the same mask either way); a rate
  without a seed is an error for every implementation (xla used to drop it silently)."""
  q, k, v = _qkv(2, 40, 40, 2, 8)
  mask = _key_mask(2, 40)
  seed = attention.dropout_seed(jax.random.key(5))
  got = attention.dot_product_attention(q, k, v, mask, dropout_rate=0.3, seed=seed,
                                        implementation=impl, block_q=16)
  direct = attention.blockwise_attention(q, k, v, mask, dropout_rate=0.3, seed=seed,
                                         block_q=16)
  np.testing.assert_allclose(got, direct, rtol=1e-5, atol=1e-6)
  plain = attention.reference_attention(q, k, v, mask)
  assert np.abs(np.asarray(got) - np.asarray(plain)).max() > 0.1  # Dropout happened.
  np.testing.assert_allclose(attention.dot_product_attention(
      q, k, v, mask, dropout_rate=0.0, seed=seed, implementation=impl, block_q=16), plain,
                             rtol=1e-5, atol=1e-6)
  for name in attention.IMPLEMENTATIONS:
    with pytest.raises(ValueError, match="dropout_rate 0.3 > 0 needs a seed"):
      attention.dot_product_attention(q, k, v, mask, dropout_rate=0.3, implementation=name)


def test_blockwise_never_holds_the_whole_score_matrix():
  """What "blockwise" is for: no (L x L) array anywhere in its program, forward or
  backward, while "xla" has one (so the check can fail)."""
  length, block = 256, 32
  q, k, v = _qkv(2, length, length, 2, 8)
  mask = _key_mask(2, length)

  def biggest(impl):
    fn = lambda q, k, v: attention.dot_product_attention(
        q, k, v, mask, implementation=impl, block_q=block).sum()
    text = str(jax.make_jaxpr(jax.grad(fn, argnums=(0, 1, 2)))(q, k, v))
    shapes = [tuple(int(d) for d in s.split(",") if d)
              for s in re.findall(r"f32\[([0-9,]*)\]", text)]
    return max(int(np.prod(s)) for s in shapes)

  assert biggest("xla") >= 4 * length * length  # (B, N, L, L) scores.
  assert biggest("blockwise") == 4 * block * length  # (B, N, block_q, L) score blocks.


def _lowbias32(x: np.ndarray) -> np.ndarray:
  """Chris Wellons' lowbias32 integer hash, from its published definition, in numpy."""
  x = x.astype(np.uint64) & 0xFFFFFFFF
  x ^= x >> 16
  x = (x * 0x7FEB352D) & 0xFFFFFFFF
  x ^= x >> 15
  x = (x * 0x846CA68B) & 0xFFFFFFFF
  x ^= x >> 16
  return x


def test_keep_mask_is_the_documented_hash_of_each_elements_index():
  """keep_mask's documented rule, recomputed in numpy: element i of full_shape is kept
  iff lowbias32(lowbias32(flat(i) ^ seed[0]) ^ seed[1]) >= rate * 2**32. The masks of
  a run (and of the Pallas kernels, which must match it) depend on exactly this."""
  seed = attention.dropout_seed(jax.random.key(11))
  assert seed.shape == (2,) and seed.dtype == jnp.uint32
  s0, s1 = (int(w) for w in np.asarray(seed))
  full = (3, 5, 40, 40)
  offsets = (1, 2, 8, 0)
  block = (2, 3, 16, 40)
  rate = 0.3
  got = np.asarray(attention.keep_mask(seed, block, rate, offsets=offsets, full_shape=full))
  idx = np.indices(block).reshape(len(block), -1).T + np.array(offsets)
  flat = np.ravel_multi_index(idx.T, full).astype(np.uint64)
  bits = _lowbias32(_lowbias32(flat ^ s0) ^ s1)
  want = (bits >= round(rate * 2**32)).reshape(block)
  np.testing.assert_array_equal(got, want)
  assert 0.6 < want.mean() < 0.8
