"""The pretraining workdir: its config.json, checkpoints, lock and damaged steps.

One module owns the layout that the pretraining binary writes and every other command
reads (few-shot evaluation, HF export, ``python -m genemask_jax.hf import``)::

    WORKDIR/config.json                 {"config": {...}, "model_signature": {...}}
                                        (+ "model_config", "source" for imported weights)
    WORKDIR/checkpoints/<STEP>/state    orbax StandardSave of TrainState(step, params, opt_state)
    WORKDIR/checkpoints/<STEP>/data     orbax JsonSave of the input pipeline position
    WORKDIR/checkpoints.damaged/        steps that could not be restored, moved aside
    WORKDIR/.lock                       pid and host of the run using the workdir

Typical use::

    write_config(path, cfg, size="tiny", config=config_dict)   # once, by the writer
    cfg, saved = read_model_config(path)                        # any reader
    workdir, step_dir = resolve_checkpoint("run/checkpoints/400")
    params = restore_params(step_dir, cfg)                      # MLM params on one device

The training loop's saves and resume (damaged steps moved aside) are `genemask_jax.resume`,
over the same layout.

Every problem a user can cause raises `CheckpointError` naming the path and what was
expected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging as std_logging
import os
import pathlib
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from genemask_jax import errors
from genemask_jax import metrics_writer
from genemask_jax import model as model_lib

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
STATE_ITEM = "state"
DATA_ITEM = "data"
DAMAGED_DIR = "checkpoints.damaged"  # Beside checkpoints/.

# model_signature keys written by older versions under another name.
_SIGNATURE_ALIASES = {"max_position": "max_len", "max_position_embeddings": "max_len"}


class CheckpointError(errors.UserError):
  """A workdir or checkpoint that is missing, unreadable, locked or of another model."""


# ----------------------------------------------------------------------------- config.json
def model_signature(cfg: model_lib.ModelConfig, size: str) -> dict[str, Any]:
  """``{"size": size, field: value}`` for every field of `model_lib.SIGNATURE_FIELDS`."""
  sig = {f: getattr(cfg, f) for f in model_lib.SIGNATURE_FIELDS}
  sig["size"] = size
  return sig


def write_config(workdir: str | os.PathLike, cfg: model_lib.ModelConfig, *, size: str,
                 config: Mapping[str, Any], full_model_config: bool = False,
                 source: Mapping[str, Any] | None = None) -> None:
  """Writes ``WORKDIR/config.json``, the one writer of its schema.

  Args:
    workdir: the directory (created by the caller).
    cfg: the model.
    size: the model size name (a key of ``MODEL_SIZES``, or "custom").
    config: the run's resolved config as a JSON-able dict.
    full_model_config: also store every `ModelConfig` field under "model_config" (imported
      weights, whose dropout and initializer come from the HF config, not a named size).
    source: where imported weights came from (kept for the model card).
  """
  saved: dict[str, Any] = {"config": dict(config), "model_signature": model_signature(cfg, size)}
  if full_model_config:
    saved["model_config"] = dataclasses.asdict(cfg)
  if source is not None:
    saved["source"] = dict(source)
  (epath.Path(workdir) / CONFIG_FILE).write_text(json.dumps(saved, indent=2) + "\n")


def read_config(workdir: str | os.PathLike) -> dict[str, Any]:
  """The parsed ``WORKDIR/config.json``.

  Raises:
    CheckpointError: missing, not JSON or not an object.
  """
  path = epath.Path(workdir) / CONFIG_FILE
  try:
    text = path.read_text()
  except FileNotFoundError as e:
    raise CheckpointError(
        f"{path}: missing; a pretraining workdir holds {CONFIG_FILE} with the model "
        "signature next to checkpoints/") from e
  try:
    saved = json.loads(text)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: not valid JSON ({e}); is this a genemask-jax workdir?") from e
  if not isinstance(saved, dict):
    raise CheckpointError(f"{path}: expected a JSON object, got {type(saved).__name__}")
  return saved


def read_model_config(workdir: str | os.PathLike) -> tuple[model_lib.ModelConfig,
                                                          dict[str, Any]]:
  """(The `ModelConfig` a workdir's checkpoints hold, the parsed ``config.json``).

  The named size's config, overridden by "model_config" (imported weights) and then by the
  "model_signature" fields and ``config.model.dropout_rate``.

  Raises:
    CheckpointError: the file is missing, not JSON, or lacks a usable model signature.
  """
  path = epath.Path(workdir) / CONFIG_FILE
  saved = read_config(workdir)
  sig = saved.get("model_signature")
  if not isinstance(sig, dict) or "size" not in sig:
    raise CheckpointError(
        f"{path}: no 'model_signature' with a 'size' key; expected "
        '{"config": {...}, "model_signature": {"size": "tiny", ...}}')
  fields = {f.name for f in dataclasses.fields(model_lib.ModelConfig)}
  overrides = {}
  full = saved.get("model_config")
  if isinstance(full, Mapping):
    overrides.update({k: v for k, v in full.items() if k in fields})
  for key, value in sig.items():
    name = _SIGNATURE_ALIASES.get(key, key)
    if name in fields:
      overrides[name] = value
  run_model = ((saved.get("config") or {}).get("model") or {})
  if run_model.get("dropout_rate") is not None and not isinstance(full, Mapping):
    overrides["dropout_rate"] = run_model["dropout_rate"]
  try:
    if sig["size"] in model_lib.MODEL_SIZES:
      cfg = model_lib.model_config(sig["size"], **overrides)
    else:  # Imported weights of no named size ("custom"): the file says it all.
      cfg = model_lib.ModelConfig(**overrides)
  except (ValueError, TypeError) as e:
    raise CheckpointError(f"{path}: model_signature {sig} does not make a model: {e}") from e
  return cfg, saved


def check_resumable(workdir: str | os.PathLike, cfg: model_lib.ModelConfig,
                    size: str) -> bool:
  """Refuses a workdir that holds a run of another model; True if it holds checkpoints.

  Reads only. Signature fields an older config.json did not record are not compared.

  Raises:
    CheckpointError: checkpoints without config.json, a config.json that is not JSON, or
      checkpoints of another model.
  """
  workdir = epath.Path(workdir)
  saved = workdir / CONFIG_FILE
  ckpt_dir = workdir / CHECKPOINT_DIR
  has_checkpoints = ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir())
  if not saved.exists():
    if has_checkpoints:
      raise CheckpointError(f"{workdir} holds checkpoints but no config.json; refusing to mix "
                            "runs")
    return False
  have = read_config(workdir).get("model_signature", {})
  want = model_signature(cfg, size)
  diff = {k: (have.get(k), v) for k, v in want.items()
          if (k in have or k == "size") and have.get(k) != v}
  if diff and has_checkpoints:
    details = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diff.items())
    raise CheckpointError(f"{workdir} holds a checkpoint of another model ({details}); use "
                          "another --workdir or the matching config")
  return has_checkpoints


# ----------------------------------------------------------------------------- steps
def step_dirs(ckpt_dir: str | os.PathLike) -> list[int]:
  """The steps under a checkpoints directory that have a ``state`` item, ascending."""
  ckpt_dir = pathlib.Path(ckpt_dir)
  if not ckpt_dir.is_dir():
    return []
  return sorted(int(p.name) for p in ckpt_dir.iterdir()
                if p.name.isdigit() and (p / STATE_ITEM).is_dir())


def resolve_checkpoint(path: str | os.PathLike, step: int | None = None
                       ) -> tuple[pathlib.Path, pathlib.Path]:
  """(workdir, step directory) of a checkpoint path.

  Accepts WORKDIR, WORKDIR/checkpoints, WORKDIR/checkpoints/STEP and WORKDIR/STEP; the
  first two mean the latest step, or ``step`` when given.

  Raises:
    CheckpointError: the path does not exist, holds no step with a ``state`` item, or
      not the step asked for.
  """
  workdir, step_dir = _resolve(path)
  if step is None or int(step_dir.name) == step:
    return workdir, step_dir
  if pathlib.Path(path).name.isdigit():
    raise CheckpointError(f"{path}: is step {step_dir.name}, but step={step} was asked for")
  wanted = step_dir.parent / str(step)
  if not (wanted / STATE_ITEM).is_dir():
    raise CheckpointError(f"{step_dir.parent}: no step {step}; saved steps are "
                          f"{step_dirs(step_dir.parent)}")
  return workdir, wanted


def _resolve(path: str | os.PathLike) -> tuple[pathlib.Path, pathlib.Path]:
  p = pathlib.Path(path).expanduser()
  if p.name.isdigit() and not p.exists() and (p.parent / CHECKPOINT_DIR / p.name).exists():
    p = p.parent / CHECKPOINT_DIR / p.name  # WORKDIR/STEP
  if not p.exists() and p.name.isdigit() and p.parent.is_dir():
    steps = step_dirs(p.parent) or step_dirs(p.parent / CHECKPOINT_DIR)
    raise CheckpointError(
        f"{p}: no checkpoint of step {p.name} (expected {p}/{STATE_ITEM}/); steps found: "
        f"{steps or 'none'}")
  if not p.exists():
    raise CheckpointError(
        f"checkpoint path {str(p)!r} does not exist; expected a pretraining workdir (with "
        f"{CONFIG_FILE} and {CHECKPOINT_DIR}/<step>/) or one of its step directories")
  if p.name.isdigit():
    if (p / STATE_ITEM).is_dir():  # WORKDIR/checkpoints/STEP
      workdir = p.parent.parent if p.parent.name == CHECKPOINT_DIR else p.parent
      return workdir, p
    alt = p.parent / CHECKPOINT_DIR / p.name  # WORKDIR/STEP
    if (alt / STATE_ITEM).is_dir():
      return p.parent, alt
    steps = step_dirs(p.parent / CHECKPOINT_DIR) or step_dirs(p.parent)
    raise CheckpointError(
        f"{p}: no checkpoint of step {p.name} (expected {p}/{STATE_ITEM}/ or "
        f"{alt}/{STATE_ITEM}/); steps found: {steps or 'none'}")
  if p.name == CHECKPOINT_DIR and not (p / CHECKPOINT_DIR).is_dir():
    workdir, ckpt_dir = p.parent, p
  else:
    workdir, ckpt_dir = p, p / CHECKPOINT_DIR
  steps = step_dirs(ckpt_dir)
  if not steps:
    raise CheckpointError(
        f"{p}: no checkpoint found; expected {ckpt_dir}/<step>/{STATE_ITEM}/ written by the "
        "pretraining binary (python main.py --workdir=...)")
  return workdir, ckpt_dir / str(steps[-1])


# ----------------------------------------------------------------------------- params
def abstract_mlm_params(cfg: model_lib.ModelConfig) -> Any:
  """ShapeDtypeStructs of `BertForMaskedLM` params for ``cfg`` (no allocation)."""
  model = model_lib.BertForMaskedLM(cfg)
  return jax.eval_shape(
      lambda k: nn.unbox(model.init(k, jnp.zeros((1, 8), jnp.int32))["params"]),
      jax.random.key(0))


def one_line(e: BaseException, limit: int = 200) -> str:
  """``Type: message`` cut to one line (tensorstore's messages run to dozens)."""
  text = str(e).strip().split("\n")[0].split(" See full TensorStore details")[0]
  if len(text) > limit:
    text = text[:limit - 3] + "..."
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


def restore_params(step_dir: str | os.PathLike, cfg: model_lib.ModelConfig, *,
                   sharding: Any = None, hint: str = "") -> Any:
  """Restores only the MLM ``params`` of a checkpoint step (no optimizer state).

  Args:
    step_dir: ``WORKDIR/checkpoints/STEP`` (see `resolve_checkpoint`).
    cfg: the model the checkpoint holds (see `read_model_config`).
    sharding: one `jax.sharding.Sharding` for every leaf, or a tree of them shaped as the
      params; None = the first local device.
    hint: appended to the messages about a damaged step (what to do instead).

  Returns:
    ``BertForMaskedLM`` params (unboxed jax arrays).

  Raises:
    CheckpointError: an unreadable or damaged step, or stored shapes that are not ``cfg``'s
      (each a one-line message naming the step's ``state`` directory).
  """
  state_dir = pathlib.Path(step_dir).absolute() / STATE_ITEM
  workdir = state_dir.parent.parent.parent
  hint = f"; {hint}" if hint else ""
  abstract = abstract_mlm_params(cfg)
  checkpointer = ocp.PyTreeCheckpointer()
  with _quiet_absl():  # Orbax warns about step metadata it keeps one level up.
    try:
      meta = checkpointer.metadata(state_dir)
    except Exception as e:  # pylint: disable=broad-except  (orbax raises many types)
      raise CheckpointError(f"{state_dir}: unreadable orbax checkpoint ({one_line(e)})"
                            f"{hint}") from None
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    if tree is None:
      missing = "" if (state_dir / "_METADATA").exists() else " (_METADATA missing)"
      raise CheckpointError(f"{state_dir}: damaged checkpoint, its tree metadata cannot be "
                            f"read{missing}{hint}")
    if not isinstance(tree, Mapping) or "params" not in tree:
      raise CheckpointError(f"{state_dir}: no 'params' in the saved tree (keys: "
                            f"{sorted(tree) if isinstance(tree, Mapping) else type(tree)}); "
                            "expected TrainState(step, params, opt_state)")
    want = {jax.tree_util.keystr(p): tuple(x.shape)
            for p, x in jax.tree_util.tree_leaves_with_path(abstract)}
    have = {jax.tree_util.keystr(p): tuple(x.shape)
            for p, x in jax.tree_util.tree_leaves_with_path(tree["params"])}
    missing = sorted(k for k in want if k not in have)
    if missing:
      raise CheckpointError(
          f"{state_dir}: {len(missing)} parameter(s) of the BertForMaskedLM that "
          f"{workdir / CONFIG_FILE} describes are missing, e.g. {missing[:3]}")
    bad = [f"{k}: saved {have[k]}, config {v}" for k, v in want.items() if have[k] != v]
    if bad:
      raise CheckpointError(
          f"{state_dir}: stored shapes differ from {workdir / CONFIG_FILE}'s model "
          f"({'; '.join(bad[:3])}); config and checkpoint are from different runs")
    if sharding is None:
      sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    if isinstance(sharding, jax.sharding.Sharding):
      shardings = jax.tree.map(lambda _: sharding, abstract)
    else:
      shardings = sharding
    target = {"params": jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)}
    hide_orbax_read_noise()
    try:
      restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True))
    except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many types)
      gc.collect()  # Finalise the failed read's coroutines now, under the filter above.
      raise CheckpointError(f"{state_dir}: cannot restore params from a damaged checkpoint "
                            f"({one_line(e)}){hint}") from None
  return restored["params"]


@contextlib.contextmanager
def _quiet_absl():
  absl_logger = std_logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(std_logging.ERROR)
  try:
    yield
  finally:
    absl_logger.setLevel(level)


# ----------------------------------------------------------------------------- lock
class WorkdirLock:
  """An O_EXCL lock file (`WORKDIR/.lock`) holding the pid and host of the run using it.

  A lock left by a dead process on this host (SIGKILL, a crash) is taken over with a
  warning; a live one, or one from another host, is a CheckpointError naming its owner.
  Cloud workdirs cannot be locked this way and are not locked.
  """

  NAME = ".lock"

  def __init__(self, workdir: str | os.PathLike):
    self.path = None if metrics_writer.is_remote(os.fspath(workdir)) else (
        pathlib.Path(workdir) / self.NAME)
    self._held = False

  def acquire(self) -> None:
    if self.path is None:
      return
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    for _ in range(2):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        owner = self._read_owner()
        if owner is None or not self._is_stale(owner):
          raise CheckpointError(self._held_message(owner)) from None
        logging.warning("%s: taking over the lock of pid %s, which is no longer running",
                        self.path, owner.get("pid"))
        print(f"{self.path}: stale lock of pid {owner.get('pid')} (no longer running) "
              "taken over", file=sys.stderr, flush=True)
        with contextlib.suppress(FileNotFoundError):
          self.path.unlink()
        continue
      with os.fdopen(fd, "w") as f:
        json.dump(me, f)
      self._held = True
      return
    raise CheckpointError(self._held_message(self._read_owner()))

  def release(self) -> None:
    if self._held:
      with contextlib.suppress(FileNotFoundError):
        self.path.unlink()
      self._held = False

  def _read_owner(self) -> dict[str, Any] | None:
    try:
      owner = json.loads(self.path.read_text())
      return owner if isinstance(owner, dict) else None
    except (OSError, ValueError):
      return None  # Being written right now, or not ours: treat as held.

  @staticmethod
  def _is_stale(owner: dict[str, Any]) -> bool:
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
      return False
    try:
      os.kill(owner["pid"], 0)
    except ProcessLookupError:
      return True
    except PermissionError:
      return False  # Alive, another user's.
    return False

  def _held_message(self, owner: dict[str, Any] | None) -> str:
    if owner is None:
      return (f"{self.path}: the workdir is locked by another run (unreadable lock file); "
              "if no run uses it, delete that file")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("since", 0)))
    return (f"{self.path}: the workdir is in use by pid {owner.get('pid')} on host "
            f"{owner.get('host')} since {since}; wait for it, use another --workdir, or "
            "delete that file if that run is gone")


class _OrbaxReadTaskFilter(std_logging.Filter):
  """Drops asyncio's reports of abandoned orbax *read* tasks (see hide_orbax_read_noise)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    try:
      message = record.getMessage()
    except Exception:  # pylint: disable=broad-except  (a malformed record is not ours)
      return True
    # Reads only: an unretrieved failure of an orbax *save* task must still be seen.
    if "_read_array_index_and_device_put" in message or (
        "orbax" in message and "Encountered error while reading" in message) or (
        _raised_in_an_orbax_read(record.exc_info)):
      logging.debug("orbax: ignored while discarding a failed read: %s",
                    message.splitlines()[0] if message else "")
      return False
    return True


def _raised_in_an_orbax_read(exc_info) -> bool:
  """Whether a logged exception was raised inside orbax's array read.

  asyncio's "Future exception was never retrieved" names no coroutine (the future of an
  `asyncio.gather` over orbax's reads, seen in CI): only the traceback tells whose it is.
  """
  tb = exc_info[2] if isinstance(exc_info, tuple) and len(exc_info) == 3 else None
  while tb is not None:
    if tb.tb_frame.f_code.co_name == "_read_array_index_and_device_put":
      return True
    tb = tb.tb_next
  return False


def hide_orbax_read_noise() -> None:
  """Sends the 'Exception ignored in <coroutine ...>' reports of abandoned orbax reads to the
  debug log instead of stderr (every other unraisable exception still goes to stderr).

  A failed restore of a damaged step leaves orbax's pending read coroutines to be
  finalised whenever the garbage collector gets to them; Python then prints each one's
  traceback, which would bury the one line that reports the damaged step. A callback of
  such a read can also reach the read's event loop after it closed, which reports
  "Exception ignored in: None ... RuntimeError: Event loop is closed" from asyncio (no
  orbax frame in it; seen in CI, depending on GC timing): filtered the same way. And when
  such a read's task ends with its exception unread, asyncio logs "Task exception was never
  retrieved" (or "Future exception was never retrieved", for the future of a gather over
  such reads) with the traceback on its own logger (both seen in CI): records of that
  logger that name an orbax read, or whose traceback passes through one, go to the debug
  log too.
  """
  asyncio_logger = std_logging.getLogger("asyncio")
  if not any(isinstance(f, _OrbaxReadTaskFilter) for f in asyncio_logger.filters):
    asyncio_logger.addFilter(_OrbaxReadTaskFilter())
  previous = sys.unraisablehook
  if getattr(previous, "_genemask_filter", False):
    return

  def hook(unraisable):
    where = f"{getattr(unraisable, 'object', '')!r} {unraisable.exc_value!r}"
    if "orbax" in where or "_read_array_index_and_device_put" in where or (
        unraisable.exc_traceback is not None and "orbax" in
        str(getattr(unraisable.exc_traceback.tb_frame.f_code, "co_filename", ""))) or (
        isinstance(unraisable.exc_value, RuntimeError) and
        "Event loop is closed" in str(unraisable.exc_value)):
      logging.debug("orbax: ignored while discarding a failed read: %r", unraisable.exc_value)
      return
    previous(unraisable)

  hook._genemask_filter = True  # pylint: disable=protected-access
  sys.unraisablehook = hook
