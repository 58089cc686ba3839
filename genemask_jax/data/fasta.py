"""Streaming FASTA reader: plain or gzip, many records, bounded memory.

Real genome FASTA is soft-masked (lower case), holds N runs and, rarely, other IUPAC
letters, and may have CRLF line ends. This reader keeps the letters as they are (callers
decide about case and non-ACGT letters) and streams each record's sequence in blocks of
``block_size`` letters. The file is read in fixed 1 MiB buffers, never a line at a time, so
memory does not depend on the line length either: a 3 GB hg38, or a chromosome written on
one line, never sits in memory whole. Headers are UTF-8 text (at most 1 MiB).

Malformed input raises `FastaError` naming the file and line before the bad part is used:
an empty file, a directory, a file with no header, a sequence line before the first header,
a header that is not UTF-8, or bytes that are not sequence letters (binary data).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import os
import zlib
from typing import BinaryIO, Iterator, Sequence

from genemask_jax import errors

_GZIP_MAGIC = b"\x1f\x8b"
# Sequence letters: IUPAC codes in either case, plus gap and stop symbols.
_SEQ_LETTERS = bytes(range(ord("A"), ord("Z") + 1)) + bytes(range(ord("a"), ord("z") + 1)) + b"-*."
_READ_SIZE = 1 << 20  # Bytes read at a time: memory does not depend on line length.
_MAX_HEADER = 1 << 20  # A longer '>' line is not a FASTA header.
_CHECK_SIZE = 1 << 16  # Bytes check_files reads of each file.
_GT, _SEMI = ord(">"), ord(";")
_SEQ, _HEADER, _COMMENT = 0, 1, 2


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


def _error_line(lineno: int, region: bytes, pos: int) -> int:
  """The 1-based line number of byte `pos` of `region`, which starts on line `lineno`."""
  return lineno + region.count(b"\n", 0, pos)


class _Lines:
  """The line-level state that `iter_pieces` and `iter_spans` share.

  Which kind of line the next byte belongs to (sequence, '>' header or ';' comment), the
  line number, the header read so far and the records seen; the header and comment lines
  are read here, so the two readers differ only in what they do with sequence bytes.
  """
  __slots__ = ("path", "lineno", "at_line_start", "mode", "header", "header_size",
               "header_line", "n_records")

  def __init__(self, path: str):
    self.path = path
    self.lineno = 1  # Line of the next unread byte.
    self.at_line_start = True
    self.mode = _SEQ
    self.header: list[bytes] = []
    self.header_size = self.header_line = self.n_records = 0

  def start_line(self, c: int) -> bool:
    """Enters the line whose first byte is `c`; True when that is a header's '>' (which the
    caller then skips)."""
    self.at_line_start = False
    if c == _GT:
      self.mode, self.header, self.header_size, self.header_line = _HEADER, [], 0, self.lineno
      return True
    self.mode = _COMMENT if c == _SEMI else _SEQ
    return False

  def rest_of_line(self, buf: bytes, i: int) -> int:
    """Reads a header or comment line on from buf[i]: the index after its newline, or -1
    when the line goes on past the end of `buf`. Raises FastaError for an overlong header."""
    j = buf.find(b"\n", i)
    if self.mode == _HEADER:
      stop = len(buf) if j < 0 else j
      self.header.append(buf[i:stop])
      self.header_size += stop - i
      if self.header_size > _MAX_HEADER:
        raise FastaError(f"{self.path}:{self.header_line}: header line longer than "
                         f"{_MAX_HEADER} bytes; is this a FASTA file?")
    if j < 0:
      return -1
    self.lineno += 1
    self.at_line_start = True
    return j + 1

  def new_record(self) -> Record:
    """The record whose header was just read (FastaError if it is not UTF-8)."""
    record = Record(self.n_records, _header_name(self.path, self.header_line,
                                                 b"".join(self.header)), self.header_line)
    self.n_records += 1
    return record

  def last_record(self) -> Record | None:
    """At the end of the file: the record of a last header without a newline, if any."""
    if self.mode == _HEADER and not self.at_line_start:
      return self.new_record()
    return None

  def no_header_error(self, region: bytes) -> FastaError:
    """The error for sequence bytes in `region` (which starts on the current line) before
    any header, naming the line of its first letter."""
    pos = len(region) - len(region.lstrip(b"\r\n"))
    return FastaError(f"{self.path}:{_error_line(self.lineno, region, pos)}: sequence line "
                      "before any '>' header; a FASTA file starts with a '>name' line")

  def check_end(self, total: int) -> None:
    """At the end of a file of `total` bytes: FastaError if it was empty or had no header."""
    if total == 0:
      raise FastaError(f"{self.path}: empty file; expected FASTA ('>name' then sequence "
                       "lines)")
    if self.n_records == 0:
      lines = self.lineno - 1 if self.at_line_start else self.lineno
      raise FastaError(f"{self.path}: no FASTA header ('>name' line) found in {lines} lines")


def iter_pieces(path: str | os.PathLike, read_size: int = _READ_SIZE
                ) -> Iterator[tuple[Record, bytes]]:
  """Yields (record, piece): each record's sequence in pieces, newlines removed, validated.

  The file is read in fixed buffers of ``read_size`` bytes, never line by line, so memory
  stays flat whatever the line length (a whole chromosome on one line included). A piece
  is at most ``read_size`` letters; consecutive pieces of one record are adjacent. Blank
  lines and ';' comment lines are skipped. Raises FastaError on malformed input, naming
  the file and line, before any piece of the bad buffer is yielded.
  """
  path = os.fspath(path)
  st = _Lines(path)
  record: Record | None = None
  total = 0
  try:
    with open_maybe_gzip(path) as f:
      while True:
        buf = f.read(read_size)
        if not buf:
          break
        total += len(buf)
        i, n = 0, len(buf)
        semi = buf.find(b"\n;")  # Kept until passed: comment lines are rare.
        while i < n:
          if st.at_line_start:
            if st.start_line(buf[i]):
              i += 1
            continue
          if st.mode != _SEQ:  # Header or comment: up to the end of the line.
            i = st.rest_of_line(buf, i)
            if i < 0:
              break
            if st.mode == _HEADER:
              record = st.new_record()
            continue
          # Sequence: everything up to the next line that starts a header or comment.
          if 0 <= semi < i:
            semi = buf.find(b"\n;", i)
          j = buf.find(b"\n>", i)
          j = semi if j < 0 else (j if semi < 0 else min(j, semi))
          stop = n if j < 0 else j + 1  # Keep the newline that ends the last sequence line.
          region = buf[i:stop]
          letters = region.translate(None, b"\r\n")
          if letters:
            bad = letters.translate(None, _SEQ_LETTERS)
            if bad:
              pos = region.find(bad[:1])
              line = _error_line(st.lineno, region, pos)
              raise FastaError(f"{path}:{line}: {_describe(bad)} in a sequence line; expected "
                               "IUPAC letters (is this a FASTA file?)")
            if record is None:
              raise st.no_header_error(region)
            yield record, letters
          st.lineno += region.count(b"\n")
          st.at_line_start = region.endswith(b"\n")
          i = stop
      st.last_record()  # A last header without a newline still counts (and must decode).
  except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
    raise FastaError(f"{path}:{st.lineno}: cannot read: {e}") from e
  st.check_end(total)


def _header_name(path: str, line: int, raw: bytes) -> str:
  try:
    return raw.rstrip(b"\r").decode("utf-8").strip()
  except UnicodeDecodeError as e:
    raise FastaError(f"{path}:{line}: header is not UTF-8 text ({e.reason} at byte "
                     f"{e.start}); is this a FASTA file?") from e


def iter_blocks(path: str | os.PathLike, block_size: int = 1 << 22) -> Iterator[tuple[int, bytes]]:
  """Yields (record index, block): each record's sequence in contiguous pieces.

  Consecutive blocks with the same record index are adjacent pieces of that record's
  sequence (newlines removed, letters and case as in the file); every block but a
  record's last holds exactly ``block_size`` letters. Memory is bounded by ``block_size``
  plus one read buffer (1 MiB), whatever the file's line length.
  """
  for record, block in iter_named_blocks(path, block_size):
    yield record.index, block


def iter_named_blocks(path: str | os.PathLike, block_size: int = 1 << 22
                      ) -> Iterator[tuple[Record, bytes]]:
  """Like `iter_blocks`, with each block's `Record` (index, header, line) instead of its index."""
  pending: list[bytes] = []
  size = 0
  current: Record | None = None
  for record, piece in iter_pieces(path):
    if current is not None and record.index != current.index:
      if pending:
        yield current, b"".join(pending)
      pending, size = [], 0
    current = record
    while size + len(piece) >= block_size:
      cut = block_size - size
      pending.append(piece[:cut])
      yield current, b"".join(pending)
      pending, size, piece = [], 0, piece[cut:]
    if piece:
      pending.append(piece)
      size += len(piece)
  if pending:
    yield current, b"".join(pending)


def iter_records(path: str | os.PathLike) -> Iterator[tuple[Record, bytes]]:
  """Yields (record, whole sequence) per record. Holds one record in memory at a time.

  A record with no sequence lines is skipped.
  """
  pending: list[bytes] = []
  current: Record | None = None
  for record, piece in iter_pieces(path):
    if current is not None and record.index != current.index:
      yield current, b"".join(pending)
      pending = []
    current = record
    pending.append(piece)
  if current is not None:
    yield current, b"".join(pending)


def check_files(paths: Sequence[str | os.PathLike]) -> None:
  """Fails fast on a missing path, a directory, or a file that does not start like FASTA.

  Reads at most the first 64 KiB of each file (its first header, after any blank or ';'
  lines), so it is cheap to call before long work.
  """
  if not paths:
    raise FastaError("no FASTA files given")
  for path in paths:
    path = os.fspath(path)
    if os.path.isdir(path):
      inside = sorted(n for n in os.listdir(path) if not n.startswith("."))
      hint = (f"; it holds {len(inside)} entries, e.g. {', '.join(inside[:3])}: pass the FASTA "
              "files themselves, comma-separated" if inside else "; it is empty")
      raise FastaError(f"{path}: is a directory, expected a FASTA file (plain or gzip){hint}")
    if not os.path.exists(path):
      raise FastaError(f"{path}: no such file")
    if not os.path.isfile(path):
      raise FastaError(f"{path}: not a regular file; expected a FASTA file (plain or gzip)")
    with open_maybe_gzip(path) as f:
      try:
        head = f.read(_CHECK_SIZE)
      except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise FastaError(f"{path}:1: cannot read: {e}") from e
    if not head:
      raise FastaError(f"{path}: empty file; expected FASTA ('>name' then sequence lines)")
    for lineno, line in enumerate(head.split(b"\n"), 1):
      line = line.rstrip(b"\r")
      if not line or line.startswith(b";"):
        continue
      if line.startswith(b">"):
        if len(line) < len(head):  # The header is whole: check that it is text.
          _header_name(path, lineno, line[1:])
        break
      if line.translate(None, _SEQ_LETTERS):
        raise FastaError(f"{path}:{lineno}: {_describe(line)}; expected a '>name' header "
                         "(binary data?)")
      raise FastaError(f"{path}:{lineno}: sequence line before any '>' header; a FASTA file "
                       "starts with a '>name' line")


@dataclasses.dataclass(frozen=True)
class RecordSpan:
  """Where one record's sequence lines lie in an uncompressed FASTA file.

  Attributes:
    index: the record's position in the file (0-based, every header counts).
    name: the header without '>' (stripped), as `Record.name`.
    parts: (start, end) byte ranges of the record's sequence lines, in order (several
      when ';' comment lines interrupt them).
    complete: False for a progress report on a record still being read (`iter_spans`'s
      ``progress_bytes``): its parts so far, the last of which may still grow.
  """
  index: int
  name: str
  parts: tuple[tuple[int, int], ...]
  complete: bool = True


def line_of(path: str | os.PathLike, offset: int) -> int:
  """The 1-based line number of byte `offset` of an uncompressed file (for messages)."""
  line, done = 1, 0
  with open(path, "rb") as f:
    while done < offset:
      buf = f.read(min(_READ_SIZE, offset - done))
      if not buf:
        break
      line += buf.count(b"\n")
      done += len(buf)
  return line


def _line_start(buf: bytes, char: bytes, start: int, end: int) -> int:
  """Where in buf[start:end] a line starting with `char` begins: the index of the newline
  before it, or -1. A one-byte search (memchr): sequence has a newline on every line but
  no '>' or ';', so this is far faster than searching for the two bytes."""
  while True:
    k = buf.find(char, start, end)
    if k < 0:
      return -1
    if k > 0 and buf[k - 1] == 10:
      return k - 1
    start = k + 1


def iter_spans(path: str | os.PathLike, copy_to: str | None = None,
               read_size: int = _READ_SIZE,
               progress_bytes: int | None = None) -> Iterator[RecordSpan]:
  """The records of a FASTA file by byte range, each as soon as it has been read.

  The structure pass of a parallel build: headers and ';' comment lines are found as
  `iter_pieces` finds them, but the sequence bytes are not examined (workers then read,
  check and cut any byte range themselves: `read_letters`). A gzip file is unpacked to
  ``copy_to`` on the way (required for gzip: the byte ranges are the copy's), and a
  record is yielded only once its bytes are all written there. Headers, empty files,
  files without a header and sequence before the first header raise FastaError naming
  the file and line, as `iter_pieces` does.

  With ``progress_bytes``, a record also comes in installments while it is read: a span
  with ``complete=False`` each time its sequence bytes have grown by that much (after a
  read), its bytes so far written to ``copy_to``; the complete span follows as always.
  A long record's first bytes can then be worked on while the rest is read.
  """
  path = os.fspath(path)
  st = _Lines(path)
  dst = None
  reported = 0  # The current record's sequence bytes at its last progress span.
  offset = total = 0
  current: Record | None = None
  parts: list[tuple[int, int]] = []

  def finish() -> RecordSpan | None:
    if current is None:
      return None
    if dst is not None:
      dst.flush()
    return RecordSpan(current.index, current.name, tuple(parts))

  with contextlib.ExitStack() as stack:
    src = stack.enter_context(open_maybe_gzip(path))
    gz = isinstance(src, gzip.GzipFile)
    if gz:
      if copy_to is None:
        raise ValueError(f"{path}: a gzip file needs copy_to")
      dst = stack.enter_context(open(copy_to, "wb"))
    while True:
      try:
        buf = src.read(read_size)
      except (OSError, EOFError, zlib.error) as e:
        raise FastaError(f"{path}:{st.lineno}: cannot read: {e}") from e
      if not buf:
        break
      if dst is not None:
        dst.write(buf)
      total += len(buf)
      i, n = 0, len(buf)
      while i < n:
        if st.at_line_start:
          if st.start_line(buf[i]):
            span = finish()
            if span is not None:
              yield span
            current, parts, reported = None, [], 0
            i += 1
          continue
        if st.mode != _SEQ:
          i = st.rest_of_line(buf, i)
          if i < 0:
            break
          if st.mode == _HEADER:
            current = st.new_record()
          continue
        # Sequence lines: up to the next line that starts a header or a comment.
        j = _line_start(buf, b">", i, n)
        k = _line_start(buf, b";", i, n if j < 0 else j)
        j = k if k >= 0 else j
        stop = n if j < 0 else j + 1
        if current is None and buf[i:stop].strip(b"\r\n"):
          raise st.no_header_error(buf[i:stop])
        if current is not None:
          a, b = offset + i, offset + stop
          if parts and parts[-1][1] == a:
            parts[-1] = (parts[-1][0], b)
          else:
            parts.append((a, b))
        st.lineno += buf.count(b"\n", i, stop)
        st.at_line_start = buf[stop - 1] == 10
        i = stop
      offset += n
      if progress_bytes and current is not None and parts:
        have = sum(b - a for a, b in parts)
        if have - reported >= progress_bytes:
          reported = have
          if dst is not None:
            dst.flush()
          yield RecordSpan(current.index, current.name, tuple(parts), complete=False)
    last = st.last_record()  # A last header without a newline.
    if last is not None:
      current, parts = last, []
    span = finish()
    if span is not None:
      yield span
  st.check_end(total)


_ACGT_EOL = b"ACGTacgt\r\n"
_NOT_ACGT_EITHER_CASE = bytes(b for b in range(256) if b not in b"ACGTacgt")


def read_letters(f: BinaryIO, start: int, end: int, display: str, path: str,
                 acgt_only: bool = False) -> bytes:
  """The sequence letters of bytes [start, end) of an open uncompressed FASTA file.

  Line ends are removed and the letters checked as `iter_pieces` checks them (FastaError
  naming the file and line of a bad byte); with ``acgt_only`` every letter but A/C/G/T
  (either case) is removed too. `display` names the file in messages; `path` is the file
  read, for the line number.
  """
  f.seek(start)
  return letters_of(f.read(end - start), start, display, path, acgt_only)


def letters_of(data: bytes, start: int, display: str, path: str,
               acgt_only: bool = False) -> bytes:
  """`read_letters` of bytes already read from offset `start`."""
  if not data.translate(None, _ACGT_EOL):  # The common case: nothing else to check.
    return data.translate(None, b"\r\n")
  letters = data.translate(None, b"\r\n")
  bad = letters.translate(None, _SEQ_LETTERS)
  if bad:
    pos = data.find(bad[:1])
    raise FastaError(f"{display}:{line_of(path, start + pos)}: {_describe(bad)} in a "
                     "sequence line; expected IUPAC letters (is this a FASTA file?)")
  return letters.translate(None, _NOT_ACGT_EITHER_CASE) if acgt_only else letters
