"""The training loop's checkpoints: save, resume from the newest intact step, and move
damaged or unfinished steps aside (never deleted).

    with Checkpoints(workdir, keep=3, is_main=jax.process_index() == 0) as ckpts:
      state, data = ckpts.restore_or(state, state_shardings)   # data None: a fresh start
      ...
      ckpts.save(step, state, data={"next_batch": step})

The layout (``WORKDIR/checkpoints/<STEP>/{state,data}``, ``checkpoints.damaged/``) is
`genemask_jax.workdir`'s.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from genemask_jax import distributed
from genemask_jax import workdir as workdir_lib

CheckpointError = workdir_lib.CheckpointError
DAMAGED_DIR = workdir_lib.DAMAGED_DIR
_TMP_SUFFIX = ".orbax-checkpoint-tmp"


class Checkpoints:
  """The training loop's orbax CheckpointManager over ``WORKDIR/checkpoints``.

  Creating it moves the unfinished saves of an interrupted run aside; `restore_or`
  resumes from the newest step that reads back whole (moving damaged newer ones aside);
  `save` writes ``Composite(state=TrainState, data=JSON)``. Use as a context manager (or
  call `close`) so that pending async saves finish.
  """

  def __init__(self, workdir: str | os.PathLike, *, keep: int | None = None,
               async_save: bool = True, is_main: bool = True):
    self.workdir = epath.Path(workdir)
    self.directory = self.workdir / workdir_lib.CHECKPOINT_DIR
    self.is_main = is_main
    move_unfinished_saves(self.workdir, self.directory, is_main)
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save))

  def restore_or(self, state: Any, shardings: Any) -> tuple[Any, dict[str, Any] | None]:
    """(restored state, its data item), or (``state``, None) when there is no checkpoint.

    Args:
      state: the freshly created train state (its shapes and dtypes are the target).
      shardings: the state's shardings (same tree).

    Raises:
      CheckpointError: there are checkpoints but none restores (e.g. another model's).
    """
    if self.manager.latest_step() is None:
      return state, None
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
    restored = restore_newest_intact(self.manager, self.workdir, abstract, self.is_main)
    if restored is None:
      return state, None
    return restored.state, dict(restored.data or {})

  def save(self, step: int, state: Any, *, data: Mapping[str, Any] | None = None,
           force: bool = True, wait: bool = False) -> None:
    """Saves ``state`` and ``data`` as step ``step`` (waits for the write if ``wait``)."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(dict(data or {}))),
        force=force)
    if wait:
      self.manager.wait_until_finished()

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

  def __enter__(self) -> Checkpoints:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _move_aside(workdir: epath.Path, path: epath.Path, why: str) -> None:
  """Moves a checkpoint directory that must not be resumed from to DAMAGED_DIR (kept)."""
  dest_root = workdir / DAMAGED_DIR
  dest_root.mkdir(parents=True, exist_ok=True)
  dest = dest_root / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}"
  path.rename(dest)
  print(f"{path}: {why}; moved to {dest} (kept, not deleted)", file=sys.stderr, flush=True)


def move_unfinished_saves(workdir: epath.Path, ckpt_dir: epath.Path, is_main: bool) -> None:
  """Moves the `*.orbax-checkpoint-tmp` directories of interrupted saves out of the way.

  Orbax ignores them when listing steps, but deletes one when it saves the same step again;
  moving them keeps the rule that nothing in a workdir is deleted.
  """
  if is_main and ckpt_dir.is_dir():
    for p in sorted(ckpt_dir.iterdir()):
      if p.name.endswith(_TMP_SUFFIX):
        _move_aside(workdir, p, "an unfinished save (never committed), ignored")
  distributed.sync("tmp_checkpoints")


def _damage_signs(step_dir: epath.Path) -> list[str]:
  """What is visibly missing from a step directory (orbax's own error can mislead)."""
  signs = []
  if not (step_dir / "commit_success.txt").exists():
    signs.append("uncommitted, no commit_success.txt")
  for name in ("_CHECKPOINT_METADATA", "state/_METADATA", "state/manifest.ocdbt"):
    if not (step_dir / name).exists():
      signs.append(f"{name} missing")
  return signs


def restore_newest_intact(manager: ocp.CheckpointManager, workdir: epath.Path,
                          abstract_state: Any, is_main: bool) -> Any | None:
  """Restores the newest checkpoint that reads back whole; None if there is none.

  When a step fails to restore (a truncated data file, a missing `_METADATA`, a save that
  never committed) the next older one is tried. Each failed step (all newer than the one
  restored) is then reported in one line on stderr and moved to DAMAGED_DIR, never
  deleted, so that the run's next saves of those steps cannot clash with it.

  Raises:
    CheckpointError: there are checkpoints but none restores (e.g. another model's).
  """
  ckpt_dir = epath.Path(manager.directory)
  failed: list[tuple[int, str]] = []
  workdir_lib.hide_orbax_read_noise()
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      with distributed.quiet_logs(logging.FATAL):  # Orbax logs each failed read's traceback as ERROR.
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many types)
      reason = "; ".join(_damage_signs(ckpt_dir / str(step)) + [workdir_lib.one_line(e)])
      failed.append((step, reason))
      gc.collect()  # Finalise the failed read's coroutines now, under the filter above.
      continue
    distributed.sync("restore")
    if is_main:  # One line per damaged step.
      for bad, reason in failed:
        _move_aside(workdir, ckpt_dir / str(bad),
                    f"damaged checkpoint ({reason}); resuming from step {step}")
    distributed.sync("damaged_checkpoints")
    if failed:
      manager.reload()
    return restored
  if failed:
    raise CheckpointError(
        f"{ckpt_dir}: no checkpoint restores into this model (steps "
        f"{', '.join(str(s) for s, _ in failed)}; step {failed[0][0]}: {failed[0][1]}); "
        "nothing was changed: fix the config, or move checkpoints/ away to start afresh")
  return None
