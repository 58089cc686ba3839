"""The one base class of every error a user can cause (a bad file, flag, config or workdir).

Each module raises its own subclass (`fasta.FastaError`, `npmi.NpmiError`, ...) with a
message that names the file, line or key; every binary catches `UserError` once and prints
that message as one line, exit code 2, instead of a traceback.
"""


class UserError(ValueError):
  """A problem with the user's input, found before (or instead of) long work."""
