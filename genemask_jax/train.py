"""GeneMask pretraining, read top to bottom: setup, mesh, data, state, restore, loop.

Called by `main.py` (the binary; see its docstring for the command) as
``train.train_and_evaluate(config, workdir)`` with the `ConfigDict` of `configs/pretrain.py`;
nothing here reads flags. The data (corpus, NPMI rank lookup, fixed evaluation batches)
comes from `genemask_jax.data.sources.get_datasets`; the periodic evaluations (masked-LM
eval, the few-shot probe) are the evaluators of `genemask_jax.evaluators`.

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

import json
import math
import os
import pathlib
import signal
import tempfile
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from genemask_jax import errors
from genemask_jax import evaluators
from genemask_jax import flops as flops_lib
from genemask_jax import hf
from genemask_jax import masking
from genemask_jax import metrics_writer
from genemask_jax import model as model_lib
from genemask_jax import optim
from genemask_jax import resume
from genemask_jax import sharding as sharding_lib
from genemask_jax import state as state_lib
from genemask_jax import train_step as step_lib
from genemask_jax import workdir as workdir_lib
from genemask_jax.data import sources


class UserError(errors.UserError):
  """A problem with the run's inputs (config, corpus, workdir), found before long work."""





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


def check_workdir(workdir: epath.Path, config: ml_collections.ConfigDict,
                  cfg: model_lib.ModelConfig) -> bool:
  """Refuses a workdir that holds a run of another model; returns True if it holds a run.

  Reads only; nothing in the workdir is written before this passes.
  """
  return workdir_lib.check_resumable(workdir, cfg, config.model.size)


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




# ----------------------------------------------------------------------------- model, step
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
                                 config.masking.max_predictions,
                                 **sources.masking_options(config))
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
  # --- Setup. The checks that need no corpus build run before anything is written to the
  # workdir (the writability probes leave nothing behind): config, workdir, FASTA files, a
  # given NPMI table, HF weights, probe data, mesh. The corpus's own checks (empty, smaller
  # than a batch, a corpus NPMI table below the floor) run as it is built, after the lock
  # and config.json.
  validate_config(config)
  cfg = model_config_of(config)
  workdir = resolve_workdir(workdir)
  resuming = check_workdir(workdir, config, cfg)  # Reads only; the probes below write.
  check_writable_dir(workdir, "--workdir")
  check_writable_dir(workdir / "checkpoints", "--workdir's checkpoints directory")
  if config.data.tfds_dir:
    check_writable_dir(resolve_workdir(config.data.tfds_dir), "config.data.tfds_dir")
  inputs = sources.check_inputs(config, workdir)
  hf_init = hf.load_hf_for_init(init_from_hf, cfg, k=config.data.k) if init_from_hf else None
  probe = evaluators.ProbeEvaluator.from_config(config, cfg)  # None when config.probe is off.

  # --- Mesh. ----------------------------------------------------------------------------
  mesh = sharding_lib.make_mesh(tuple(config.mesh.shape), tuple(config.mesh.axes))
  rules = sharding_lib.rules_from_config(config.mesh.rules)
  sharding_lib.validate(cfg, mesh, rules, global_batch_size=config.train.batch_size)
  try:
    sharding_lib.validate(cfg, mesh, rules, global_batch_size=config.eval.batch_size)
  except sharding_lib.ShardingConfigError as e:
    raise UserError(f"config.eval.batch_size={config.eval.batch_size}: {e}") from e

  workdir.mkdir(parents=True, exist_ok=True)
  lock = workdir_lib.WorkdirLock(workdir)
  if jax.process_index() == 0:
    lock.acquire()
  try:
    return _train_locked(config, cfg, workdir, resuming=resuming, inputs=inputs, probe=probe,
                         mesh=mesh, rules=rules, hf_init=hf_init)
  finally:
    lock.release()


def _train_locked(config: ml_collections.ConfigDict, cfg: model_lib.ModelConfig,
                  workdir: epath.Path, *, resuming: bool, inputs: sources.Inputs,
                  probe: evaluators.ProbeEvaluator | None, mesh: jax.sharding.Mesh,
                  rules: Any, hf_init: Any) -> dict[str, float]:
  """`train_and_evaluate` after its checks, with the workdir locked."""
  is_main = jax.process_index() == 0
  if is_main:
    workdir_lib.write_config(workdir, cfg, size=config.model.size,
                             config=json.loads(config.to_json_best_effort()))

  # --- Data: corpus -> TFDS array_record -> grain, NPMI rank, fixed eval batches. ---------
  data = sources.get_datasets(config, workdir, inputs)

  # --- Model, optimizer, state created sharded. -------------------------------------------
  model = model_lib.BertForMaskedLM(cfg)
  schedule, tx = optimizer_of(config)
  state, state_shardings = step_lib.create_train_state(
      model, tx, jax.random.key(config.seed), mesh, rules, seq_len=config.data.max_len)
  if hf_init is not None:
    state = state.replace(params=state_lib.replace_params(state.params, hf.mlm_params(hf_init)))
  n_params = sum(x.size for x in jax.tree.leaves(state.params))

  # --- Restore. ---------------------------------------------------------------------------
  ckpts = resume.Checkpoints(workdir, keep=config.train.keep_checkpoints,
                             async_save=config.train.async_checkpoint, is_main=is_main)
  start_step = 0
  restored_data = None
  if resuming:
    state, restored_data = ckpts.restore_or(state, state_shardings)
  if restored_data is not None:
    start_step = int(state.step)
    if restored_data.get("global_batch_size") != config.train.batch_size:
      logging.warning("checkpoint was written with global batch %s, now %d: the data order "
                      "continues at batch %d of the new size", restored_data.get(
                          "global_batch_size"), config.train.batch_size, start_step)
    if is_main:
      print(f"resumed from {ckpts.directory / str(start_step)} at step {start_step}",
            flush=True)

  def save(step: int, wait: bool = False) -> None:
    ckpts.save(step, state, wait=wait, data={
        "next_batch": step, "global_batch_size": config.train.batch_size,
        "shuffle_seed": config.data.shuffle_seed})
    writer.flush()  # Also copies the logs to a cloud workdir.

  # --- Steps and evaluators. --------------------------------------------------------------
  train_step = step_lib.jit_train_step(train_step_of(config, model, tx, schedule, data.rank),
                                       mesh, rules, state_shardings)
  eval_step = step_lib.jit_eval_step(step_lib.make_mlm_eval_step(model), mesh, rules,
                                     state_shardings.params)
  evals: list[evaluators.Evaluator] = [evaluators.MlmEvaluator(
      eval_step, data.eval_batches, mesh, rules, every=config.eval.every)]
  if probe is not None:
    evals.append(probe)

  # Rows past the restored step were written after the last save; those steps run again.
  writer = metrics_writer.MetricWriter(os.fspath(workdir), enabled=is_main,
                                       resume_step=start_step)
  if is_main:
    summary = (f"model {config.model.size}: {n_params:,} parameters; mesh "
               f"{dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} "
               f"device(s) in {jax.process_count()} process(es); train state "
               f"{_per_device_bytes(state) / 2**20:.1f} MiB per device; masking "
               f"{config.masking.strategy}; batch {config.train.batch_size} x "
               f"{config.data.max_len} tokens; steps {start_step}..{config.train.num_steps}")
    print(summary, flush=True)
    writer.write_text("summary", summary)

  # --- Loop. ------------------------------------------------------------------------------
  # The data position is the step: global batch s is the same on any process count.
  batches = data.train_iterator(start_batch=start_step)
  key = jax.random.key(config.seed + 1)
  total = config.train.num_steps
  log = _StepLog(config, cfg, writer, is_main, start_step)
  preemption = _Preemption()
  step = start_step
  final_eval: dict[str, float] = {}
  stopped_early = False
  try:
    while step < total:
      batch = sharding_lib.global_batch_from_local(next(batches), mesh, rules)
      state, metrics = train_step(state, batch, key)
      step += 1
      log.history.append((step, metrics))
      preempted = preemption.requested or ckpts.reached_preemption(step)
      if evaluators.itstime(step, config.train.log_every, total) or preempted:
        log.write(step)
      for ev in evals:
        if evaluators.itstime(step, ev.every, total):
          results = ev.run(state, step)
          writer.write_scalars(step, results, prefix=ev.prefix)
          if is_main:
            print(ev.describe(step, results), flush=True)
          if ev.name == evaluators.MlmEvaluator.name:
            final_eval = results
      if evaluators.itstime(step, config.train.checkpoint_every, total) or preempted:
        _check_finite(log.history)
        save(step, wait=preempted)
      if preempted:
        if is_main:
          print(f"preempted: checkpoint saved at step {step}; rerun the same command to "
                "resume", flush=True)
        stopped_early = True
        break
  finally:
    ckpts.close()
    writer.close()
    preemption.restore()
  if stopped_early:
    raise Preempted(step, preemption.signum)
  return final_eval


class _StepLog:
  """The train/ scalars and console line every config.train.log_every steps: the loss
  history since the last line (checked finite), throughput, TFLOP/s and MFU."""

  def __init__(self, config: ml_collections.ConfigDict, cfg: model_lib.ModelConfig,
               writer: metrics_writer.MetricWriter, is_main: bool, start_step: int):
    self.history: list[tuple[int, Any]] = []
    self._total = config.train.num_steps
    self._writer, self._is_main = writer, is_main
    self._tokens_per_step = config.train.batch_size * config.data.max_len
    # Model FLOPs per device per step, and the chip's dense bf16 peak (None if unknown).
    self._flops_per_device = flops_lib.model_flops_per_step(
        cfg, config.train.batch_size, config.data.max_len,
        config.masking.max_predictions) / jax.device_count()
    self._peak = flops_lib.peak_flops(getattr(jax.devices()[0], "device_kind", ""))
    self._t_last, self._step_last = time.time(), start_step

  def write(self, step: int) -> None:
    _check_finite(self.history)
    rate = (step - self._step_last) / max(time.time() - self._t_last, 1e-9)
    scalars = {k: float(v) for k, v in self.history[-1][1].items()}
    scalars.update(steps_per_sec=rate, tokens_per_sec=rate * self._tokens_per_step,
                   tflops_per_device=rate * self._flops_per_device / 1e12)
    if self._peak:
      scalars["mfu"] = rate * self._flops_per_device / self._peak
    self._writer.write_scalars(step, scalars, prefix="train/")
    if self._is_main:
      eta = (self._total - step) / max(rate, 1e-9)
      mfu = f"  MFU {100 * scalars['mfu']:.1f}%" if self._peak else ""
      print(f"step {step}/{self._total}  loss {scalars['loss']:.4f}  "
            f"acc {scalars['accuracy']:.3f}  lr {scalars['learning_rate']:.2e}  "
            f"{rate:.2f} steps/s  {rate * self._tokens_per_step:,.0f} tokens/s  "
            f"{scalars['tflops_per_device']:.3g} TFLOP/s/device{mfu}  "
            f"ETA {_fmt_time(eta)}", flush=True)
    self.history.clear()
    self._t_last, self._step_last = time.time(), step
