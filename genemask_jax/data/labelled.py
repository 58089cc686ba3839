"""Your own labelled sequences: DNABERT-2/GUE-layout datasets and prediction inputs.

A dataset is a folder with ``train.csv``, ``dev.csv`` and ``test.csv``, comma-separated,
whose header holds a ``sequence`` and a ``label`` column (other columns are ignored), one
sequence of raw bases per row: the layout of DNABERT-2's GUE benchmark, so a GUE task is
``GUE_DIR/<group>/<task>`` (e.g. ``prom/prom_300_all``)::

    ds = labelled.load_dataset(labelled.gue_task_dir(GUE_DIR, "prom/prom_300_all"))
    ds = labelled.load_dataset(DIR, task_type="regression")
    names, seqs = labelled.read_sequences("new.fa.gz")     # FASTA (gzip or not) or CSV

Classification labels may be any values (integers or words); the classes are the distinct
labels of ``train.csv``, in numeric order when all are integers, else in text order, and
``dev``/``test`` may hold no other label. Regression labels must be numbers. Malformed
input raises `DatasetError` naming the file, the line and what was expected, before any
model work.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import pathlib
import re

import numpy as np

from genemask_jax import errors
from genemask_jax import tokenizer
from genemask_jax.data import fasta

SPLITS = ("train", "dev", "test")
TASK_TYPES = ("classification", "regression")
_BASES_RE = re.compile(r"[A-Za-z]+")
_FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".fa.gz", ".fasta.gz", ".fna.gz")


class DatasetError(errors.UserError):
  """A bad dataset folder or input file; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One file of a dataset.

  Attributes:
    sequences: raw bases, upper case, one ``str`` per row.
    labels: int32 (N,) class indices into `Dataset.label_values` (classification) or
      float32 (N,) targets (regression).
    source: the file.
  """
  sequences: list[str]
  labels: np.ndarray
  source: str

  def __len__(self) -> int:
    return len(self.sequences)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """train/dev/test of one task.

  Attributes:
    name: the folder's name (GUE: "group/task").
    task_type: "classification" or "regression".
    label_values: the class labels as written in the files, index = class id; () for
      regression.
    train, dev, test: the splits.
  """
  name: str
  task_type: str
  label_values: tuple[str, ...]
  train: Split
  dev: Split
  test: Split

  @property
  def num_labels(self) -> int:
    """Outputs of the model: the number of classes, 1 for regression."""
    return len(self.label_values) if self.task_type == "classification" else 1


def gue_task_dir(gue_dir: str | os.PathLike, task: str) -> pathlib.Path:
  """``GUE_DIR/<group>/<task>``, checked to exist (e.g. task "prom/prom_300_all")."""
  root = pathlib.Path(gue_dir)
  if not root.is_dir():
    raise DatasetError(f"--gue_dir={gue_dir}: not a directory; expected GUE's folder "
                       "(holding prom/, tf/, EMP/, ...)")
  path = root / task
  if not path.is_dir():
    groups = sorted(p.name for p in root.iterdir() if p.is_dir())
    raise DatasetError(f"--task={task}: no folder {path}; expected GROUP/TASK, e.g. "
                       f"prom/prom_300_all (groups here: {', '.join(groups) or 'none'})")
  return path


def _utf8(path: pathlib.Path, raw: bytes, expected: str) -> str:
  """`raw` as text (a leading BOM dropped); not UTF-8 -> DatasetError naming the line."""
  try:
    return raw.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = raw.count(b"\n", 0, e.start) + 1
    raise DatasetError(f"{path}:{line}: not UTF-8 text (binary data?); expected "
                       f"{expected}") from e


def _read_table(path: pathlib.Path) -> list[tuple[int, str, str]]:
  """(line, sequence, label) rows of a ``sequence,label`` CSV, checked."""
  try:
    raw = path.read_bytes()
  except FileNotFoundError as e:
    raise DatasetError(f"{path}: file not found") from e
  except OSError as e:
    raise DatasetError(f"{path}: cannot read: {e.strerror or e}") from e
  if raw.startswith(b"\xef\xbb\xbf"):
    raw = raw[3:]
  if not raw.strip():
    raise DatasetError(f"{path}: empty file; expected a header with sequence,label and rows")
  text = _utf8(path, raw, "a CSV table")
  reader = csv.reader(io.StringIO(text, newline=""))
  rows, header, seq_col, label_col = [], None, -1, -1
  try:
    for row in reader:
      where = f"{path}:{reader.line_num}"
      if not row or (len(row) == 1 and not row[0].strip()):
        continue
      if header is None:
        header = [c.strip().lower() for c in row]
        missing = [c for c in ("sequence", "label") if c not in header]
        if missing:
          raise DatasetError(f"{where}: header {row} has no {' or '.join(missing)} column; "
                             "expected a CSV header holding sequence,label (DNABERT-2/GUE "
                             "layout)")
        seq_col, label_col = header.index("sequence"), header.index("label")
        continue
      if len(row) != len(header):
        raise DatasetError(f"{where}: {len(row)} fields; the header has {len(header)}")
      seq = row[seq_col].strip()
      if not _BASES_RE.fullmatch(seq):
        bad = re.search(r"[^A-Za-z]", seq)
        raise DatasetError(f"{where}: sequence holds "
                           f"{repr(bad.group()) if bad else 'nothing'}; expected bases "
                           "(letters)")
      rows.append((reader.line_num, seq.upper(), row[label_col].strip()))
  except csv.Error as e:
    raise DatasetError(f"{path}:{reader.line_num}: malformed CSV ({e})") from e
  if not rows:
    raise DatasetError(f"{path}: no data rows after the header")
  return rows


def _class_order(values: set[str]) -> tuple[str, ...]:
  if all(re.fullmatch(r"[+-]?\d+", v) for v in values):
    return tuple(sorted(values, key=int))
  return tuple(sorted(values))


def _float_labels(rows: list[tuple[int, str, str]], path: pathlib.Path) -> np.ndarray:
  out = np.empty(len(rows), np.float32)
  for i, (line, _, label) in enumerate(rows):
    try:
      value = float(label)
    except ValueError:
      value = math.nan
    if not math.isfinite(value):
      raise DatasetError(f"{path}:{line}: label {label!r} is not a finite number; "
                         "--task_type=regression needs numeric labels")
    out[i] = value
  return out


def load_dataset(path: str | os.PathLike, task_type: str = "classification",
                 name: str | None = None) -> Dataset:
  """Reads ``train.csv``, ``dev.csv`` and ``test.csv`` of a dataset folder.

  Args:
    path: the folder.
    task_type: "classification" (labels are classes) or "regression" (numeric targets).
    name: the task's name in reports (default: the folder's name).

  Raises:
    DatasetError: a missing file, a header without sequence/label, an empty file, a
      non-numeric regression label, a class in dev/test that train lacks, fewer than two
      classes in train.
  """
  if task_type not in TASK_TYPES:
    raise DatasetError(f"--task_type={task_type}: expected one of {', '.join(TASK_TYPES)}")
  root = pathlib.Path(path)
  if not root.is_dir():
    raise DatasetError(f"{path}: not a directory; expected a folder with train.csv, "
                       "dev.csv and test.csv")
  missing = [f"{s}.csv" for s in SPLITS if not (root / f"{s}.csv").is_file()]
  if missing:
    raise DatasetError(f"{root}: no {', '.join(missing)}; expected train.csv, dev.csv and "
                       "test.csv with a sequence,label header (DNABERT-2/GUE layout)")
  tables = {s: _read_table(root / f"{s}.csv") for s in SPLITS}
  label_values: tuple[str, ...] = ()
  splits = {}
  if task_type == "classification":
    label_values = _class_order({r[2] for r in tables["train"]})
    if len(label_values) < 2:
      raise DatasetError(f"{root / 'train.csv'}: every row has label {label_values[0]!r}; a "
                         "classifier needs at least two classes (for a numeric target use "
                         "--task_type=regression)")
    index = {v: i for i, v in enumerate(label_values)}
    for s in SPLITS:
      for line, _, label in tables[s]:
        if label not in index:
          raise DatasetError(f"{root / (s + '.csv')}:{line}: label {label!r} does not occur "
                             f"in train.csv (classes: {', '.join(label_values)})")
      splits[s] = Split([r[1] for r in tables[s]],
                        np.asarray([index[r[2]] for r in tables[s]], np.int32),
                        str(root / f"{s}.csv"))
  else:
    for s in SPLITS:
      splits[s] = Split([r[1] for r in tables[s]], _float_labels(tables[s], root / f"{s}.csv"),
                        str(root / f"{s}.csv"))
  return Dataset(name or root.name, task_type, label_values, splits["train"], splits["dev"],
                 splits["test"])


def read_sequences(path: str | os.PathLike) -> tuple[list[str], list[str]]:
  """(names, sequences) of a FASTA or CSV file: the one reader of embed, predict, finetune.

  * FASTA (``.fa``/``.fasta``/``.fna``, gzip or not; or any file whose first line starts
    with ``>``): every record is one sequence, named by its header line (after ``>``).
  * CSV (``.csv``/``.csv.gz``, or anything else): a header with a ``sequence`` column of
    bases, or of spaced k-mers as in DNABERT's files (turned back into bases); an optional
    ``name`` or ``id`` column names the rows, else ``line<N>`` (the CSV line) does.

  Sequences come back upper case.

  Raises:
    DatasetError: a missing, empty or binary file, a CSV without a sequence column, an empty
      or non-letter sequence cell, spaced k-mers that do not overlap, malformed FASTA, no
      sequences.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    raise DatasetError(f"{path}: is a directory; expected a FASTA or CSV file")
  if not path.is_file():
    raise DatasetError(f"{path}: file not found")
  if path.stat().st_size == 0:
    raise DatasetError(f"{path}: empty file; expected FASTA records or a CSV with a "
                       "sequence column")
  names, seqs = [], []
  name = path.name.lower()
  is_csv = name.endswith((".csv", ".csv.gz"))
  if not is_csv and (name.endswith(_FASTA_SUFFIXES) or _looks_like_fasta(path)):
    try:
      fasta.check_files([path])
      for record, seq in fasta.iter_records(path):
        names.append(record.name.strip() or f"record_{record.index + 1}")
        seqs.append(seq.decode("ascii", errors="replace").upper())
    except fasta.FastaError as e:
      raise DatasetError(str(e)) from e
  else:
    names, seqs = _read_csv_sequences(path)
  if not seqs:
    raise DatasetError(f"{path}: no sequences; expected FASTA records or CSV rows")
  return names, seqs


def check_min_length(path: str | os.PathLike, names: list[str], seqs: list[str],
                     k: int) -> None:
  """Raises `DatasetError` naming the first sequence shorter than one k-mer."""
  for i, (name, seq) in enumerate(zip(names, seqs)):
    if len(seq) < k:
      raise DatasetError(f"{path}: sequence {i + 1} ({name!r}) has {len(seq)} bases, fewer "
                         f"than the k={k} a k-mer needs")


def _looks_like_fasta(path: pathlib.Path) -> bool:
  try:
    with fasta.open_maybe_gzip(path) as f:
      head = f.read(4096).lstrip()
  except (OSError, EOFError) as e:
    raise DatasetError(f"{path}: cannot read ({e})") from e
  return head.startswith(b">")


def _read_csv_sequences(path: pathlib.Path) -> tuple[list[str], list[str]]:
  """(names, sequences) of a CSV (plain or gzip) with a sequence column."""
  try:
    with fasta.open_maybe_gzip(path) as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise DatasetError(f"{path}: cannot read ({e})") from e
  text = _utf8(path, raw, "FASTA or a CSV with a sequence column")
  reader = csv.reader(io.StringIO(text, newline=""))
  header, seq_col, name_col = None, -1, -1
  names, seqs = [], []
  try:
    for row in reader:
      where = f"{path}:{reader.line_num}"
      if not row or not any(c.strip() for c in row):
        continue
      if header is None:
        header = [c.strip().lower() for c in row]
        if "sequence" not in header:
          raise DatasetError(f"{where}: no 'sequence' column (columns: {', '.join(header)}); "
                             "expected a CSV header like 'name,sequence' or 'sequence,label', "
                             "or FASTA")
        seq_col = header.index("sequence")
        name_col = next((header.index(c) for c in ("name", "id") if c in header), -1)
        continue
      if len(row) != len(header):
        raise DatasetError(f"{where}: {len(row)} fields; the header has {len(header)}")
      seq = row[seq_col].strip()
      if not seq:
        raise DatasetError(f"{where}: empty 'sequence' cell")
      if any(c.isspace() for c in seq):  # DNABERT's spaced k-mer text.
        try:
          seq = tokenizer.kmer_text_to_bases(seq, where=where)
        except tokenizer.TokenizerError as e:
          raise DatasetError(str(e)) from e
      if not _BASES_RE.fullmatch(seq):
        bad = re.search(r"[^A-Za-z]", seq)
        raise DatasetError(f"{where}: sequence holds {bad.group()!r}; expected bases "
                           "(letters)")
      seqs.append(seq.upper())
      names.append(row[name_col].strip() if name_col >= 0 else f"line{reader.line_num}")
  except csv.Error as e:
    raise DatasetError(f"{path}:{reader.line_num}: malformed CSV ({e})") from e
  return names, seqs
