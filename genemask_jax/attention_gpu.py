"""Fused flash attention for NVIDIA GPUs in Pallas (Triton), with attention dropout.

cuDNN's fused attention has no dropout that matches ``attention.keep_mask`` (it draws its
own), and the unfused paths write (B, N, L, L)-sized float32 tensors to memory for every
layer. This kernel is the flash-attention forward and backward of
``jax.experimental.pallas.ops.gpu.attention`` (online softmax over key blocks, recomputed
probabilities in the backward pass) with two additions:

* the BERT key-padding mask, as a per-key additive bias;
* attention dropout with exactly ``attention.keep_mask``'s bits: each kernel hashes the
  global (batch, head, query, key) index of its tile with the two seed words, so no mask
  is stored and the forward and backward passes see the same mask.

So ``flash_attention`` equals ``attention.blockwise_attention`` (forward and gradients,
dropout included) up to float rounding; ``interpret=True`` runs the same kernels on any
backend, which is how CPU tests check them. On a GPU it is ``attention_impl="pallas_gpu"``.
Self-attention only (query and key lengths equal, a multiple of the block sizes).

The kernels are adapted from ``jax/experimental/pallas/ops/gpu/attention.py`` (Copyright
2023 The JAX Authors, Apache License 2.0).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
import jax.numpy as jnp

_LOG2E = math.log2(math.e)


@dataclasses.dataclass(frozen=True)
class Blocks:
  """Tile sizes: forward (queries, keys) and backward (queries, keys) per tile."""
  fwd_q: int = 128
  fwd_k: int = 64
  bwd: int = 32

  def fit(self, length: int) -> "Blocks":
    return Blocks(min(self.fwd_q, length), min(self.fwd_k, length), min(self.bwd, length))


def supported(q_len: int, kv_len: int, head_dim: int, blocks: Blocks = Blocks()) -> bool:
  """Whether ``flash_attention`` takes these shapes (self-attention, whole tiles; Triton
  blocks are powers of two, and the kernels load whole key rows)."""
  b = blocks.fit(q_len)
  return (q_len == kv_len and head_dim <= 256 and q_len & (q_len - 1) == 0
          and q_len % b.fwd_q == 0 and q_len % b.fwd_k == 0 and q_len % b.bwd == 0)


def _mix32(x):
  """``attention._mix32`` (lowbias32), written again for the kernel: uint32 -> uint32."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def _seed_words(seed_ref):
  """The two uint32 seed words as scalars (a reduction: Triton cannot index a vector)."""
  s = seed_ref[...]
  first = jnp.arange(2) == 0
  return (jnp.sum(jnp.where(first, s, jnp.uint32(0))),
          jnp.sum(jnp.where(first, jnp.uint32(0), s)))


def _keep(seeds, rate, batch, head, num_heads, length, rows, cols):
  """``keep_mask`` of the (rows x cols) tile of head ``head`` of sequence ``batch``."""
  base = (batch.astype(jnp.uint32) * jnp.uint32(num_heads) + head.astype(jnp.uint32))
  base = base * jnp.uint32(length)
  flat = ((base + rows.astype(jnp.uint32))[:, None] * jnp.uint32(length)
          + cols.astype(jnp.uint32)[None, :])
  bits = _mix32(_mix32(flat ^ seeds[0]) ^ seeds[1])
  return bits >= jnp.uint32(min(int(round(rate * 2.0**32)), 2**32 - 1))


def _fwd_kernel(q_ref, k_ref, v_ref, bias_ref, seed_ref, o_ref, lse_ref, *, scale, rate,
                block_q, block_k, head_dim, num_heads):
  length = k_ref.shape[0]
  start_q, batch, head = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  padded = q_ref.shape[-1]
  head_mask = (jnp.arange(padded) < head_dim)[None, :]
  q = plgpu.load(q_ref, mask=head_mask, other=0.0)
  rows = start_q * block_q + jnp.arange(block_q)
  seeds = _seed_words(seed_ref) if rate > 0.0 else None

  def body(start_k, carry):
    o_prev, m_prev, l_prev = carry
    keys = pl.dslice(start_k * block_k, block_k)
    k = plgpu.load(k_ref.at[keys, :], mask=head_mask, other=0.0)
    s = plgpu.dot(q, k.T) * (scale * _LOG2E) + bias_ref[keys][None, :] * _LOG2E
    m_next = jnp.maximum(m_prev, jnp.max(s, axis=-1))
    correction = jnp.exp2(m_prev - m_next)
    p = jnp.exp2(s - m_next[:, None])
    l_next = correction * l_prev + p.sum(axis=-1)
    if rate > 0.0:
      cols = start_k * block_k + jnp.arange(block_k)
      p = jnp.where(_keep(seeds, rate, batch, head, num_heads, length, rows, cols), p, 0.0)
    v = plgpu.load(v_ref.at[keys, :], mask=head_mask, other=0.0)
    o_next = correction[:, None] * o_prev + plgpu.dot(p.astype(v.dtype), v)
    return o_next, m_next, l_next

  init = (jnp.zeros((block_q, padded), jnp.float32),
          jnp.full((block_q,), -jnp.inf, jnp.float32), jnp.zeros((block_q,), jnp.float32))
  o, m, l = lax.fori_loop(0, pl.cdiv(length, block_k), body, init)
  o = o / (l * (1.0 - rate))[:, None]
  lse_ref[...] = m + jnp.log2(l)
  plgpu.store(o_ref.at[:, :o.shape[-1]], o.astype(o_ref.dtype), mask=head_mask)


def _bwd_kernel(q_ref, k_ref, v_ref, bias_ref, seed_ref, do_ref, lse_ref, delta_ref,
                dq_ref, dk_ref, dv_ref, *, scale, rate, block, head_dim, num_heads):
  length = q_ref.shape[0]
  batch, head, start = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  padded = q_ref.shape[-1]
  head_mask = (jnp.arange(padded) < head_dim)[None, :]
  seeds = _seed_words(seed_ref) if rate > 0.0 else None
  inv_keep = 1.0 / (1.0 - rate)

  def probs_and_dp(q, k, v, do, lse, di, bias, rows, cols):
    """(p, ds) of one tile: softmax probabilities and the score gradient."""
    s = plgpu.dot(q, k.T) * (scale * _LOG2E) + bias[None, :] * _LOG2E
    p = jnp.exp2(s - lse[:, None])
    dp = plgpu.dot(do, v.T)
    if rate > 0.0:
      keep = _keep(seeds, rate, batch, head, num_heads, length, rows, cols)
      p_dropped = jnp.where(keep, p * inv_keep, 0.0)
      dp = jnp.where(keep, dp * inv_keep, 0.0)
    else:
      p_dropped = p
    return p_dropped, p * (dp - di[:, None]) * scale

  # dK and dV of this block of keys: a loop over blocks of queries.
  keys = pl.dslice(start * block, block)
  cols = start * block + jnp.arange(block)
  k = plgpu.load(k_ref.at[keys, :], mask=head_mask, other=0.0)
  v = plgpu.load(v_ref.at[keys, :], mask=head_mask, other=0.0)
  bias_k = bias_ref[keys]

  def dkdv(start_q, carry):
    dv, dk = carry
    qs = pl.dslice(start_q * block, block)
    q = plgpu.load(q_ref.at[qs, :], mask=head_mask, other=0.0)
    do = plgpu.load(do_ref.at[qs, :], mask=head_mask, other=0.0)
    rows = start_q * block + jnp.arange(block)
    p_dropped, ds = probs_and_dp(q, k, v, do, lse_ref[qs], delta_ref[qs], bias_k, rows, cols)
    dv = dv + plgpu.dot(p_dropped.astype(do.dtype).T, do)
    dk = dk + plgpu.dot(ds.astype(q.dtype).T, q)
    return dv, dk

  zeros = jnp.zeros((block, padded), jnp.float32)
  dv, dk = lax.fori_loop(0, pl.cdiv(length, block), dkdv, (zeros, zeros))
  plgpu.store(dv_ref.at[:, :dv.shape[-1]], dv.astype(dv_ref.dtype), mask=head_mask)
  plgpu.store(dk_ref.at[:, :dk.shape[-1]], dk.astype(dk_ref.dtype), mask=head_mask)

  # dQ of this block of queries: a loop over blocks of keys.
  qs = pl.dslice(start * block, block)
  rows = start * block + jnp.arange(block)
  q = plgpu.load(q_ref.at[qs, :], mask=head_mask, other=0.0)
  do = plgpu.load(do_ref.at[qs, :], mask=head_mask, other=0.0)
  lse, di = lse_ref[qs], delta_ref[qs]

  def dq_body(start_k, dq):
    ks = pl.dslice(start_k * block, block)
    k = plgpu.load(k_ref.at[ks, :], mask=head_mask, other=0.0)
    v = plgpu.load(v_ref.at[ks, :], mask=head_mask, other=0.0)
    cols = start_k * block + jnp.arange(block)
    _, ds = probs_and_dp(q, k, v, do, lse, di, bias_ref[ks], rows, cols)
    return dq + plgpu.dot(ds.astype(k.dtype), k)

  dq = lax.fori_loop(0, pl.cdiv(length, block), dq_body, zeros)
  plgpu.store(dq_ref.at[:, :dq.shape[-1]], dq.astype(dq_ref.dtype), mask=head_mask)


def _forward(q, k, v, bias, seed, rate, blocks, interpret):
  batch, length, num_heads, head_dim = q.shape
  padded = pl.next_power_of_2(head_dim)
  b = blocks.fit(length)
  kernel = functools.partial(_fwd_kernel, scale=1.0 / math.sqrt(head_dim), rate=rate,
                             block_q=b.fwd_q, block_k=b.fwd_k, head_dim=head_dim,
                             num_heads=num_heads)
  whole = pl.BlockSpec((None, length, None, padded), lambda _, j, h: (j, 0, h, 0))
  out, lse = pl.pallas_call(
      kernel,
      grid=(pl.cdiv(length, b.fwd_q), batch, num_heads),
      in_specs=[pl.BlockSpec((None, b.fwd_q, None, padded), lambda i, j, h: (j, i, h, 0)),
                whole, whole,
                pl.BlockSpec((None, length), lambda _, j, h: (j, 0)),
                pl.BlockSpec((2,), lambda *_: (0,))],
      out_specs=[pl.BlockSpec((None, b.fwd_q, None, padded), lambda i, j, h: (j, i, h, 0)),
                 pl.BlockSpec((None, None, b.fwd_q), lambda i, j, h: (j, h, i))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((batch, num_heads, length), jnp.float32)],
      compiler_params=plgpu.CompilerParams(num_warps=4 if head_dim <= 64 else 8,
                                           num_stages=2),
      interpret=interpret,
      name="genemask_flash_fwd",
  )(q, k, v, bias, seed)
  return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _flash(q, k, v, bias, seed, rate, blocks, interpret):
  return _forward(q, k, v, bias, seed, rate, blocks, interpret)[0]


def _flash_fwd(q, k, v, bias, seed, rate, blocks, interpret):
  out, lse = _forward(q, k, v, bias, seed, rate, blocks, interpret)
  return out, (q, k, v, bias, seed, out, lse)


def _flash_bwd(rate, blocks, interpret, res, d_out):
  q, k, v, bias, seed, out, lse = res
  batch, length, num_heads, head_dim = q.shape
  padded = pl.next_power_of_2(head_dim)
  block = blocks.fit(length).bwd
  # rowsum(dO * O) per (b, n, query): (B, N, L) float32, as the lse.
  delta = jnp.einsum("blnd,blnd->bnl", d_out.astype(jnp.float32), out.astype(jnp.float32))
  kernel = functools.partial(_bwd_kernel, scale=1.0 / math.sqrt(head_dim), rate=rate,
                             block=block, head_dim=head_dim, num_heads=num_heads)
  whole = pl.BlockSpec((None, length, None, padded), lambda i, j, _: (i, 0, j, 0))
  row = pl.BlockSpec((None, None, length), lambda i, j, _: (i, j, 0))
  tile = pl.BlockSpec((None, block, None, padded), lambda i, j, t: (i, t, j, 0))
  dq, dk, dv = pl.pallas_call(
      kernel,
      grid=(batch, num_heads, pl.cdiv(length, block)),
      in_specs=[whole, whole, whole, pl.BlockSpec((None, length), lambda i, j, _: (i, 0)),
                pl.BlockSpec((2,), lambda *_: (0,)), whole, row, row],
      out_specs=[tile, tile, tile],
      out_shape=[jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v)],
      compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
      interpret=interpret,
      name="genemask_flash_bwd",
  )(q, k, v, bias, seed, d_out.astype(q.dtype), lse, delta)
  return dq, dk, dv, jnp.zeros_like(bias), None


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array, *,
                    dropout_rate: float = 0.0, seed: jax.Array | None = None,
                    blocks: Blocks = Blocks(), interpret: bool = False) -> jax.Array:
  """Softmax self-attention in one fused kernel per pass, dropout as ``keep_mask``.

  Args:
    q, k, v: (B, L, N, D) queries, keys and values (bfloat16 on a GPU; any float type in
      interpret mode). L must be a multiple of the block sizes (see ``supported``).
    key_mask: (B, L) bool, True for keys that may be attended to.
    dropout_rate: dropout on the attention probabilities (HF semantics); needs ``seed``.
    seed: (2,) uint32 from ``attention.dropout_seed``.
    blocks: tile sizes.
    interpret: run the kernels with the Pallas interpreter (any backend; slow).

  Returns:
    (B, L, N, D) in q's dtype.
  """
  if dropout_rate > 0.0 and seed is None:
    raise ValueError("flash_attention: dropout_rate > 0 needs a seed")
  if not supported(q.shape[1], k.shape[1], q.shape[-1], blocks):
    raise ValueError(f"flash_attention: query/key lengths {q.shape[1]}/{k.shape[1]} and head "
                     f"dim {q.shape[-1]} do not fit the kernel's tiles {blocks}")
  if seed is None:
    seed = jnp.zeros((2,), jnp.uint32)
  bias = jnp.where(key_mask, 0.0, jnp.finfo(jnp.float32).min / 2).astype(jnp.float32)
  return _flash(q, k, v, bias, seed.astype(jnp.uint32), float(dropout_rate), blocks,
                bool(interpret))
