"""The package's one progress bar, on stderr: fine-tuning, few-shot runs and predictions.

    bar = progress.Progress(total=steps, desc="finetune")
    for ...:
      bar.update(1, loss=loss)
    bar.close()

tqdm draws it when installed; otherwise a plain ``desc: n/total (elapsed, ETA)`` line is
rewritten about twenty times per run. ``enabled=False`` (``--noprogress``) prints nothing.
"""

from __future__ import annotations

import sys
import time


class Progress:
  """A minimal stderr progress bar (tqdm if installed, else a plain counter line)."""

  def __init__(self, total: int, desc: str, enabled: bool = True):
    self._bar = None
    self._enabled = enabled
    self.total, self.desc, self.n = total, desc, 0
    self._t0 = time.time()
    if not enabled:
      return
    try:
      import tqdm  # pylint: disable=g-import-not-at-top  (optional: a plain line without it)
      self._bar = tqdm.tqdm(total=total, desc=desc, file=sys.stderr, leave=False,
                            dynamic_ncols=True,
                            mininterval=0.1 if sys.stderr.isatty() else 5.0)
    except ImportError:
      self._bar = None

  def update(self, n: int = 1, **postfix: float) -> None:
    """Advances the bar by ``n``; ``postfix`` values (e.g. loss=0.69) are shown beside it."""
    self.n += n
    if not self._enabled:
      return
    if self._bar is not None:
      self._bar.update(n)
      if postfix:
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
    elif self.n == self.total or self.n % max(self.total // 20, 1) == 0:
      elapsed = time.time() - self._t0
      eta = elapsed / self.n * (self.total - self.n) if self.n else 0.0
      print(f"\r{self.desc}: {self.n}/{self.total} ({elapsed:.0f}s, ETA {eta:.0f}s)",
            end="", file=sys.stderr, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    elif self._enabled:
      print(file=sys.stderr)
