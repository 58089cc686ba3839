"""Training logs: TensorBoard event files (tensorboardX) and a JSONL log, process 0 only.

`clu.metric_writers` and `flax.metrics.tensorboard` import TensorFlow; tensorboardX writes
the same event files without it. Every scalar goes to both sinks, so the JSONL file is a
plain-text copy of the curves that scripts and tests can read without TensorBoard.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from typing import Any, Mapping

from etils import epath
import numpy as np


def is_remote(path: str) -> bool:
  """True for cloud paths (gs://, s3://, ...), which cannot be appended to in place."""
  return "://" in os.fspath(path)


class MetricWriter:
  """Writes scalars to `workdir/tb` (event files) and `workdir/log.jsonl`.

  Args:
    workdir: a local directory, or a cloud path (gs://...): then both files are written
      to a local staging directory and copied to the workdir (through etils.epath) at
      every `flush` and at `close`, since object stores do not append.
    enabled: False on every process but 0, so a multi-host run writes one copy.
    resume_step: the step a run starts (or resumes) from: rows of `log.jsonl` with a
      larger step were written after the last checkpoint by a run that stopped, and are
      dropped (the file is rewritten atomically) so that no step appears twice, and
      TensorBoard is told to purge them from the older event files.
  """

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None):
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    self._remote = None
    if not enabled:
      return
    # Heavy: only when logging is on.
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    local = workdir
    if is_remote(workdir):
      self._remote = workdir
      local = tempfile.mkdtemp(prefix="genemask-logs-")
    self._local = local
    os.makedirs(local, exist_ok=True)
    jsonl = os.path.join(local, "log.jsonl")
    if self._remote is not None:  # Continue the cloud copy, not a fresh file.
      remote_jsonl = epath.Path(self._remote) / "log.jsonl"
      if remote_jsonl.exists():
        with open(jsonl, "wb") as f:
          f.write(remote_jsonl.read_bytes())
    if resume_step is not None:
      truncate_jsonl(jsonl, resume_step)
    # purge_step: TensorBoard hides the older event files' points from that step on.
    self._tb = SummaryWriter(logdir=os.path.join(local, "tb"), purge_step=(
        None if resume_step is None else resume_step + 1))
    self._jsonl = open(jsonl, "a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: Mapping[str, Any], prefix: str = "") -> None:
    if not self.enabled:
      return
    row: dict[str, Any] = {"step": int(step), "time": time.time()}
    for name, value in scalars.items():
      value = float(np.asarray(value))
      key = f"{prefix}{name}"
      row[key] = value if math.isfinite(value) else str(value)
      self._tb.add_scalar(key, value, int(step))
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()

  def write_text(self, tag: str, text: str, step: int = 0) -> None:
    if self.enabled:
      self._tb.add_text(tag, text, step)

  def flush(self) -> None:
    if self.enabled:
      self._tb.flush()
      self._jsonl.flush()
      self._sync()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
      self._sync()
      self.enabled = False

  def _sync(self) -> None:
    """Copies the staged files to a cloud workdir (no-op for a local one)."""
    if self._remote is None:
      return
    for root, _, files in os.walk(self._local):
      for name in files:
        src = os.path.join(root, name)
        dst = epath.Path(self._remote) / os.path.relpath(src, self._local)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(open(src, "rb").read())


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """Reads a `log.jsonl` back as a list of rows."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def truncate_jsonl(path: str, last_step: int) -> int:
  """Drops the rows of a `log.jsonl` whose step is past `last_step`; returns how many.

  The file is rewritten through a temporary file and a rename, so a crash leaves either
  the old or the new file. A torn last line (a run killed mid-write) is dropped too.
  """
  if not os.path.exists(path):
    return 0
  kept, dropped = [], 0
  with open(path, encoding="utf-8") as f:
    for line in f:
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        dropped += 1
        continue
      if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > last_step:
        dropped += 1
      else:
        kept.append(line if line.endswith("\n") else line + "\n")
  if dropped:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(kept)
    os.replace(tmp, path)
  return dropped
