"""Scaled dot-product attention and dropout for the BERT encoder, fast on CPU too.

Two things make textbook JAX attention slow on a CPU, and both are fixed here:

* The (B, N, L, L) score and probability tensors (67 MB each for 8 x 8 heads x 512^2 in
  float32) are written and re-read several times forward and backward, and every fresh
  buffer that size costs page faults. ``blockwise_attention`` never materialises them: it
  walks over blocks of queries (flash-attention style), keeps only the per-row
  log-sum-exp for the backward pass (a ``jax.custom_vjp``), and recomputes each block's
  probabilities there. Forward and gradients equal the unblocked softmax attention to
  float32 rounding.
* ``jax.random`` bits (threefry) are slow on a CPU: a dropout mask over the attention
  probabilities can cost more than the layer itself (figures in docs/benchmarks.md,
  "Design measurements"). Dropout here draws two 32-bit words per call from
  ``jax.random`` and hashes the element's global index with them (a counter-based
  generator, as Philox is), so a mask costs a few integer ops per element, is the same for
  any sharding of the array, and is recomputed in the backward pass instead of stored.

``dot_product_attention`` picks the implementation: ``"blockwise"`` (the default on CPU),
``"xla"`` (``jax.nn.dot_product_attention``'s XLA lowering, with the explicit softmax when
attention dropout is on), ``"cudnn"`` (cuDNN's fused flash attention on NVIDIA GPUs, for
bfloat16/float16 without attention dropout: cuDNN's own dropout is not this module's
hashed mask), ``"pallas_gpu"`` (``attention_gpu.flash_attention``, a fused Pallas/Triton
kernel with this module's dropout; self-attention only, other calls fall back to
blockwise), ``"pallas_tpu"`` (a Pallas TPU kernel for the forward pass, one grid cell per
(sequence, head, block of queries) holding its whole key row in VMEM, with the same hashed
dropout, and the blockwise backward pass; the flash attention that ships with JAX,
``jax.experimental.pallas.ops.tpu``, has no dropout, which BERT pretraining needs), or
``"auto"``: blockwise on CPU; ``"pallas_tpu"`` on TPU; on a GPU, cuDNN where its
constraints hold (``cudnn_supported``) and otherwise blockwise, which never builds the
float32 (B, N, L, L) tensors that the ``"xla"`` path needs for dropout.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
from jax.experimental import pallas as pl
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "blockwise", "xla", "cudnn", "pallas_gpu", "pallas_tpu")

# Queries per block of the blockwise attention: 8 x 8 heads x 64 x 512 float32 scores is
# 8 MB, which stays in a 32 MB L3 cache (the choice: docs/benchmarks.md, "Design
# measurements").
DEFAULT_BLOCK_Q = 64


def _mix32(x: jax.Array) -> jax.Array:
  """A 32-bit integer finaliser with full avalanche ("lowbias32"); uint32 -> uint32."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def dropout_seed(key: jax.Array) -> jax.Array:
  """Two uint32 words from a PRNG key: the seed of one ``keep_mask`` stream."""
  return jax.random.bits(key, (2,), jnp.uint32)


def keep_mask(seed: jax.Array, shape: tuple[int, ...], rate: float,
              offsets: tuple[int, ...] | None = None,
              full_shape: tuple[int, ...] | None = None) -> jax.Array:
  """Bool mask, True with probability ``1 - rate``, for a block of a larger array.

  Element ``i`` (a multi-index into ``full_shape``) is kept iff
  ``mix(mix(flat(i) ^ seed[0]) ^ seed[1]) >= rate * 2**32``, so the mask of any block
  equals the same block of the whole array's mask.

  Args:
    seed: (2,) uint32 from ``dropout_seed``.
    shape: the block's shape.
    rate: drop probability in [0, 1).
    offsets: the block's start in each dimension (default zeros; ints or traced scalars).
    full_shape: the whole array's shape (default ``shape``).
  """
  full_shape = tuple(full_shape or shape)
  offsets = tuple(offsets or (0,) * len(shape))
  flat = jnp.zeros(shape, jnp.uint32)
  for dim, (size, offset) in enumerate(zip(full_shape, offsets)):
    idx = jax.lax.broadcasted_iota(jnp.uint32, shape, dim) + jnp.asarray(offset, jnp.uint32)
    flat = flat * jnp.uint32(size) + idx  # wraps modulo 2**32 beyond 4 G elements
  bits = _mix32(_mix32(flat ^ seed[0]) ^ seed[1])
  threshold = jnp.uint32(min(int(round(rate * 2.0**32)), 2**32 - 1))
  return bits >= threshold


def dropout(x: jax.Array, rate: float, seed: jax.Array | None) -> jax.Array:
  """Inverted dropout with ``keep_mask``; identity when ``rate`` is 0 or ``seed`` is None."""
  if rate == 0.0 or seed is None:
    return x
  keep = keep_mask(seed, x.shape, rate)
  return jnp.where(keep, x * jnp.asarray(1.0 / (1.0 - rate), x.dtype), jnp.zeros((), x.dtype))


def _scores(q_block: jax.Array, k_t: jax.Array, bias: jax.Array) -> jax.Array:
  """(B, N, Q, D) pre-scaled queries x (B, N, D, L) keys -> (B, N, Q, L) float32 + bias."""
  s = jnp.einsum("bnqd,bndk->bnqk", q_block, k_t, preferred_element_type=jnp.float32)
  return s + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _blockwise(q, k, v, bias, seed, rate, block_q):
  return _blockwise_fwd(q, k, v, bias, seed, rate, block_q)[0]


def _common(q, k):
  """(scale, query length, full (B, N, Lq, Lk) score shape, scaled queries)."""
  scale = 1.0 / math.sqrt(q.shape[-1])
  full = q.shape[:2] + (q.shape[2], k.shape[2])
  return scale, q.shape[2], full, q * jnp.asarray(scale, q.dtype)


def _blockwise_fwd(q, k, v, bias, seed, rate, block_q):
  """q, k, v (B, N, L, D); bias (B, 1, 1, L) float32 (0 or very negative)."""
  _, length, full, q_scaled = _common(q, k)
  k_t = jnp.swapaxes(k, 2, 3)
  outs, lses = [], []
  for start in range(0, length, block_q):
    s = _scores(q_scaled[:, :, start:start + block_q], k_t, bias)
    m = s.max(-1, keepdims=True)
    p = jnp.exp(s - m)
    denom = p.sum(-1, keepdims=True)
    lses.append((m + jnp.log(denom))[..., 0])
    if rate > 0.0:
      keep = keep_mask(seed, p.shape, rate, (0, 0, start, 0), full)
      p = jnp.where(keep, p, 0.0)
      denom = denom * (1.0 - rate)
    o = jnp.einsum("bnqk,bnkd->bnqd", p.astype(v.dtype), v,
                   preferred_element_type=jnp.float32) / denom
    outs.append(o.astype(q.dtype))
  out = jnp.concatenate(outs, axis=2)
  lse = jnp.concatenate(lses, axis=2)
  return out, (q, k, v, bias, seed, out, lse)


def _blockwise_bwd(rate, block_q, res, d_out, index_offsets=(0, 0), index_full=None):
  """``index_offsets`` (batch, head) and ``index_full`` place a shard's dropout mask in
  the whole array's (``pallas_tpu_attention`` under ``shard_map``)."""
  q, k, v, bias, seed, out, lse = res
  scale, length, full, q_scaled = _common(q, k)
  full = index_full or full
  d_out = d_out.astype(jnp.float32)
  delta = (d_out * out.astype(jnp.float32)).sum(-1)  # (B, N, L) = rowsum(dP * P)
  dk = jnp.zeros(k.shape, jnp.float32)
  dv = jnp.zeros(v.shape, jnp.float32)
  dqs = []
  bias_t = jnp.swapaxes(bias, 2, 3)  # (B, 1, L, 1)
  q32 = q_scaled.astype(jnp.float32)
  k32 = k.astype(jnp.float32)
  v32 = v.astype(jnp.float32)
  for start in range(0, length, block_q):
    # Everything in key-major (B, N, L_k, Q) layout, so that the dv and dk products are
    # plain matmuls; only dq contracts over the (long) key axis of a transposed operand.
    rows = slice(start, start + block_q)
    q_blk, do_blk = q32[:, :, rows], d_out[:, :, rows]
    s_t = jnp.einsum("bnkd,bnqd->bnkq", k32, q_blk) + bias_t
    p_t = jnp.exp(s_t - lse[:, :, None, rows])
    dp_t = jnp.einsum("bnkd,bnqd->bnkq", v32, do_blk)
    if rate > 0.0:
      keep_t = jnp.swapaxes(
          keep_mask(seed, p_t.shape[:2] + p_t.shape[3:] + p_t.shape[2:3], rate,
                    (*index_offsets, start, 0), full), 2, 3)
      c = 1.0 / (1.0 - rate)
      p_dropped = jnp.where(keep_t, p_t * c, 0.0)
      dp_t = jnp.where(keep_t, dp_t * c, 0.0)
    else:
      p_dropped = p_t
    dv = dv + jnp.einsum("bnkq,bnqd->bnkd", p_dropped, do_blk)
    ds_t = p_t * (dp_t - delta[:, :, None, rows])
    dqs.append(jnp.einsum("bnkq,bnkd->bnqd", ds_t, k32))
    dk = dk + jnp.einsum("bnkq,bnqd->bnkd", ds_t, q_blk)
  dq = jnp.concatenate(dqs, axis=2) * scale
  return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
          jnp.zeros_like(bias), None)


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array, *,
                        dropout_rate: float = 0.0, seed: jax.Array | None = None,
                        block_q: int = DEFAULT_BLOCK_Q) -> jax.Array:
  """Softmax attention over blocks of queries with a recomputing backward pass.

  Args:
    q, k, v: (B, L, N, D) queries, keys and values (any float dtype; scores and the
      softmax are float32).
    key_mask: (B, L) bool, True for keys that may be attended to ([PAD] is False). A row
      whose keys are all masked attends uniformly, as ``jax.nn.dot_product_attention``.
    dropout_rate: dropout on the attention probabilities (HF semantics); needs ``seed``.
    seed: (2,) uint32 from ``dropout_seed`` (ignored when ``dropout_rate`` is 0).
    block_q: queries per block.

  Returns:
    (B, L, N, D) in q's dtype.
  """
  if dropout_rate > 0.0 and seed is None:
    raise ValueError("blockwise_attention: dropout_rate > 0 needs a seed")
  if seed is None:
    seed = jnp.zeros((2,), jnp.uint32)
  bias = jnp.where(key_mask, 0.0, jnp.finfo(jnp.float32).min / 2)[:, None, None, :]
  bias = bias.astype(jnp.float32)
  qt, kt, vt = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
  block_q = max(1, min(int(block_q), q.shape[1]))
  out = _blockwise(qt, kt, vt, bias, seed, float(dropout_rate), block_q)
  return jnp.swapaxes(out, 1, 2)


def reference_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array, *,
                        dropout_rate: float = 0.0, seed: jax.Array | None = None) -> jax.Array:
  """The unblocked computation (``"xla"``): (B, L, N, D) in and out, same dropout mask."""
  if dropout_rate == 0.0 or seed is None:
    return jax.nn.dot_product_attention(q, k, v, mask=key_mask[:, None, None, :])
  scale = 1.0 / math.sqrt(q.shape[-1])
  logits = jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=jnp.float32) * scale
  logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)
  probs = dropout(probs, dropout_rate, seed).astype(v.dtype)
  return jnp.einsum("bnqk,bknd->bqnd", probs, v)


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array, *,
                    implementation: str = "cudnn") -> jax.Array:
  """``jax.nn.dot_product_attention`` with cuDNN's fused kernel; no dropout.

  cuDNN takes the key mask as an additive bias of the full (B, 1, Lq, Lk) shape (it
  rejects a (B, 1, 1, Lk) one); the same call with ``implementation="xla"`` runs anywhere,
  which is how CPU tests check this wrapper.

  Args:
    q, k, v: (B, Lq, N, D), (B, Lk, N, D), (B, Lk, N, D) in bfloat16 or float16 for cuDNN.
    key_mask: (B, Lk) bool, True for keys that may be attended to.
    implementation: "cudnn", or "xla" to run the same call without cuDNN.

  Returns:
    (B, Lq, N, D) in q's dtype.
  """
  mask = jnp.broadcast_to(key_mask[:, None, None, :],
                          (q.shape[0], 1, q.shape[1], k.shape[1]))
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


def cudnn_supported(dtype, head_dim: int, q_len: int, kv_len: int,
                    dropout_rate: float) -> bool:
  """Whether ``cudnn_attention`` can run this shape (cuDNN flash-attention constraints).

  bfloat16/float16 inputs, a head dim that is a multiple of 8 and at most 128 (256 on
  Hopper, not assumed here), even query and key lengths (cuDNN's rule for training with a
  bias), and no attention dropout (cuDNN would draw its own mask, not ``keep_mask``).
  """
  return (jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
          and head_dim % 8 == 0 and head_dim <= 128 and q_len % 2 == 0 and kv_len % 2 == 0
          and dropout_rate == 0.0)


def gpu_implementation(dtype, head_dim: int, q_len: int, kv_len: int,
                       dropout_rate: float) -> str:
  """``"auto"`` on a GPU: ``"cudnn"`` where ``cudnn_supported``, else ``"blockwise"``."""
  return ("cudnn" if cudnn_supported(dtype, head_dim, q_len, kv_len, dropout_rate)
          else "blockwise")


def resolve_implementation(implementation: str, *, platform: str | None = None,
                           dtype=jnp.float32, head_dim: int = 64, q_len: int = 512,
                           kv_len: int = 512, dropout_rate: float = 0.0) -> str:
  """``"auto"`` -> ``"blockwise"`` on CPU, ``"pallas_tpu"`` on TPU, ``gpu_implementation``
  on GPU, ``"xla"`` elsewhere; other names are returned unchanged.

  ``platform`` ("cpu", "gpu", "tpu") is the backend the step will run on (default
  ``jax.default_backend()``; an ahead-of-time compile for a TPU passes "tpu"); the other
  keywords describe the call (they matter on a GPU only).
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(
        f"attention implementation {implementation!r}; expected one of {IMPLEMENTATIONS}")
  if implementation == "auto":
    platform = platform or jax.default_backend()
    if platform == "gpu":
      return gpu_implementation(dtype, head_dim, q_len, kv_len, dropout_rate)
    if platform == "tpu":
      return "pallas_tpu"
    return "blockwise" if platform == "cpu" else "xla"
  return implementation


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array, *,
                          dropout_rate: float = 0.0, seed: jax.Array | None = None,
                          implementation: str = "auto",
                          block_q: int = DEFAULT_BLOCK_Q) -> jax.Array:
  """BERT self-attention: (B, L, N, D) q, k, v and (B, L) key mask -> (B, L, N, D).

  Dropout (``dropout_rate`` > 0) needs ``seed`` (``dropout_seed(key)``) whichever the
  implementation: a rate without a seed is an error, never silently no dropout.
  """
  if dropout_rate > 0.0 and seed is None:
    raise ValueError(f"dot_product_attention: dropout_rate {dropout_rate} > 0 needs a seed "
                     "(attention.dropout_seed(key)); pass dropout_rate=0.0 for none")
  rate = dropout_rate
  impl = resolve_implementation(implementation, dtype=q.dtype, head_dim=q.shape[-1],
                                q_len=q.shape[1], kv_len=k.shape[1], dropout_rate=rate)
  if impl == "pallas_gpu":
    # Triton's Pallas backend loads only when this path is taken.
    from genemask_jax import attention_gpu  # pylint: disable=g-import-not-at-top
    if attention_gpu.supported(q.shape[1], k.shape[1], q.shape[-1]):
      return attention_gpu.flash_attention(  # Interpreted off the GPU (tests).
          q, k, v, key_mask, dropout_rate=dropout_rate, seed=seed,
          interpret=jax.default_backend() != "gpu")
    impl = "blockwise"  # The last layer's queries at the masked positions only.
  if impl == "blockwise":
    return blockwise_attention(q, k, v, key_mask, dropout_rate=dropout_rate, seed=seed,
                               block_q=block_q)
  if impl == "cudnn":
    if rate > 0.0:
      raise ValueError(f"attention implementation 'cudnn' has no dropout (rate {rate}); "
                       "set the attention dropout to 0 or use 'auto' or 'blockwise'")
    return cudnn_attention(q, k, v, key_mask)
  if impl == "pallas_tpu":
    return pallas_tpu_attention(q, k, v, key_mask, dropout_rate=dropout_rate, seed=seed)
  return reference_attention(q, k, v, key_mask, dropout_rate=dropout_rate, seed=seed)


# ----------------------------------------------------------------------------- Pallas TPU
# Rows of queries per grid cell; 128 fills the MXU and keeps (128 x 512) float32 scores,
# the whole key row, well inside VMEM.
PALLAS_BLOCK_Q = 128
_LANES = 128  # The log-sum-exp leaves the kernel broadcast over one lane tile.
_INT32_MIN = -(2**31)


def _mix32_int(x: jax.Array) -> jax.Array:
  """``_mix32`` on int32 (the same bits): Mosaic's integer ops are signed 32-bit."""
  srl = jax.lax.shift_right_logical
  x = x ^ srl(x, jnp.int32(16))
  x = x * jnp.int32(0x7FEB352D)
  x = x ^ srl(x, jnp.int32(15))
  x = x * jnp.int32(0x846CA68B - 2**32)
  return x ^ srl(x, jnp.int32(16))


def _program_ids():
  """(sequence, head, query block) of the running Pallas grid cell."""
  return pl.program_id(0), pl.program_id(1), pl.program_id(2)


def _pallas_fwd_kernel(seed_ref, q_ref, k_ref, v_ref, bias_ref, o_ref, lse_ref, *,
                       scale, rate, block_q, full):
  """One (sequence b, head n, query block i): the block's rows against all keys.

  ``seed_ref`` (SMEM int32): the two seed words, then this shard's first sequence and
  head in the whole array (the mask is the whole array's, however it is sharded).
  """
  b, n, i = _program_ids()
  b, n = b + seed_ref[2], n + seed_ref[3]
  q = q_ref[...]
  q = q * jnp.asarray(scale, q.dtype)
  s = jax.lax.dot_general(q, k_ref[...], (((1,), (1,)), ((), ())),
                          preferred_element_type=jnp.float32)
  s = s + bias_ref[...]  # (block_q, Lk) + (1, Lk)
  m = s.max(-1, keepdims=True)
  p = jnp.exp(s - m)
  denom = p.sum(-1, keepdims=True)
  lse = m + jnp.log(denom)
  if rate > 0.0:
    # keep_mask's flat index ((b * N + n) * Lq + row) * Lk + col, and its hash, in int32.
    _, num_heads, len_q, len_k = full
    rows = jax.lax.broadcasted_iota(jnp.int32, s.shape, 0) + i * block_q
    cols = jax.lax.broadcasted_iota(jnp.int32, s.shape, 1)
    flat = ((b * num_heads + n) * len_q + rows) * len_k + cols
    bits = _mix32_int(_mix32_int(flat ^ seed_ref[0]) ^ seed_ref[1])
    threshold = min(int(round(rate * 2.0**32)), 2**32 - 1)
    # Unsigned comparison on int32: flip the sign bit of both sides.
    keep = (bits ^ jnp.int32(_INT32_MIN)) >= jnp.int32(threshold + _INT32_MIN)
    p = jnp.where(keep, p, 0.0)
    denom = denom * (1.0 - rate)
  v = v_ref[...]
  o = jax.lax.dot_general(p.astype(v.dtype), v, (((1,), (0,)), ((), ())),
                          preferred_element_type=jnp.float32) / denom
  o_ref[...] = o.astype(o_ref.dtype)
  lse_ref[...] = jnp.broadcast_to(lse, lse_ref.shape)


def _pallas_forward(q, k, v, bias, seed4, rate, block_q, interpret, full):
  """q, k, v (B, N, L, D); bias (B, 1, 1, L) float32 -> out (B, N, L, D), lse (B, N, L).

  ``seed4``: (4,) uint32 = seed words, batch offset, head offset; ``full``: the whole
  (B, N, Lq, Lk) shape the dropout mask indexes.
  """
  # Mosaic (TPU) loads only when a TPU kernel is traced: ~0.8 s of import otherwise.
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
  batch, heads, len_q, head_dim = q.shape
  len_k = k.shape[2]
  scale = _common(q, k)[0]
  kernel = functools.partial(_pallas_fwd_kernel, scale=scale, rate=rate, block_q=block_q,
                             full=full)
  seed_i32 = jax.lax.bitcast_convert_type(seed4.astype(jnp.uint32), jnp.int32)
  bias3 = bias.reshape(batch, 1, len_k)
  q_spec = pl.BlockSpec((None, None, block_q, head_dim), lambda b, n, i, _: (b, n, i, 0))
  kv_spec = pl.BlockSpec((None, None, len_k, head_dim), lambda b, n, i, _: (b, n, 0, 0))
  bias_spec = pl.BlockSpec((None, 1, len_k), lambda b, n, i, _: (b, 0, 0))
  lse_spec = pl.BlockSpec((None, None, block_q, _LANES), lambda b, n, i, _: (b, n, i, 0))
  out, lse = pl.pallas_call(
      kernel,
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1, grid=(batch, heads, len_q // block_q),
          in_specs=[q_spec, kv_spec, kv_spec, bias_spec],
          out_specs=[q_spec, lse_spec]),
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((batch, heads, len_q, _LANES), jnp.float32)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel")),
      interpret=interpret,
  )(seed_i32, q, k, v, bias3)
  return out, lse[..., 0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _pallas(q, k, v, bias, seed4, rate, block_q, interpret, full):
  return _pallas_fwd(q, k, v, bias, seed4, rate, block_q, interpret, full)[0]


def _pallas_fwd(q, k, v, bias, seed4, rate, block_q, interpret, full):
  out, lse = _pallas_forward(q, k, v, bias, seed4, rate, block_q, interpret, full)
  return out, (q, k, v, bias, seed4, out, lse)


def _pallas_bwd(rate, block_q, interpret, full, res, d_out):
  del interpret
  q, k, v, bias, seed4, out, lse = res
  return _blockwise_bwd(rate, block_q, (q, k, v, bias, seed4[:2], out, lse), d_out,
                        index_offsets=(seed4[2], seed4[3]), index_full=full)


_pallas.defvjp(_pallas_fwd, _pallas_bwd)


def pallas_tpu_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array, *,
                         dropout_rate: float = 0.0, seed: jax.Array | None = None,
                         block_q: int = PALLAS_BLOCK_Q, interpret: bool = False) -> jax.Array:
  """``blockwise_attention`` with its forward pass as one Pallas TPU kernel.

  Same arguments, result and dropout mask as ``blockwise_attention`` (the kernel hashes
  each element's index exactly as ``keep_mask``); the backward pass is the blockwise one,
  recomputing each block's probabilities from the saved log-sum-exp.

  Args:
    q, k, v, key_mask, dropout_rate, seed: as ``blockwise_attention``.
    block_q: query rows per grid cell; the query length must be a multiple of it (it is
      lowered to the length when the length is shorter).
    interpret: run the kernel in the Pallas interpreter (any backend; for tests on CPU).
      Without it the kernel compiles only for TPU (including ahead of time, for a TPU
      topology, on a CPU machine).

  Returns:
    (B, L, N, D) in q's dtype.
  """
  if dropout_rate > 0.0 and seed is None:
    raise ValueError("pallas_tpu_attention: dropout_rate > 0 needs a seed")
  if seed is None:
    seed = jnp.zeros((2,), jnp.uint32)
  length = q.shape[1]
  block_q = min(int(block_q), length)
  if length % block_q or block_q % 8:
    raise ValueError(f"pallas_tpu_attention: query length {length} must be a multiple of "
                     f"block_q={block_q}, itself a multiple of 8")
  bias = jnp.where(key_mask, 0.0, jnp.finfo(jnp.float32).min / 2)[:, None, None, :]
  bias = bias.astype(jnp.float32)
  qt, kt, vt = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
  full = qt.shape[:3] + (kt.shape[2],)
  statics = (float(dropout_rate), block_q, bool(interpret), full)
  seed = seed.astype(jnp.uint32)

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    out = _pallas(qt, kt, vt, bias, jnp.concatenate([seed, jnp.zeros((2,), jnp.uint32)]),
                  *statics)
    return jnp.swapaxes(out, 1, 2)

  # A Mosaic kernel is not partitioned by XLA: run it per shard, on the layout the model's
  # logical constraints give q, k and v ((batch, heads) sharded, rows and head_dim whole).
  spec = nn.logical_to_mesh_axes(("batch", "heads", None, None))
  batch_axes, head_axes = spec[0], spec[1]
  bias_spec = jax.sharding.PartitionSpec(batch_axes, None, None, None)
  for dim, axes in ((qt.shape[0], batch_axes), (qt.shape[1], head_axes)):
    names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    if dim % math.prod(mesh.shape[a] for a in names):
      # Shapes that do not split over the mesh (the batch of 1 that traces model.init):
      # the blockwise path, same numbers, partitioned by XLA.
      return blockwise_attention(q, k, v, key_mask, dropout_rate=dropout_rate, seed=seed)

  def shard(qs, ks, vs, bs, sd):
    offsets = [jnp.zeros((), jnp.uint32), jnp.zeros((), jnp.uint32)]
    for j, axes in enumerate((batch_axes, head_axes)):
      if axes is not None:
        offsets[j] = (jax.lax.axis_index(axes) * qs.shape[j]).astype(jnp.uint32)
    return _pallas(qs, ks, vs, bs, jnp.concatenate([sd, jnp.stack(offsets)]), *statics)

  out = jax.shard_map(shard, mesh=mesh, in_specs=(spec, spec, spec, bias_spec,
                                                  jax.sharding.PartitionSpec()),
                      out_specs=spec, check_vma=False)(qt, kt, vt, bias, seed)
  return jnp.swapaxes(out, 1, 2)
