r"""Predict with a fine-tuned model: per-sequence class probabilities (or values) and labels.

    python -m genemask_jax.predict --model=MODEL_DIR --input=new.fa.gz --output=pred.csv
    python -m genemask_jax.predict --model=MODEL_DIR --input=seqs.csv --output=pred.csv

``--model`` is a directory written by ``python -m genemask_jax.finetune --save_model``.
``--input`` is FASTA (``.fa``/``.fasta``/``.fna``, gzip or not; the name is the header
line) or a CSV (plain or gzip) with a ``sequence`` column of bases or spaced k-mers (and
``name`` or ``id``, else ``line<N>``): `genemask_jax.data.labelled.read_sequences`, the
reader embed and finetune use too. A sequence shorter than one k-mer is an error. ``pred.csv`` has one row per sequence: ``name``, then ``prob_<label>`` per
class and ``predicted_label`` (the most probable class, as written in the training data),
or ``value`` for a regression model, then ``windows``. Batched and jit'd
(``--batch_size``).

Long sequences: a sequence with more k-mers than the model's fine-tuned input length
(``max_len - 2`` of model.json) is split into overlapping windows of that length
(`genemask_jax.windows`, half-window overlap), each window is scored, and its row holds
the **mean of the windows' class probabilities** (regression: of their values); the
``windows`` column says how many. ``--max_windows=N`` keeps at most N evenly spaced
windows per sequence (first and last included), bounding the cost of very long inputs.
Probabilities rather than logits are averaged: the mean stays a probability
distribution, and one overconfident window cannot outvote the rest
(`genemask_jax.finetune.saved`).
"""

from __future__ import annotations

import csv
import os
import pathlib
import sys
from collections.abc import Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np

from genemask_jax import errors
from genemask_jax.data import labelled
from genemask_jax.finetune import saved


def _define_flags() -> None:
  """The command's flags, defined only when it runs (the library can be imported next to
  other binaries' flags, e.g. in one test process)."""
  flags.DEFINE_string("model", None, "Fine-tuned model directory (--save_model of finetune).")
  flags.DEFINE_string("input", None, "FASTA (.fa[.gz]) or CSV with a sequence column.")
  flags.DEFINE_string("output", None, "Output CSV.")
  flags.DEFINE_integer("batch_size", 64, "Windows per jitted forward pass.")
  flags.DEFINE_integer("max_windows", None, "At most this many (evenly spaced) windows per "
                       "sequence longer than the model's input; default all.")


class PredictError(errors.UserError):
  """A bad flag of the predict command."""


def write_predictions(path: str | os.PathLike, names: Sequence[str], outputs: np.ndarray,
                      model: saved.SavedModel, counts: Sequence[int] | None = None) -> None:
  """Writes one CSV row per sequence (see the module docstring), atomically.

  ``counts``: windows per sequence, written as a last ``windows`` column (None: no column).
  """
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp")
  extra = ["windows"] if counts is not None else []
  counts = list(counts) if counts is not None else [None] * len(names)
  with open(tmp, "w", newline="") as f:
    w = csv.writer(f)
    if model.task_type == "regression":
      w.writerow(["name", "value", *extra])
      for name, v, c in zip(names, outputs, counts):
        w.writerow([name, f"{float(v):.6g}", *([int(c)] if extra else [])])
    else:
      w.writerow(["name", *(f"prob_{v}" for v in model.label_values), "predicted_label",
                  *extra])
      for name, p, c in zip(names, outputs, counts):
        w.writerow([name, *(f"{float(x):.6f}" for x in p),
                    model.label_values[int(np.argmax(p))], *([int(c)] if extra else [])])
  os.replace(tmp, path)


def run(model_dir: str, input_path: str, output: str, batch_size: int = 64,
        max_windows: int | None = None) -> int:
  """Loads, predicts and writes; returns the number of sequences. Checks inputs first."""
  if batch_size < 1:
    raise PredictError(f"--batch_size must be >= 1, got {batch_size}")
  if max_windows is not None and max_windows < 1:
    raise PredictError(f"--max_windows must be >= 1, got {max_windows}")
  out = pathlib.Path(output)
  if out.is_dir():
    raise PredictError(f"--output={output} is a directory; expected a CSV file path")
  if not out.absolute().parent.is_dir():
    raise PredictError(f"--output={output}: no directory {out.absolute().parent}")
  model = saved.load_saved_model(model_dir)
  names, seqs = labelled.read_sequences(input_path)
  labelled.check_min_length(input_path, names, seqs, model.k)
  ids, owner = saved.encode(seqs, model.max_len, model.k, max_windows=max_windows)
  counts = np.bincount(owner, minlength=len(seqs))
  if np.any(counts > 1):
    print(f"note: {int(np.sum(counts > 1))} of {len(seqs)} sequence(s) have more than "
          f"{model.max_len - 2} k-mers (the model's input length) and are scored as the mean "
          f"of {int(np.sum(counts[counts > 1]))} windows' outputs", file=sys.stderr, flush=True)
  outputs = saved.pool(saved.predict_ids(model, ids, batch_size=batch_size), owner, len(seqs))
  write_predictions(out, names, outputs, model, counts)
  return len(seqs)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  fl = flags.FLAGS
  with errors.exits_on_user_error("predict"):
    missing = [f"--{k}" for k in ("model", "input", "output") if not getattr(fl, k)]
    if missing:
      raise PredictError(f"{', '.join(missing)} required")
    n = run(fl.model, fl.input, fl.output, fl.batch_size, fl.max_windows)
  print(f"wrote {n} predictions to {fl.output}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
