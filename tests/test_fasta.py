"""The FASTA reader streams real genome files and names the file and line of bad input."""
import collections
import gzip
import os

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
  assert all(len(b) <= 500 for _, b in blocks)
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


def test_utf8_header_is_text_and_other_bytes_are_named(tmp_path):
  # #20 item 11: a valid UTF-8 header was rejected as "binary".
  p = _write(tmp_path / "u.fa", ">chr1 Homo sapiens — séquence\nACGT\n".encode())
  fasta.check_files([p])
  assert [(r.name, s) for r, s in fasta.iter_records(p)] == [
      ("chr1 Homo sapiens — séquence", b"ACGT")]
  bad = _write(tmp_path / "l1.fa", b">chr1 s\xe9quence\nACGT\n")
  with pytest.raises(fasta.FastaError, match=r"l1.fa:1: header is not UTF-8"):
    fasta.check_files([bad])
  with pytest.raises(fasta.FastaError, match=r"l1.fa:1: header is not UTF-8"):
    list(fasta.iter_blocks(bad))


def test_directory_is_named_as_a_directory(tmp_path):
  # #20 item 11: a directory given as FASTA said "no such file".
  (tmp_path / "genome").mkdir()
  (tmp_path / "genome" / "chr1.fa.gz").write_bytes(b"")
  with pytest.raises(fasta.FastaError, match=r"genome: is a directory.*chr1.fa.gz"):
    fasta.check_files([tmp_path / "genome"])


def test_leading_blank_and_comment_lines_are_allowed(tmp_path):
  p = _write(tmp_path / "c.fa", b"\n;comment\n>r\nAC\n;inner\nGT\n")
  fasta.check_files([p])
  assert [(r.name, r.line, s) for r, s in fasta.iter_records(p)] == [("r", 3, b"ACGT")]


@pytest.mark.parametrize("read_size", [1, 7, 1 << 20])
def test_one_long_line_streams_in_bounded_pieces(tmp_path, read_size):
  seq = b"ACGTN" * 20_000
  p = _write(tmp_path / "one.fa", b">a\n" + seq + b"\n>b\nTT\nGG")
  pieces = list(fasta.iter_pieces(p, read_size=read_size))
  assert all(len(piece) <= read_size for _, piece in pieces)
  assert b"".join(x for r, x in pieces if r.index == 0) == seq
  assert b"".join(x for r, x in pieces if r.index == 1) == b"TTGG"
  with pytest.raises(fasta.FastaError, match=r"x.fa:3: byte b'!'"):
    list(fasta.iter_pieces(_write(tmp_path / "x.fa", b">a\nAC\nA!\n"), read_size=read_size))


def test_overlong_header_is_refused(tmp_path):
  p = _write(tmp_path / "h.fa", b">" + b"x" * (2 << 20) + b"\nACGT\n")
  with pytest.raises(fasta.FastaError, match=r"h.fa:1: header line longer than 1048576 bytes"):
    list(fasta.iter_blocks(p))


def test_spans_hold_each_records_bytes_as_the_stream_reader_reads_them(tmp_path):
  data = (b"\n\n>r1 desc\r\nACGTac\r\n;a comment\r\nNNRY\r\n\r\n>empty\n>\nGG\nTT\n"
          b">last no newline\nACG")
  for gz in (False, True):
    p = _write(tmp_path / ("x.fa.gz" if gz else "x.fa"), data, gz)
    copy = str(tmp_path / "copy.fa")
    spans = list(fasta.iter_spans(p, copy_to=copy, read_size=5))  # Tiny reads: edges.
    read = copy if gz else str(p)
    assert [(s.index, s.name) for s in spans] == [(0, "r1 desc"), (1, "empty"), (2, ""),
                                                  (3, "last no newline")]
    assert len(spans[0].parts) == 2  # The comment line is left out.
    want = {r.index: (r.name, s) for r, s in fasta.iter_records(p)}
    with open(read, "rb") as f:
      got = {s.index: (s.name, b"".join(fasta.read_letters(f, a, b, "x.fa", read)
                                        for a, b in s.parts)) for s in spans}
    assert {i: v for i, v in got.items() if v[1]} == want
    with open(read, "rb") as f:
      assert b"".join(fasta.read_letters(f, a, b, "x", read, acgt_only=True)
                      for a, b in spans[0].parts) == b"ACGTac"


def test_progress_spans_report_each_record_as_it_is_read(tmp_path):
  data = (b">r1\n" + b"ACGTACGTAC\n" * 30 + b";c\n" + b"GGCCA\n" * 20 + b">r2\nAC\n>r3\n"
          + b"TTTTTTTTTT\n" * 25)
  for gz in (False, True):
    p = _write(tmp_path / ("p.fa.gz" if gz else "p.fa"), data, gz)
    copy = str(tmp_path / "copy.fa")
    want = list(fasta.iter_spans(p, copy_to=copy, read_size=7))
    got = []
    for s in fasta.iter_spans(p, copy_to=copy, read_size=7, progress_bytes=40):
      if not s.complete:  # Its bytes so far are in the copy already.
        assert os.path.getsize(copy if gz else p) >= s.parts[-1][1]
      got.append(s)
    assert [s for s in got if s.complete] == want
    for s in got:  # Each installment: the complete span's parts, the last one cut short.
      if not s.complete:
        whole = next(w for w in want if w.index == s.index)
        assert s.parts[:-1] == whole.parts[:len(s.parts) - 1]
        last = whole.parts[len(s.parts) - 1]
        assert s.parts[-1][0] == last[0] and s.parts[-1][1] <= last[1]
    progress = collections.Counter(s.index for s in got if not s.complete)
    assert progress[0] >= 5 and progress[2] >= 3 and not progress[1]  # r2 is 3 bytes long.


def test_spans_name_the_line_of_bad_structure(tmp_path):
  with pytest.raises(fasta.FastaError, match=r"s.fa:2: sequence line before any '>'"):
    list(fasta.iter_spans(_write(tmp_path / "s.fa", b"\nACGT\n>a\nAC\n")))
  with pytest.raises(fasta.FastaError, match=r"h.fa:3: header is not UTF-8"):
    list(fasta.iter_spans(_write(tmp_path / "h.fa", b">a\nAC\n>\xff\xfe\nAC\n")))
  with pytest.raises(fasta.FastaError, match=r"e.fa: empty file"):
    list(fasta.iter_spans(_write(tmp_path / "e.fa", b"")))
  with pytest.raises(fasta.FastaError, match=r"n.fa: no FASTA header"):
    list(fasta.iter_spans(_write(tmp_path / "n.fa", b"\n;only a comment\n")))
  p = _write(tmp_path / "b.fa", b">a\nACGT\nAC#T\n")
  with open(p, "rb") as f, pytest.raises(fasta.FastaError, match=r"b.fa:3: byte b'#'"):
    fasta.read_letters(f, 3, 13, "b.fa", str(p))


@pytest.mark.parametrize("data, message", [
    (b"\n\nAC\n>a\nAC\n", ":3: sequence line before any '>' header"),
    (b";c\n>a\nAC\n>\xff\xfe", ":4: header is not UTF-8"),  # A last header, no newline.
    (b">" + b"x" * (1 << 20) + b"y\nAC\n", ":1: header line longer than 1048576 bytes"),
    (b"\n;one\n;two", ": no FASTA header ('>name' line) found in 3 lines"),
    (b"\r\n\r\n", ": no FASTA header ('>name' line) found in 2 lines"),
])
@pytest.mark.parametrize("read_size", [3, 1 << 20])
def test_both_readers_refuse_bad_structure_with_the_same_message(tmp_path, data, message,
                                                                 read_size):
  """iter_pieces (the one-process build) and iter_spans (the parallel build's structure
  pass) share their header and comment handling: a bad file gets one message either way."""
  p = _write(tmp_path / "x.fa", data)
  with pytest.raises(fasta.FastaError) as pieces:
    list(fasta.iter_pieces(p, read_size=read_size))
  with pytest.raises(fasta.FastaError) as spans:
    list(fasta.iter_spans(p, read_size=read_size))
  assert str(pieces.value).startswith(f"{p}{message}")
  assert str(spans.value) == str(pieces.value)
