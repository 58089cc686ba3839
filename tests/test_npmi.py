"""Tests for genemask_jax.npmi: counting, the NPMI formulas, tables, lookups, bad input.

Expected values come from explicit per-substring Python (dictionary counts, enumerated
segmentations), never from the module's own vectorised code.
"""
import collections
import csv
import gzip
import itertools
import math
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from genemask_jax import npmi
from genemask_jax.npmi import checks as npmi_checks
from genemask_jax import tokenizer
from genemask_jax.data import fasta

AUTHORS_CSV = pathlib.Path("npmi") / "genemask_grch38_chr1-3_6mer_npmi.csv"
GENOME = ("GRCh37_chrX_1-70M.fa.gz", "GRCh37_chr22_blocks.fa.gz")
COMP = {"A": "T", "C": "G", "G": "C", "T": "A"}


def brute_counts(records, k):
  """{n-gram: count} of every ACGT n-gram (n = 1..k) inside each record, case-folded."""
  counts = collections.Counter()
  for rec in records:
    rec = rec.upper()
    for n in range(1, k + 1):
      for i in range(len(rec) - n + 1):
        w = rec[i:i + n]
        if all(ch in "ACGT" for ch in w):
          counts[w] += 1
  return counts


def code(w):
  return sum(tokenizer.BASES.index(ch) * 4**(len(w) - 1 - i) for i, ch in enumerate(w))


def as_dict(counts: npmi.NgramCounts):
  out = {}
  for n in range(1, counts.k + 1):
    for w in itertools.product("ACGT", repeat=n):
      w = "".join(w)
      c = int(counts.counts[n - 1][code(w)])
      if c:
        out[w] = c
  return out


def segmentations(w, max_piece):
  """Every split of w into contiguous pieces of length <= max_piece."""
  if not w:
    yield []
    return
  for l in range(1, min(max_piece, len(w)) + 1):
    for rest in segmentations(w[l:], max_piece):
      yield [w[:l]] + rest


def random_records(rng, n_records, length, alphabet="ACGTacgtNNRY"):
  return ["".join(rng.choice(list(alphabet), size=rng.integers(0, length))) for _ in
          range(n_records)]


def spearman(a, b):
  ra = np.argsort(np.argsort(a))
  rb = np.argsort(np.argsort(b))
  return float(np.corrcoef(ra, rb)[0, 1])


def write_fasta(path, records, width=7, compress=False):
  text = "".join(f">r{i}\n" + "".join(s[j:j + width] + "\n" for j in range(0, len(s), width))
                 for i, s in enumerate(records))
  if compress:
    with gzip.open(path, "wt") as f:
      f.write(text)
  else:
    path.write_text(text)
  return path


# ------------------------------------------------------------------------------ counting


def test_counts_match_substring_counts_and_never_span_records():
  rng = np.random.default_rng(0)
  records = random_records(rng, 12, 60) + ["ACGTN", "", "AC", "acgtACGTGG"]
  got = as_dict(npmi.count_sequences(records, k=4))
  assert got == dict(brute_counts(records, 4))
  # The junction of "AC" and "acgt..." would make ACAC; it must not be counted.
  assert "CA" not in dict(brute_counts(["AC", "acgtACGTGG"], 2))
  assert as_dict(npmi.count_sequences(["AC", "acgtACGTGG"], k=2)).get("CA", 0) == 0


@pytest.mark.parametrize("batch", [1, 4, 50, 1 << 20])
def test_streaming_counter_in_random_pieces_and_batches(batch):
  rng = np.random.default_rng(batch)
  records = random_records(rng, 10, 80) + ["ACGTAAGG" * 9, "T", ""]
  counter = npmi.NgramCounter(4, batch=batch)
  for rec in records:
    cuts = sorted(rng.integers(0, len(rec) + 1, size=3))
    for piece in np.split(np.frombuffer(rec.encode(), np.uint8), cuts):
      counter.add(piece)
    counter.end_record()
  assert as_dict(counter.result()) == dict(brute_counts(records, 4))
  assert counter.result().letters == sum(map(len, records))  # result() may be called again.


def test_counts_are_int64_and_long_k_mers_keep_their_codes():
  """k = 8 codes and the invalid-window sentinel 4**8 do not fit uint16: counted exactly."""
  rng = np.random.default_rng(8)
  records = random_records(rng, 6, 120, alphabet="ACGTACGTN") + ["ACGTTGCAGG" * 6]
  counts = npmi.count_sequences(records, k=8)
  assert [c.dtype for c in counts.counts] == [np.dtype(np.int64)] * 8
  assert as_dict(counts) == dict(brute_counts(records, 8))


def test_a_block_that_is_not_1d_uint8_is_refused_with_its_dtype_and_shape():
  counter = npmi.NgramCounter(3)
  with pytest.raises(npmi.NpmiError, match=r"^a block is bytes or a 1-D uint8 array of ASCII "
                     r"letters, got uint8 of shape \(2, 3\)$"):
    counter.add(np.zeros((2, 3), np.uint8))


@pytest.mark.parametrize("compress,chunk", [(False, 1 << 18), (True, 1 << 18), (False, 5)])
def test_count_fasta_with_tiny_blocks_carries_tails_across_blocks(tmp_path, compress, chunk,
                                                                  monkeypatch):
  monkeypatch.setattr(npmi.counting, "_CHUNK", chunk)  # Also split each block into tiny chunks.
  rng = np.random.default_rng(1)
  records = random_records(rng, 8, 200, alphabet="ACGTACGTacgtN") + ["ACGTTGCA" * 5]
  path = write_fasta(tmp_path / ("x.fa.gz" if compress else "x.fa"), records, compress=compress)
  want = dict(brute_counts(records, 5))
  for block_size in (1, 3, 7, 1 << 20):
    counts = npmi.count_fasta([path], k=5, block_size=block_size)
    assert as_dict(counts) == want, block_size
    assert counts.letters == sum(map(len, records))


def test_counting_across_two_files_adds_up(tmp_path):
  a = write_fasta(tmp_path / "a.fa", ["ACGTAC"])
  b = write_fasta(tmp_path / "b.fa", ["GTACGN", "TTT"], compress=False)
  got = as_dict(npmi.count_fasta([a, b], k=3))
  assert got == dict(brute_counts(["ACGTAC", "GTACGN", "TTT"], 3))


def test_both_strands_counts_the_reverse_complement():
  seq = "AACGTTTGCAGGN" + "CCATG"
  rc = "".join(COMP.get(ch, "N") for ch in reversed(seq))
  got = as_dict(npmi.both_strands(npmi.count_sequences([seq], k=3)))
  assert got == dict(brute_counts([seq, rc], 3))


# ------------------------------------------------------------------------------ formulas


def test_scores_on_a_hand_worked_sequence():
  # ACGTACGT: A,C,G,T 2 each; AC,CG,GT 2, TA 1; ACG,CGT 2, GTA,TAC 1. Z = 10.
  counts = npmi.count_sequences(["ACGTACGT"], k=3)
  t = npmi.score_counts(counts, log_z=math.log(10), min_count=2)
  acg, gta = code("ACG"), code("GTA")
  # naive(ACG) = ln .2 - 3 ln .2 = 2 ln 5
  assert t.naive[acg] == pytest.approx(2 * math.log(5))
  # true(ACG) = ln .2 - ln p(A) - ln p(CG) = ln 5 (authors' only split i = 1)
  assert t.true[acg] == pytest.approx(math.log(5))
  # dp(ACG): best of A|C|G (3 ln .2), A|CG, AC|G (2 ln .2) -> ln .2 - 2 ln .2 = ln 5
  assert t.dp[acg] == pytest.approx(math.log(5))
  # npmi = dp * ln 2 / (ln 2 + ln 2) = ln 5 / 2; GTA (count 1 < m = 2) gets no score.
  assert t.npmi[acg] == pytest.approx(math.log(5) / 2)
  assert math.isnan(t.npmi[gta]) and not math.isnan(t.dp[gta])
  # GTA: naive = ln .1 - 3 ln .2; dp = ln .1 - (ln .2 + ln .2) (GT|A or G|TA with TA = .1 worse)
  assert t.naive[gta] == pytest.approx(math.log(0.1) - 3 * math.log(0.2))
  assert t.dp[gta] == pytest.approx(math.log(0.1) - 2 * math.log(0.2))
  assert math.isnan(t.naive[code("AAA")])  # Never seen: no score at all.


@pytest.mark.parametrize("k", [3, 4, 5])
def test_every_formula_matches_explicit_definitions(k):
  rng = np.random.default_rng(k)
  seq = "".join(rng.choice(list("ACGT"), p=[0.4, 0.1, 0.1, 0.4], size=3000))
  c = brute_counts([seq], k)
  log_z = math.log(2 * sum(v for w, v in c.items() if len(w) == k))
  lp = lambda w: math.log(c[w]) - log_z
  m = 3
  counts = npmi.count_sequences([seq], k=k)
  tables = {(ts, seg): npmi.score_counts(counts, min_count=m, true_splits=ts, segmentation=seg)
            for ts in npmi.TRUE_SPLITS for seg in npmi.SEGMENTATIONS}
  t = tables["authors", "genemask"]
  assert t.log_z == pytest.approx(log_z)
  checked = 0
  for w in ("".join(p) for p in itertools.product("ACGT", repeat=k)):
    x = code(w)
    if c[w] == 0:
      assert math.isnan(t.npmi[x]) and math.isnan(t.dp[x])
      continue
    checked += 1
    naive = lp(w) - sum(lp(ch) for ch in w)
    true_authors = min(lp(w) - lp(w[:i]) - lp(w[i:]) for i in range(1, k - 1))
    true_all = min(lp(w) - lp(w[:i]) - lp(w[i:]) for i in range(1, k))
    dp = min(lp(w) - sum(lp(s) for s in seg) for seg in segmentations(w, 2))
    levine = min(lp(w) - sum(lp(s) for s in seg) for seg in segmentations(w, k) if len(seg) > 1)
    assert t.naive[x] == pytest.approx(naive)
    assert t.true[x] == pytest.approx(true_authors)
    assert tables["all", "genemask"].true[x] == pytest.approx(true_all)
    assert t.dp[x] == pytest.approx(dp)
    assert tables["authors", "levine"].dp[x] == pytest.approx(levine)
    if c[w] >= m:
      assert t.npmi[x] == pytest.approx(dp * math.log(c[w]) / (math.log(c[w]) + math.log(m)))
      assert tables["authors", "levine"].npmi[x] == pytest.approx(
          levine * math.log(c[w]) / (math.log(c[w]) + math.log(m)))
    else:
      assert math.isnan(t.npmi[x])
  assert checked > 4**k // 2
  # The authors' off-by-one (no split at i = k-1) changes some true.pmi values.
  assert np.nanmax(tables["authors", "genemask"].true - tables["all", "genemask"].true) > 0


# ------------------------------------------------------------------------------ tables, lookups


def small_table(k=3):
  rng = np.random.default_rng(7)
  seq = "".join(rng.choice(list("ACGT"), p=[0.35, 0.15, 0.15, 0.35], size=20000))
  return npmi.score_counts(npmi.count_sequences([seq, "ACGT" * 50], k=k), min_count=150)


def test_lookup_is_indexed_by_token_id_and_specials_rank_worst():
  t = small_table()
  lk = npmi.lookup_from_table(t)
  worst = 4**3 + 5
  assert lk.rank.shape == lk.score.shape == (worst,)
  assert lk.rank.dtype == np.int32 and lk.score.dtype == np.float32
  assert np.all(lk.rank[:5] == worst) and np.all(lk.score[:5] == -np.inf)
  scored = ~np.isnan(t.npmi)
  assert 0 < scored.sum() < 4**3  # Some 3-mers fall under min_count here.
  for w in ("AAA", "CGC", "TAT"):
    tid = tokenizer.kmer_to_id(w)
    if scored[code(w)]:
      assert lk.score[tid] == pytest.approx(t.npmi[code(w)])
    else:
      assert lk.rank[tid] == worst and lk.score[tid] == -np.inf
  best = np.nanargmax(t.npmi)
  assert lk.rank[best + 5] == 1 and lk.score.argmax() == best + 5
  # Ranks of scored k-mers are 1..n_scored, ordered by score.
  r = lk.rank[5:][scored]
  assert sorted(r) == list(range(1, scored.sum() + 1))
  assert np.all(np.diff(lk.score[5:][scored][np.argsort(r)]) <= 0)


def test_table_roundtrip_csv_and_npy(tmp_path):
  t = small_table()
  written = npmi.write_table(t, tmp_path / "out" / "table.csv")
  lines = (tmp_path / "out" / "table.csv").read_text().splitlines()
  assert lines[0] == ",".join(npmi.CSV_COLUMNS)
  assert len(lines) == 1 + 4**3
  top = lines[1].split(",")
  assert tokenizer.kmer_to_id(top[0]) == np.nanargmax(t.npmi) + 5 and top[-1] == "1"
  assert int(top[9]) == int(top[7]) - int(top[6])  # adv_pmi_rank_drop = dp rank - naive rank
  for path in ("table.csv", "table.rank.npy", "table.score.npy"):
    back = npmi.load_lookup(tmp_path / "out" / path)
    np.testing.assert_array_equal(back.rank, written.rank)
    np.testing.assert_allclose(back.score, written.score, rtol=1e-6)
  np.savez(tmp_path / "t.npz", rank=written.rank, score=written.score)
  np.testing.assert_array_equal(npmi.load_lookup(tmp_path / "t.npz", k=3).rank, written.rank)


def test_load_authors_csv(data_dir):
  lk = npmi.load_lookup(data_dir / AUTHORS_CSV, k=6)
  assert lk.rank.shape == (4101,) and lk.k == 6
  assert lk.rank[tokenizer.kmer_to_id("CCTCCC")] == 1
  assert lk.rank[tokenizer.kmer_to_id("TCGCGA")] == 4096
  assert lk.score[tokenizer.kmer_to_id("CCTCCC")] == pytest.approx(2.1030762)
  assert np.all(lk.rank[:5] == 4101) and np.all(np.isneginf(lk.score[:5]))


# ------------------------------------------------------------------------------ real genome


def test_genome_table_reproduces_the_authors_ranking(data_dir, tmp_path):
  counts = npmi.count_fasta([data_dir / "genome" / g for g in GENOME], k=6)
  assert counts.total(1) > 85_000_000
  table = npmi.score_counts(counts)
  ours = npmi.write_table(table, tmp_path / "table.csv")
  theirs = npmi.load_lookup(data_dir / AUTHORS_CSV)
  rho = spearman(ours.score[5:], theirs.score[5:])
  overlap = len(set(np.argsort(ours.rank)[:100]) & set(np.argsort(theirs.rank)[:100]))
  print(f"Spearman {rho:.4f}, top-100 overlap {overlap}")
  assert rho >= 0.99
  assert overlap >= 90


# ------------------------------------------------------------------------------ bad input


def test_fasta_without_acgt_is_an_error(tmp_path):
  path = write_fasta(tmp_path / "n.fa", ["NNNNNNNNNN", "RYKM"])
  with pytest.raises(npmi.NpmiError, match=r"no A/C/G/T.*n\.fa"):
    npmi.count_fasta([path], k=6)
  short = write_fasta(tmp_path / "short.fa", ["ACGNACGT"])
  with pytest.raises(npmi.NpmiError, match="shorter than k=6"):
    npmi.count_fasta([short], k=6)


def test_fasta_errors_name_the_files_and_what_is_missing(tmp_path):
  a = write_fasta(tmp_path / "a.fa", ["NNNN"])
  b = write_fasta(tmp_path / "b.fa", ["RYKM"])
  with pytest.raises(npmi.NpmiError, match=(
      rf"^no A/C/G/T letters in {a}, {b} \(8 letters read\); NPMI needs DNA sequence$")):
    npmi.count_fasta([a, b])
  # Single letters between Ns: 1-grams but no 2-gram, let alone a 6-mer.
  c = write_fasta(tmp_path / "c.fa", ["ANCNGNT"])
  d = write_fasta(tmp_path / "d.fa", ["TNANG"])
  with pytest.raises(npmi.NpmiError, match=(
      rf"^no 6-mer of A/C/G/T letters in {c}, {d}: every ACGT run is shorter than k=6$")):
    npmi.count_fasta([c, d])


def test_count_fasta_reports_progress_against_the_uncompressed_size(tmp_path):
  seq = "ACGTTGCAAC" * 400
  plain = write_fasta(tmp_path / "a.fa", [seq])
  gz = tmp_path / "b.fa.gz"
  gz.write_bytes(gzip.compress(f">b\n{seq[:3000]}\n>c\n{seq[:1000]}\n".encode()))
  calls = []
  counts = npmi.count_fasta([plain, gz], block_size=1000,
                            progress=lambda *args: calls.append(args))
  assert counts.k == 6  # The default.
  total = os.path.getsize(plain) + len(gzip.decompress(gz.read_bytes()))
  assert {c[1:4:2] for c in calls} == {(2, total)}  # (number of files, estimated bytes).
  assert [c[0] for c in calls] == [0] * 4 + [1] * 4  # A call per block of 1,000 letters.
  letters = [c[2] for c in calls]
  assert letters == sorted(letters) and letters[-1] == counts.letters == 8000


@pytest.mark.parametrize("k", [3, 4])
def test_true_pmi_splits_only_inside_the_k_mer_even_when_poly_a_is_likely(k):
  """Splits run over i = 1..k-2 ("authors") or 1..k-1 ("all"), never i = 0: on a mostly
  poly-A sequence an extra term -ln p(A...A) would be near 0 and win the minimum."""
  seq = "A" * 3000 + "CGTCAGGT" * 12
  c = brute_counts([seq], k)
  log_z = math.log(2 * sum(v for w, v in c.items() if len(w) == k))
  lp = lambda w: math.log(c[w]) - log_z
  counts = npmi.count_sequences([seq], k=k)
  for ts, splits in (("authors", range(1, k - 1)), ("all", range(1, k))):
    t = npmi.score_counts(counts, min_count=1, true_splits=ts)
    for w in (w for w in c if len(w) == k):
      assert t.true[code(w)] == pytest.approx(min(lp(w) - lp(w[:i]) - lp(w[i:])
                                                   for i in splits)), (ts, w)


def test_scoring_parameters_are_checked_with_messages():
  counts = npmi.count_sequences(["ACGTTGCAACGGT" * 20], k=4)
  with pytest.raises(npmi.NpmiError, match=r"^true_splits must be one of \('authors', 'all'\), "
                     r"got 'some'$"):
    npmi.score_counts(counts, true_splits="some")
  with pytest.raises(npmi.NpmiError, match=r"^segmentation must be one of \('genemask', "
                     r"'levine'\), got 'dp'$"):
    npmi.score_counts(counts, segmentation="dp")
  with pytest.raises(npmi.NpmiError, match=r"^log_z must be finite, got inf$"):
    npmi.score_counts(counts, log_z=math.inf)
  table = npmi.score_counts(counts, min_count=2)
  assert table.min_count == 2 and table.k == 4
  np.testing.assert_array_equal(table.count, counts.counts[-1])
  # The floor's message names the input (default: "the counted sequence") and the remedy.
  with pytest.raises(npmi.NpmiError) as e:
    npmi.score_counts(counts, min_count=2, min_scored_fraction=0.9)
  scored = int(np.count_nonzero(~np.isnan(table.npmi)))
  assert str(e.value) == (
      f"the counted sequence ({counts.total(4):,} 4-mer windows, min_count=2): {scored} of "
      f"256 4-mers scored ({scored / 256:.1%}), fewer than min_scored_fraction=0.9: GeneMask "
      f"would mask near-random spans; {npmi.checks.FLOOR_FIX}")


def test_rank_desc_breaks_ties_by_index_and_puts_nan_last():
  score = np.tile([1.0, 2.0, 2.0, np.nan, 2.0, 1.0, 0.5], 40)  # Long enough for quicksort.
  rank = npmi.scoring.rank_desc(score, worst=999)
  order = [i for i in np.argsort(rank, kind="stable") if not np.isnan(score[i])]
  want = sorted((i for i in range(score.shape[0]) if not np.isnan(score[i])),
                key=lambda i: (-score[i], i))
  assert order == want and list(rank[np.isnan(score)]) == [999] * 40


def test_scoring_warns_about_nothing(tmp_path):
  """log(0) and -inf - -inf for unseen n-grams are expected: no RuntimeWarning escapes."""
  import warnings  # pylint: disable=g-import-not-at-top
  counts = npmi.count_sequences(["ACGTTGCAACGGT" * 50], k=6)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    table = npmi.score_counts(counts, min_count=1, min_scored_fraction=0.0)
  assert np.isnan(table.npmi).any() and np.isfinite(table.npmi).any()


@pytest.mark.parametrize("k", [0, 11, -1, 2.5, True])
def test_k_outside_1_to_10_is_an_error(k, tmp_path):
  path = write_fasta(tmp_path / "x.fa", ["ACGTACGTACGT"])
  with pytest.raises(npmi.NpmiError, match=r"k must be an integer in 1\.\.10"):
    npmi.count_fasta([path], k=k)
  with pytest.raises(npmi.NpmiError):
    npmi.NgramCounter(k)


def test_unreadable_fasta_is_an_error(tmp_path):
  with pytest.raises(fasta.FastaError, match="missing.fa"):
    npmi.count_fasta([tmp_path / "missing.fa"], k=6)
  bad_gz = tmp_path / "broken.fa.gz"
  data = gzip.compress(b">r\n" + b"ACGT" * 1000 + b"\n")
  bad_gz.write_bytes(data[:len(data) // 2])  # Truncated gzip stream.
  with pytest.raises(fasta.FastaError, match="broken.fa.gz"):
    npmi.count_fasta([bad_gz], k=6)


def authors_lines(data_dir):
  return (data_dir / AUTHORS_CSV).read_text().splitlines()


def test_lookup_csv_with_missing_kmers_is_an_error(data_dir, tmp_path):
  lines = authors_lines(data_dir)
  path = tmp_path / "missing.csv"
  path.write_text("\n".join(lines[:100] + lines[101:]) + "\n")
  missing = lines[100].split(",")[0]
  with pytest.raises(npmi.NpmiError, match=rf"missing\.csv: 1 of the 4096 6-mers.*{missing}"):
    npmi.load_lookup(path)


def test_lookup_csv_with_duplicate_rows_is_an_error(data_dir, tmp_path):
  lines = authors_lines(data_dir)
  path = tmp_path / "dup.csv"
  path.write_text("\n".join(lines + [lines[5]]) + "\n")
  with pytest.raises(npmi.NpmiError, match=rf"dup\.csv:{len(lines) + 1}: duplicate row .* line 6"):
    npmi.load_lookup(path)


def test_lookup_csv_with_wrong_columns_or_values_is_an_error(data_dir, tmp_path):
  lines = authors_lines(data_dir)
  path = tmp_path / "cols.csv"
  path.write_text(lines[0].replace("norm_dp_true_pmi,", "score,") + "\n" + "\n".join(lines[1:]))
  with pytest.raises(npmi.NpmiError, match=r"cols\.csv:1: missing column\(s\) norm_dp_true_pmi"):
    npmi.load_lookup(path)
  path.write_text("\n".join(lines[:3] + [lines[3].replace(lines[3][:6], "ACGTNA")] + lines[4:]))
  with pytest.raises(npmi.NpmiError, match=r"cols\.csv:4: ngram 'ACGTNA'"):
    npmi.load_lookup(path)
  swapped = lines[:]
  swapped[1], swapped[2] = swapped[2], swapped[1]
  a, b = swapped[1].rsplit(",", 1), swapped[2].rsplit(",", 1)
  swapped[1], swapped[2] = a[0] + "," + b[1], b[0] + "," + a[1]  # Ranks now contradict scores.
  path.write_text("\n".join(swapped))
  with pytest.raises(npmi.NpmiError, match="disagrees with norm_dp_true_pmi"):
    npmi.load_lookup(path)
  with pytest.raises(npmi.NpmiError, match="holds a 6-mer table, expected k=5"):
    npmi.load_lookup(data_dir / AUTHORS_CSV, k=5)
  with pytest.raises(npmi.NpmiError, match="no such file"):
    npmi.load_lookup(tmp_path / "nope.csv")


# ------------------------------------------------------------------------------ command


def test_command_writes_table_lookup_and_prints_extremes(tmp_path):
  rng = np.random.default_rng(3)
  seq = "".join(rng.choice(list("ACGT"), size=30000))
  fa = write_fasta(tmp_path / "g.fa.gz", [seq, seq[::-1]], width=60, compress=True)
  out = tmp_path / "t" / "table.csv"
  env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]))
  proc = subprocess.run(
      [sys.executable, "-m", "genemask_jax.npmi", f"--fasta={fa}", f"--output={out}", "--k=4",
       "--min_count=50", "--both_strands"], capture_output=True, text=True, env=env, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert "Mbp/s" in proc.stderr and "100%" in proc.stderr
  assert "top 10:" in proc.stdout and "bottom 10:" in proc.stdout
  lk = npmi.load_lookup(out)
  np.testing.assert_array_equal(lk.rank, npmi.load_lookup(str(out)[:-4] + ".rank.npy").rank)
  assert lk.rank.shape == (4**4 + 5,)
  # Both strands: a k-mer and its reverse complement get the same count, hence score.
  assert lk.score[tokenizer.kmer_to_id("AACG")] == lk.score[tokenizer.kmer_to_id("CGTT")]
  proc = subprocess.run([sys.executable, "-m", "genemask_jax.npmi", f"--fasta={fa}",
                         f"--output={out}", "--k=12"], capture_output=True, text=True, env=env,
                        timeout=120)
  assert proc.returncode != 0 and "k must be an integer in 1..10" in proc.stderr


# ------------------------------------------------------------------------------ plots


def test_plots_are_written_and_compare_reports_agreement(tmp_path):
  from genemask_jax import npmi_plot
  ours = npmi.lookup_from_table(small_table())
  noisy = np.where(np.isfinite(ours.score), ours.score + np.linspace(0, 0.01, ours.score.size),
                   -np.inf).astype(np.float32)
  ref = npmi.NpmiLookup(rank=ours.rank, score=noisy)
  stats = npmi_plot.plot_scatter(ours, ref, str(tmp_path / "s.png"))
  assert stats["shared"] == int(np.isfinite(ours.score).sum())
  assert stats["spearman"] > 0.99 and stats["top_overlap"] == stats["shared"]  # < 100 scored
  npmi_plot.plot_distribution({"ours": ours, "ref": ref}, str(tmp_path / "d.png"))
  for name in ("s.png", "d.png"):
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # Spearman with ties uses average ranks: [1, 2, 2, 3] vs [1, 2, 3, 4].
  assert npmi_plot.spearman(np.array([1., 2., 2., 3.]), np.array([1., 2., 3., 4.])) == (
      pytest.approx(np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1]))
  k4 = npmi.lookup_from_table(
      npmi.score_counts(npmi.count_sequences(["ACGTTGCA" * 40], k=4), min_count=1))
  with pytest.raises(npmi.NpmiError, match="different k"):
    npmi_plot.compare(ours, k4)


def test_lookup_shape_and_dtype_checks_and_count_inputs(tmp_path):
  # Found unguarded by mutmut (#21). count_sequences: k = 6 by default; a str with a
  # non-ASCII letter counts like the bytes with that letter unknown.
  a = npmi.count_sequences(["ACGTACGTAA\u00c4CGTTGCA"])
  b = npmi.count_sequences([b"ACGTACGTAA?CGTTGCA"], 6)
  assert a.k == 6 and a.letters == b.letters == 18
  assert all(np.array_equal(x, y) for x, y in zip(a.counts, b.counts))

  def save(name, rank, score):
    np.savez(tmp_path / name, rank=rank, score=score)
    return tmp_path / name

  # The smallest and largest k load.
  for k in (npmi.MIN_K, npmi.MAX_K):
    n = 4**k + tokenizer.NUM_SPECIAL
    path = save(f"k{k}.npz", np.arange(1, n + 1, dtype=np.int32), np.zeros(n, np.float32))
    assert npmi.load_lookup(path).rank.shape == (n,)
  ones, zeros = np.ones(4101, np.int32), np.zeros(4101, np.float32)
  for name, rank, score, match in [
      ("2d", np.ones((2, 4101), np.int32), np.zeros((2, 4101), np.float32), "must be 1-D"),
      ("short_score", ones, zeros[:-1], "must be 1-D arrays of one length"),
      ("length", ones[:-1], zeros[:-1], "length 4100 is not 4\\^k \\+ 5"),
      ("float_rank", ones.astype(np.float32), zeros, "expected integer ranks"),
      ("int_score", ones, zeros.astype(np.int32), "float scores")]:
    path = save(name + ".npz", rank, score)
    with pytest.raises(npmi.NpmiError, match=match) as e:
      npmi.load_lookup(path)
    assert str(path) in str(e.value)


def _with_rank(line, rank):
  return line.rsplit(",", 1)[0] + f",{rank}"


@pytest.mark.parametrize("case", ["empty", "fields", "k", "numbers", "ascii", "csv",
                                  "no_rows", "rank_0", "rank_4097", "same_rank", "letters"])
def test_every_lookup_csv_error_names_the_file_and_line(data_dir, tmp_path, case):
  """Each malformed-table error of the CSV reader, in process (the command tests run it in
  a subprocess, where mutation testing cannot see it): the file, the line where one
  exists, and what is wrong."""
  lines = authors_lines(data_dir)
  body = lines[:]
  path = tmp_path / f"{case}.csv"
  name = re.escape(str(path))
  if case == "empty":
    body = []
    want = rf"^{name}: empty file; expected a CSV with columns ngram, naive\.pmi, "
  elif case == "fields":
    body[4] = body[4].rsplit(",", 1)[0]
    want = rf"^{name}:5: 11 fields, expected 12$"
  elif case == "k":
    body[1] = "ACGTACGTACG" + body[1][6:]
    want = (rf"^{name}:2: ngram 'ACGTACGTACG' is not a k-mer with k in "
            rf"{npmi_checks.MIN_K}\.\.{npmi_checks.MAX_K}$")
  elif case == "numbers":
    body[6] = _with_rank(body[6], "x")
    want = (rf"^{name}:7: expected a number in norm_dp_true_pmi and an integer in "
            r"norm_pmi_rank_rel, got '[-0-9.e]+', 'x'$")
  elif case == "ascii":
    body[6] = body[6].replace(body[6][:6], "ACGT\u00e9A")
    want = rf"^{name}: not an ASCII CSV file \("
  elif case == "csv":
    body[6] = body[6] + "," + "A" * 200_000
    want = rf"^{name}:7: malformed CSV: field larger than field limit"
  elif case == "no_rows":
    body = body[:1]
    want = rf"^{name}: no rows after the header$"
  elif case in ("rank_0", "rank_4097"):
    rank = case.split("_")[1]
    body[8] = _with_rank(body[8], rank)
    want = rf"^{name}:9: rank {rank} outside 1\.\.4096$"
  elif case == "letters":
    body[6] = body[6].replace(body[6][:6], "ACGTXA")
    want = rf"^{name}:7: ngram 'ACGTXA' is not a 6-mer of A/C/G/T$"
  else:  # same_rank: line 11 takes line 10's rank (the file is in rank order: 9).
    body[10] = _with_rank(body[10], 9)
    want = rf"^{name}:(10|11): rank 9 also on line (10|11)$"
  path.write_text("\n".join(body) + ("\n" if body else ""), encoding="utf-8")
  with pytest.raises(npmi.NpmiError, match=want) as e:
    npmi.load_lookup(path)
  if case == "same_rank":
    assert {int(x) for x in re.findall(r":(\d+): rank 9 also on line (\d+)", str(e.value))[0]
            } == {10, 11}


def test_a_table_of_the_shortest_k_loads(tmp_path):
  """k = MIN_K (1): the four 1-mers, ranked by score."""
  path = tmp_path / "k1.csv"
  path.write_text("ngram,norm_dp_true_pmi,norm_pmi_rank_rel\n"
                  "G,0.9,1\nA,0.5,2\n\nT,0.1,3\nC,-0.2,4\n")  # A blank line is skipped.
  lookup = npmi.load_lookup(path, min_scored_fraction=0)
  assert lookup.k == npmi_checks.MIN_K == 1
  ranks = lookup.rank[tokenizer.NUM_SPECIAL:]
  assert sorted(ranks.tolist()) == [1, 2, 3, 4] and ranks.dtype == np.int32
  assert lookup.score.dtype == np.float32
  # An empty score: the k-mer is unscored (rank worst, score -inf), not an error.
  path.write_text("ngram,norm_dp_true_pmi,norm_pmi_rank_rel\n"
                  "G,0.9,1\nA,0.5,2\nT,0.1,3\nC,,4\n")
  lookup = npmi.load_lookup(path, min_scored_fraction=0)
  c = tokenizer.NUM_SPECIAL + npmi.scoring.kmer_strings(1).astype(str).tolist().index("C")
  assert lookup.score[c] == -np.inf and lookup.rank[c] == lookup.rank.shape[0]


def test_k_bounds_and_count_options_are_checked():
  for k in (npmi_checks.MIN_K, npmi_checks.MAX_K):
    npmi_checks.check_k(k)
  for k in (npmi_checks.MIN_K - 1, npmi_checks.MAX_K + 1, 6.0, True):
    with pytest.raises(npmi.NpmiError):
      npmi_checks.check_k(k)
  npmi_checks.check_min_count(1)
  for bad in (0, 1.5, True, "2"):
    with pytest.raises(npmi.NpmiError, match=r"min_count must be an integer >= 1, got"):
      npmi_checks.check_min_count(bad)


def test_output_path_errors_suggest_a_file_path(tmp_path):
  """check_output_path in process (the command tests run it in a subprocess): an empty
  path, a directory (the suggestion is a file inside it), a directory where the .npy
  files would go (the suggestion adds .csv), a parent that is a file; a new nested
  directory under a writable one is fine."""
  with pytest.raises(npmi.NpmiError, match=r"^--output is empty; expected the table's CSV "
                     r"path, e.g\. /tmp/npmi/table\.csv$"):
    npmi.check_output_path("")
  d = tmp_path / "out"
  d.mkdir()
  with pytest.raises(npmi.NpmiError, match=rf"^--output={re.escape(str(d))}: "
                     rf"{re.escape(str(d))} is a directory; expected a file path such as "
                     rf"{re.escape(os.path.join(str(d), 'table.csv'))}$"):
    npmi.check_output_path(str(d))
  clash = tmp_path / "t.csv"
  (tmp_path / "t.rank.npy").mkdir()
  with pytest.raises(npmi.NpmiError, match=rf"{re.escape(str(tmp_path / 't.rank.npy'))} is a "
                     rf"directory; expected a file path such as {re.escape(str(clash))}\.csv$"):
    npmi.check_output_path(str(clash))
  f = tmp_path / "afile"
  f.write_text("x")
  with pytest.raises(npmi.NpmiError, match=rf"^--output={re.escape(str(f))}/a/b\.csv: "
                     rf"{re.escape(str(f))} is a file, not a directory$"):
    npmi.check_output_path(f"{f}/a/b.csv")
  new = str(tmp_path / "new" / "deeper" / "table.csv")
  assert npmi.check_output_path(new) == new


def test_npz_and_npy_lookup_errors_name_the_file(tmp_path):
  """The binary lookup formats' errors, each naming the file and what is wrong."""
  rank = np.arange(4096 + tokenizer.NUM_SPECIAL, dtype=np.int32)[::-1] + 1
  score = np.linspace(1.0, -1.0, rank.shape[0]).astype(np.float32)
  only_rank = tmp_path / "r.npz"
  np.savez(only_rank, rank=rank)
  with pytest.raises(npmi.NpmiError, match=rf"^{re.escape(str(only_rank))}: expected arrays "
                     r"'rank' and 'score', found \['rank'\]$"):
    npmi.load_lookup(only_rank)
  only_score = tmp_path / "s.npz"
  np.savez(only_score, score=score)
  with pytest.raises(npmi.NpmiError, match=r"found \['score'\]$"):
    npmi.load_lookup(only_score)
  broken = tmp_path / "b.npz"
  broken.write_bytes(b"PK\x03\x04 not a zip archive")
  with pytest.raises(npmi.NpmiError, match=rf"^{re.escape(str(broken))}: not a readable \.npz "
                     "file: "):
    npmi.load_lookup(broken)
  plain = tmp_path / "table.npy"
  np.save(plain, rank)
  with pytest.raises(npmi.NpmiError, match=rf"^{re.escape(str(plain))}: a \.npy lookup is named "
                     r"<stem>\.rank\.npy or <stem>\.score\.npy$"):
    npmi.load_lookup(plain)
  np.save(tmp_path / "p.rank.npy", rank)
  np.save(tmp_path / "p.score.npy", np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
  with pytest.raises(npmi.NpmiError, match=rf"^{re.escape(str(tmp_path / 'p.score.npy'))}: "
                     "cannot read the lookup array: "):
    npmi.load_lookup(tmp_path / "p.rank.npy")  # Object arrays need pickle: refused.
  np.savez(tmp_path / "wide.npz", rank=rank.astype(np.int64), score=score.astype(np.float64))
  wide = npmi.load_lookup(tmp_path / "wide.npz")
  assert wide.rank.dtype == np.int32 and wide.score.dtype == np.float32
  np.testing.assert_array_equal(wide.rank, rank)
  zero = rank.copy()
  zero[7] = 0
  np.savez(tmp_path / "zero.npz", rank=zero, score=score)
  with pytest.raises(npmi.NpmiError, match=rf"^{re.escape(str(tmp_path / 'zero.npz'))}: ranks "
                     rf"must lie in 1\.\.{rank.shape[0]}$"):
    npmi.load_lookup(tmp_path / "zero.npz")
  np.save(tmp_path / "q.rank.npy", rank[:100])
  np.save(tmp_path / "q.score.npy", score[:100])
  with pytest.raises(npmi.NpmiError, match=re.escape(str(tmp_path / "q")) +
                     r"\.\{rank,score\}\.npy: "):
    npmi.load_lookup(tmp_path / "q.score.npy")


def test_written_csv_holds_every_column_of_the_table(tmp_path):
  """Every column of the written CSV against the table it came from, row by row (the
  round trip reads back only ngram, score and rank): the four scores as exact reprs, k,
  the three ranks and both rank drops."""
  t = small_table()
  path = tmp_path / "table.csv"
  npmi.write_table(t, path)
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 4**3
  worst = npmi_checks.lookup_size(3)
  ranks = {name: npmi.scoring.rank_desc(v, worst) for name, v in
           (("naive", t.naive), ("dp", t.dp), ("norm", t.npmi))}
  kmers = npmi.scoring.kmer_strings(3).astype(str).tolist()
  for row in rows:
    i = kmers.index(row["ngram"])
    for col, values in (("naive.pmi", t.naive), ("true.pmi", t.true),
                        ("dp.true.pmi", t.dp), ("norm_dp_true_pmi", t.npmi)):
      v = float(values[i])
      assert row[col] == ("nan" if math.isnan(v) else repr(v)), (col, row["ngram"])
    assert row["ngram_size"] == "3"
    naive, dp, norm = (int(ranks[n][i]) for n in ("naive", "dp", "norm"))
    assert (int(row["naive.pmi.rank"]), int(row["dp.true.pmi.rank"]),
            int(row["norm_dp_true_pmi_rank"]), int(row["norm_pmi_rank_rel"])) == (
                naive, dp, norm, norm)
    assert int(row["adv_pmi_rank_drop"]) == dp - naive
    assert int(row["norm_adv_pmi_rank_drop"]) == norm - dp
  assert path.read_bytes().count(b"\r") == 0  # "\n" line ends on every platform.


def test_scored_fraction_floor_edges():
  """0 disables the floor, even for a table that scores nothing; any floor above 0 refuses
  such a table; a table scoring one k-mer passes a floor that one k-mer meets; a bool is
  not a fraction."""
  npmi_checks.check_scored_fraction(0, 3, 0.0, "t")
  with pytest.raises(npmi.NpmiError, match=r"^t: "):
    npmi_checks.check_scored_fraction(0, 3, 1e-9, "t")
  npmi_checks.check_scored_fraction(1, 3, 1 / 64, "t")
  for bad in (True, False, -0.1, 1.5, "0.5"):
    with pytest.raises(npmi.NpmiError, match="min_scored_fraction must be a number in"):
      npmi_checks.check_min_scored_fraction(bad)
