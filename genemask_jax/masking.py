"""On-device masked-language-model masking: GeneMask spans, DNABERT spans and BERT tokens.

Everything here is pure JAX with static shapes: one sequence is written plainly and
``vmap``-ped over the batch, so the masking runs inside a jit-compiled train step with no
host round trip. The masks are a deterministic function of ``(key, ids)``. The train step
(`genemask_jax.train_step`) folds its step into the run's key and splits off the masking
key, so a run's masks are a function of (seed, step, ids); :func:`step_key` is the fold
for callers that mask outside a train step.

Token layout (the tokenizer's): ``[CLS] k-mer ... k-mer [SEP] [PAD] ...``. The eligible
positions are the k-mer positions: every id that is ``[UNK]`` or a k-mer (``[PAD]``,
``[CLS]``, ``[SEP]``, ``[MASK]`` and ids outside the vocabulary are never masked).

GeneMask (Roy et al. 2023, the authors' released code with its quirks behind flags):

1. Centres: each eligible position independently with probability ``p`` (0.0176).
2. Each centre ``c`` masks the DNABERT window ``{c-2, ..., c+3}`` (eligible positions
   only). Its best token ``b`` is the window position with the lowest NPMI rank (1 = best);
   ties go to ``c`` when ``c`` is among the minima, else to the first by position.
3. With ``m`` centres: if ``m <= few_threshold`` (8) and ``all_high_if_few`` every centre is
   "high"; otherwise the ``ceil(m / 2)`` centres with the best rank at ``b`` are high (ties
   broken by position).
4. A high centre also masks ``[b - 5, b + 5]``; all spans are unioned.
5. BERT's replacement: of the masked positions 80% become ``[MASK]``, 10% a random token
   (a random k-mer by default, or any vocabulary entry with ``random_over="vocab"`` as in the
   released code) and 10% keep their token. Labels hold the original ids where masked and
   -100 elsewhere.

``rank_source="content"`` (default) ranks the token at a position; ``"position"`` reproduces
the released code, which looks up the rank of the vocabulary entry whose id equals the
position. ``specials_rank_zero=True`` adds the released code's ``defaultdict(int)`` table:
the special ids 0-4 have no NPMI entry and so rank 0, better than every k-mer (rank >= 1).
With ``"position"`` this makes positions 1-4 the best token of any window holding them; with
``"content"`` it only touches ``[UNK]`` tokens. ``rank_source="position",
specials_rank_zero=True, random_over="vocab"`` (the ``:position`` config preset) is the
authors' repository HEAD; their first public release (July 2023) also placed every
11-token span on the last centre, which no option here reproduces. Baselines with the same interface: ``"dnabert"`` (centres with p = 0.025, each
masking its 6-token window) and ``"bert"`` (each token independently with p = 0.15).

Randomness: one 32-bit word per position gives two 16-bit uniforms (centre and 80/10/10
choice) and half a word per position gives the random replacement token, so probabilities
are applied with 16-bit resolution (``p`` is used as ``round(p * 65536) / 65536``, e.g.
0.017593 for 0.0176) and a random token over ``n`` candidates is ``floor(u16 * n / 65536)``,
exactly uniform over the 4^k k-mers; over the 4101-entry ``"vocab"`` each id gets 15 or 16
of the 65536 values (at most 7% relative non-uniformity).

Fixed-size outputs for a loss over the masked positions only (google-research/bert's
``masked_lm_positions / ids / weights``): ``P = max_predictions`` slots, the used ones first
in position order. When a sequence has more than ``P`` masked positions, a uniformly random
subset of ``P`` of them fills the slots (each masked position is kept with probability
``P / n``, whatever its position); ``num_masked`` still counts all of them, and the dense
``masked_ids`` / ``labels`` keep all of them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from genemask_jax.tokenizer import IGNORE_LABEL
from genemask_jax.tokenizer import MASK_ID
from genemask_jax.tokenizer import NUM_SPECIAL
from genemask_jax.tokenizer import UNK_ID

STRATEGIES = ("genemask", "dnabert", "bert")

_COMMON_DEFAULTS = {"random_over": "kmers", "mask_prob": 0.8, "random_prob": 0.1}
_SPAN_DEFAULTS = {"span_before": 2, "span_after": 3}
DEFAULTS: dict[str, dict[str, Any]] = {
    "genemask": {
        "p": 0.0176, "rank_source": "content", "specials_rank_zero": False,
        "all_high_if_few": True, "few_threshold": 8, "high_radius": 5, **_SPAN_DEFAULTS, **_COMMON_DEFAULTS},
    "dnabert": {"p": 0.025, **_SPAN_DEFAULTS, **_COMMON_DEFAULTS},
    "bert": {"p": 0.15, **_COMMON_DEFAULTS},
}
_U16 = 1 << 16


class MaskedBatch(NamedTuple):
  """Masked inputs and MLM targets for a batch of B sequences of length L.

  Attributes:
    masked_ids: (B, L) int32, the input after 80/10/10 replacement.
    labels: (B, L) int32, the original id where masked, -100 elsewhere.
    masked_lm_positions: (B, P) int32 positions of the predicted tokens, used slots first in
      position order, 0 in unused slots.
    masked_lm_ids: (B, P) int32 original ids at those positions (0 where unused).
    masked_lm_weights: (B, P) float32, 1.0 for used slots, 0.0 otherwise.
    num_masked: (B,) int32 masked positions per row before truncation to P.
  """
  masked_ids: jax.Array
  labels: jax.Array
  masked_lm_positions: jax.Array
  masked_lm_ids: jax.Array
  masked_lm_weights: jax.Array
  num_masked: jax.Array


@dataclasses.dataclass(frozen=True)
class _Config:
  """Validated, hashable masking options (a static argument of the jit'd functions)."""
  strategy: str
  p: float
  random_over: str
  mask_prob: float
  random_prob: float
  rank_source: str = "content"
  specials_rank_zero: bool = False
  all_high_if_few: bool = True
  few_threshold: int = 8
  span_before: int = 2
  span_after: int = 3
  high_radius: int = 5


def _resolve(strategy: str, options: dict[str, Any]) -> _Config:
  """Merges the strategy's defaults with `options` and validates them (host side)."""
  if strategy not in DEFAULTS:
    raise ValueError(f"unknown masking strategy {strategy!r}; expected one of {STRATEGIES}")
  defaults = DEFAULTS[strategy]
  unknown = sorted(set(options) - set(defaults))
  if unknown:
    raise ValueError(
        f"unknown option(s) {unknown} for strategy {strategy!r}; it takes {sorted(defaults)}")
  opts = {**defaults, **options}
  p = opts["p"]
  if not isinstance(p, (float, int, np.floating)) or not 0.0 < float(p) < 1.0:
    raise ValueError(f"option p must be a number in (0, 1), got {p!r}")
  if round(float(p) * _U16) == 0:
    raise ValueError(f"option p={p!r} is below the 16-bit resolution 2**-17 of the sampler")
  for name in ("mask_prob", "random_prob"):
    v = opts[name]
    if not isinstance(v, (float, int, np.floating)) or not 0.0 <= float(v) <= 1.0:
      raise ValueError(f"option {name} must be a number in [0, 1], got {v!r}")
  if float(opts["mask_prob"]) + float(opts["random_prob"]) > 1.0 + 1e-9:
    raise ValueError(
        f"mask_prob + random_prob must be at most 1, got {opts['mask_prob']} + "
        f"{opts['random_prob']}")
  if opts["random_over"] not in ("kmers", "vocab"):
    raise ValueError(f"option random_over must be 'kmers' or 'vocab', got {opts['random_over']!r}")
  if opts.get("rank_source", "content") not in ("content", "position"):
    raise ValueError(
        f"option rank_source must be 'content' or 'position', got {opts['rank_source']!r}")
  for name in ("span_before", "span_after", "high_radius", "few_threshold"):
    if name in opts:
      v = opts[name]
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise ValueError(f"option {name} must be a non-negative integer, got {v!r}")
  for name in ("all_high_if_few", "specials_rank_zero"):
    if name in opts and not isinstance(opts[name], (bool, np.bool_)):
      raise ValueError(f"option {name} must be a bool, got {opts[name]!r}")
  opts = {k: (float(v) if k in ("p", "mask_prob", "random_prob") else
              bool(v) if k in ("all_high_if_few", "specials_rank_zero") else
              int(v) if isinstance(v, (int, np.integer)) else v)
          for k, v in opts.items()}
  return _Config(strategy=strategy, **opts)


def _kmer_count(vocab: int) -> int:
  """4**k for a vocabulary of 4**k + NUM_SPECIAL entries; ValueError otherwise."""
  n = vocab - NUM_SPECIAL
  if n < 4 or 4 ** round(math.log(n, 4)) != n:
    raise ValueError(
        f"npmi_rank must have one entry per vocabulary id, 4**k + {NUM_SPECIAL} entries "
        f"(4101 for k=6), got {vocab}")
  return n


def _check_shapes(ids: Any, npmi_rank: Any, cfg: _Config, max_predictions: int | None) -> int:
  """Trace-time checks of shapes and dtypes; returns P."""
  if jnp.ndim(npmi_rank) != 1:
    raise ValueError(f"npmi_rank must be a 1-D (vocab,) lookup, got shape {jnp.shape(npmi_rank)}")
  vocab = jnp.shape(npmi_rank)[0]
  _kmer_count(vocab)
  if not jnp.issubdtype(jnp.result_type(npmi_rank), jnp.integer):
    raise ValueError(f"npmi_rank must hold integer ranks, got dtype {jnp.result_type(npmi_rank)}")
  if jnp.ndim(ids) != 2:
    raise ValueError(f"ids must be (batch, length), got shape {jnp.shape(ids)}")
  if not jnp.issubdtype(jnp.result_type(ids), jnp.integer):
    raise ValueError(f"ids must be integer token ids, got dtype {jnp.result_type(ids)}")
  length = jnp.shape(ids)[1]
  if length < 1:
    raise ValueError("ids must have at least one position")
  if cfg.rank_source == "position" and length > vocab:
    raise ValueError(
        f"rank_source='position' looks the rank up by position, so the length {length} "
        f"must be at most the vocabulary size {vocab}")
  if max_predictions is None:
    return length
  if (isinstance(max_predictions, bool) or not isinstance(max_predictions, (int, np.integer))
      or not 1 <= max_predictions <= length):
    raise ValueError(
        f"max_predictions must be an integer in [1, {length}], got {max_predictions!r}")
  return int(max_predictions)


def check_ids(ids: np.ndarray | jax.Array, vocab: int) -> None:
  """Host-side check that every id is in [0, vocab); ValueError naming the first bad one.

  Inside ``jit`` the id values cannot be inspected: ids outside the vocabulary are then
  treated as ineligible (never masked) rather than raising. Call this on host batches.
  """
  a = np.asarray(ids)
  bad = np.argwhere((a < 0) | (a >= vocab))
  if bad.size:
    where = tuple(int(i) for i in bad[0])
    raise ValueError(
        f"ids{list(where)} = {int(a[where])} is outside the vocabulary [0, {vocab}); "
        f"{len(bad)} id(s) out of range")


def check_rank(npmi_rank: np.ndarray | jax.Array) -> None:
  """Host-side check of a (vocab,) rank lookup: length 4**k + 5, ranks in [1, vocab]."""
  a = np.asarray(npmi_rank)
  if a.ndim != 1:
    raise ValueError(f"npmi_rank must be a 1-D (vocab,) lookup, got shape {a.shape}")
  _kmer_count(a.shape[0])
  if not np.issubdtype(a.dtype, np.integer):
    raise ValueError(f"npmi_rank must hold integer ranks, got dtype {a.dtype}")
  bad = np.flatnonzero((a < 1) | (a > a.shape[0]))
  if bad.size:
    raise ValueError(
        f"npmi_rank[{bad[0]}] = {a[bad[0]]} is outside [1, {a.shape[0]}] (1 = best rank)")


def step_key(key: jax.Array, step: int | jax.Array) -> jax.Array:
  """The masking key for a train step: ``fold_in(key, step)`` (jit-safe)."""
  return jax.random.fold_in(key, step)


def _eligible(ids: jax.Array, vocab: int) -> jax.Array:
  """Bool mask of k-mer positions: [UNK] or a k-mer id (never PAD/CLS/SEP/MASK)."""
  return (ids == UNK_ID) | ((ids >= NUM_SPECIAL) & (ids < vocab))


def _window_any(x: jax.Array, before: int, after: int) -> jax.Array:
  """out[j] = any(x[j - after : j + before + 1]) for an int (L,) 0/1 array: union of the
  windows [c - before, c + after] of every set position c."""
  return lax.reduce_window(x, 0, lax.max, (before + after + 1,), (1,), ((after, before),)) > 0


def _kth_smallest(keys: jax.Array, k: jax.Array, bits: int) -> jax.Array:
  """The k-th smallest (k >= 1) of non-negative int keys < 2**bits, by bisection on value.

  O(bits * L) compares with no sort (sorting or top_k of the whole row is several times
  slower on CPU). Entries that are not candidates carry keys >= 2**bits.
  """
  def body(_, lohi):
    lo, hi = lohi
    mid = lo + (hi - lo) // 2
    enough = jnp.sum(keys <= mid) >= k
    return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)
  lo, _ = lax.fori_loop(0, bits, body, (jnp.int32(0), jnp.int32((1 << bits) - 1)))
  return lo


def _span_mask(ids: jax.Array, npmi_rank: jax.Array, centres: jax.Array, cfg: _Config,
               slots: int | None = None) -> jax.Array:
  """Masked positions of one (L,) sequence for the given centres; see spans_from_centres.

  The high centres are chosen among the centres only: with `slots` = K, the centres are
  packed into K slots and ranked pairwise (K*K compares; exact only when there are at most
  K centres, which _spans_batch checks); with None, by bisection over the whole row (exact
  for any number of centres, several times slower).
  """
  length = ids.shape[0]
  vocab = npmi_rank.shape[0]
  eligible = _eligible(ids, vocab)
  centres = centres.astype(bool) & eligible
  if cfg.strategy == "bert":
    return centres
  before, after = cfg.span_before, cfg.span_after
  centre_int = centres.astype(jnp.int32)
  window = _window_any(centre_int, before, after) & eligible
  if cfg.strategy == "dnabert":
    return window

  # Best token of each window: the minimum of key = rank << shift | position, so ties go to
  # the first position; the centre itself wins any tie it is part of.
  shift = max(1, (length - 1).bit_length())
  worst = vocab + 1  # ineligible positions never win a window
  bits = (worst << shift).bit_length()
  if bits > 30:
    raise ValueError(f"sequence length {length} too long for int32 rank keys")
  looked_up = jnp.clip(ids, 0, vocab - 1) if cfg.rank_source == "content" else lax.iota(
      jnp.int32, length)
  rank = jnp.clip(npmi_rank[looked_up], 1, vocab)
  if cfg.specials_rank_zero:  # The released code's defaultdict(int): no entry = rank 0.
    rank = jnp.where(looked_up < NUM_SPECIAL, 0, rank)
  rank = jnp.where(eligible, rank, worst).astype(jnp.int32)
  pos = lax.iota(jnp.int32, length)
  key = (rank << shift) | pos
  win_min = lax.reduce_window(key, jnp.int32(2**31 - 1), lax.min, (before + after + 1,), (1,),
                              ((before, after),))
  best_rank = win_min >> shift
  best = jnp.where(rank == best_rank, pos, win_min & ((1 << shift) - 1))

  # High centres: the ceil(m/2) centres with the smallest (best rank, position) key.
  num = jnp.sum(centre_int)
  need = (num + 1) // 2
  none = 1 << bits
  centre_key = jnp.where(centres, (best_rank << shift) | pos, none)
  if slots is None:
    high = centres & (centre_key <= _kth_smallest(centre_key, need, bits))
    if cfg.all_high_if_few:
      high = jnp.where(num <= cfg.few_threshold, centres, high)
    marks_at = jnp.where(high, best, length)
  else:
    slot = jnp.where(centres, lax.associative_scan(jnp.add, centre_int) - 1, slots)
    slot_key = jnp.full(slots, none, jnp.int32).at[slot].set(centre_key, mode="drop")
    slot_best = jnp.zeros(slots, jnp.int32).at[slot].set(best, mode="drop")
    used = slot_key < none
    better = jnp.sum(slot_key[None, :] < slot_key[:, None], axis=1)
    high = used & (better < need)
    if cfg.all_high_if_few:
      high = jnp.where(num <= cfg.few_threshold, used, high)
    marks_at = jnp.where(high, slot_best, length)
  best_marks = jnp.zeros(length, jnp.int32).at[marks_at].set(1, mode="drop")
  r = cfg.high_radius
  return window | (_window_any(best_marks, r, r) & eligible)


def _centre_slots(length: int, p: float) -> int:
  """Centre slots for the fast path: ~mean + 6 sd + 8 centres, a multiple of 8, <= L."""
  mean = length * p
  return min(length, 8 * math.ceil((mean + 6 * math.sqrt(mean) + 8) / 8))


def _spans_batch(ids: jax.Array, npmi_rank: jax.Array, centres: jax.Array,
                 cfg: _Config) -> jax.Array:
  """(B, L) bool masked positions: _span_mask vmapped, on the K-slot path when every row
  has at most K centres (practically always at the default p), else by bisection."""
  span = lambda slots: jax.vmap(lambda i, c: _span_mask(i, npmi_rank, c, cfg, slots))
  if cfg.strategy != "genemask":
    return span(None)(ids, centres)
  slots = _centre_slots(ids.shape[1], cfg.p)
  num = jnp.sum(centres & _eligible(ids, npmi_rank.shape[0]), axis=1)
  return lax.cond(jnp.max(num) <= slots, span(slots), span(None), ids, centres)


_spans_jit = jax.jit(_spans_batch, static_argnums=(3,))


def spans_from_centres(ids: jax.Array, npmi_rank: jax.Array, centres: jax.Array,
                       strategy: str = "genemask", **options: Any) -> jax.Array:
  """The masked positions given the centres explicitly (no randomness).

  This is the deterministic core of :func:`mask_batch` (the same code path), exposed so
  that masks can be checked against a reference for the same centres, or computed for
  analysis.

  Args:
    ids: (L,) or (B, L) int token ids in the tokenizer's layout.
    npmi_rank: (vocab,) int rank lookup, 1 = best.
    centres: bool, the shape of `ids`: the centre positions (ineligible positions are
      ignored); for "bert" the masked tokens themselves.
    strategy: "genemask", "dnabert" or "bert".
    **options: the strategy's options (see DEFAULTS); p and the replacement options are
      accepted (p sizes the fast path's centre slots) and otherwise unused.

  Returns:
    bool, the shape of `ids`, True where masked.
  """
  cfg = _resolve(strategy, options)
  if jnp.ndim(ids) not in (1, 2) or jnp.shape(centres) != jnp.shape(ids):
    raise ValueError(
        f"ids and centres must both be (L,) or (B, L), got {jnp.shape(ids)} and "
        f"{jnp.shape(centres)}")
  batch_ids = jnp.reshape(jnp.asarray(ids, jnp.int32), (-1, jnp.shape(ids)[-1]))
  _check_shapes(batch_ids, npmi_rank, cfg, None)
  out = _spans_jit(batch_ids, jnp.asarray(npmi_rank, jnp.int32),
                   jnp.reshape(jnp.asarray(centres, bool), batch_ids.shape), cfg)
  return jnp.reshape(out, jnp.shape(ids))


def _compact(keep: jax.Array, ids: jax.Array, num_slots: int) -> tuple[jax.Array, jax.Array]:
  """Positions and ids of the kept entries of one (L,) row in P slots, in position order."""
  slot = lax.associative_scan(jnp.add, keep.astype(jnp.int32)) - 1
  slot = jnp.where(keep, slot, num_slots)
  pos = lax.iota(jnp.int32, keep.shape[0])
  positions = jnp.zeros(num_slots, jnp.int32).at[slot].set(pos, mode="drop")
  kept_ids = jnp.zeros(num_slots, jnp.int32).at[slot].set(ids, mode="drop")
  return positions, kept_ids


def _random_subset(key: jax.Array, masked: jax.Array, num_slots: int) -> jax.Array:
  """A uniformly random subset of num_slots of each row's masked positions (all of them
  where there are fewer): the entries with the num_slots largest 30-bit random priorities."""
  prio = (jax.random.bits(key, masked.shape, jnp.uint32) >> 2).astype(jnp.int32)
  prio = jnp.where(masked, prio, -1)

  def row(prio_row, masked_row):
    # The num_slots-th largest priority is the (n - num_slots + 1)-th smallest of the n
    # masked ones; non-masked rows entries get a key above every candidate.
    n = jnp.sum(masked_row)
    keys = jnp.where(masked_row, prio_row, jnp.int32(2**30))
    thr = _kth_smallest(keys, jnp.maximum(n - num_slots + 1, 1), 30)
    return masked_row & (prio_row >= thr)

  return jax.vmap(row)(prio, masked)


def _mask_impl(key: jax.Array, ids: jax.Array, npmi_rank: jax.Array, cfg: _Config,
               num_slots: int) -> MaskedBatch:
  """Traceable body of mask_batch; shapes already checked."""
  ids = ids.astype(jnp.int32)
  npmi_rank = npmi_rank.astype(jnp.int32)
  batch, length = ids.shape
  vocab = npmi_rank.shape[0]
  draw_key, subset_key = jax.random.split(key)

  # Random bits: word j of a row gives the centre (high half) and 80/10/10 (low half)
  # uniforms of position j; the extra ceil(L/2) words give two replacement-token uniforms.
  half = (length + 1) // 2
  words = jax.random.bits(draw_key, (batch, length + half), jnp.uint32)
  main, extra = words[:, :length], words[:, length:]
  u_centre = main >> 16
  u_choice = main & 0xFFFF
  u_token = jnp.concatenate([extra >> 16, extra & 0xFFFF], axis=1)[:, :length]

  centres = u_centre < round(cfg.p * _U16)
  masked = _spans_batch(ids, npmi_rank, centres, cfg)

  if cfg.random_over == "kmers":
    random_ids = NUM_SPECIAL + ((u_token * (vocab - NUM_SPECIAL)) >> 16)
  else:
    random_ids = (u_token * vocab) >> 16
  mask_cut = round(cfg.mask_prob * _U16)
  random_cut = round((cfg.mask_prob + cfg.random_prob) * _U16)
  replaced = jnp.where(u_choice < mask_cut, MASK_ID,
                       jnp.where(u_choice < random_cut, random_ids.astype(jnp.int32), ids))
  masked_ids = jnp.where(masked, replaced, ids)
  labels = jnp.where(masked, ids, IGNORE_LABEL)
  num_masked = jnp.sum(masked, axis=1, dtype=jnp.int32)

  if num_slots < length:
    keep = lax.cond(jnp.any(num_masked > num_slots),
                    lambda: _random_subset(subset_key, masked, num_slots), lambda: masked)
  else:
    keep = masked
  positions, lm_ids = jax.vmap(lambda k, i: _compact(k, i, num_slots))(keep, ids)
  weights = (lax.iota(jnp.int32, num_slots)[None, :]
             < jnp.minimum(num_masked, num_slots)[:, None]).astype(jnp.float32)
  return MaskedBatch(masked_ids, labels, positions, lm_ids, weights, num_masked)


_mask_jit = jax.jit(_mask_impl, static_argnums=(3, 4))


def _is_concrete_host(x: Any) -> bool:
  return isinstance(x, np.ndarray)


def mask_batch(key: jax.Array, ids: jax.Array, npmi_rank: jax.Array,
               strategy: str = "genemask", *, max_predictions: int | None = None,
               **options: Any) -> MaskedBatch:
  """Masks a batch of token ids for MLM pretraining (jit-compiled; also traceable in jit).

  Args:
    key: a PRNG key; the masks are a function of (key, ids). Use ``step_key(key, step)``.
    ids: (B, L) int token ids, ``[CLS] k-mers [SEP] [PAD]...``.
    npmi_rank: (vocab,) int rank lookup, 1 = best; vocab = 4**k + 5 (4101 for k = 6).
    strategy: "genemask" (default), "dnabert" or "bert".
    max_predictions: P, the number of fixed-size prediction slots; None means P = L.
    **options: overrides of the strategy's DEFAULTS: p, rank_source ("content" |
      "position"), specials_rank_zero, all_high_if_few, few_threshold, span_before, span_after, high_radius,
      random_over ("kmers" | "vocab"), mask_prob, random_prob.

  Returns:
    A MaskedBatch (see its docstring for shapes).

  Raises:
    ValueError: at trace time, for an unknown strategy or option, p outside (0, 1), a lookup
      of the wrong length, badly shaped ids; for ids outside the vocabulary when `ids` is a
      host numpy array (inside jit they cannot be inspected and are never masked).
  """
  cfg = _resolve(strategy, options)
  num_slots = _check_shapes(ids, npmi_rank, cfg, max_predictions)
  if _is_concrete_host(ids):
    check_ids(ids, jnp.shape(npmi_rank)[0])
  if _is_concrete_host(npmi_rank):
    check_rank(npmi_rank)
  return _mask_jit(key, jnp.asarray(ids), jnp.asarray(npmi_rank), cfg, num_slots)


def make_mask_fn(npmi_rank: np.ndarray | jax.Array, strategy: str = "genemask",
                 max_predictions: int | None = None,
                 **options: Any) -> Callable[[jax.Array, jax.Array], MaskedBatch]:
  """A masking function (key, ids) -> MaskedBatch to call inside a jit'd train step.

  Options are validated and the rank lookup checked (host side) once, here; shapes are
  checked when the returned function is traced. Call it with a key that depends on the
  step (`train_step.make_mlm_train_step` passes one split from ``fold_in(key, step)``) so
  that the masks change from step to step.

  Args:
    npmi_rank: (vocab,) int rank lookup, 1 = best.
    strategy: "genemask", "dnabert" or "bert".
    max_predictions: P (None: P = L).
    **options: as for mask_batch.
  """
  cfg = _resolve(strategy, options)
  check_rank(npmi_rank)
  rank = jnp.asarray(npmi_rank, jnp.int32)

  def mask_fn(key: jax.Array, ids: jax.Array) -> MaskedBatch:
    num_slots = _check_shapes(ids, rank, cfg, max_predictions)
    if _is_concrete_host(ids):
      check_ids(ids, rank.shape[0])
    return _mask_jit(key, jnp.asarray(ids), rank, cfg, num_slots)

  return mask_fn
