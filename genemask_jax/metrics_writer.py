"""Training logs: TensorBoard event files (tensorboardX) and a JSONL log, process 0 only.

`clu.metric_writers` and `flax.metrics.tensorboard` import TensorFlow; tensorboardX writes
the same event files without it. Every scalar goes to both sinks, so the JSONL file is a
plain-text copy of the curves that scripts and tests can read without TensorBoard.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import numpy as np


class MetricWriter:
  """Writes scalars to `workdir/tb` (event files) and `workdir/log.jsonl`.

  Args:
    workdir: a local directory (event files and the JSONL log are local files).
    enabled: False on every process but 0, so a multi-host run writes one copy.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if not enabled:
      return
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    os.makedirs(workdir, exist_ok=True)
    self._tb = SummaryWriter(logdir=os.path.join(workdir, "tb"))
    self._jsonl = open(os.path.join(workdir, "log.jsonl"), "a", encoding="utf-8")

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

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
      self.enabled = False


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """Reads a `log.jsonl` back as a list of rows."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
