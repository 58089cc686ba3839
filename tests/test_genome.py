"""Genome chunking: the paper's chunk-length law, seeding, the 90/10 split, N handling."""
import gzip
import sys

import numpy as np
import pytest

from genemask_jax import tokenizer
from genemask_jax.data import fasta
from genemask_jax.data import genome
from genemask_jax.data import sample


@pytest.fixture(scope="module")
def chrx() -> bytes:
  """The embedded real chrX slice: 4 Mbp, N-free, upper case."""
  for record, seq in fasta.iter_records(genome.default_genome_paths()[0]):
    assert record.name.startswith("chrX:")
    return seq
  raise AssertionError("no record")


def _write_fasta(path, records, width=60, gz=False):
  opener = gzip.open if gz else open
  with opener(path, "wb") as f:
    for name, seq in records:
      f.write(b">" + name.encode() + b"\n")
      for i in range(0, len(seq), width):
        f.write(seq[i:i + width] + b"\n")
  return str(path)


def _bases(chunk: genome.Chunk) -> str:
  return tokenizer.decode(chunk.input_ids[1:chunk.length - 1])


def test_embedded_sample_is_small_and_real():
  (path,) = genome.default_genome_paths()
  with open(path, "rb") as f:
    assert f.read(2) == b"\x1f\x8b"
  import os
  assert os.path.getsize(path) <= 2 * 1024 * 1024
  names, total = [], 0
  for record, seq in fasta.iter_records(path):
    names.append(record.name)
    total += len(seq)
    if record.name.startswith("chrX"):
      assert seq.upper().translate(None, b"ACGT") == b"", record.name
  assert names[0].startswith("chrX:30000000-34000000")
  assert any(n.startswith("chr22:") for n in names)
  assert total > 5_000_000


def test_chunk_lengths_follow_the_paper(tmp_path, chrx):
  path = _write_fasta(tmp_path / "x.fa", [("x", chrx)])
  cfg = genome.ChunkConfig(seed=3)
  chunks = list(genome.iter_chunks([path], cfg))
  bp = np.array([c.length - 2 + cfg.k - 1 for c in chunks])
  bp = bp[1:-1]  # The segment's first and last chunks are cut short.
  n = len(bp)
  assert n > 3000
  frac_full = np.mean(bp == 511)
  assert abs(frac_full - 0.5) < 4 * np.sqrt(0.25 / n)
  short = bp[bp != 511]
  assert short.min() >= 6 and short.max() <= 510
  # Uniform on 6..510: each fifth of the range holds ~20% of the short chunks.
  hist, _ = np.histogram(short, bins=5, range=(6, 511))
  assert np.all(np.abs(hist / len(short) - 0.2) < 4 * np.sqrt(0.16 / len(short)))
  # Chunks are consecutive and non-overlapping and lose no base: the random offset only
  # shortens the first chunk.
  text = chrx.decode()
  joined = "".join(_bases(c) for c in chunks)
  assert joined == text
  assert 6 <= len(_bases(chunks[0])) <= 511


def test_full_chunk_packs_like_the_tokenizer(tmp_path, chrx):
  path = _write_fasta(tmp_path / "x.fa", [("x", chrx[:200_000])])
  chunks = list(genome.iter_chunks([path]))
  full = next(c for c in chunks if c.length == 508)
  assert full.input_ids.shape == (512,) and full.input_ids.dtype == np.int32
  bases = _bases(full)
  assert len(bases) == 511
  expect = tokenizer.pack([tokenizer.encode(bases)], 512)[0]
  np.testing.assert_array_equal(full.input_ids, expect)
  assert all(np.sum(c.input_ids != tokenizer.PAD_ID) == c.length for c in chunks)
  assert not any(np.any(c.input_ids == tokenizer.UNK_ID) for c in chunks)


def test_seeded_deterministic_and_blocking_independent(tmp_path, chrx):
  path = _write_fasta(tmp_path / "x.fa", [("x", chrx[:300_000])])

  def run(seed, block_size=1 << 22):
    return [(c.split, c.key, c.input_ids.tobytes())
            for c in genome.iter_chunks([path], genome.ChunkConfig(seed=seed), block_size)]

  a = run(0)
  assert a == run(0)
  assert a == run(0, block_size=997)  # Blocks of a few lines: same chunks.
  assert a != run(1)
  assert len({k for _, k, _ in a}) == len(a)  # Keys are unique.


def test_split_is_90_10_and_order_independent(tmp_path, chrx):
  path = _write_fasta(tmp_path / "x.fa", [("x", chrx[:1_000_000])])
  chunks = list(genome.iter_chunks([path], genome.ChunkConfig(seed=5)))
  val = np.mean([c.split == genome.VALIDATION for c in chunks])
  n = len(chunks)
  assert abs(val - 0.1) < 4 * np.sqrt(0.09 / n)
  # The split is a function of (seed, record, chunk index), not of position in a stream.
  idx = np.arange(n)
  np.testing.assert_array_equal(
      genome.is_validation(5, "x", idx, 0.1)[::-1],
      genome.is_validation(5, "x", idx[::-1], 0.1))
  assert [c.split == genome.VALIDATION for c in chunks] == list(
      genome.is_validation(5, "x", idx, 0.1))


def test_no_chunk_crosses_n_runs_by_default_and_join_glues(tmp_path, chrx):
  pieces = [chrx[i * 40_000:(i + 1) * 40_000] for i in range(4)]
  seq = pieces[0] + b"N" * 500 + pieces[1] + b"R" + pieces[2] + b"nnnn" + pieces[3]
  path = _write_fasta(tmp_path / "n.fa", [("chrN", seq)])
  texts = [p.decode() for p in pieces]
  split = list(genome.iter_chunks([path]))
  for c in split:
    b = _bases(c)
    assert "N" not in b
    assert any(b in t for t in texts), c.key
  joined = list(genome.iter_chunks([path], genome.ChunkConfig(join_across_n=True)))
  glued = b"".join(pieces).decode()
  spans = [_bases(c) for c in joined]
  assert all(s in glued for s in spans)
  assert any(not any(s in t for t in texts) for s in spans)  # Some chunk spans a junction.
  assert not any(np.any(c.input_ids == tokenizer.UNK_ID) for c in joined)


def test_soft_masked_letters_are_upper_cased(tmp_path, chrx):
  seq = chrx[:100_000]
  masked = seq[:30_000] + seq[30_000:60_000].lower() + seq[60_000:]
  up = _write_fasta(tmp_path / "u.fa", [("r", seq)])
  low = _write_fasta(tmp_path / "l.fa.gz", [("r", masked)], width=70, gz=True)
  a = [(c.split, c.input_ids.tobytes()) for c in genome.iter_chunks([up])]
  b = [(c.split, c.input_ids.tobytes()) for c in genome.iter_chunks([low])]
  assert a == b


def test_records_and_files_are_independent(tmp_path, chrx):
  r1, r2 = chrx[:50_000], chrx[50_000:120_000]
  both = _write_fasta(tmp_path / "both.fa", [("a", r1), ("b", r2)])
  only_b = _write_fasta(tmp_path / "b.fa", [("b", r2)])
  from_both = [(c.split, c.input_ids.tobytes()) for c in genome.iter_chunks([both])
               if ":b:" in c.key]
  from_b = [(c.split, c.input_ids.tobytes()) for c in genome.iter_chunks([only_b])]
  assert from_both == from_b


def test_bad_input_raises_early(tmp_path):
  with pytest.raises(genome.GenomeConfigError, match="max_len"):
    genome.ChunkConfig(max_len=256).validate()
  with pytest.raises(genome.GenomeConfigError, match="min_chunk_bp"):
    genome.ChunkConfig(min_chunk_bp=3).validate()
  with pytest.raises(genome.GenomeConfigError, match="bogus"):
    genome.ChunkConfig.from_dict({"seed": 1, "bogus": 2})
  empty = tmp_path / "empty.fa"
  empty.write_bytes(b"")
  with pytest.raises(fasta.FastaError, match="empty"):
    next(genome.iter_chunks([str(empty)]))
  all_n = tmp_path / "n.fa"
  all_n.write_bytes(b">n\n" + b"N" * 5000 + b"\n>p\nMKVLAAGIVGLLLAQW\n")
  stats = genome.ChunkStats()
  assert not list(genome.iter_chunks([str(all_n)], stats=stats))
  assert (stats.letters, stats.acgt, stats.kept) == (5016, 5, 0)
  assert stats.describe() == "5,016 letters, 5 A/C/G/T, 0.00% of those kept in 0 chunks"
  headless = tmp_path / "headless.fa"
  headless.write_bytes(b"ACGTACGT\n")
  with pytest.raises(fasta.FastaError, match="header"):
    next(genome.iter_chunks([str(headless)]))


def test_make_sample_is_reproducible(tmp_path, data_dir):
  out = tmp_path / "s.fa.gz"
  info = sample.make_sample(data_dir / "genome", out, chrx_bp=100_000, chr22_blocks=5)
  assert info["chr22_records"] == 5
  first = out.read_bytes()
  sample.make_sample(data_dir / "genome", out, chrx_bp=100_000, chr22_blocks=5)
  assert out.read_bytes() == first
  (ref,) = genome.default_genome_paths()
  ref_seq = next(fasta.iter_records(ref))[1]
  new_seq = next(fasta.iter_records(out))[1]
  assert ref_seq[:100_000] == new_seq


def test_no_tensorflow():
  assert "tensorflow" not in sys.modules


def _chunk_bp(chunks, k=6) -> int:
  return sum(c.length - 2 + k - 1 for c in chunks)


def test_short_segments_keep_their_bases_and_the_share_is_reported(tmp_path, chrx):
  # #20 item 7: 2,000 records of 800 bp kept 41% of their bases when the random start
  # offset was dropped; an IUPAC letter every kb kept 47%.
  short = _write_fasta(tmp_path / "short.fa",
                       [(f"r{i}", chrx[i * 800:(i + 1) * 800]) for i in range(2000)])
  stats = genome.ChunkStats()
  chunks = list(genome.iter_chunks([short], stats=stats))
  assert stats.letters == stats.acgt == 2000 * 800
  assert stats.kept == _chunk_bp(chunks) and stats.chunks == len(chunks)
  assert stats.share_kept > 0.99
  assert all(6 <= c.length - 2 + 5 <= 511 for c in chunks)
  seq = bytearray(chrx[:300_000])
  seq[999::1000] = b"R" * len(seq[999::1000])
  iupac = _write_fasta(tmp_path / "iupac.fa", [("x", bytes(seq))])
  stats = genome.ChunkStats()
  chunks = list(genome.iter_chunks([iupac], stats=stats))
  assert stats.letters == 300_000 and stats.acgt == 300_000 - 300
  assert stats.kept == _chunk_bp(chunks) and stats.share_kept > 0.99
  assert "99." in stats.describe() or "100.00%" in stats.describe()
  joined = list(genome.iter_chunks([iupac], genome.ChunkConfig(join_across_n=True)))
  assert _chunk_bp(joined) >= 0.999 * (300_000 - 300)
