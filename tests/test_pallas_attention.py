"""The Pallas TPU attention kernel, run by the Pallas interpreter on CPU.

It must give the blockwise (and so the reference) attention's output and gradients, with
the very same dropout mask, also when q, k and v are sharded over batch and heads. Its
compilation for a real TPU is in tests/test_aot.py.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genemask_jax import attention
from genemask_jax import sharding as sharding_lib


def _inputs(b=2, length=64, n=2, d=16):
  ks = jax.random.split(jax.random.key(0), 4)
  q, k, v = (jax.random.normal(x, (b, length, n, d)) for x in ks[:3])
  lengths = jnp.array([length, 40] * (b // 2))
  mask = jnp.arange(length)[None, :] < lengths[:, None]
  return q, k, v, mask, attention.dropout_seed(ks[3])


def _loss(fn):
  return lambda q, k, v: (fn(q, k, v) ** 2).sum()


@pytest.mark.parametrize("rate", [0.0, 0.1])
def test_pallas_equals_blockwise_forward_and_gradients(rate):
  q, k, v, mask, seed = _inputs()

  def blockwise(q, k, v):
    return attention.blockwise_attention(q, k, v, mask, dropout_rate=rate, seed=seed,
                                         block_q=32)

  def pallas(q, k, v):
    return attention.pallas_tpu_attention(q, k, v, mask, dropout_rate=rate, seed=seed,
                                          block_q=32, interpret=True)

  np.testing.assert_allclose(pallas(q, k, v), blockwise(q, k, v), atol=2e-6)
  g_ref = jax.grad(_loss(blockwise), argnums=(0, 1, 2))(q, k, v)
  g = jax.grad(_loss(pallas), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, atol=5e-6)
  if rate:  # The mask is the hashed one: about 10% of the probabilities dropped.
    no_drop = attention.blockwise_attention(q, k, v, mask, block_q=32)
    assert float(jnp.abs(pallas(q, k, v) - no_drop).max()) > 0.1


def test_pallas_sharded_over_batch_and_heads_keeps_the_whole_arrays_mask():
  q, k, v, mask, seed = _inputs(b=4, n=4)
  mesh = sharding_lib.make_mesh({"data": 2, "model": 2}, devices=jax.devices()[:4])
  rules = sharding_lib.DEFAULT_RULES

  def pallas(q, k, v):
    return attention.pallas_tpu_attention(q, k, v, mask, dropout_rate=0.1, seed=seed,
                                          block_q=32, interpret=True)

  def blockwise(q, k, v):
    return attention.blockwise_attention(q, k, v, mask, dropout_rate=0.1, seed=seed,
                                         block_q=32)

  with sharding_lib.axis_rules(mesh, rules):
    out, grads = jax.jit(jax.value_and_grad(_loss(pallas), argnums=(0, 1, 2)))(q, k, v)
  ref, g_ref = jax.value_and_grad(_loss(blockwise), argnums=(0, 1, 2))(q, k, v)
  np.testing.assert_allclose(out, ref, rtol=1e-5)
  for a, b in zip(grads, g_ref):
    np.testing.assert_allclose(a, b, atol=5e-6)


def test_auto_picks_the_pallas_kernel_on_tpu_only():
  assert attention.resolve_implementation("auto", platform="tpu") == "pallas_tpu"
  assert attention.resolve_implementation("auto", platform="cpu") == "blockwise"


def test_pallas_rejects_a_length_that_is_not_a_multiple_of_the_block():
  q, k, v, mask, seed = _inputs(length=48)
  with pytest.raises(ValueError, match="query length 48 must be a multiple of block_q=32"):
    attention.pallas_tpu_attention(q, k, v, mask, block_q=32, interpret=True)
