"""The fused Pallas GPU attention kernel (genemask_jax.attention_gpu) on CPU, interpreted.

The kernels run through the Pallas interpreter here and must give blockwise attention's
forward and gradients, hashed dropout included; on a GPU the last test runs them compiled.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genemask_jax import attention
from genemask_jax import attention_gpu
from genemask_jax import model as model_lib

ON_GPU = jax.default_backend() == "gpu"
BLOCKS = attention_gpu.Blocks(fwd_q=32, fwd_k=16, bwd=16)


@pytest.fixture(autouse=True, scope="module")
def _full_precision_matmuls():
  with jax.default_matmul_precision("highest"):
    yield


def _inputs(b, length, n, d, seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.standard_normal((b, length, n, d)), dtype) for _ in range(3))
  mask = np.ones((b, length), bool)
  mask[0, length * 5 // 8:] = False  # padded tail
  mask[1, 0] = False  # a hole
  return q, k, v, jnp.asarray(mask)


@pytest.mark.parametrize("rate,head_dim", [(0.0, 16), (0.2, 16), (0.1, 12)])
def test_kernel_equals_blockwise_forward_and_gradients(rate, head_dim):
  q, k, v, mask = _inputs(2, 64, 3, head_dim, seed=int(rate * 10) + head_dim)
  seed = attention.dropout_seed(jax.random.key(5))
  w = jnp.cos(jnp.arange(float(head_dim)))
  fused = lambda q, k, v: attention_gpu.flash_attention(
      q, k, v, mask, dropout_rate=rate, seed=seed, blocks=BLOCKS, interpret=True)
  blockwise = lambda q, k, v: attention.blockwise_attention(
      q, k, v, mask, dropout_rate=rate, seed=seed, block_q=16)
  np.testing.assert_allclose(fused(q, k, v), blockwise(q, k, v), atol=2e-6, rtol=1e-5)
  got = jax.grad(lambda *a: (fused(*a) * w).sum(), argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(lambda *a: (blockwise(*a) * w).sum(), argnums=(0, 1, 2))(q, k, v)
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, atol=5e-6, rtol=1e-4)


def test_all_masked_row_attends_uniformly_and_shapes_are_checked():
  q, k, v, _ = _inputs(2, 32, 1, 8)
  mask = jnp.asarray([[True] * 4 + [False] * 28, [False] * 32])
  out = attention_gpu.flash_attention(q, k, v, mask, blocks=BLOCKS, interpret=True)
  np.testing.assert_allclose(out[1], jnp.broadcast_to(v[1].mean(0), out[1].shape), atol=1e-5)
  assert attention_gpu.supported(512, 512, 64) and not attention_gpu.supported(128, 512, 64)
  assert not attention_gpu.supported(96, 96, 64)  # Triton tiles are powers of two.
  with pytest.raises(ValueError, match="do not fit"):
    attention_gpu.flash_attention(q[:, :8], k, v, mask, blocks=BLOCKS, interpret=True)
  with pytest.raises(ValueError, match="needs a seed"):
    attention_gpu.flash_attention(q, k, v, mask, dropout_rate=0.1, interpret=True)


def test_model_with_pallas_gpu_equals_blockwise_in_training_mode():
  # Off the GPU the kernels are interpreted; the last layer (queries at the masked
  # positions only) falls back to blockwise. Same rng -> same hashed dropout masks.
  kw = dict(num_layers=2, hidden_size=32, num_heads=2, mlp_dim=64, max_len=32)
  cfg = model_lib.model_config("tiny", attention_impl="pallas_gpu", **kw)
  ref = model_lib.model_config("tiny", attention_impl="blockwise", **kw)
  ids = np.random.default_rng(1).integers(5, 4101, (2, 32)).astype(np.int32)
  ids[0, 24:] = 0
  positions = jnp.asarray([[1, 5, 9, 30], [0, 2, 4, 6]], jnp.int32)
  params = model_lib.BertForMaskedLM(ref).init(jax.random.key(0), ids)["params"]

  def loss(c):
    return lambda p: model_lib.BertForMaskedLM(c).apply(
        {"params": p}, ids, masked_positions=positions, deterministic=False,
        rngs={"dropout": jax.random.key(2)}).astype(jnp.float32).sum()

  np.testing.assert_allclose(loss(cfg)(params), loss(ref)(params), rtol=1e-5)
  got, want = jax.grad(loss(cfg))(params), jax.grad(loss(ref))(params)
  for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, r, atol=2e-5, rtol=1e-3)


@pytest.mark.skipif(not ON_GPU, reason="the compiled Triton kernels need an NVIDIA GPU")
def test_compiled_kernel_on_gpu_matches_blockwise_in_bfloat16():
  q, k, v, mask = _inputs(2, 256, 4, 64, seed=3, dtype=jnp.bfloat16)
  seed = attention.dropout_seed(jax.random.key(9))
  w = jnp.cos(jnp.arange(64.0))
  fused = lambda q, k, v: attention_gpu.flash_attention(q, k, v, mask, dropout_rate=0.1,
                                                        seed=seed)
  blockwise = lambda q, k, v: attention.blockwise_attention(q, k, v, mask, dropout_rate=0.1,
                                                            seed=seed)
  # Both take bfloat16 inputs to float32 softmax statistics; outputs round to bfloat16.
  np.testing.assert_allclose(np.asarray(fused(q, k, v), np.float32),
                             np.asarray(blockwise(q, k, v), np.float32), atol=3e-2)
  loss = lambda fn: lambda *a: (fn(*a).astype(jnp.float32) * w).sum()
  got = jax.grad(loss(fused), argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(loss(blockwise), argnums=(0, 1, 2))(q, k, v)
  for g, r in zip(got, want):
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32),
                               atol=6e-2, rtol=6e-2)
