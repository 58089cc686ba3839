"""Tests of genemask_jax.masking: identity with the plain-Python port for the same centres,
masking statistics, the real-genome NPMI shift, fixed-size outputs and bad input.

Compiling the masking program is most of this file's time on any backend (more so on a
GPU), so tests that can share one call ``make_mask_fn``'s function directly, without a
``jax.jit`` of their own: the module-level jit then reuses one executable per
(strategy, options, slots, shape) across tests, with the lookup as an argument.
"""

import gzip
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genemask_jax import masking
from genemask_jax import npmi
from genemask_jax import tokenizer
import fixture_scope  # tests/ is on sys.path (rootdir-relative test modules).
import masking_oracle as oracle

VOCAB = tokenizer.vocab_size(6)


def _random_rank(rng, ties=False):
  """A (vocab,) rank lookup: a permutation of 1..4096 on the k-mers, or few distinct
  values (many ties); specials get the worst rank."""
  rank = np.full(VOCAB, VOCAB, np.int32)
  n = VOCAB - tokenizer.NUM_SPECIAL
  rank[tokenizer.NUM_SPECIAL:] = (rng.integers(1, 6, n) if ties else rng.permutation(n) + 1)
  return rank


def _random_ids(rng, batch, length, full=False):
  """(batch, length) ids, [CLS] k-mers [SEP] [PAD]..., with repeated tokens and [UNK]s."""
  ids = np.zeros((batch, length), np.int32)
  for row in range(batch):
    n = length - 2 if full else int(rng.integers(1, length - 1))
    alphabet = rng.integers(tokenizer.NUM_SPECIAL, VOCAB, int(rng.choice([3, 30, 4096])))
    kmers = rng.choice(alphabet, n)
    kmers[rng.random(n) < 0.02] = tokenizer.UNK_ID
    ids[row, 0] = tokenizer.CLS_ID
    ids[row, 1:n + 1] = kmers
    ids[row, n + 1] = tokenizer.SEP_ID
  return ids


def _kmer_batch(rng, batch, kmers=506, length=512):
  ids = np.zeros((batch, length), np.int32)
  ids[:, 0] = tokenizer.CLS_ID
  ids[:, 1:kmers + 1] = rng.integers(tokenizer.NUM_SPECIAL, VOCAB, (batch, kmers))
  ids[:, kmers + 1] = tokenizer.SEP_ID
  return ids


_GM_POSITION = {"rank_source": "position"}
_GM_ALL_RANKED = {"all_high_if_few": False}
_GM_POSITION_FEW3 = {"rank_source": "position", "all_high_if_few": False, "few_threshold": 3}


@pytest.mark.parametrize("strategy,options,length,full", [
    ("genemask", {}, 64, False),
    ("genemask", _GM_POSITION, 64, False),
    ("genemask", _GM_ALL_RANKED, 64, False),
    ("genemask", _GM_POSITION_FEW3, 64, False),
    ("dnabert", {}, 64, False),
    ("bert", {}, 64, False),
    ("genemask", {}, 512, True),
    ("genemask", _GM_POSITION, 512, True),
    ("genemask", _GM_ALL_RANKED, 512, False),
])
def test_identical_to_python_port_for_same_centres(strategy, options, length, full):
  rng = np.random.default_rng(zlib.crc32(repr((strategy, options, length)).encode()))
  batches = 120 if length == 64 else 30
  slots = masking._centre_slots(length, masking.DEFAULTS[strategy]["p"])
  paths = set()
  for b in range(batches):
    ids = _random_ids(rng, 8, length, full=full)
    rank = _random_rank(rng, ties=b % 2 == 1)
    density = rng.choice([0.005, 0.02, 0.06, 0.2, 0.6] if length == 64 else [0.0176, 0.06, 0.3])
    centres = rng.random(ids.shape) < density
    got = np.asarray(masking.spans_from_centres(ids, rank, centres, strategy, **options))
    per_row = (centres & np.asarray(oracle.eligible(ids.ravel().tolist(), VOCAB)).reshape(
        ids.shape)).sum(1)
    paths.add(bool(per_row.max() <= slots))
    for row in range(ids.shape[0]):
      want = oracle.spans_from_centres(ids[row].tolist(), rank.tolist(), centres[row].tolist(),
                                       strategy, **options)
      np.testing.assert_array_equal(got[row], want, err_msg=f"batch {b} row {row}")
  if strategy == "genemask":
    assert paths == {True, False}  # Both the centre-slot and the bisection paths ran.


def test_single_sequence_same_as_batch():
  rng = np.random.default_rng(1)
  ids, rank = _random_ids(rng, 4, 64), _random_rank(rng)
  centres = rng.random(ids.shape) < 0.1
  batch = np.asarray(masking.spans_from_centres(ids, rank, centres))
  for row in range(4):
    np.testing.assert_array_equal(masking.spans_from_centres(ids[row], rank, centres[row]),
                                  batch[row])


@pytest.fixture(scope=fixture_scope.module_unless_mutmut)
def stats_batches():
  """Masked 506-k-mer sequences, 512 per strategy, one compiled shape (256, 512)."""
  rng = np.random.default_rng(2)
  rank = _random_rank(rng)
  ids = _kmer_batch(rng, 256)
  out = {}
  for strategy in ("genemask", "dnabert", "bert"):
    fn = masking.make_mask_fn(rank, strategy)
    out[strategy] = [
        jax.tree.map(np.asarray, fn(masking.step_key(jax.random.key(3), s), ids))
        for s in range(2)]
  return ids, out


@pytest.mark.parametrize("strategy,want", [("genemask", 0.153), ("dnabert", 0.142),
                                           ("bert", 0.15)])
def test_mean_masked_fraction(stats_batches, strategy, want):
  _, out = stats_batches
  frac = np.mean([mb.num_masked.mean() / 506 for mb in out[strategy]])
  assert abs(frac - want) < 0.005, frac


@pytest.mark.parametrize("strategy", ["genemask", "dnabert", "bert"])
def test_specials_never_masked_and_dense_outputs_agree(stats_batches, strategy):
  ids, out = stats_batches
  special = ~((ids >= tokenizer.NUM_SPECIAL) | (ids == tokenizer.UNK_ID))
  for mb in out[strategy]:
    masked = mb.labels != -100
    assert not (masked & special).any()
    np.testing.assert_array_equal(mb.masked_ids[special], ids[special])
    np.testing.assert_array_equal(mb.masked_ids[~masked], ids[~masked])
    np.testing.assert_array_equal(mb.labels[masked], ids[masked])
    np.testing.assert_array_equal(mb.num_masked, masked.sum(1))
    # P = L: every masked position in a slot, in position order.
    for row in range(0, ids.shape[0], 37):
      n = mb.num_masked[row]
      np.testing.assert_array_equal(mb.masked_lm_positions[row, :n], np.flatnonzero(masked[row]))
      np.testing.assert_array_equal(mb.masked_lm_ids[row, :n], ids[row][masked[row]])
      assert (mb.masked_lm_positions[row, n:] == 0).all() and (mb.masked_lm_ids[row, n:] == 0).all()
      np.testing.assert_array_equal(mb.masked_lm_weights[row], np.arange(ids.shape[1]) < n)


def test_replacement_split_80_10_10(stats_batches):
  ids, out = stats_batches
  new = np.concatenate([mb.masked_ids[mb.labels != -100] for mb in out["genemask"]])
  old = np.concatenate([ids[mb.labels != -100] for mb in out["genemask"]])
  assert new.size > 30000
  as_mask = np.mean(new == tokenizer.MASK_ID)
  kept = np.mean(new == old)
  changed = np.mean((new != old) & (new != tokenizer.MASK_ID))
  assert abs(as_mask - 0.8) < 0.01 and abs(kept - 0.1) < 0.01 and abs(changed - 0.1) < 0.01
  # Random replacements are k-mers, spread over the whole k-mer range.
  rand = new[(new != old) & (new != tokenizer.MASK_ID)]
  assert rand.min() >= tokenizer.NUM_SPECIAL and rand.max() < VOCAB
  assert abs(np.mean(rand) - (tokenizer.NUM_SPECIAL + VOCAB - 1) / 2) < 60


def test_random_over_vocab_can_draw_specials():
  rng = np.random.default_rng(4)
  ids = _kmer_batch(rng, 64)
  mb = masking.mask_batch(jax.random.key(0), ids, _random_rank(rng), "bert", p=0.9,
                          mask_prob=0.0, random_prob=1.0, random_over="vocab")
  new = np.asarray(mb.masked_ids)[np.asarray(mb.labels) != -100]
  assert (new < tokenizer.NUM_SPECIAL).any()


def test_deterministic_in_key_step_and_ids_and_jit_safe():
  rng = np.random.default_rng(5)
  rank, ids = _random_rank(rng), _kmer_batch(rng, 256)  # stats_batches' compiled shape
  key = jax.random.key(7)
  fn = masking.make_mask_fn(rank)
  a = masking.mask_batch(masking.step_key(key, 3), ids, rank)
  b = jax.jit(lambda k, s, x: fn(masking.step_key(k, s), x))(key, 3, jnp.asarray(ids))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  c = masking.mask_batch(masking.step_key(key, 4), ids, rank)
  assert not np.array_equal(a.labels, c.labels)


def test_truncation_keeps_uniform_random_subset():
  rng = np.random.default_rng(6)
  rank, ids = _random_rank(rng), _kmer_batch(rng, 256)
  slots = 40
  fn = jax.jit(masking.make_mask_fn(rank, "genemask", max_predictions=slots))
  first_half, second_half = [], []
  for step in range(2):
    mb = jax.tree.map(np.asarray, fn(masking.step_key(jax.random.key(8), step), ids))
    assert mb.masked_lm_positions.shape == (256, slots)
    masked = mb.labels != -100
    np.testing.assert_array_equal(mb.num_masked, masked.sum(1))
    for row in range(256):
      n, used = mb.num_masked[row], int(mb.masked_lm_weights[row].sum())
      assert used == min(n, slots)
      pos = mb.masked_lm_positions[row, :used]
      assert (np.diff(pos) > 0).all() and masked[row, pos].all()
      np.testing.assert_array_equal(mb.masked_lm_ids[row, :used], ids[row, pos])
      assert (mb.masked_lm_weights[row, used:] == 0).all()
      if n > slots:
        all_pos = np.flatnonzero(masked[row])
        half = all_pos[n // 2]
        first_half.append(np.mean(np.isin(all_pos[all_pos < half], pos)))
        second_half.append(np.mean(np.isin(all_pos[all_pos >= half], pos)))
  # Rows over the limit keep each masked position with the same chance, wherever it is.
  assert len(first_half) > 300
  assert abs(np.mean(first_half) - np.mean(second_half)) < 0.02


def _genome_chunks(data_dir, count=300, bp=511):
  """ACGT-only 511-bp chunks from the chr22 blocks (upper-cased), spread over the file."""
  chunks, buf = [], []
  with gzip.open(data_dir / "genome" / "GRCh37_chr22_blocks.fa.gz", "rt") as f:
    for i, line in enumerate(f):
      if line.startswith(">"):
        buf = []
        continue
      if i % 3:  # Take one chunk in every few, so they come from a wider region.
        buf.append(line.strip().upper())
      seq = "".join(buf)
      if len(seq) >= bp:
        if not seq[:bp].strip("ACGT"):
          chunks.append(seq[:bp])
        buf = []
        if len(chunks) == count:
          break
  return chunks


def test_real_genome_genemask_masks_better_ranked_tokens(data_dir):
  lookup = npmi.load_lookup(data_dir / "npmi" / "genemask_grch38_chr1-3_6mer_npmi.csv")
  rank = lookup.rank
  ids = tokenizer.pack([tokenizer.encode(s) for s in _genome_chunks(data_dir, 256)], 512)
  assert ids.shape == (256, 512)  # stats_batches' compiled shape
  means = {}
  for strategy in ("genemask", "dnabert"):
    fn = masking.make_mask_fn(rank, strategy)
    labels = np.concatenate([np.asarray(fn(jax.random.key(s), ids).labels) for s in range(4)])
    means[strategy] = rank[labels[labels != -100]].mean()
  assert means["genemask"] < 0.985 * means["dnabert"], means


@pytest.mark.parametrize("rank_len", [4100, 4096, 4102])
def test_bad_lookup_length(rank_len):
  ids = _kmer_batch(np.random.default_rng(0), 2)
  with pytest.raises(ValueError, match="4101"):
    masking.mask_batch(jax.random.key(0), ids, np.ones(rank_len, np.int32))
  with pytest.raises(ValueError, match="4101"):
    jax.jit(lambda r: masking.mask_batch(jax.random.key(0), ids, r))(jnp.ones(rank_len, jnp.int32))


@pytest.mark.parametrize("strategy,max_predictions", [("genemask", 80), ("bert", 512)])
def test_outputs_have_the_documented_shapes_and_dtypes(strategy, max_predictions):
  rng = np.random.default_rng(4)
  ids = _kmer_batch(rng, 3)
  mb = masking.mask_batch(jax.random.key(1), ids, _random_rank(rng), strategy,
                          max_predictions=max_predictions)
  want = {"masked_ids": ((3, 512), jnp.int32), "labels": ((3, 512), jnp.int32),
          "masked_lm_positions": ((3, max_predictions), jnp.int32),
          "masked_lm_ids": ((3, max_predictions), jnp.int32),
          "masked_lm_weights": ((3, max_predictions), jnp.float32),
          "num_masked": ((3,), jnp.int32)}
  assert {k: (v.shape, v.dtype) for k, v in mb._asdict().items()} == want


@pytest.mark.parametrize("bits", [4, 30])
def test_kth_smallest_is_the_sorted_keys_kth(bits):
  rng = np.random.default_rng(bits)
  top = (1 << bits) - 1
  kth = jax.jit(jax.vmap(masking._kth_smallest, (None, 0, None)),  # pylint: disable=protected-access
                static_argnums=2)
  for n in (1, 7, 40):  # Both ends of the key range, ties, and random keys.
    keys = np.concatenate([[0, top, top, 0], rng.integers(0, top + 1, n)]).astype(np.int32)
    got = kth(jnp.asarray(keys), jnp.arange(1, keys.shape[0] + 1), bits)
    assert np.asarray(got).tolist() == sorted(keys.tolist())


def test_rank_lookup_errors_name_what_is_wrong():
  with pytest.raises(ValueError, match=r"1-D \(vocab,\) lookup, got shape \(2, 4101\)"):
    masking.check_rank(np.ones((2, VOCAB), np.int32))
  with pytest.raises(ValueError, match="integer ranks, got dtype float32"):
    masking.check_rank(np.ones(VOCAB, np.float32))
  rank = np.arange(1, VOCAB + 1, dtype=np.int32)
  rank[7], rank[9] = 0, VOCAB + 3  # The message names the first bad entry and its value.
  with pytest.raises(ValueError, match=r"npmi_rank\[7\] = 0 is outside \[1, 4101\]"):
    masking.check_rank(rank)
  masking.check_rank(np.arange(1, VOCAB + 1))  # Any integer dtype, every rank in range.
  ids = _kmer_batch(np.random.default_rng(0), 2)
  with pytest.raises(ValueError, match=r"1-D \(vocab,\) lookup, got shape \(2, 4101\)"):
    jax.jit(lambda r: masking.mask_batch(jax.random.key(0), ids, r))(  # Traced: its shape.
        jnp.ones((2, VOCAB), jnp.int32))


def test_rows_with_exactly_as_many_centres_as_slots_and_one_more():
  """The fast path packs a row's centres into K slots; K centres (the most it takes) and
  K + 1 (the exact fallback) give the oracle's masks."""
  rng = np.random.default_rng(8)
  slots = masking._centre_slots(512, masking.DEFAULTS["genemask"]["p"])  # pylint: disable=protected-access
  ids = _kmer_batch(rng, 4)
  rank = _random_rank(rng, ties=True)
  centres = np.zeros(ids.shape, bool)
  for row, n in enumerate((slots, slots, slots + 1, slots - 1)):
    centres[row, 1 + rng.choice(506, n, replace=False)] = True
  got = np.asarray(masking.spans_from_centres(ids, rank, centres))
  for row in range(4):
    want = oracle.spans_from_centres(ids[row].tolist(), rank.tolist(), centres[row].tolist(),
                                     "genemask")
    np.testing.assert_array_equal(got[row], want, err_msg=f"row {row}")


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 1.5, "0.1"])
def test_bad_p(p):
  with pytest.raises(ValueError, match="p must be"):
    masking.make_mask_fn(np.ones(VOCAB, np.int32), "genemask", p=p)


@pytest.mark.parametrize("strategy,options,match", [
    ("spanbert", {}, "unknown masking strategy"),
    ("dnabert", {"high_radius": 5}, "unknown option"),
    ("genemask", {"rank_sorce": "content"}, "unknown option"),
    ("genemask", {"rank_source": "kmer"}, "rank_source"),
    ("genemask", {"random_over": "all"}, "random_over"),
    ("bert", {"mask_prob": 0.95, "random_prob": 0.1}, "at most 1"),
    ("genemask", {"span_before": -1}, "span_before"),
])
def test_bad_options(strategy, options, match):
  with pytest.raises(ValueError, match=match):
    masking.mask_batch(jax.random.key(0), _kmer_batch(np.random.default_rng(0), 2),
                       np.ones(VOCAB, np.int32), strategy, **options)


_OPTION_ERRORS = [
    ({"p": 1e-6}, r"option p=1e-06 is below the 16-bit resolution 2\*\*-17 of the sampler"),
    ({"mask_prob": 1.5}, r"option mask_prob must be a number in \[0, 1\], got 1.5"),
    ({"random_prob": "0.1"}, r"option random_prob must be a number in \[0, 1\], got '0.1'"),
    ({"mask_prob": 0.95, "random_prob": 0.1}, "at most 1"),
] + [({name: v}, rf"option {name} must be a non-negative integer, got {v!r}")
     for name in ("span_before", "span_after", "high_radius", "few_threshold")
     for v in (-1, True, 1.5)] + [
    ({name: "yes"}, rf"option {name} must be a bool, got 'yes'")
    for name in ("all_high_if_few", "specials_rank_zero")]


@pytest.mark.parametrize("options,match", _OPTION_ERRORS)
def test_every_option_is_checked_with_a_message_naming_it(options, match):
  with pytest.raises(ValueError, match=match):
    masking.make_mask_fn(np.ones(VOCAB, np.int32), "genemask", **options)


@pytest.mark.parametrize("options", [
    {"p": 2.0 ** -16}, {"mask_prob": 0.0, "random_prob": 1.0},
    {"span_before": 0, "span_after": 0, "high_radius": 0, "few_threshold": 0},
    {"span_before": np.int64(2), "all_high_if_few": np.bool_(False)},
    {"max_predictions": 1}, {"max_predictions": 512},
])
def test_option_edges_are_accepted(options):
  ids = _kmer_batch(np.random.default_rng(0), 2)
  mb = jax.eval_shape(lambda i: masking.mask_batch(jax.random.key(0), i,
                                                    np.ones(VOCAB, np.int32), **options),
                      jax.ShapeDtypeStruct(ids.shape, jnp.int32))
  assert mb.masked_ids.shape == ids.shape


def test_shape_limits_of_ids_and_max_predictions():
  rank = np.ones(VOCAB, np.int32)
  trace = lambda shape, **kw: jax.eval_shape(
      lambda i: masking.mask_batch(jax.random.key(0), i, rank, **kw),
      jax.ShapeDtypeStruct(shape, jnp.int32))
  with pytest.raises(ValueError, match="(?m)^ids must have at least one position$"):
    trace((2, 0))
  assert trace((2, 1)).masked_ids.shape == (2, 1)  # One position: nothing to mask, no error.
  with pytest.raises(ValueError, match=r"ids must be \(batch, length\), got shape \(512,\)"):
    trace((512,))
  with pytest.raises(ValueError, match=r"max_predictions must be an integer in \[1, 16\], got True"):
    trace((2, 16), max_predictions=True)
  # rank_source="position" looks ranks up by position: at most vocab positions.
  assert trace((1, VOCAB), rank_source="position").masked_ids.shape == (1, VOCAB)
  with pytest.raises(ValueError, match=r"rank_source='position' looks the rank up by position, "
                     r"so the length 4102 must be at most the vocabulary size 4101"):
    trace((1, VOCAB + 1), rank_source="position")
  assert trace((1, VOCAB + 1)).masked_ids.shape == (1, VOCAB + 1)  # By content: any length.
  with pytest.raises(ValueError, match="npmi_rank must hold integer ranks, got dtype float16"):
    jax.eval_shape(lambda r: masking.mask_batch(jax.random.key(0), np.zeros((2, 8), np.int32), r),
                   jax.ShapeDtypeStruct((VOCAB,), jnp.float16))
  with pytest.raises(ValueError, match="ids must be integer token ids, got dtype float16"):
    jax.eval_shape(lambda i: masking.mask_batch(jax.random.key(0), i, rank),
                   jax.ShapeDtypeStruct((2, 8), jnp.float16))
  masking.check_rank(np.arange(1, 10))  # k = 1: 4 k-mers and the 5 specials.


def test_bad_ids_and_shapes():
  rng = np.random.default_rng(0)
  rank, ids = _random_rank(rng), _kmer_batch(rng, 2)
  key = jax.random.key(0)
  bad = ids.copy()
  bad[1, 7] = VOCAB
  with pytest.raises(ValueError, match=r"ids\[1, 7\] = 4101 is outside"):
    masking.mask_batch(key, bad, rank)
  with pytest.raises(ValueError, match="outside"):
    masking.check_ids(np.array([[2, -1, 3]]), VOCAB)
  with pytest.raises(ValueError, match=r"\(batch, length\)"):
    masking.mask_batch(key, ids[0], rank)
  with pytest.raises(ValueError, match="integer token ids"):
    masking.mask_batch(key, ids.astype(np.float32), rank)
  with pytest.raises(ValueError, match="max_predictions"):
    masking.mask_batch(key, ids, rank, max_predictions=513)
  with pytest.raises(ValueError, match=r"npmi_rank\[0\] = 0 is outside"):
    masking.make_mask_fn(np.zeros(VOCAB, np.int32))
  with pytest.raises(ValueError, match=r"npmi_rank\[0\] = 0 is outside"):
    masking.mask_batch(key, ids, np.zeros(VOCAB, np.int32))  # Concrete: checked on the host.
  with pytest.raises(ValueError, match=r"ids\[1, 7\] = 4101 is outside"):
    masking.make_mask_fn(rank)(key, bad)  # The returned function checks concrete ids too.
  with pytest.raises(ValueError, match=r"both be \(L,\) or \(B, L\), got \(2, 512\) and \(3,\)"):
    masking.spans_from_centres(ids, rank, np.zeros(3, bool))
  # Inside jit the values are not inspectable: out-of-vocabulary ids are never masked.
  bad[:, 1:254], bad[:, 254:507] = VOCAB, VOCAB + 5
  for strategy in ("bert", "genemask"):
    mb = jax.jit(masking.make_mask_fn(rank, strategy, p=0.5))(key, jnp.asarray(bad))
    assert int(mb.num_masked.sum()) == 0


def test_traced_ranks_outside_the_range_count_as_the_nearest_rank():
  """Inside jit a rank lookup cannot be checked: ranks below 1 act as 1, above vocab as
  vocab (the masks of the clipped lookup), never as a wrapped-around int32 key."""
  rng = np.random.default_rng(6)
  ids = _kmer_batch(rng, 4)
  rank = _random_rank(rng, ties=True)
  wild = rank.copy()
  wild[rank == 1] = rng.choice([0, -7], int(np.sum(rank == 1)))
  wild[rank == 5] = rng.choice([VOCAB + 1, 1 << 28], int(np.sum(rank == 5)))
  centres = rng.random(ids.shape) < 0.05
  spans = jax.jit(lambda r: masking.spans_from_centres(ids, r, centres))
  want = np.asarray(spans(jnp.asarray(np.clip(wild, 1, VOCAB))))
  np.testing.assert_array_equal(np.asarray(spans(jnp.asarray(wild))), want)
  assert want.sum() > 0


def test_longest_sequence_the_int32_keys_allow():
  """Rank keys pack (rank, position) into 30 bits: 131,072 tokens fit, one more does not."""
  rank = np.arange(1, VOCAB + 1, dtype=np.int32)
  for length in (1 << 17, (1 << 17) + 1):
    ids = jax.ShapeDtypeStruct((1, length), jnp.int32)
    centres = jax.ShapeDtypeStruct((1, length), jnp.bool_)
    trace = lambda: jax.eval_shape(lambda i, c: masking.spans_from_centres(i, rank, c),
                                   ids, centres)
    if length == 1 << 17:
      assert trace().shape == (1, length)
    else:
      with pytest.raises(ValueError, match="sequence length 131073 too long for int32 rank keys"):
        trace()


def test_position_specials_rank_zero_is_the_authors_defaultdict():
  """specials_rank_zero: the released code's defaultdict(int) gives ids 0-4 rank 0, so in
  position mode positions 1-4 are the best tokens of their windows (the oracle given that
  table agrees), and a centre near the start spreads its 11-token span around them."""
  rng = np.random.default_rng(15)
  opts = {"rank_source": "position", "specials_rank_zero": True}
  for b in range(40):
    ids = _random_ids(rng, 8, 64, full=b % 2 == 0)
    rank = _random_rank(rng, ties=b % 3 == 0)
    centres = rng.random(ids.shape) < rng.choice([0.02, 0.1, 0.3])
    got = np.asarray(masking.spans_from_centres(ids, rank, centres, "genemask", **opts))
    authors = rank.copy()
    authors[:tokenizer.NUM_SPECIAL] = 0  # defaultdict(int): no entry -> 0.
    for row in range(ids.shape[0]):
      want = oracle.spans_from_centres(ids[row].tolist(), authors.tolist(),
                                       centres[row].tolist(), "genemask", rank_source="position")
      np.testing.assert_array_equal(got[row], want, err_msg=f"batch {b} row {row}")
  # One centre at position 6: window 4..9; position 4 (rank 0) wins over every k-mer, so the
  # high span is [0, 9] -> eligible 1..9; without the option the best k-mer rank decides.
  ids = _kmer_batch(rng, 1, kmers=62, length=64)
  rank = np.full(VOCAB, VOCAB, np.int32)
  rank[tokenizer.NUM_SPECIAL:] = np.arange(VOCAB - tokenizer.NUM_SPECIAL) + 2
  rank[9] = 1  # Position 9 is the best k-mer position in the window (rank 1, unique).
  centres = np.zeros_like(ids, bool)
  centres[0, 6] = True
  with_zero = np.asarray(masking.spans_from_centres(ids, rank, centres, "genemask", **opts))[0]
  without = np.asarray(masking.spans_from_centres(ids, rank, centres, "genemask",
                                                  rank_source="position"))[0]
  assert np.flatnonzero(with_zero).tolist() == list(range(1, 10))
  assert np.flatnonzero(without).tolist() == list(range(4, 15))


# ---------------------------------------------------------------------------------------
# Random replacement tokens: independent of the original token, every candidate drawn.


def _random_replacements(random_over: str) -> tuple[np.ndarray, np.ndarray]:
  """(original, replacement) ids of ~130k masked k-mers, every one randomly replaced."""
  rng = np.random.default_rng(11)
  ids = _kmer_batch(rng, 64)
  rank = _random_rank(rng)
  orig, repl = [], []
  for k in range(4):
    m = masking.mask_batch(jax.random.key(100 + k), ids, rank, "bert", p=0.999,
                           mask_prob=0.0, random_prob=1.0, random_over=random_over)
    masked = np.asarray(m.labels) != tokenizer.IGNORE_LABEL
    orig.append(ids[masked])
    repl.append(np.asarray(m.masked_ids)[masked])
  return np.concatenate(orig), np.concatenate(repl)


def test_random_replacement_is_independent_of_the_original_token():
  from scipy import stats  # pylint: disable=g-import-not-at-top
  orig, repl = _random_replacements("kmers")
  assert len(orig) > 120_000
  a, b = orig - tokenizer.NUM_SPECIAL, repl - tokenizer.NUM_SPECIAL
  # Fixed keys, so these p-values are fixed numbers: a replacement that depends on the
  # original (the next k-mer, a shifted or mirrored one) drives them to ~0.
  for name, fa, fb in (("first two bases", a // 256, b // 256),
                       ("last two bases", a % 16, b % 16)):
    table = np.zeros((16, 16))
    np.add.at(table, (fa, fb), 1)
    p = stats.chi2_contingency(table).pvalue
    assert p > 1e-4, f"{name} of the replacement depend on the original's (p = {p:.2g})"
  # The offset (replacement - original) mod 4096 of an independent uniform draw is uniform.
  offset_bins = np.bincount(((b - a) % 4096) // 64, minlength=64)
  p = stats.chisquare(offset_bins).pvalue
  assert p > 1e-4, f"replacement - original is not uniform (p = {p:.2g})"
  assert np.mean(repl == orig) < 5 / 4096


def test_random_replacement_draws_every_kmer_uniformly():
  from scipy import stats  # pylint: disable=g-import-not-at-top
  _, repl = _random_replacements("kmers")
  counts = np.bincount(repl, minlength=VOCAB)
  assert not counts[:tokenizer.NUM_SPECIAL].any()  # Specials are never drawn.
  missing = np.flatnonzero(counts[tokenizer.NUM_SPECIAL:] == 0) + tokenizer.NUM_SPECIAL
  assert not missing.size, f"k-mer ids never drawn: {missing[:10]} (last is {VOCAB - 1})"
  p = stats.chisquare(counts[tokenizer.NUM_SPECIAL:]).pvalue
  assert p > 1e-4, f"k-mer draws are not uniform (p = {p:.2g})"


def test_random_replacement_over_vocab_draws_every_id():
  _, repl = _random_replacements("vocab")
  counts = np.bincount(repl, minlength=VOCAB)
  assert len(counts) == VOCAB and counts.min() > 0, np.flatnonzero(counts == 0)
