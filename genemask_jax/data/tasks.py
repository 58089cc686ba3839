"""The four few-shot benchmarks of GeneMask: task table, file readers, overlap removal.

The benchmark files are read exactly as their sources ship them (see the data README,
section ``fewshot/``):

* few-shot train files: tab-separated, every field in double quotes, header
  ``"sequence"<TAB>"label"``, the sequence as stride-1 overlapping 6-mers separated by spaces;
* ``test.tsv`` files: the same 6-mer form without quotes;
* ``Cohn-enh/test.csv``: ``sequence,target,numeric_label`` with raw bases (label =
  ``numeric_label``);
* ``Prom-300/gue_prom_300_all_test.csv``: ``sequence,label`` with raw bases.

Every reader returns `Examples`: raw bases (upper-case ``str``) and int32 labels. Malformed
input raises `FewShotDataError` naming the file and line and what was expected (empty file,
wrong header, missing or extra fields, a non-integer or out-of-range label, k-mers that do
not overlap, a sequence of the wrong length, binary data, a training file without rows of
every class) before any model work starts.

Typical use::

    data_dir = tasks.resolve_data_dir(FLAGS.data_dir)      # flag, else $GENEMASK_DATA_DIR
    data = tasks.load_task("prom_core", 100, data_dir)      # test set minus train overlaps
    ids, labels = tasks.encode_examples(data.train, tasks.TASKS["prom_core"].max_len)
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import os
import pathlib
import re

import numpy as np

from genemask_jax import errors
from genemask_jax import tokenizer

DATA_DIR_ENV = "GENEMASK_DATA_DIR"
FEWSHOT_DIR = "fewshot"
K = 6

_SEQ_RE = re.compile(r"[A-Z]+")  # IUPAC letters; non-ACGT ones become [UNK] when encoded.


class FewShotDataError(errors.UserError):
  """Bad few-shot input: the message names the file (and line) and what was expected."""


@dataclasses.dataclass(frozen=True)
class FileFormat:
  """How one shipped file is laid out.

  Attributes:
    name: short id of the format.
    delimiter: field separator.
    columns: the header exactly, in order.
    sequence_column: the column holding the sequence.
    label_column: the column holding the integer label.
    kmer_text: True if sequences are spaced stride-1 k-mers, False if raw bases.
  """
  name: str
  delimiter: str
  columns: tuple[str, ...]
  sequence_column: str
  label_column: str
  kmer_text: bool

  def describe(self) -> str:
    sep = "tab" if self.delimiter == "\t" else repr(self.delimiter)
    return f"{len(self.columns)} columns {', '.join(self.columns)} separated by {sep}"


# Quoted (train) and unquoted (test) 6-mer TSVs share one reader: the csv module strips the
# quotes where there are any.
KMER_TSV = FileFormat("kmer_tsv", "\t", ("sequence", "label"), "sequence", "label", True)
CSV_SEQUENCE_TARGET_NUMERIC = FileFormat(
    "csv_sequence_target_numeric_label", ",", ("sequence", "target", "numeric_label"),
    "sequence", "numeric_label", False)
CSV_SEQUENCE_LABEL = FileFormat(
    "csv_sequence_label", ",", ("sequence", "label"), "sequence", "label", False)


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One few-shot benchmark.

  Attributes:
    name: the task's key in `TASKS` (``prom_core``, ...).
    display_name: the name used in the paper and the data dir (``Prom-core``, ...).
    dir_name: its folder under ``<data_dir>/fewshot/``.
    num_classes: labels are 0..num_classes-1.
    seq_len: sequence length in bp (every shipped row has exactly this length).
    shots: the N-shot train sets that exist.
    train_pattern: train file path relative to ``dir_name``; ``{shot}`` is replaced.
    train_format: layout of the train files.
    per_class_factor: an N-shot file holds ``per_class_factor * N`` rows per class
      (1 for most tasks; 10 for Splice-40, whose "N-shot" files hold 10·N per class).
    test_file: test file path relative to ``dir_name``.
    test_format: layout of the test file.
    proxy_test: True if the test set is not the paper's own (marked in every output).
    note: what a reader of results must know about this task's test set.
    k: k-mer length of the tokenization.
  """
  name: str
  display_name: str
  dir_name: str
  num_classes: int
  seq_len: int
  shots: tuple[int, ...]
  train_pattern: str
  train_format: FileFormat
  per_class_factor: int
  test_file: str
  test_format: FileFormat
  proxy_test: bool = False
  note: str = ""
  k: int = K

  @property
  def max_len(self) -> int:
    """Model input length: the sequence's k-mers plus [CLS] and [SEP]."""
    return self.seq_len - self.k + 1 + 2

  @property
  def splits(self) -> tuple[str, ...]:
    """Split names: ``train_<shot>`` for each shot that exists, then ``test``."""
    return tuple(f"train_{s}" for s in self.shots) + ("test",)

  def examples_per_class(self, shot: int) -> int:
    """Rows per class in the N-shot train file."""
    check_shot(self, shot)
    return self.per_class_factor * shot

  def train_path(self, shot: int, data_dir: str | os.PathLike) -> pathlib.Path:
    check_shot(self, shot)
    return self.task_dir(data_dir) / self.train_pattern.format(shot=shot)

  def test_path(self, data_dir: str | os.PathLike) -> pathlib.Path:
    return self.task_dir(data_dir) / self.test_file

  def task_dir(self, data_dir: str | os.PathLike) -> pathlib.Path:
    return pathlib.Path(data_dir) / FEWSHOT_DIR / self.dir_name


PROM_300_NOTE = ("scored on the GUE prom_300_all proxy test set; not comparable with the paper")

TASKS: dict[str, TaskSpec] = {
    "prom_core": TaskSpec(
        name="prom_core", display_name="Prom-core", dir_name="Prom-core", num_classes=2,
        seq_len=70, shots=(10, 50, 100, 500, 1000), train_pattern="{shot}/train.tsv",
        train_format=KMER_TSV, per_class_factor=1, test_file="test.tsv",
        test_format=KMER_TSV, note="the authors' test set"),
    "prom_300": TaskSpec(
        name="prom_300", display_name="Prom-300", dir_name="Prom-300", num_classes=2,
        seq_len=300, shots=(10, 50, 100, 500, 1000), train_pattern="{shot}/train.tsv",
        train_format=KMER_TSV, per_class_factor=1, test_file="gue_prom_300_all_test.csv",
        test_format=CSV_SEQUENCE_LABEL, proxy_test=True, note=PROM_300_NOTE),
    "cohn_enh": TaskSpec(
        name="cohn_enh", display_name="Cohn-enh", dir_name="Cohn-enh", num_classes=2,
        seq_len=500, shots=(10, 50, 100, 500), train_pattern="{shot}/train.tsv",
        train_format=KMER_TSV, per_class_factor=1, test_file="test.csv",
        test_format=CSV_SEQUENCE_TARGET_NUMERIC,
        note="genomic-benchmarks human_enhancers_cohn test split (very likely the authors')"),
    "splice_40": TaskSpec(
        name="splice_40", display_name="Splice-40", dir_name="Splice-40", num_classes=3,
        seq_len=40, shots=(10, 50, 100, 500),
        train_pattern="{shot}/train_splice40_{shot}.tsv", train_format=KMER_TSV,
        per_class_factor=10, test_file="test.tsv", test_format=KMER_TSV,
        note="the authors' test set; N-shot train files hold 10*N examples per class"),
}


def get_task(task: str | TaskSpec) -> TaskSpec:
  """Looks a task up by key; display names (``Prom-core``) are accepted too."""
  if isinstance(task, TaskSpec):
    return task
  key = str(task).strip().lower().replace("-", "_")
  if key not in TASKS:
    raise FewShotDataError(
        f"unknown few-shot task {task!r}; known tasks: {', '.join(TASKS)}")
  return TASKS[key]


def check_shot(spec: TaskSpec, shot: int) -> int:
  """Returns ``shot`` as int if that task has an N-shot train set, else raises."""
  value = None
  if isinstance(shot, (int, np.integer)) and not isinstance(shot, bool):
    value = int(shot)
  elif isinstance(shot, str) and shot.strip().isdigit():  # From a command-line flag.
    value = int(shot)
  if value is None or value not in spec.shots:
    raise FewShotDataError(
        f"{spec.name} has no {shot}-shot set; shots: {', '.join(map(str, spec.shots))}")
  return value


@dataclasses.dataclass(frozen=True)
class Examples:
  """Rows of one file (or a filtered part of it).

  Attributes:
    sequences: raw bases, upper case, one ``str`` per row.
    labels: int32 array of shape (N,).
    source: the file they came from.
    lines: int32 array (N,), the 1-based line of each row in ``source``.
    duplicate_rows: rows whose sequence already occurred on an earlier row.
    conflicting_duplicates: repeated sequences that carry more than one label.
  """
  sequences: list[str]
  labels: np.ndarray
  source: str
  lines: np.ndarray
  duplicate_rows: int
  conflicting_duplicates: int

  def __len__(self) -> int:
    return len(self.sequences)

  def class_counts(self, num_classes: int) -> np.ndarray:
    """int64 array (num_classes,): rows per label."""
    return np.bincount(self.labels, minlength=num_classes)

  def select(self, keep: np.ndarray) -> Examples:
    """The rows where the bool mask ``keep`` (N,) is True, duplicates recounted."""
    keep = np.asarray(keep, bool)
    seqs = [s for s, k in zip(self.sequences, keep) if k]
    labels = self.labels[keep]
    dup, conflict = count_duplicates(seqs, labels)
    return Examples(seqs, labels, self.source, self.lines[keep], dup, conflict)


@dataclasses.dataclass(frozen=True)
class FewShotData:
  """A task's N-shot train set and its test set with train overlaps removed.

  Attributes:
    task: the task.
    shot: N.
    train: the N-shot train rows, as shipped (duplicates kept, only counted).
    test: test rows whose sequence does not occur in ``train``.
    removed_overlaps: test rows dropped because their sequence is in ``train``.
    train_duplicates: repeated rows inside the train file.
    test_duplicates: repeated rows inside the test file (before overlap removal).
    proxy_test: the test set is a proxy, not the paper's (Prom-300).
    note: the task's note on its test set.
  """
  task: TaskSpec
  shot: int
  train: Examples
  test: Examples
  removed_overlaps: int
  train_duplicates: int
  test_duplicates: int
  proxy_test: bool
  note: str


def resolve_data_dir(flag_value: str | os.PathLike | None = None) -> pathlib.Path:
  """The data dir: ``flag_value`` if given, else ``$GENEMASK_DATA_DIR``.

  Raises:
    FewShotDataError: neither is set, or the directory does not exist.
  """
  value = flag_value if flag_value not in (None, "") else os.environ.get(DATA_DIR_ENV)
  if not value:
    raise FewShotDataError(
        f"no data dir: pass --data_dir=/path/to/data or set {DATA_DIR_ENV} (the directory "
        f"that holds {FEWSHOT_DIR}/ and genome/)")
  path = pathlib.Path(value).expanduser()
  if not path.is_dir():
    source = "--data_dir" if flag_value not in (None, "") else DATA_DIR_ENV
    raise FewShotDataError(f"data dir {str(path)!r} (from {source}) is not a directory")
  return path


def count_duplicates(sequences: list[str], labels: np.ndarray) -> tuple[int, int]:
  """(rows repeating an earlier row's sequence, repeated sequences with >1 label)."""
  seen: dict[str, set[int]] = collections.defaultdict(set)
  counts = collections.Counter(sequences)
  for s, y in zip(sequences, labels):
    if counts[s] > 1:
      seen[s].add(int(y))
  dup = len(sequences) - len(counts)
  conflict = sum(len(v) > 1 for v in seen.values())
  return dup, conflict


def _read_text(path: pathlib.Path) -> str:
  try:
    raw = path.read_bytes()
  except FileNotFoundError as e:
    raise FewShotDataError(f"{path}: file not found") from e
  except OSError as e:
    raise FewShotDataError(f"{path}: cannot read: {e.strerror or e}") from e
  if raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark, as spreadsheets write it.
    raw = raw[3:]
  if not raw.strip():
    raise FewShotDataError(f"{path}: empty file; expected a header line and data rows")
  bad = re.search(rb"[^\t\n\r\x20-\x7e]", raw)
  if bad:
    line = raw.count(b"\n", 0, bad.start()) + 1
    ch = raw[bad.start():bad.start() + 1]
    raise FewShotDataError(
        f"{path}:{line}: byte {ch!r} (0x{ch[0]:02x}) is not printable ASCII (binary data?); "
        "expected a text table")
  return raw.decode("ascii")


def _parse_label(text: str, num_classes: int, where: str, column: str) -> int:
  text = text.strip()
  if not re.fullmatch(r"[+-]?\d+", text):
    raise FewShotDataError(
        f"{where}: label {text!r} in column {column!r} is not an integer; expected one of "
        f"0..{num_classes - 1}")
  value = int(text)
  if not 0 <= value < num_classes:
    raise FewShotDataError(
        f"{where}: label {value} in column {column!r} is out of range; expected one of "
        f"0..{num_classes - 1}")
  return value


def read_file(path: str | os.PathLike, fmt: FileFormat, num_classes: int, *,
              seq_len: int | None = None, k: int = K) -> Examples:
  """Reads one benchmark file into raw bases and int labels.

  Args:
    path: the file.
    fmt: its layout (`KMER_TSV`, `CSV_SEQUENCE_TARGET_NUMERIC`, `CSV_SEQUENCE_LABEL`).
    num_classes: labels must lie in 0..num_classes-1.
    seq_len: if given, every sequence must have exactly this many bases.
    k: k-mer length of k-mer text.

  Returns:
    `Examples` in file order; duplicate rows are kept and counted.

  Raises:
    FewShotDataError: naming ``path`` and the line, for any malformed input.
  """
  path = pathlib.Path(path)
  text = _read_text(path)
  reader = csv.reader(io.StringIO(text, newline=""), delimiter=fmt.delimiter)
  sequences: list[str] = []
  labels: list[int] = []
  lines: list[int] = []
  header = None
  seq_col = label_col = -1
  try:
    for row in reader:
      lineno = reader.line_num
      where = f"{path}:{lineno}"
      if not row or (len(row) == 1 and not row[0].strip()):
        continue  # Blank line.
      if header is None:
        header = tuple(c.strip() for c in row)
        if header != fmt.columns:
          missing = [c for c in fmt.columns if c not in header]
          extra = [c for c in header if c not in fmt.columns]
          detail = "; ".join(
              p for p in (f"missing {', '.join(missing)}" if missing else "",
                          f"extra {', '.join(map(repr, extra))}" if extra else "") if p)
          raise FewShotDataError(
              f"{where}: header has columns {list(header)}"
              f"{' (' + detail + ')' if detail else ''}; expected {fmt.describe()}")
        seq_col = header.index(fmt.sequence_column)
        label_col = header.index(fmt.label_column)
        continue
      if len(row) != len(fmt.columns):
        what = "missing" if len(row) < len(fmt.columns) else "extra"
        raise FewShotDataError(
            f"{where}: {len(row)} fields ({what} columns); expected {fmt.describe()}")
      label = _parse_label(row[label_col], num_classes, where, fmt.label_column)
      seq = row[seq_col].strip()
      if fmt.kmer_text:
        try:
          seq = tokenizer.kmer_text_to_bases(seq, k, where=where)
        except tokenizer.TokenizerError as e:
          raise FewShotDataError(str(e)) from e
      seq = seq.upper()
      if not _SEQ_RE.fullmatch(seq):
        bad = re.search(r"[^A-Z]", seq)
        found = repr(bad.group()) if bad else "nothing"
        raise FewShotDataError(
            f"{where}: sequence holds {found}; expected "
            + ("stride-1 overlapping k-mers of letters separated by spaces" if fmt.kmer_text
               else "bases (letters)"))
      if seq_len is not None and len(seq) != seq_len:
        raise FewShotDataError(
            f"{where}: sequence has {len(seq)} bp; expected {seq_len} bp for this task")
      sequences.append(seq)
      labels.append(label)
      lines.append(lineno)
  except csv.Error as e:
    raise FewShotDataError(f"{path}:{reader.line_num}: malformed table ({e})") from e
  if header is None or not sequences:
    raise FewShotDataError(f"{path}: no data rows; expected {fmt.describe()} and then rows")
  label_arr = np.asarray(labels, np.int32)
  dup, conflict = count_duplicates(sequences, label_arr)
  return Examples(sequences, label_arr, str(path), np.asarray(lines, np.int32), dup, conflict)


def parse_split(spec: TaskSpec, split: str) -> int | None:
  """``"train_<N>"`` -> N (checked against the task's shots); ``"test"`` -> None."""
  if split == "test":
    return None
  m = re.fullmatch(r"train_(\d+)", str(split))
  if not m:
    raise FewShotDataError(
        f"{spec.name} has no split {split!r}; splits: {', '.join(spec.splits)}")
  return check_shot(spec, int(m.group(1)))


def load_split(task: str | TaskSpec, split: str, data_dir: str | os.PathLike) -> Examples:
  """Reads one split of a task as shipped.

  Args:
    task: task key (``prom_core``, ``prom_300``, ``cohn_enh``, ``splice_40``).
    split: ``train_<N>`` for an N that exists, or ``test`` (the raw test file, overlaps with
      train sets not removed: use `load_task` for that).
    data_dir: the directory that holds ``fewshot/``.

  Returns:
    `Examples`: raw bases and int32 labels of shape (N,).
  """
  spec = get_task(task)
  shot = parse_split(spec, split)
  if shot is None:
    path, fmt = spec.test_path(data_dir), spec.test_format
  else:
    path, fmt = spec.train_path(shot, data_dir), spec.train_format
  examples = read_file(path, fmt, spec.num_classes, seq_len=spec.seq_len, k=spec.k)
  if shot is not None:
    check_classes(examples, spec.num_classes)
  return examples


def check_classes(examples: Examples, num_classes: int) -> None:
  """Raises FewShotDataError unless a training set holds rows of every class.

  A classifier trained on one class predicts it everywhere, which still scores a plausible
  accuracy on a test set; a few-shot train file must hold examples of each label.
  """
  counts = examples.class_counts(num_classes)
  missing = [c for c in range(num_classes) if counts[c] == 0]
  if missing:
    found = ", ".join(f"{n} of class {c}" for c, n in enumerate(counts) if n)
    raise FewShotDataError(
        f"{examples.source}: a training set needs rows of each of the {num_classes} classes "
        f"(labels 0..{num_classes - 1}); it has {found} and none of class "
        f"{', '.join(map(str, missing))}")


def overlap_mask(test: Examples, train: Examples) -> np.ndarray:
  """bool (N_test,): True where the test row's sequence occurs in ``train``."""
  seen = set(train.sequences)
  return np.fromiter((s in seen for s in test.sequences), bool, count=len(test))


def load_task(task: str | TaskSpec, shot: int, data_dir: str | os.PathLike) -> FewShotData:
  """A task's N-shot train set and its test set, ready for honest evaluation.

  Test rows whose sequence also occurs in this shot's train file are removed, and their
  number is reported in ``removed_overlaps``. Rows repeated inside a file are only counted
  (``train_duplicates``, ``test_duplicates``); they are not removed, so the train set is
  exactly the shipped N-shot draw.
  """
  spec = get_task(task)
  shot = check_shot(spec, shot)
  train = load_split(spec, f"train_{shot}", data_dir)
  test_raw = load_split(spec, "test", data_dir)
  seen = overlap_mask(test_raw, train)
  test = test_raw.select(~seen)
  return FewShotData(
      task=spec, shot=shot, train=train, test=test, removed_overlaps=int(seen.sum()),
      train_duplicates=train.duplicate_rows, test_duplicates=test_raw.duplicate_rows,
      proxy_test=spec.proxy_test, note=spec.note)


def encode_examples(examples: Examples, max_len: int, k: int = K
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Tokenizes rows for the model.

  Args:
    examples: rows from `load_split` / `load_task`.
    max_len: model input length, [CLS] and [SEP] included (`TaskSpec.max_len`).
    k: k-mer length.

  Returns:
    (ids int32 (N, max_len) as ``[CLS] k-mers [SEP] [PAD]...``, labels int32 (N,)).

  Raises:
    TokenizerError: a sequence has more than max_len - 2 k-mers.
  """
  ids = tokenizer.pack((tokenizer.encode(s, k) for s in examples.sequences), max_len,
                       policy="error")
  return ids, np.asarray(examples.labels, np.int32)
