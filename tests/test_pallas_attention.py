"""The Pallas TPU attention kernel, run by the Pallas interpreter on CPU.

It must give the blockwise (and so the reference) attention's output and gradients, with
the very same dropout mask, also when q, k and v are sharded over batch and heads. Its
compilation for a real TPU is in tests/test_aot.py.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_support  # tests/ is on sys.path (rootdir-relative test modules).

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


def _primitives(jaxpr) -> list[str]:
  """Every primitive in a jaxpr, nested jaxprs (jit, shard_map, custom_vjp) included."""
  return [e.primitive.name for e in test_support.iter_eqns(jaxpr)]


def _rules(**changes):
  return tuple((name, changes.get(name, axes)) for name, axes in sharding_lib.DEFAULT_RULES)


@pytest.mark.parametrize("mesh_shape, rules, batch_axes, head_axes", [
    ({"data": 2, "model": 2}, sharding_lib.DEFAULT_RULES, "data", "model"),
    ({"data": 2}, _rules(heads=None, mlp=None, vocab=None), "data", None),
    ({"model": 4}, _rules(batch=None), None, "model"),
    ({"data": 1, "fsdp": 2, "model": 2}, sharding_lib.FSDP_RULES, ("data", "fsdp"), "model"),
])
def test_pallas_sharded_over_batch_and_heads_keeps_the_whole_arrays_mask(
    mesh_shape, rules, batch_axes, head_axes):
  """Run per shard (a Mosaic kernel is not partitioned by XLA), each shard hashing its
  elements' whole-array indices: the same output, dropout mask and gradients as the
  unsharded blockwise attention, on every layout the rules can give q, k and v."""
  q, k, v, mask, seed = _inputs(b=4, n=4)
  size = int(np.prod(list(mesh_shape.values())))
  mesh = sharding_lib.make_mesh(mesh_shape, devices=jax.devices()[:size])

  def pallas(q, k, v):
    return attention.pallas_tpu_attention(q, k, v, mask, dropout_rate=0.1, seed=seed,
                                          block_q=32, interpret=True)

  def blockwise(q, k, v):
    return attention.blockwise_attention(q, k, v, mask, dropout_rate=0.1, seed=seed,
                                         block_q=32)

  with sharding_lib.axis_rules(mesh, rules):
    out = jax.jit(pallas)(q, k, v)
    grads = jax.jit(jax.grad(_loss(pallas), argnums=(0, 1, 2)))(q, k, v)
    jaxpr = jax.make_jaxpr(pallas)(q, k, v).jaxpr
  np.testing.assert_allclose(out, blockwise(q, k, v), atol=2e-6)
  for a, b in zip(grads, jax.grad(_loss(blockwise), argnums=(0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(a, b, atol=5e-6)
  # The kernel ran inside a shard_map over (batch, heads) as the rules name them.
  shard_maps = [e for e in jaxpr.eqns if e.primitive.name == "shard_map"]
  assert len(shard_maps) == 1 and "pallas_call" in _primitives(shard_maps[0].params["jaxpr"])
  spec = jax.sharding.PartitionSpec(batch_axes, head_axes, None, None)
  assert shard_maps[0].params["in_specs"][:3] == (spec,) * 3


@pytest.mark.parametrize("batch, heads, mesh_shape, rules", [
    (1, 4, {"data": 2, "model": 2}, sharding_lib.DEFAULT_RULES),
    (4, 2, {"model": 4}, _rules(batch=None)),
])
def test_pallas_falls_back_to_blockwise_when_batch_or_heads_do_not_split(
    batch, heads, mesh_shape, rules):
  """E.g. the batch of 1 that traces model.init on a data-parallel mesh: the blockwise
  path, partitioned by XLA, with the same dropout mask."""
  q, k, v, mask, seed = _inputs(b=max(batch, 2), n=heads)
  q, k, v, mask = q[:batch], k[:batch], v[:batch], mask[:batch]
  size = int(np.prod(list(mesh_shape.values())))
  mesh = sharding_lib.make_mesh(mesh_shape, devices=jax.devices()[:size])

  def pallas(q, k, v):
    return attention.pallas_tpu_attention(q, k, v, mask, dropout_rate=0.1, seed=seed,
                                          block_q=32, interpret=True)

  with sharding_lib.axis_rules(mesh, rules):
    out = jax.jit(pallas)(q, k, v)
    primitives = _primitives(jax.make_jaxpr(pallas)(q, k, v).jaxpr)
  assert "pallas_call" not in primitives and "shard_map" not in primitives
  np.testing.assert_allclose(
      out, attention.blockwise_attention(q, k, v, mask, dropout_rate=0.1, seed=seed,
                                         block_q=32), atol=2e-6)


def test_pallas_without_dropout_needs_no_seed():
  q, k, v, mask, _ = _inputs()
  np.testing.assert_allclose(
      attention.pallas_tpu_attention(q, k, v, mask, block_q=32, interpret=True),
      attention.blockwise_attention(q, k, v, mask, block_q=32), atol=2e-6)


def test_pallas_dropout_needs_a_seed():
  q, k, v, mask, _ = _inputs()
  with pytest.raises(ValueError, match=r"^pallas_tpu_attention: dropout_rate > 0 needs a "
                     r"seed$"):
    attention.pallas_tpu_attention(q, k, v, mask, dropout_rate=0.5, interpret=True)


def test_auto_picks_the_pallas_kernel_on_tpu_only():
  assert attention.resolve_implementation("auto", platform="tpu") == "pallas_tpu"
  assert attention.resolve_implementation("auto", platform="cpu") == "blockwise"


def test_pallas_rejects_a_length_that_is_not_a_multiple_of_the_block():
  q, k, v, mask, seed = _inputs(length=48)
  with pytest.raises(ValueError, match="query length 48 must be a multiple of block_q=32"):
    attention.pallas_tpu_attention(q, k, v, mask, block_q=32, interpret=True)
