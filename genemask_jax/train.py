"""GeneMask pretraining, top to bottom: setup, mesh, data, NPMI lookup, model, state,
restore, loop, final save.

Called by `main.py` (the binary); see its docstring for the command. Everything here takes
the `ConfigDict` from `configs/pretrain.py`; nothing reads flags.

What a run leaves in its workdir:
  config.json      the resolved config (and the model size, checked on restart)
  checkpoints/     orbax checkpoints (train state + data position), the last N kept
  npmi/            the NPMI table computed from the corpus (when npmi.source = "corpus")
  tfds/            the corpus as a TFDS array_record dataset (unless data.tfds_dir is set)
  tb/              TensorBoard event files;  log.jsonl  the same scalars as JSON lines
  .lock            pid and host of the run using the workdir, removed when it ends
  checkpoints.damaged/   steps that could not be restored (or unfinished saves), moved
                   aside at resume so that a new save of the same step cannot clash

A run stopped by SIGTERM/SIGINT (or the cluster's preemption notice) saves a checkpoint and
raises `Preempted`; main.py exits with its `exit_code` (143 = 128 + SIGTERM, 130 for
SIGINT) so that `main.py && next` never treats an unfinished run as done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import os
import pathlib
import signal
import socket
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from genemask_jax import errors
from genemask_jax import flops as flops_lib
from genemask_jax import masking
from genemask_jax import metrics_writer
from genemask_jax import model as model_lib
from genemask_jax import npmi as npmi_lib
from genemask_jax import optim
from genemask_jax import sharding as sharding_lib
from genemask_jax import train_step as step_lib
from genemask_jax.data import fasta
from genemask_jax.data import genome
from genemask_jax.data import genome_tfds
from genemask_jax.data import pipeline


class UserError(errors.UserError):
  """A problem with the run's inputs (config, corpus, workdir), found before long work."""


# Errors a user can cause (every module's error subclasses errors.UserError); main.py
# prints them as one line instead of a traceback.
USER_ERRORS = (errors.UserError,)

AUTHORS_NPMI_CSV = "npmi/genemask_grch38_chr1-3_6mer_npmi.csv"
_MODEL_KEYS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "mlp_dim", "max_len",
               "vocab_pad_multiple")


# ----------------------------------------------------------------------------- setup
def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks values that a typo or a bad override could break, before any work."""
  if config.model.size not in model_lib.MODEL_SIZES:
    raise UserError(f"config.model.size={config.model.size!r}; known sizes: "
                    f"{', '.join(model_lib.MODEL_SIZES)}")
  if config.masking.strategy not in masking.STRATEGIES:
    raise UserError(f"config.masking.strategy={config.masking.strategy!r}; expected one of "
                    f"{', '.join(masking.STRATEGIES)}")
  if config.data.k != 6 and config.masking.strategy == "genemask":
    raise UserError("config.data.k: GeneMask's NPMI lookup is defined for 6-mers; use k=6")
  t = config.train
  for key in ("batch_size", "num_steps", "log_every", "checkpoint_every", "grad_accum_steps"):
    if t[key] < 1:
      raise UserError(f"config.train.{key} must be >= 1, got {t[key]}")
  if t.batch_size % t.grad_accum_steps:
    raise UserError(f"config.train.batch_size={t.batch_size} is not divisible by "
                    f"config.train.grad_accum_steps={t.grad_accum_steps}")
  if t.batch_size % jax.process_count():
    raise UserError(f"config.train.batch_size={t.batch_size} is not divisible by the "
                    f"{jax.process_count()} processes")
  if config.data.max_len < 8 or config.data.max_len > 512:
    raise UserError(f"config.data.max_len must be in 8..512 (positions), got "
                    f"{config.data.max_len}")
  if not 0 < config.masking.max_predictions <= config.data.max_len:
    raise UserError(f"config.masking.max_predictions must be in 1..data.max_len, got "
                    f"{config.masking.max_predictions}")
  _validate_run_config(config)


def _validate_run_config(config: ml_collections.ConfigDict) -> None:
  """The checks of #20: values that used to fail only after the dataset build or mid-run."""
  t, o, e = config.train, config.optim, config.eval
  if t.keep_checkpoints < 1:
    raise UserError(f"config.train.keep_checkpoints must be >= 1 (the last N checkpoints are "
                    f"kept; 0 would delete every one), got {t.keep_checkpoints}")
  for key in ("every", "num_examples", "batch_size"):
    if e[key] < 1:
      raise UserError(f"config.eval.{key} must be >= 1, got {e[key]}")
  if e.batch_size % jax.process_count():
    raise UserError(f"config.eval.batch_size={e.batch_size} is not divisible by the "
                    f"{jax.process_count()} processes")
  if not 0 <= o.warmup_steps <= t.num_steps:
    raise UserError(f"config.optim.warmup_steps={o.warmup_steps} must be in "
                    f"0..config.train.num_steps={t.num_steps}")
  if o.peak_lr < 0:
    raise UserError(f"config.optim.peak_lr must be >= 0, got {o.peak_lr}")
  for key in ("b1", "b2"):
    if not 0 <= o[key] < 1:
      raise UserError(f"config.optim.{key} must be in [0, 1), got {o[key]}")
  if o.eps <= 0 or o.weight_decay < 0:
    raise UserError(f"config.optim.eps must be > 0 and config.optim.weight_decay >= 0, got "
                    f"eps={o.eps}, weight_decay={o.weight_decay}")
  if o.clip_norm is not None and o.clip_norm <= 0:
    raise UserError(f"config.optim.clip_norm must be > 0 (or None for no clipping), got "
                    f"{o.clip_norm}")
  m = config.masking
  if m.p is not None and not 0 < m.p <= 1:
    raise UserError(f"config.masking.p must be in (0, 1], got {m.p}")
  if m.rank_source not in ("content", "position"):
    raise UserError(f"config.masking.rank_source={m.rank_source!r}; expected 'content' or "
                    "'position'")
  if m.random_over not in ("kmers", "vocab"):
    raise UserError(f"config.masking.random_over={m.random_over!r}; expected 'kmers' or "
                    "'vocab'")
  if not config.npmi.source:
    raise UserError("config.npmi.source is empty; expected 'corpus', 'authors' or the path "
                    "of an NPMI table (.csv, .npz or .rank.npy)")
  if not 0.0 <= config.npmi.min_scored_fraction <= 1.0:
    raise UserError("config.npmi.min_scored_fraction must be in [0, 1], got "
                    f"{config.npmi.min_scored_fraction}")
  if config.npmi.source == "corpus" and config.npmi.min_count < 1:
    raise UserError(f"config.npmi.min_count must be >= 1, got {config.npmi.min_count}")
  d = config.data
  if not 0 < d.validation_fraction < 1:
    raise UserError(f"config.data.validation_fraction must be in (0, 1), got "
                    f"{d.validation_fraction}")
  if not 0 <= d.long_chunk_prob <= 1:
    raise UserError(f"config.data.long_chunk_prob must be in [0, 1], got {d.long_chunk_prob}")
  if not d.k <= d.min_chunk_bp < d.max_len:
    raise UserError(f"config.data.min_chunk_bp must be in data.k..data.max_len - 1 "
                    f"({d.k}..{d.max_len - 1}), got {d.min_chunk_bp}")
  pr = config.probe
  if pr.every > 0:
    try:
      shots = [int(x) for x in str(pr.shots).split(",") if x.strip()]
    except ValueError:
      shots = []
    if not shots or min(shots) < 1:
      raise UserError(f"config.probe.shots={pr.shots!r}; expected comma-separated positive "
                      "integers, e.g. '10,100'")
    if not any(t.strip() for t in pr.tasks.split(",")):
      raise UserError("config.probe.tasks is empty; expected comma-separated task names")
    if pr.max_test_examples < 1:
      raise UserError(f"config.probe.max_test_examples must be >= 1, got "
                      f"{pr.max_test_examples}")
  if config.model.dropout_rate is not None and not 0 <= config.model.dropout_rate < 1:
    raise UserError(f"config.model.dropout_rate must be in [0, 1), got "
                    f"{config.model.dropout_rate}")


def model_config_of(config: ml_collections.ConfigDict) -> model_lib.ModelConfig:
  try:  # "auto": bfloat16 activations on GPU/TPU, float32 on CPU (params stay float32).
    dtype = model_lib.resolve_dtype(config.model.dtype)
  except ValueError as e:
    raise UserError(f"config.model.{e}") from e
  overrides = {"dtype": dtype,
               "vocab_pad_multiple": config.model.vocab_pad_multiple,
               "attention_impl": config.model.get("attention_impl", "auto"),
               "remat": config.model.get("remat", "none"),
               "scan_layers": config.model.get("scan_layers", False)}
  if config.model.dropout_rate is not None:
    overrides["dropout_rate"] = config.model.dropout_rate
  cfg = model_lib.model_config(config.model.size, **overrides)
  if config.data.max_len > cfg.max_len:
    raise UserError(f"config.data.max_len={config.data.max_len} exceeds the model's "
                    f"{cfg.max_len} positions")
  return cfg


def _model_signature(config: ml_collections.ConfigDict,
                     cfg: model_lib.ModelConfig) -> dict[str, Any]:
  d = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
  sig = {k: d[k] for k in _MODEL_KEYS if k in d}
  sig["size"] = config.model.size
  return sig


def check_workdir(workdir: epath.Path, config: ml_collections.ConfigDict,
                  cfg: model_lib.ModelConfig) -> bool:
  """Refuses a workdir that holds a run of another model; returns True if it holds a run.

  Reads only; nothing in the workdir is written before this passes.
  """
  saved = workdir / "config.json"
  has_checkpoints = (workdir / "checkpoints").is_dir() and any(
      p.name.isdigit() for p in (workdir / "checkpoints").iterdir())
  if not saved.exists():
    if has_checkpoints:
      raise UserError(f"{workdir} holds checkpoints but no config.json; refusing to mix runs")
    return False
  try:
    old = json.loads(saved.read_text())
  except json.JSONDecodeError as e:
    raise UserError(f"{saved}: not valid JSON ({e}); is this a genemask-jax workdir?") from e
  want = _model_signature(config, cfg)
  have = old.get("model_signature", {})
  diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
  if diff and has_checkpoints:
    details = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diff.items())
    raise UserError(f"{workdir} holds a checkpoint of another model ({details}); use another "
                    "--workdir or the matching config")
  return has_checkpoints


def resolve_workdir(workdir: str | os.PathLike) -> epath.Path:
  """The workdir as an absolute path, resolved once at start; cloud URIs are kept as given.

  Orbax 0.12 refuses relative paths in its (async) saves, and a relative path would also
  change meaning if anything below changed the current directory.
  """
  workdir = os.fspath(workdir)
  if metrics_writer.is_remote(workdir):
    return epath.Path(workdir)
  return epath.Path(os.path.abspath(os.path.expanduser(workdir)))


def check_writable_dir(path: epath.Path, key: str) -> None:
  """Raises UserError unless `path` is (or can be created as) a writable directory.

  Probes by creating and removing a file in `path`, or in its nearest existing ancestor
  when `path` does not exist yet; writes nothing that stays. Cloud paths are not probed.
  """
  if metrics_writer.is_remote(os.fspath(path)):
    return
  path = pathlib.Path(path)
  if path.exists() and not path.is_dir():
    raise UserError(f"{key}={path}: exists and is not a directory")
  probe_dir = path
  while not probe_dir.exists():
    probe_dir = probe_dir.parent
  if not probe_dir.is_dir():
    raise UserError(f"{key}={path}: cannot be created, {probe_dir} is not a directory")
  try:
    fd, name = tempfile.mkstemp(prefix=".write-probe-", dir=probe_dir)
    os.close(fd)
    os.unlink(name)
  except OSError as e:
    where = "" if probe_dir == path else f" (its parent {probe_dir} is not writable)"
    raise UserError(f"{key}={path}: not writable{where}: {e.strerror or e}") from e


class WorkdirLock:
  """An O_EXCL lock file (`WORKDIR/.lock`) holding the pid and host of the run using it.

  A lock left by a dead process on this host (SIGKILL, a crash) is taken over with a
  warning; a live one, or one from another host, is a UserError naming its owner. Cloud
  workdirs cannot be locked this way and are not locked.
  """

  NAME = ".lock"

  def __init__(self, workdir: epath.Path):
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
          raise UserError(self._held_message(owner)) from None
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
    raise UserError(self._held_message(self._read_owner()))

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


def fasta_paths_of(config: ml_collections.ConfigDict) -> list[str]:
  paths = [p.strip() for p in config.data.fasta.split(",") if p.strip()]
  if not paths:
    paths = [os.fspath(p) for p in genome.default_genome_paths()]
  fasta.check_files(paths)
  return paths


# ----------------------------------------------------------------------------- NPMI
def npmi_lookup(config: ml_collections.ConfigDict, fasta_paths: list[str],
                workdir: epath.Path) -> npmi_lib.NpmiLookup:
  """The rank lookup the masking reads: computed from the corpus (cached) or loaded."""
  source = config.npmi.source
  # The scored-6-mer floor matters only to GeneMask's masking (npmi.DEFAULT_MIN_SCORED_FRACTION).
  floor = config.npmi.min_scored_fraction if config.masking.strategy == "genemask" else 0.0
  if source == "authors":
    data_dir = os.environ.get("GENEMASK_DATA_DIR")
    if not data_dir:
      raise UserError("config.npmi.source='authors' needs GENEMASK_DATA_DIR (the folder "
                      f"holding {AUTHORS_NPMI_CSV})")
    return npmi_lib.load_lookup(os.path.join(data_dir, AUTHORS_NPMI_CSV), k=config.data.k,
                                min_scored_fraction=floor)
  if source != "corpus":
    return npmi_lib.load_lookup(source, k=config.data.k, min_scored_fraction=floor)
  fingerprint = {"fasta": [(os.path.abspath(p), os.path.getsize(p)) for p in fasta_paths],
                 "min_count": config.npmi.min_count, "k": config.data.k}
  remote = workdir / "npmi"
  # The table is computed and read on local disk; a cloud workdir gets a copy.
  local = (epath.Path(os.path.expanduser("~/.cache/genemask_jax/npmi")) /
           _hash(fingerprint) if metrics_writer.is_remote(os.fspath(workdir)) else remote)
  cache, stamp = local / "table.csv", local / "source.json"
  fresh = not (cache.exists() and stamp.exists() and  # (JSON turns tuples into lists.)
               json.loads(stamp.read_text()) == json.loads(json.dumps(fingerprint)))
  if fresh and jax.process_index() == 0:
    t0 = time.time()
    counts = npmi_lib.count_fasta(fasta_paths, k=config.data.k)
    table = npmi_lib.score_counts(counts, min_count=config.npmi.min_count,
                                  min_scored_fraction=floor, source="config.data.fasta")
    local.mkdir(parents=True, exist_ok=True)
    npmi_lib.write_table(table, os.fspath(cache))
    stamp.write_text(json.dumps(fingerprint))
    if local != remote:
      remote.mkdir(parents=True, exist_ok=True)
      for f in local.iterdir():
        (remote / f.name).write_bytes(f.read_bytes())
    logging.info("NPMI table from %d FASTA file(s) in %.1f s -> %s", len(fasta_paths),
                 time.time() - t0, remote)
  _sync("npmi")
  if not cache.exists():  # Another host's local cache, next to a cloud workdir.
    local.mkdir(parents=True, exist_ok=True)
    for f in remote.iterdir():
      (local / f.name).write_bytes(f.read_bytes())
  return npmi_lib.load_lookup(os.fspath(cache), k=config.data.k, min_scored_fraction=floor)


def _hash(obj: Any) -> str:
  import hashlib  # pylint: disable=g-import-not-at-top
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _build_corpus(tfds_dir: str, fasta_paths: list[str], chunking: genome.ChunkConfig,
                  num_workers: int = 0):
  # An empty corpus is a genome_tfds.CorpusError (a UserError) raised by the build itself.
  return genome_tfds.build(tfds_dir, fasta_paths, chunking, num_workers=num_workers)


@contextlib.contextmanager
def _quiet_tfds():
  """TFDS logs every config it opens at WARNING level; keep the run's output readable."""
  with _quiet_logs(logging.ERROR):
    yield


@contextlib.contextmanager
def _quiet_logs(level: int):
  """absl logging at `level` and above only, inside the block."""
  old = logging.get_verbosity()
  logging.set_verbosity(min(old, level))  # absl: lower = quieter.
  try:
    yield
  finally:
    logging.set_verbosity(old)


# ----------------------------------------------------------------------------- checkpoints
DAMAGED_DIR = "checkpoints.damaged"  # In the workdir, beside checkpoints/.
_TMP_SUFFIX = ".orbax-checkpoint-tmp"


def _one_line(e: BaseException, limit: int = 200) -> str:
  text = str(e).strip().split("\n")[0].split(" See full TensorStore details")[0]
  if len(text) > limit:
    text = text[:limit - 3] + "..."
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


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
  _sync("tmp_checkpoints")


def _damage_signs(step_dir: epath.Path) -> list[str]:
  """What is visibly missing from a step directory (orbax's own error can mislead)."""
  signs = []
  if not (step_dir / "commit_success.txt").exists():
    signs.append("uncommitted, no commit_success.txt")
  for name in ("_CHECKPOINT_METADATA", "state/_METADATA", "state/manifest.ocdbt"):
    if not (step_dir / name).exists():
      signs.append(f"{name} missing")
  return signs


def _hide_orbax_read_noise() -> None:
  """Sends the 'Exception ignored in <coroutine ...>' reports of abandoned orbax reads to the
  debug log instead of stderr (every other unraisable exception still goes to stderr).

  A failed restore of a damaged step leaves orbax's pending read coroutines to be
  finalised whenever the garbage collector gets to them; Python then prints each one's
  traceback, which would bury the one line that reports the damaged step.
  """
  previous = sys.unraisablehook
  if getattr(previous, "_genemask_filter", False):
    return

  def hook(unraisable):
    where = f"{getattr(unraisable, 'object', '')!r} {unraisable.exc_value!r}"
    if "orbax" in where or "_read_array_index_and_device_put" in where or (
        unraisable.exc_traceback is not None and "orbax" in
        str(getattr(unraisable.exc_traceback.tb_frame.f_code, "co_filename", ""))):
      logging.debug("orbax: ignored while discarding a failed read: %r", unraisable.exc_value)
      return
    previous(unraisable)

  hook._genemask_filter = True  # pylint: disable=protected-access
  sys.unraisablehook = hook


def restore_newest_intact(manager: ocp.CheckpointManager, workdir: epath.Path,
                          abstract_state: Any, is_main: bool) -> Any | None:
  """Restores the newest checkpoint that reads back whole; None if there is none.

  When a step fails to restore (a truncated data file, a missing `_METADATA`, a save that
  never committed) the next older one is tried. Each failed step (all newer than the one
  restored) is then reported in one line on stderr and moved to DAMAGED_DIR, never
  deleted, so that the run's next saves of those steps cannot clash with it.

  Raises:
    UserError: there are checkpoints but none restores (e.g. another model's).
  """
  ckpt_dir = epath.Path(manager.directory)
  failed: list[tuple[int, str]] = []
  _hide_orbax_read_noise()
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      with _quiet_logs(logging.FATAL):  # Orbax logs each failed read's traceback as ERROR.
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many types)
      reason = "; ".join(_damage_signs(ckpt_dir / str(step)) + [_one_line(e)])
      failed.append((step, reason))
      gc.collect()  # Finalise the failed read's coroutines now, under the filter above.
      continue
    _sync("restore")
    if is_main:  # One line per damaged step.
      for bad, reason in failed:
        _move_aside(workdir, ckpt_dir / str(bad),
                    f"damaged checkpoint ({reason}); resuming from step {step}")
    _sync("damaged_checkpoints")
    if failed:
      manager.reload()
    return restored
  if failed:
    raise UserError(
        f"{ckpt_dir}: no checkpoint restores into this model (steps "
        f"{', '.join(str(s) for s, _ in failed)}; step {failed[0][0]}: {failed[0][1]}); "
        "nothing was changed: fix the config, or move checkpoints/ away to start afresh")
  return None


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


# ----------------------------------------------------------------------------- eval data
def fixed_eval_batches(config, eval_data, rank: np.ndarray) -> list[dict[str, np.ndarray]]:
  """Masks the held-out batches once with fixed keys: every evaluation sees the same masks."""
  key = jax.random.key(config.seed + 7919)
  batches = []
  for i, batch in enumerate(eval_data):
    m = masking.mask_batch(jax.random.fold_in(key, i), jnp.asarray(batch["input_ids"]),
                           jnp.asarray(rank), config.masking.strategy,
                           max_predictions=config.masking.max_predictions,
                           **masking_options(config))
    m = jax.device_get(m)
    batches.append({"input_ids": m.masked_ids, "masked_lm_positions": m.masked_lm_positions,
                    "masked_lm_ids": m.masked_lm_ids, "masked_lm_weights": m.masked_lm_weights})
  return batches


def chunk_config_of(config: ml_collections.ConfigDict) -> genome.ChunkConfig:
  """The paper's chunking for this block size: chunks of max_len - 1 bp (511 for 512)."""
  d = config.data
  return genome.ChunkConfig(
      seed=config.seed, max_chunk_bp=d.max_len - 1, min_chunk_bp=d.min_chunk_bp,
      p_max_chunk=d.long_chunk_prob, validation_fraction=d.validation_fraction,
      join_across_n=d.join_across_n, k=d.k, max_len=d.max_len)


def masking_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  m = config.masking
  opts: dict[str, Any] = {"random_over": m.random_over}
  if m.p is not None:
    opts["p"] = m.p
  if m.strategy == "genemask":
    opts.update(rank_source=m.rank_source, all_high_if_few=m.all_high_if_few,
                specials_rank_zero=bool(m.get("specials_rank_zero", False)))
  return opts


def optimizer_of(config: ml_collections.ConfigDict) -> tuple[Any, Any]:
  """(learning-rate schedule, AdamW transformation) from ``config.optim`` and the steps."""
  schedule = optim.make_lr_schedule(total_steps=config.train.num_steps,
                                    warmup_steps=config.optim.warmup_steps,
                                    peak_learning_rate=config.optim.peak_lr)
  tx = optim.make_optimizer(schedule, b1=config.optim.b1, b2=config.optim.b2,
                            eps=config.optim.eps, weight_decay=config.optim.weight_decay,
                            clip_norm=config.optim.clip_norm)
  return schedule, tx


def train_step_of(config: ml_collections.ConfigDict, model: Any, tx: Any, schedule: Any,
                  rank: np.ndarray) -> Any:
  """The un-jitted MLM train step of this config (masking, model, loss, optimizer).

  Shared by the training loop and the ahead-of-time compile check (genemask_jax/aot.py),
  so that the check compiles exactly the step a run executes.
  """
  mask_fn = masking.make_mask_fn(rank, config.masking.strategy,
                                 config.masking.max_predictions, **masking_options(config))
  return step_lib.make_mlm_train_step(model, tx, mask_fn, learning_rate_fn=schedule,
                                      num_microbatches=config.train.grad_accum_steps)


# ----------------------------------------------------------------------------- helpers
class _Preemption:
  """SIGTERM/SIGINT set a flag; the loop saves a checkpoint and exits at the next step."""

  def __init__(self):
    self.requested = False
    self.signum = signal.SIGTERM  # A cluster's preemption notice counts as SIGTERM.
    self._old = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread (e.g. called from a test thread).
        pass

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning("signal %d received: saving a checkpoint and stopping", signum)
    self.requested = True
    self.signum = signum

  def restore(self):
    for sig, old in self._old.items():
      signal.signal(sig, old)


class Preempted(Exception):
  """The run stopped early on a signal or preemption notice, after saving a checkpoint.

  Attributes:
    step: the step saved.
    exit_code: 128 + the signal number (143 for SIGTERM and preemption notices, 130 for
      SIGINT): the binary's exit status, non-zero so that a shell's `&&` stops.
  """

  def __init__(self, step: int, signum: int):
    self.step = step
    self.exit_code = 128 + int(signum)
    super().__init__(f"stopped at step {step} by signal {int(signum)} after saving a "
                     f"checkpoint; rerun the same command to resume (exit code "
                     f"{self.exit_code})")


PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM  # 143: see Preempted.


def _fmt_time(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _per_device_bytes(tree: Any) -> int:
  """Bytes of `tree` held on the first local device (from the shardings, not the allocator)."""
  dev = jax.local_devices()[0]
  total = 0
  for x in jax.tree.leaves(tree):
    for shard in x.addressable_shards:
      if shard.device == dev:
        total += shard.data.size * shard.data.dtype.itemsize
  return total


class NonFiniteLoss(RuntimeError):
  """The loss became NaN or inf; the run stopped without saving the bad state."""


def _check_finite(history: list[tuple[int, Any]]) -> None:
  """Raises NonFiniteLoss naming the first step whose loss is not finite."""
  for step, metrics in history:
    loss = float(metrics["loss"])
    if not math.isfinite(loss):
      raise NonFiniteLoss(
          f"loss is {loss} at step {step}; stopping. The last checkpoint (before step {step}) "
          "is kept; lower config.optim.peak_lr or check the data")


# ----------------------------------------------------------------------------- main
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       init_from_hf: str | None = None) -> dict[str, float]:
  """Runs pretraining; returns the final evaluation metrics."""
  # --- Setup: every check that can fail runs before anything is written. -----------------
  validate_config(config)
  cfg = model_config_of(config)
  workdir = resolve_workdir(workdir)
  resuming = check_workdir(workdir, config, cfg)  # Reads only; the probes below write.
  check_writable_dir(workdir, "--workdir")
  check_writable_dir(workdir / "checkpoints", "--workdir's checkpoints directory")
  is_main = jax.process_index() == 0
  if config.data.tfds_dir:
    check_writable_dir(resolve_workdir(config.data.tfds_dir), "config.data.tfds_dir")
  fasta_paths = fasta_paths_of(config)
  # A given NPMI table is read now; one computed from the corpus after the dataset build.
  lookup = (npmi_lookup(config, fasta_paths, workdir) if config.npmi.source != "corpus"
            else None)
  hf_init = None
  if init_from_hf:
    from genemask_jax import hf  # pylint: disable=g-import-not-at-top
    hf_init = hf.load_hf_for_init(init_from_hf, cfg, k=config.data.k)

  # --- In-training few-shot probe (linear probe on frozen features), data checked now. ----
  probe = None
  if config.probe.every > 0:
    from genemask_jax import finetune  # pylint: disable=g-import-not-at-top
    from genemask_jax.data import tasks  # pylint: disable=g-import-not-at-top
    shots = [int(x) for x in str(config.probe.shots).split(",") if x.strip()]
    specs = {t.strip(): shots for t in config.probe.tasks.split(",") if t.strip()}
    try:
      probe_data = finetune.probe_tasks_from_data(
          specs, tasks.resolve_data_dir(config.probe.data_dir or None),
          max_test_examples=config.probe.max_test_examples)
    except ValueError as e:
      raise UserError(f"config.probe: {e}") from e
    probe = finetune.make_in_training_probe(cfg, probe_data)

  # --- Mesh. ----------------------------------------------------------------------------
  mesh = sharding_lib.make_mesh(tuple(config.mesh.shape), tuple(config.mesh.axes))
  rules = sharding_lib.rules_from_config(config.mesh.rules)
  sharding_lib.validate(cfg, mesh, rules, global_batch_size=config.train.batch_size)
  try:
    sharding_lib.validate(cfg, mesh, rules, global_batch_size=config.eval.batch_size)
  except sharding_lib.ShardingConfigError as e:
    raise UserError(f"config.eval.batch_size={config.eval.batch_size}: {e}") from e

  workdir.mkdir(parents=True, exist_ok=True)
  lock = WorkdirLock(workdir)
  if is_main:
    lock.acquire()
  try:
    return _train_locked(config, cfg, workdir, resuming=resuming, fasta_paths=fasta_paths,
                         probe=probe, mesh=mesh, rules=rules, lookup=lookup, hf_init=hf_init)
  finally:
    lock.release()


def _train_locked(config: ml_collections.ConfigDict, cfg: model_lib.ModelConfig,
                  workdir: epath.Path, *, resuming: bool, fasta_paths: list[str], probe: Any,
                  mesh: jax.sharding.Mesh, rules: Any, lookup: npmi_lib.NpmiLookup | None,
                  hf_init: Any) -> dict[str, float]:
  """`train_and_evaluate` after its checks, with the workdir locked."""
  is_main = jax.process_index() == 0
  if is_main:
    (workdir / "config.json").write_text(json.dumps(
        {"config": json.loads(config.to_json_best_effort()),
         "model_signature": _model_signature(config, cfg)}, indent=2))

  # --- Data: corpus -> TFDS array_record -> grain, each process its own rows. --------------
  chunking = chunk_config_of(config)
  tfds_dir = config.data.tfds_dir or os.fspath(workdir / "tfds")
  with _quiet_tfds():
    if is_main:  # One process builds; the others wait, then open the same build.
      _build_corpus(tfds_dir, fasta_paths, chunking, config.data.num_workers)
    _sync("tfds")
    builder = _build_corpus(tfds_dir, fasta_paths, chunking)
  sources = genome_tfds.data_sources(builder)
  local_batch = config.train.batch_size // jax.process_count()
  # Fails early if the corpus is smaller than one batch; the reading iterator is made
  # after the restore, at the restored step.
  pipeline.train_dataset(sources["train"], local_batch_size=local_batch,
                         seed=config.data.shuffle_seed, process_index=jax.process_index(),
                         process_count=jax.process_count())
  eval_data = pipeline.eval_dataset(
      sources["validation"], local_batch_size=config.eval.batch_size // jax.process_count(),
      num_examples=config.eval.num_examples, process_index=jax.process_index(),
      process_count=jax.process_count())
  if len(eval_data) == 0:
    raise UserError(f"the validation split has {len(sources['validation'])} examples, fewer "
                    f"than config.eval.batch_size={config.eval.batch_size}; use a larger corpus")

  # --- NPMI lookup. -----------------------------------------------------------------------
  if lookup is None:
    lookup = npmi_lookup(config, fasta_paths, workdir)
  rank = np.asarray(lookup.rank, np.int32)

  # --- Model, optimizer, state created sharded. -------------------------------------------
  model = model_lib.BertForMaskedLM(cfg)
  schedule, tx = optimizer_of(config)
  state, state_shardings = step_lib.create_train_state(
      model, tx, jax.random.key(config.seed), mesh, rules, seq_len=config.data.max_len)
  if hf_init is not None:
    from genemask_jax import hf  # pylint: disable=g-import-not-at-top
    state = state.replace(params=hf.replace_params(state.params, hf.mlm_params(hf_init)))
  n_params = sum(x.size for x in jax.tree.leaves(state.params))

  # --- Restore. ---------------------------------------------------------------------------
  ckpt_dir = workdir / "checkpoints"
  move_unfinished_saves(workdir, ckpt_dir, is_main)
  manager = ocp.CheckpointManager(
      ckpt_dir, options=ocp.CheckpointManagerOptions(
          max_to_keep=config.train.keep_checkpoints,
          enable_async_checkpointing=config.train.async_checkpoint))
  start_step = 0
  restored = None
  if resuming and manager.latest_step() is not None:
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_shardings)
    restored = restore_newest_intact(manager, workdir, abstract, is_main)
  if restored is not None:
    state = restored.state
    start_step = int(state.step)
    if restored.data.get("global_batch_size") != config.train.batch_size:
      logging.warning("checkpoint was written with global batch %s, now %d: the data order "
                      "continues at batch %d of the new size", restored.data.get(
                          "global_batch_size"), config.train.batch_size, start_step)
    if is_main:
      print(f"resumed from {ckpt_dir / str(start_step)} at step {start_step}", flush=True)

  # The data position is the step: global batch s is the same on any process count.
  data = pipeline.train_iterator(
      sources["train"], local_batch_size=local_batch, seed=config.data.shuffle_seed,
      process_index=jax.process_index(), process_count=jax.process_count(),
      worker_count=config.data.worker_count, start_batch=start_step)

  # --- Steps. -----------------------------------------------------------------------------
  train_step = step_lib.jit_train_step(train_step_of(config, model, tx, schedule, rank),
                                       mesh, rules, state_shardings)
  eval_step = step_lib.jit_eval_step(step_lib.make_mlm_eval_step(model), mesh, rules,
                                     state_shardings.params)
  eval_batches = fixed_eval_batches(config, eval_data, rank)
  key = jax.random.key(config.seed + 1)

  def evaluate(params) -> dict[str, float]:
    sums = {"loss_sum": 0.0, "weight_sum": 0.0, "correct": 0.0}
    for b in eval_batches:
      out = eval_step(params, sharding_lib.global_batch_from_local(b, mesh, rules))
      for k in sums:
        sums[k] += float(out[k])
    loss = sums["loss_sum"] / max(sums["weight_sum"], 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
            "accuracy": sums["correct"] / max(sums["weight_sum"], 1.0)}

  def save(step: int, wait: bool = False) -> None:
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave({
            "next_batch": step, "global_batch_size": config.train.batch_size,
            "shuffle_seed": config.data.shuffle_seed})),
        force=True)
    if wait:
      manager.wait_until_finished()
    writer.flush()  # Also copies the logs to a cloud workdir.

  # Rows past the restored step were written after the last save; those steps run again.
  writer = metrics_writer.MetricWriter(os.fspath(workdir), enabled=is_main,
                                       resume_step=start_step)
  tokens_per_step = config.train.batch_size * config.data.max_len
  # Model FLOPs per device per step, and the chip's dense bf16 peak (None if unknown): MFU.
  flops_per_device = flops_lib.model_flops_per_step(
      cfg, config.train.batch_size, config.data.max_len,
      config.masking.max_predictions) / jax.device_count()
  peak = flops_lib.peak_flops(getattr(jax.devices()[0], "device_kind", ""))
  if is_main:
    mem = _per_device_bytes(state)
    summary = (f"model {config.model.size}: {n_params:,} parameters; mesh "
               f"{dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} "
               f"device(s) in {jax.process_count()} process(es); train state "
               f"{mem / 2**20:.1f} MiB per device; masking {config.masking.strategy}; "
               f"batch {config.train.batch_size} x {config.data.max_len} tokens; steps "
               f"{start_step}..{config.train.num_steps}")
    print(summary, flush=True)
    writer.write_text("summary", summary)

  # --- Loop. ------------------------------------------------------------------------------
  preemption = _Preemption()
  history: list[tuple[int, Any]] = []
  step = start_step
  t_last, step_last = time.time(), step
  final_eval: dict[str, float] = {}
  stopped_early = False
  try:
    while step < config.train.num_steps:
      batch = sharding_lib.global_batch_from_local(next(data), mesh, rules)
      state, metrics = train_step(state, batch, key)
      step += 1
      history.append((step, metrics))
      preempted = preemption.requested or manager.reached_preemption(step)
      if step % config.train.log_every == 0 or step == config.train.num_steps or preempted:
        _check_finite(history)
        now = time.time()
        rate = (step - step_last) / max(now - t_last, 1e-9)
        scalars = {k: float(v) for k, v in history[-1][1].items()}
        scalars.update(steps_per_sec=rate, tokens_per_sec=rate * tokens_per_step,
                       tflops_per_device=rate * flops_per_device / 1e12)
        if peak:
          scalars["mfu"] = rate * flops_per_device / peak
        writer.write_scalars(step, scalars, prefix="train/")
        if is_main:
          eta = (config.train.num_steps - step) / max(rate, 1e-9)
          mfu = f"  MFU {100 * scalars['mfu']:.1f}%" if peak else ""
          print(f"step {step}/{config.train.num_steps}  loss {scalars['loss']:.4f}  "
                f"acc {scalars['accuracy']:.3f}  lr {scalars['learning_rate']:.2e}  "
                f"{rate:.2f} steps/s  {rate * tokens_per_step:,.0f} tokens/s  "
                f"{scalars['tflops_per_device']:.3g} TFLOP/s/device{mfu}  "
                f"ETA {_fmt_time(eta)}", flush=True)
        history.clear()
        t_last, step_last = time.time(), step
      if step % config.eval.every == 0 or step == config.train.num_steps:
        final_eval = evaluate(state.params)
        writer.write_scalars(step, final_eval, prefix="eval/")
        if is_main:
          print(f"eval step {step}: loss {final_eval['loss']:.4f}  perplexity "
                f"{final_eval['perplexity']:.1f}  masked accuracy "
                f"{final_eval['accuracy']:.3f}", flush=True)
      if probe is not None and (step % config.probe.every == 0 or
                                step == config.train.num_steps):
        scores = probe(state.params)
        writer.write_scalars(step, scores)
        if is_main:
          print(f"probe step {step}: " + "  ".join(
              f"{k.removeprefix('fewshot/')} {v:.3f}" for k, v in scores.items()), flush=True)
      if step % config.train.checkpoint_every == 0 or step == config.train.num_steps or preempted:
        _check_finite(history)
        save(step, wait=preempted)
      if preempted:
        if is_main:
          print(f"preempted: checkpoint saved at step {step}; rerun the same command to "
                "resume", flush=True)
        stopped_early = True
        break
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.close()
    preemption.restore()
  if stopped_early:
    raise Preempted(step, preemption.signum)
  return final_eval
