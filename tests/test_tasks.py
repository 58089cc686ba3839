"""Few-shot task table and readers on the real shipped files, and their errors on bad input."""

import csv
import pathlib

import numpy as np
import pytest

from genemask_jax import tokenizer
from genemask_jax.data import tasks

# Row counts of the test files, as the data README states them.
README_TEST_ROWS = {"prom_core": 5920, "prom_300": 5920, "cohn_enh": 6948, "splice_40": 3000}
# Test rows that also occur in a train file: the data README's numbers (Prom-300: "up to
# 116"; the per-shot Prom-300 numbers below it were found with plain set logic, as the test
# recomputes them); every other (task, shot) has none.
README_OVERLAPS = {
    ("prom_core", 1000): 1,
    ("splice_40", 50): 1, ("splice_40", 100): 3, ("splice_40", 500): 8,
    ("prom_300", 50): 4, ("prom_300", 100): 12, ("prom_300", 500): 35, ("prom_300", 1000): 116,
}


def _raw_rows(path: pathlib.Path) -> int:
  """Data rows by counting non-empty lines, minus the header (no csv, no package code)."""
  return sum(1 for line in path.read_bytes().splitlines() if line.strip()) - 1


def _plain_bases(field: str) -> str:
  """Independent oracle: spaced stride-1 k-mers -> bases, raw bases -> upper case."""
  field = field.strip().strip('"')
  if " " in field:
    kmers = field.split()
    return kmers[0] + "".join(w[-1] for w in kmers[1:])
  return field.upper()


def _plain_sequences(path: pathlib.Path) -> list[str]:
  lines = path.read_text().splitlines()[1:]
  sep = "," if path.suffix == ".csv" else "\t"
  return [_plain_bases(line.split(sep)[0]) for line in lines if line.strip()]


def test_task_table():
  assert set(tasks.TASKS) == {"prom_core", "prom_300", "cohn_enh", "splice_40"}
  spec = tasks.TASKS["prom_core"]
  assert (spec.display_name, spec.num_classes, spec.seq_len, spec.max_len) == (
      "Prom-core", 2, 70, 67)
  assert tasks.TASKS["splice_40"].num_classes == 3
  assert tasks.TASKS["splice_40"].max_len == 37
  assert tasks.TASKS["cohn_enh"].shots == (10, 50, 100, 500)
  assert tasks.TASKS["prom_300"].shots == (10, 50, 100, 500, 1000)
  assert tasks.TASKS["prom_300"].proxy_test
  assert "not comparable with the paper" in tasks.TASKS["prom_300"].note
  assert not any(t.proxy_test for n, t in tasks.TASKS.items() if n != "prom_300")
  assert tasks.TASKS["cohn_enh"].splits == ("train_10", "train_50", "train_100", "train_500",
                                            "test")
  assert tasks.get_task("Splice-40") is tasks.TASKS["splice_40"]


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_every_shipped_file_loads_with_its_row_counts(data_dir, name):
  spec = tasks.TASKS[name]
  for shot in spec.shots:
    path = spec.train_path(shot, data_dir)
    ex = tasks.load_split(name, f"train_{shot}", data_dir)
    assert len(ex) == _raw_rows(path) == spec.num_classes * spec.examples_per_class(shot)
    np.testing.assert_array_equal(ex.class_counts(spec.num_classes),
                                  [spec.examples_per_class(shot)] * spec.num_classes)
    assert ex.labels.dtype == np.int32
    assert all(len(s) == spec.seq_len for s in ex.sequences)
    assert ex.sequences == _plain_sequences(path)
    assert set("".join(ex.sequences)) <= set("ACGTN")
  test = tasks.load_split(name, "test", data_dir)
  assert len(test) == README_TEST_ROWS[name] == _raw_rows(spec.test_path(data_dir))
  assert test.sequences == _plain_sequences(spec.test_path(data_dir))
  assert all(len(s) == spec.seq_len for s in test.sequences)


def test_splice40_shot_files_hold_ten_n_per_class(data_dir):
  ex = tasks.load_split("splice_40", "train_10", data_dir)
  assert len(ex) == 300
  np.testing.assert_array_equal(np.bincount(ex.labels), [100, 100, 100])
  assert tasks.TASKS["splice_40"].examples_per_class(500) == 5000


def test_labels_follow_the_right_column(data_dir):
  cohn = tasks.load_split("cohn_enh", "test", data_dir)
  with open(tasks.TASKS["cohn_enh"].test_path(data_dir), newline="") as f:
    rows = list(csv.DictReader(f))
  expected = [1 if r["target"] == "positive" else 0 for r in rows]
  np.testing.assert_array_equal(cohn.labels, expected)
  np.testing.assert_array_equal(np.bincount(cohn.labels), [3474, 3474])


def test_quoted_and_unquoted_kmer_tsv_read_alike(data_dir):
  a = tasks.load_split("splice_40", "test", data_dir)
  b = tasks.read_file(data_dir / "fewshot/Splice-40/full-dataset/test.tsv", tasks.KMER_TSV, 3)
  assert a.sequences == b.sequences
  np.testing.assert_array_equal(a.labels, b.labels)


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_overlaps_removed_and_counted(data_dir, name):
  spec = tasks.TASKS[name]
  test_seqs = _plain_sequences(spec.test_path(data_dir))
  for shot in spec.shots:
    data = tasks.load_task(name, shot, data_dir)
    train_set = set(_plain_sequences(spec.train_path(shot, data_dir)))
    expected = sum(s in train_set for s in test_seqs)
    assert data.removed_overlaps == expected == README_OVERLAPS.get((name, shot), 0)
    assert len(data.test) == len(test_seqs) - expected
    assert not set(data.test.sequences) & set(data.train.sequences)
    assert data.proxy_test == spec.proxy_test and data.note == spec.note


def test_duplicates_inside_files_are_reported_not_removed(data_dir):
  spec = tasks.TASKS["splice_40"]
  seqs = _plain_sequences(spec.train_path(500, data_dir))
  data = tasks.load_task("splice_40", 500, data_dir)
  assert data.train_duplicates == len(seqs) - len(set(seqs)) == 28
  assert len(data.train) == 15000
  test_seqs = _plain_sequences(spec.test_path(data_dir))
  assert data.test_duplicates == len(test_seqs) - len(set(test_seqs)) == 1
  prom = tasks.load_task("prom_core", 10, data_dir)
  assert (prom.train_duplicates, prom.test_duplicates) == (0, 2)


def test_encode_examples(data_dir):
  spec = tasks.TASKS["splice_40"]
  ex = tasks.load_split("splice_40", "train_10", data_dir)
  ids, labels = tasks.encode_examples(ex, spec.max_len)
  assert ids.shape == (300, 37) and ids.dtype == np.int32 and labels.dtype == np.int32
  assert (ids[:, 0] == tokenizer.CLS_ID).all() and (ids[:, -1] == tokenizer.SEP_ID).all()
  np.testing.assert_array_equal(ids[7, 1:-1], tokenizer.encode(ex.sequences[7]))
  assert tokenizer.decode(ids[7]) == ex.sequences[7]
  np.testing.assert_array_equal(labels, ex.labels)
  with pytest.raises(tokenizer.TokenizerError, match="max_len"):
    tasks.encode_examples(ex, spec.max_len - 1)


# ---------------------------------------------------------------------------------------
# Bad input.

KMERS = "AAACGG AACGGA ACGGAA"  # 8 bp.


def _write(tmp_path, text, name="bad.tsv"):
  path = tmp_path / name
  path.write_text(text) if isinstance(text, str) else path.write_bytes(text)
  return path


@pytest.mark.parametrize("text, line, match", [
    ("", None, "empty file"),
    ("\n\n", None, "empty file"),
    ('"sequence"\t"label"\n', None, "no data rows"),
    ('"sequence"\n"AAACGG"\n', 1, r"missing label.*expected 2 columns sequence, label"),
    ('"sequence"\t"label"\t"x"\n', 1, r"extra 'x'.*expected 2 columns"),
    ("sequence,label\nAAACGGA,1\n", 1, "separated by tab"),
    (f'"sequence"\t"label"\n"{KMERS}"\t"1"\n"{KMERS}"\n', 3, r"1 fields \(missing columns\)"),
    (f'"sequence"\t"label"\n"{KMERS}"\t"1"\t"0"\n', 2, r"3 fields \(extra columns\)"),
    (f'"sequence"\t"label"\n"{KMERS}"\t"1"\n"{KMERS}"\t"one"\n', 3, "not an integer"),
    (f'"sequence"\t"label"\n"{KMERS}"\t"1.0"\n', 2, "not an integer"),
    (f'"sequence"\t"label"\n"{KMERS}"\t"2"\n', 2, r"out of range; expected one of 0\.\.1"),
    (f'"sequence"\t"label"\n"{KMERS}"\t"-1"\n', 2, "out of range"),
    ('"sequence"\t"label"\n"AAACGG AACGGA TTTTTT"\t"1"\n', 2, "do not overlap"),
    ('"sequence"\t"label"\n"AAACGG AACGG"\t"1"\n', 2, "not 6 letters"),
    ('"sequence"\t"label"\n"AAACG1 AACG1A"\t"1"\n', 2, "expected stride-1"),
    (b'"sequence"\t"label"\n"AAACGG"\t"1"\n\x00\x9c\xff\n', 3, "binary data"),
])
def test_bad_tsv_names_file_and_line(tmp_path, text, line, match):
  path = _write(tmp_path, text)
  where = f"{path}:{line}" if line else str(path)
  with pytest.raises(tasks.FewShotDataError, match=match) as e:
    tasks.read_file(path, tasks.KMER_TSV, num_classes=2)
  assert str(e.value).startswith(where)


@pytest.mark.parametrize("fmt, text, line, match", [
    (tasks.CSV_SEQUENCE_TARGET_NUMERIC, "sequence,numeric_label\nACGT,1\n", 1, "missing target"),
    (tasks.CSV_SEQUENCE_TARGET_NUMERIC, "sequence,target,numeric_label\nACGT,positive,x\n", 2,
     "'numeric_label' is not an integer"),
    (tasks.CSV_SEQUENCE_TARGET_NUMERIC, "sequence,target,numeric_label\nACGT,positive\n", 2,
     "missing columns"),
    (tasks.CSV_SEQUENCE_LABEL, "sequence,label\nACGT,1\nAC-T,0\n", 3, "sequence holds '-'"),
    (tasks.CSV_SEQUENCE_LABEL, "sequence,label\nACGT,1\nACGT,5\n", 3, "out of range"),
])
def test_bad_csv_names_file_and_line(tmp_path, fmt, text, line, match):
  path = _write(tmp_path, text, "bad.csv")
  with pytest.raises(tasks.FewShotDataError, match=match) as e:
    tasks.read_file(path, fmt, num_classes=2)
  assert str(e.value).startswith(f"{path}:{line}")


def test_csv_with_quotes_and_lower_case(tmp_path):
  path = _write(tmp_path, 'sequence,label\n"acgtn",1\nACGTA,"0"\n', "ok.csv")
  ex = tasks.read_file(path, tasks.CSV_SEQUENCE_LABEL, num_classes=2)
  assert ex.sequences == ["ACGTN", "ACGTA"]
  np.testing.assert_array_equal(ex.labels, [1, 0])
  np.testing.assert_array_equal(ex.lines, [2, 3])


def test_crlf_and_byte_order_mark(tmp_path):
  text = b'\xef\xbb\xbf"sequence"\t"label"\r\n"AAACGG AACGGA"\t"1"\r\n'
  path = _write(tmp_path, text, "crlf.tsv")
  ex = tasks.read_file(path, tasks.KMER_TSV, num_classes=2)
  assert ex.sequences == ["AAACGGA"]
  np.testing.assert_array_equal(ex.labels, [1])


def test_load_split_checks_length_and_missing_files(tmp_path):
  task_dir = tmp_path / "fewshot" / "Prom-core" / "10"
  task_dir.mkdir(parents=True)
  (task_dir / "train.tsv").write_text(f'"sequence"\t"label"\n"{KMERS}"\t"1"\n')
  with pytest.raises(tasks.FewShotDataError, match=r"train.tsv:2: sequence has 8 bp; expected 70"):
    tasks.load_split("prom_core", "train_10", tmp_path)
  with pytest.raises(tasks.FewShotDataError, match=r"Prom-core/test.tsv: file not found"):
    tasks.load_split("prom_core", "test", tmp_path)


def test_unknown_task_shot_split(data_dir):
  with pytest.raises(tasks.FewShotDataError,
                     match="unknown few-shot task 'prom_400'; known tasks: prom_core, "
                           "prom_300, cohn_enh, splice_40"):
    tasks.load_task("prom_400", 10, data_dir)
  with pytest.raises(tasks.FewShotDataError,
                     match="cohn_enh has no 1000-shot set; shots: 10, 50, 100, 500"):
    tasks.load_task("cohn_enh", 1000, data_dir)
  with pytest.raises(tasks.FewShotDataError, match="splice_40 has no 1000-shot set"):
    tasks.load_split("splice_40", "train_1000", data_dir)
  with pytest.raises(tasks.FewShotDataError,
                     match="prom_core has no split 'dev'; splits: train_10, .*, test"):
    tasks.load_split("prom_core", "dev", data_dir)
  assert tasks.check_shot(tasks.TASKS["prom_300"], "1000") == 1000  # A flag's string.
  for bad in (True, 10.5, "ten"):
    with pytest.raises(tasks.FewShotDataError, match=f"has no {bad}-shot set"):
      tasks.check_shot(tasks.TASKS["prom_300"], bad)
  with pytest.raises(tasks.FewShotDataError, match="has no 7-shot set"):
    tasks.TASKS["prom_300"].examples_per_class(7)


def test_resolve_data_dir(tmp_path, monkeypatch):
  monkeypatch.delenv(tasks.DATA_DIR_ENV, raising=False)
  with pytest.raises(tasks.FewShotDataError, match="pass --data_dir.*or set GENEMASK_DATA_DIR"):
    tasks.resolve_data_dir()
  assert tasks.resolve_data_dir(str(tmp_path)) == tmp_path
  monkeypatch.setenv(tasks.DATA_DIR_ENV, str(tmp_path / "env"))
  with pytest.raises(tasks.FewShotDataError, match="from GENEMASK_DATA_DIR.*not a directory"):
    tasks.resolve_data_dir()
  (tmp_path / "env").mkdir()
  assert tasks.resolve_data_dir() == tmp_path / "env"
  assert tasks.resolve_data_dir(tmp_path) == tmp_path  # The flag wins over the env var.
