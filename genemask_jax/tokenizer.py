"""DNABERT-compatible k-mer tokenizer, vectorised in numpy.

The vocabulary is DNABERT's exactly: five special tokens, then all 4^k k-mers in
``itertools.product("ATCG", repeat=k)`` order::

    [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, AAAAAA=5, AAAAAT=6, ..., GGGGGG=4100   (k=6)

so ``id(w) = 5 + sum_i d(w_i) * 4^(k-1-i)`` with d(A)=0, d(T)=1, d(C)=2, d(G)=3.

A sequence of n bases becomes n-k+1 stride-1 overlapping k-mer ids; a window that touches
any letter other than A, C, G, T (either case) becomes ``[UNK]``. Encoding is a handful of
whole-array numpy operations (no per-k-mer Python loop).
"""

from __future__ import annotations

import itertools
import os
from typing import Iterable, Sequence

import numpy as np

from genemask_jax import errors

PAD_ID = 0
UNK_ID = 1
CLS_ID = 2
SEP_ID = 3
MASK_ID = 4
NUM_SPECIAL = 5
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
BASES = "ATCG"  # DNABERT's digit order: A=0, T=1, C=2, G=3.
MIN_K, MAX_K = 3, 6
IGNORE_LABEL = -100

# Byte -> 2-bit base code in DNABERT's order; 4 for anything that is not A/C/G/T.
_CODE = np.full(256, 4, dtype=np.uint8)
for _i, _b in enumerate(BASES):
  _CODE[ord(_b)] = _i
  _CODE[ord(_b.lower())] = _i
_BASE_OF_CODE = np.frombuffer(BASES.encode(), dtype=np.uint8)


class TokenizerError(errors.UserError):
  """Input that cannot be tokenized (bad k-mer text, bad k, a sequence that does not fit)."""


def _check_k(k: int) -> None:
  if not isinstance(k, (int, np.integer)) or not MIN_K <= k <= MAX_K:
    raise TokenizerError(f"k must be an integer in {MIN_K}..{MAX_K}, got {k!r}")


def vocab_size(k: int = 6) -> int:
  """Number of tokens: 4^k k-mers plus the five specials (4101 for k=6)."""
  _check_k(k)
  return 4**k + NUM_SPECIAL


def vocab(k: int = 6) -> list[str]:
  """The vocabulary in id order, exactly as DNABERT's ``vocab.txt``."""
  _check_k(k)
  return list(SPECIAL_TOKENS) + ["".join(p) for p in itertools.product(BASES, repeat=k)]


def write_vocab(path: str | os.PathLike, k: int = 6) -> None:
  """Writes ``vocab.txt``: one token a line, line i holds the token with id i."""
  with open(path, "w", encoding="ascii") as f:
    f.write("\n".join(vocab(k)) + "\n")


def _as_bytes(seq: str | bytes | bytearray | np.ndarray) -> np.ndarray:
  if isinstance(seq, np.ndarray):
    if seq.dtype != np.uint8:
      raise TokenizerError(f"a base array must be uint8 ASCII codes, got {seq.dtype}")
    return seq
  if isinstance(seq, str):
    seq = seq.encode("ascii", errors="replace")
  return np.frombuffer(bytes(seq), dtype=np.uint8)


def base_codes(seq: str | bytes | np.ndarray) -> np.ndarray:
  """Per-base 2-bit codes (uint8, A=0 T=1 C=2 G=3), 4 for any other letter."""
  return _CODE[_as_bytes(seq)]


def encode(seq: str | bytes | np.ndarray, k: int = 6) -> np.ndarray:
  """Raw bases -> stride-1 k-mer ids.

  Args:
    seq: bases as str, bytes or a uint8 array of ASCII codes; either case.
    k: k-mer length, 3..6.

  Returns:
    int32 array of shape (max(n - k + 1, 0),); windows with a non-ACGT letter are UNK_ID.
  """
  _check_k(k)
  codes = base_codes(seq)
  n = codes.shape[0] - k + 1
  if n <= 0:
    return np.zeros((0,), np.int32)
  ids = np.zeros(n, np.int32)
  bad = np.zeros(n, bool)
  for i in range(k):  # k whole-array passes, not a loop over k-mers.
    window = codes[i:i + n]
    ids = ids * 4 + (window & 3)
    bad |= window > 3
  ids += NUM_SPECIAL
  ids[bad] = UNK_ID
  return ids


def kmer_to_id(kmer: str) -> int:
  """One k-mer (3..6 letters of ACGT) -> its id; anything else -> UNK_ID."""
  if not MIN_K <= len(kmer) <= MAX_K:
    raise TokenizerError(f"a k-mer has {MIN_K}..{MAX_K} letters, got {kmer!r}")
  ids = encode(kmer, len(kmer))
  return int(ids[0])


def id_to_kmer(token_id: int, k: int = 6) -> str:
  """Token id -> its k-mer, or the special token's name."""
  _check_k(k)
  token_id = int(token_id)
  if not 0 <= token_id < vocab_size(k):
    raise TokenizerError(f"token id {token_id} outside the vocabulary 0..{vocab_size(k) - 1}")
  if token_id < NUM_SPECIAL:
    return SPECIAL_TOKENS[token_id]
  x = token_id - NUM_SPECIAL
  return "".join(BASES[(x >> (2 * (k - 1 - i))) & 3] for i in range(k))


def decode(ids: Sequence[int] | np.ndarray, k: int = 6) -> str:
  """Stride-1 k-mer ids -> bases (inverse of `encode`); special ids are skipped.

  An UNK window decodes as 'N' at each base it alone determines. Raises TokenizerError if
  consecutive k-mers do not overlap by k-1 bases.
  """
  _check_k(k)
  ids = np.asarray(ids, dtype=np.int64)
  ids = ids[(ids >= NUM_SPECIAL) | (ids == UNK_ID)]
  if ids.size == 0:
    return ""
  if ids.max() >= vocab_size(k):
    raise TokenizerError(f"token id {int(ids.max())} outside the vocabulary of k={k}")
  unk = ids == UNK_ID
  x = np.where(unk, 0, ids - NUM_SPECIAL)
  # Digits of every k-mer, most significant first: (n, k).
  shifts = 2 * np.arange(k - 1, -1, -1)
  digits = (x[:, None] >> shifts[None, :]) & 3
  ok = ~(unk[:-1] | unk[1:])
  if np.any(ok & np.any(digits[:-1, 1:] != digits[1:, :-1], axis=1)):
    where = int(np.nonzero(ok & np.any(digits[:-1, 1:] != digits[1:, :-1], axis=1))[0][0])
    raise TokenizerError(f"k-mers {where} and {where + 1} do not overlap by {k - 1} bases")
  # Each base from a non-UNK window that covers it (they agree: checked above); positions
  # covered only by UNK windows become N. (Reading base j off window j - k + 1 alone wrote
  # 'A' for the k - 1 real bases after an N, whose window is UNK.)
  letters = np.full(len(ids) + k - 1, ord("N"), np.uint8)
  good = np.nonzero(~unk)[0]
  for i in range(k):
    letters[good + i] = _BASE_OF_CODE[digits[good, i]]
  return letters.tobytes().decode("ascii")


def kmer_text_to_bases(text: str, k: int | None = None, *, where: str = "k-mer text") -> str:
  """The benchmarks' spaced k-mer form ("AAACGG AACGGA ...") -> raw bases.

  Args:
    text: stride-1 overlapping k-mers separated by whitespace.
    k: expected k-mer length; None infers it from the first k-mer.
    where: names the input (file and line) in error messages.

  Raises:
    TokenizerError: mixed lengths, letters outside ACGTN, or k-mers that do not overlap.
  """
  kmers = text.split()
  if not kmers:
    raise TokenizerError(f"{where}: empty k-mer sequence")
  k = len(kmers[0]) if k is None else k
  if any(len(w) != k for w in kmers):
    bad = next(w for w in kmers if len(w) != k)
    raise TokenizerError(f"{where}: k-mer {bad!r} is not {k} letters long like the others")
  arr = np.frombuffer("".join(kmers).encode("ascii", errors="replace"), np.uint8).reshape(-1, k)
  mismatch = np.any(arr[:-1, 1:] != arr[1:, :-1], axis=1)
  if np.any(mismatch):
    i = int(np.nonzero(mismatch)[0][0])
    raise TokenizerError(
        f"{where}: k-mers {i + 1} ({kmers[i]}) and {i + 2} ({kmers[i + 1]}) do not overlap by "
        f"{k - 1} bases; expected stride-1 overlapping k-mers")
  return (arr[0].tobytes() + arr[1:, -1].tobytes()).decode("ascii")


def encode_kmer_text(text: str, k: int = 6, *, where: str = "k-mer text") -> np.ndarray:
  """Spaced k-mer text -> ids, checking that the k-mers overlap."""
  return encode(kmer_text_to_bases(text, k, where=where), k)


def pack(ids_list: Iterable[np.ndarray], max_len: int, policy: str = "error") -> np.ndarray:
  """Adds [CLS] ... [SEP] and pads with [PAD] to a fixed length.

  Args:
    ids_list: k-mer id arrays, one per sequence.
    max_len: output length including [CLS] and [SEP].
    policy: "error" raises on a sequence of more than max_len - 2 k-mers; "truncate"
      keeps its first max_len - 2.

  Returns:
    int32 array (N, max_len).
  """
  if policy not in ("error", "truncate"):
    raise TokenizerError(f"policy must be 'error' or 'truncate', got {policy!r}")
  if max_len < 3:
    raise TokenizerError(f"max_len must be at least 3 ([CLS] k-mer [SEP]), got {max_len}")
  ids_list = list(ids_list)
  out = np.full((len(ids_list), max_len), PAD_ID, np.int32)
  room = max_len - 2
  for row, ids in enumerate(ids_list):
    n = len(ids)
    if n > room:
      if policy == "error":
        raise TokenizerError(
            f"sequence {row} has {n} k-mers, more than the {room} that fit in max_len={max_len}"
            " with [CLS] and [SEP]; raise max_len or use policy='truncate'")
      n = room
    out[row, 0] = CLS_ID
    out[row, 1:n + 1] = ids[:n]
    out[row, n + 1] = SEP_ID
  return out
