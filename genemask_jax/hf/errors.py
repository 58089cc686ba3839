"""The errors of HF conversion: a directory that cannot be imported, a checkpoint that
cannot be exported. Both are `errors.UserError`s (one line, exit code 2 in the binaries)."""

from genemask_jax import errors


class HFImportError(errors.UserError):
  """An HF directory that cannot become genemask-jax parameters (all problems listed)."""


class HFExportError(errors.UserError):
  """A checkpoint that cannot be exported, or an output directory that is in the way."""
