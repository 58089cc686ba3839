"""The one base class of every error a user can cause (a bad file, flag, config or workdir).

Each module raises its own subclass (`fasta.FastaError`, `npmi.NpmiError`, ...) with a
message that names the file, line or key; every binary catches `UserError` once and prints
that message as one line, exit code 2, instead of a traceback: `exits_on_user_error`::

    with errors.exits_on_user_error("embed"):
      run(...)
"""

import contextlib
import sys
from typing import Iterator


class UserError(ValueError):
  """A problem with the user's input, found before (or instead of) long work."""


def one_line(e: BaseException) -> str:
  """The error's message with its whitespace (newlines included) folded to single spaces."""
  return " ".join(str(e).split())


@contextlib.contextmanager
def exits_on_user_error(prog: str) -> Iterator[None]:
  """A binary's body: a `UserError` becomes ``PROG: error: MESSAGE`` (one line) and exit 2."""
  try:
    yield
  except UserError as e:
    sys.stderr.write(f"{prog}: error: {one_line(e)}\n")
    sys.exit(2)
