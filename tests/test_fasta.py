"""The FASTA reader streams real genome files and names the file and line of bad input."""
import gzip

import pytest

from genemask_jax.data import fasta


def _write(path, data: bytes, gz=False):
  if gz:
    with gzip.open(path, "wb") as f:
      f.write(data)
  else:
    path.write_bytes(data)
  return path


@pytest.mark.parametrize("gz", [False, True])
def test_records_crlf_soft_mask_iupac(tmp_path, gz):
  p = _write(tmp_path / ("x.fa.gz" if gz else "x.fa"),
             b">r1 desc\r\nACGTac\r\nNNRY\r\n\r\n>r2\nGG\nTT\n", gz)
  recs = list(fasta.iter_records(p))
  assert [(r.name, s) for r, s in recs] == [("r1 desc", b"ACGTacNNRY"), ("r2", b"GGTT")]


def test_blocks_are_contiguous_and_bounded(tmp_path):
  seq = b"ACGT" * 1000
  lines = b"\n".join(seq[i:i + 60] for i in range(0, len(seq), 60))
  p = _write(tmp_path / "x.fa", b">a\n" + lines + b"\n>b\n" + lines + b"\n")
  blocks = list(fasta.iter_blocks(p, block_size=500))
  assert all(len(b) < 500 + 60 for _, b in blocks)
  assert b"".join(b for i, b in blocks if i == 0) == seq
  assert b"".join(b for i, b in blocks if i == 1) == seq


@pytest.mark.parametrize("data,match", [
    (b"", "empty file"),
    (b"ACGT\n>r\nACGT\n", r"x.fa:1: sequence line before any '>' header"),
    (b"\n\nACGT\n", r"x.fa:3: sequence line before"),
    (b">r\nACGT\nAC\x00GT\n", r"x.fa:3: byte b'\\x00'"),
    (b">r\nACGT\nAC GT\n", r"x.fa:3: byte b' '"),
])
def test_bad_input_names_file_and_line(tmp_path, data, match):
  p = _write(tmp_path / "x.fa", data)
  with pytest.raises(fasta.FastaError, match=match):
    list(fasta.iter_blocks(p))


def test_binary_file_fails_fast(tmp_path):
  p = _write(tmp_path / "x.fa", bytes(range(256)) * 4)
  with pytest.raises(fasta.FastaError, match="x.fa:1"):
    fasta.check_files([p])
  with pytest.raises(fasta.FastaError, match="x.fa:1"):
    list(fasta.iter_blocks(p))
  with pytest.raises(fasta.FastaError, match="no such file"):
    fasta.check_files([tmp_path / "missing.fa"])


def test_real_genome_files(data_dir):
  p = data_dir / "genome" / "GRCh37_chr22_blocks.fa.gz"
  n_records = 0
  total = 0
  for rec, seq in fasta.iter_records(p):
    n_records += 1
    total += len(seq)
    if n_records == 1:
      assert rec.name.startswith("chr22:17443628-17448117")
  assert n_records == 9627
  assert total >= 21_629_084
