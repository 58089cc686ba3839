"""Streaming FASTA reader: plain or gzip, many records, bounded memory.

Real genome FASTA is soft-masked (lower case), holds N runs and, rarely, other IUPAC
letters, and may have CRLF line ends. This reader keeps the letters as they are (callers
decide about case and non-ACGT letters) and streams each record's sequence in blocks of
about ``block_size`` bytes, so a 3 GB hg38 never sits in memory whole.

Malformed input raises `FastaError` naming the file and line before the bad part is used:
an empty file, a file with no header, a sequence line before the first header, or bytes
that are not sequence letters (binary data).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from typing import BinaryIO, Iterator, Sequence

from genemask_jax import errors

_GZIP_MAGIC = b"\x1f\x8b"
# Sequence letters: IUPAC codes in either case, plus gap and stop symbols.
_SEQ_LETTERS = bytes(range(ord("A"), ord("Z") + 1)) + bytes(range(ord("a"), ord("z") + 1)) + b"-*."


class FastaError(errors.UserError):
  """A malformed FASTA file; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Record:
  """One FASTA record's header (without '>') and where it starts."""
  index: int
  name: str
  line: int


def open_maybe_gzip(path: str | os.PathLike) -> BinaryIO:
  """Opens a file for binary reading, decompressing it if it starts with the gzip magic."""
  path = os.fspath(path)
  try:
    f = open(path, "rb")
  except OSError as e:
    raise FastaError(f"{path}: cannot open: {e.strerror or e}") from e
  magic = f.read(2)
  f.seek(0)
  if magic == _GZIP_MAGIC:
    return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
  return f


def _describe(line: bytes) -> str:
  bad = line.translate(None, _SEQ_LETTERS + b"\r\n")
  ch = bad[:1]
  return f"byte {ch!r} (0x{ch[0]:02x})" if ch else "an unexpected byte"


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, Record | None, bytes]]:
  """Yields (line number, record, sequence line) for every sequence line, validated.

  The header lines themselves are not yielded; the `Record` of each sequence line says
  which record it belongs to. Raises FastaError on malformed input.
  """
  path = os.fspath(path)
  record: Record | None = None
  n_records = 0
  lineno = 0
  try:
    with open_maybe_gzip(path) as f:
      for lineno, raw in enumerate(f, 1):
        line = raw.rstrip(b"\r\n")
        if line.startswith(b">"):
          try:
            name = line[1:].decode("ascii").strip()
          except UnicodeDecodeError as e:
            raise FastaError(f"{path}:{lineno}: header is not ASCII text (binary data?)") from e
          record = Record(n_records, name, lineno)
          n_records += 1
          continue
        if not line or line.startswith(b";"):
          continue
        if line.translate(None, _SEQ_LETTERS):
          raise FastaError(
              f"{path}:{lineno}: {_describe(line)} in a sequence line; expected IUPAC letters"
              " (is this a FASTA file?)")
        if record is None:
          raise FastaError(
              f"{path}:{lineno}: sequence line before any '>' header; a FASTA file starts "
              "with a '>name' line")
        yield lineno, record, line
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise FastaError(f"{path}:{lineno}: cannot read: {e}") from e
  if lineno == 0:
    raise FastaError(f"{path}: empty file; expected FASTA ('>name' then sequence lines)")
  if n_records == 0:
    raise FastaError(f"{path}: no FASTA header ('>name' line) found in {lineno} lines")


def iter_blocks(path: str | os.PathLike, block_size: int = 1 << 22) -> Iterator[tuple[int, bytes]]:
  """Yields (record index, block): each record's sequence in contiguous pieces.

  Consecutive blocks with the same record index are adjacent pieces of that record's
  sequence (newlines removed, letters and case as in the file). Memory is bounded by
  ``block_size`` plus one line.
  """
  pending: list[bytes] = []
  size = 0
  current = -1
  for _, record, line in iter_lines(path):
    if record.index != current:
      if pending:
        yield current, b"".join(pending)
      pending, size, current = [], 0, record.index
    pending.append(line)
    size += len(line)
    if size >= block_size:
      yield current, b"".join(pending)
      pending, size = [], 0
  if pending:
    yield current, b"".join(pending)


def iter_records(path: str | os.PathLike) -> Iterator[tuple[Record, bytes]]:
  """Yields (record, whole sequence) per record. Holds one record in memory at a time."""
  pending: list[bytes] = []
  current: Record | None = None
  for _, record, line in iter_lines(path):
    if current is not None and record.index != current.index:
      yield current, b"".join(pending)
      pending = []
    current = record
    pending.append(line)
  if current is not None:
    yield current, b"".join(pending)


def check_files(paths: Sequence[str | os.PathLike]) -> None:
  """Fails fast on a missing path or a file that does not start like FASTA.

  Reads only the first line of each file, so it is cheap to call before long work.
  """
  if not paths:
    raise FastaError("no FASTA files given")
  for path in paths:
    path = os.fspath(path)
    if not os.path.isfile(path):
      raise FastaError(f"{path}: no such file")
    with open_maybe_gzip(path) as f:
      try:
        first = f.readline()
      except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise FastaError(f"{path}:1: cannot read: {e}") from e
    if not first:
      raise FastaError(f"{path}: empty file; expected FASTA ('>name' then sequence lines)")
    if not first.startswith(b">"):
      if first.rstrip(b"\r\n").translate(None, _SEQ_LETTERS):
        raise FastaError(f"{path}:1: {_describe(first)}; expected a '>name' header (binary data?)")
      raise FastaError(f"{path}:1: sequence line before any '>' header; a FASTA file starts with "
                       "a '>name' line")
