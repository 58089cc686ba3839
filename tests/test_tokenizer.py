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
