"""The tokenizer is bit-compatible with DNABERT's 6-mer vocabulary and round-trips."""
import itertools

import numpy as np
import pytest

from genemask_jax import tokenizer as tk

_D = {"A": 0, "T": 1, "C": 2, "G": 3}


def test_vocabulary_is_dnabert_order():
  v = tk.vocab(6)
  assert v[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  assert v[5] == "AAAAAA" and v[6] == "AAAAAT" and v[4100] == "GGGGGG"
  assert len(v) == tk.vocab_size(6) == 4101
  assert v[5:] == ["".join(p) for p in itertools.product("ATCG", repeat=6)]


def test_all_6mers_match_closed_form_and_round_trip():
  kmers = ["".join(p) for p in itertools.product("ACGT", repeat=6)]
  expected = [5 + sum(_D[c] * 4**(5 - i) for i, c in enumerate(w)) for w in kmers]
  got = [int(tk.encode(w, 6)[0]) for w in kmers]
  assert got == expected
  assert [tk.id_to_kmer(i) for i in expected] == kmers
  assert [tk.kmer_to_id(w) for w in kmers] == expected


@pytest.mark.parametrize("k", [3, 4, 5, 6])
def test_encode_decode_round_trip_random(k):
  rng = np.random.default_rng(k)
  seq = "".join(rng.choice(list("ACGT"), 1000))
  ids = tk.encode(seq, k)
  assert ids.shape == (1000 - k + 1,) and ids.dtype == np.int32
  assert tk.decode(ids, k) == seq
  # Same as the plain per-k-mer definition.
  v = tk.vocab(k)
  assert ids[::97].tolist() == [v.index(seq[i:i + k]) for i in range(0, 1000 - k + 1, 97)]


def test_lower_case_and_non_acgt_windows():
  assert tk.encode("acgtac").tolist() == tk.encode("ACGTAC").tolist()
  ids = tk.encode("ACGTACNGTACGTA")  # 14 bp -> 9 windows; N at 6 touches windows 1..6.
  assert ids.shape == (9,)
  assert ids.tolist()[1:7] == [tk.UNK_ID] * 6
  assert ids[0] == tk.kmer_to_id("ACGTAC") and ids[7] == tk.kmer_to_id("GTACGT")
  assert ids[8] == tk.kmer_to_id("TACGTA")
  assert tk.encode("ACGTR" + "A" * 6).tolist()[:5] == [tk.UNK_ID] * 5
  assert tk.encode("ACG").shape == (0,)


def test_kmer_text_form():
  seq = "AAACGGAATTC"
  text = " ".join(seq[i:i + 6] for i in range(len(seq) - 5))
  assert tk.kmer_text_to_bases(text) == seq
  np.testing.assert_array_equal(tk.encode_kmer_text(text), tk.encode(seq))
  with pytest.raises(tk.TokenizerError, match="do not overlap"):
    tk.encode_kmer_text("AAACGG AACGGA TTTTTT", where="f.tsv:3")
  with pytest.raises(tk.TokenizerError, match="f.tsv:3"):
    tk.encode_kmer_text("AAACGG AACGG", where="f.tsv:3")


def test_pack_policies():
  a, b = tk.encode("ACGTACGT"), tk.encode("A" * 20)
  out = tk.pack([a, b], max_len=8, policy="truncate")
  assert out.shape == (2, 8) and out.dtype == np.int32
  assert out[0].tolist() == [tk.CLS_ID, *a.tolist(), tk.SEP_ID, 0, 0, 0]
  assert out[1].tolist() == [tk.CLS_ID] + [5] * 6 + [tk.SEP_ID]
  with pytest.raises(tk.TokenizerError, match="sequence 1 has 15 k-mers"):
    tk.pack([a, b], max_len=8)


def test_vocab_file(tmp_path):
  tk.write_vocab(tmp_path / "vocab.txt", 6)
  lines = (tmp_path / "vocab.txt").read_text().splitlines()
  assert lines == tk.vocab(6)


def test_bad_k():
  with pytest.raises(tk.TokenizerError, match="k must be"):
    tk.encode("ACGTACGT", 7)


def test_boundaries_and_decode_checks_mutmut_found_unguarded():
  # Each line here failed to notice a one-token change of tokenizer.py (mutmut, #21).
  # The shortest inputs: k - 1 bases give no k-mer (int32, empty), k bases give one.
  assert tk.encode("ACGTA", 6).dtype == np.int32 and tk.encode("ACGTA", 6).size == 0
  assert tk.encode("ACGTAC", 6).tolist() == [tk.kmer_to_id("ACGTAC")]
  assert tk.kmer_to_id("ACG") == tk.encode("ACG", 3)[0]  # MIN_K letters are a k-mer.
  # The first and last ids are in the vocabulary, one past the end is not.
  assert tk.id_to_kmer(0) == "[PAD]" and tk.id_to_kmer(tk.vocab_size(6) - 1) == "GGGGGG"
  with pytest.raises(tk.TokenizerError, match=r"outside the vocabulary 0\.\.4100"):
    tk.id_to_kmer(tk.vocab_size(6))
  with pytest.raises(tk.TokenizerError, match="token id 4101 outside the vocabulary of k=6"):
    tk.decode([tk.vocab_size(6)])
  # decode skips [CLS]/[SEP]/[PAD] and writes N where only an [UNK] window covers a base.
  seq = "ACGTTGCAAGCT"
  ids = tk.encode(seq, 6)
  assert tk.decode(tk.pack([ids], 16)[0]) == seq
  with_unk = ids.copy()
  with_unk[:3] = tk.UNK_ID
  assert tk.decode(with_unk) == "NNN" + seq[3:]
  # The k - 1 bases after an N are read from the windows that follow, not written as 'A'.
  for s in ("ACGTTGNAAGCTACGTAC", "NACGTTGCA", "ACGTTGCAN"):
    assert tk.decode(tk.encode(s)) == s
  assert tk.decode(tk.encode("ACGTNNNNNNNNACGTAC")) == "N" * 12 + "ACGTAC"
  # Consecutive k-mers that do not overlap are reported by position.
  with pytest.raises(tk.TokenizerError, match="k-mers 1 and 2 do not overlap by 5 bases"):
    tk.decode(np.r_[ids[:2], ids[3:]])
  # An explicit k is checked, not replaced by the first k-mer's length.
  with pytest.raises(tk.TokenizerError, match="is not 4 letters long"):
    tk.kmer_text_to_bases("ACG CGT", 4)
  with pytest.raises(tk.TokenizerError, match="k-mers 1 \\(ACG\\) and 2 \\(GTA\\) do not "
                     "overlap by 2 bases"):
    tk.kmer_text_to_bases("ACG GTA")
  # pack: max_len 3 holds one k-mer; a sequence of exactly max_len - 2 k-mers fits.
  assert tk.pack([ids[:1]], 3).tolist() == [[tk.CLS_ID, ids[0], tk.SEP_ID]]
  assert tk.pack([ids], len(ids) + 2)[0, -1] == tk.SEP_ID
  with pytest.raises(tk.TokenizerError, match="at least 3"):
    tk.pack([ids[:1]], 2)


def test_defaults_and_input_types(tmp_path):
  assert tk.vocab_size() == 4101 and len(tk.vocab()) == 4101
  tk.write_vocab(tmp_path / "vocab.txt")
  assert (tmp_path / "vocab.txt").read_text(encoding="ascii").splitlines() == tk.vocab(6)
  assert tk.decode(tk.encode("ACGTACG")) == "ACGTACG"  # k = 6 both ways by default.
  # Non-ASCII letters are unknown bases (UNK windows), not an encoding error.
  ids = tk.encode("ACGTAC\u00c4ACGTAC")
  assert ids.tolist() == [tk.kmer_to_id("ACGTAC")] + [tk.UNK_ID] * 6 + [
      tk.kmer_to_id("ACGTAC")]
  # A base array must hold uint8 ASCII codes.
  assert tk.encode(np.frombuffer(b"ACGTAC", np.uint8)).tolist() == [tk.kmer_to_id("ACGTAC")]
  with pytest.raises(tk.TokenizerError, match="must be uint8 ASCII codes, got int64"):
    tk.encode(np.arange(8))


def test_kmer_text_of_another_k_and_a_later_gap():
  # encode_kmer_text passes its k on both ways (mutmut survivors, #21).
  assert tk.encode_kmer_text("ACGT CGTA", 4).tolist() == tk.encode("ACGTA", 4).tolist()
  with pytest.raises(tk.TokenizerError, match="is not 4 letters long"):
    tk.encode_kmer_text("ACG CGT", 4)
  # The first gap is reported where it is, not where the first k-mer stops matching.
  ids = tk.encode("ACGTTGCAAGCTTAGC")
  with pytest.raises(tk.TokenizerError, match="k-mers 3 and 4 do not overlap"):
    tk.decode(np.r_[ids[:4], ids[5:]])
