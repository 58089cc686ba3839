"""The few-shot evaluation library: jobs (task x shot data), models, runs, outputs.

`genemask_jax.fewshot` is its command line; it builds a `RunConfig` from the flags and
calls `run`, which checks every input before the first fine-tune, then fine-tunes (or
probes) every (model, task, shot) over the seeds and writes the report
(`genemask_jax.report`):

    rows = fewshot_lib.run(fewshot_lib.RunConfig(models=(("mine", WORKDIR),), ...))
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from genemask_jax import checkpoints
from genemask_jax import errors
from genemask_jax import finetune
from genemask_jax import model as model_lib
from genemask_jax import report
from genemask_jax import tokenizer
from genemask_jax.data import tasks

MODES = ("finetune", "linear_probe")


class FewShotError(errors.UserError):
  """A bad flag combination or input, found before any training."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Everything a few-shot run needs (the flags, parsed).

  Attributes:
    models: (name, source) pairs; source is a checkpoint path or "random".
    model_size: required/constructed size, or None.
    tasks: task keys.
    shots: explicit shots, or () for every shot each task ships.
    seeds: the seeds.
    resample: draw a new train set per seed.
    data_dir: directory holding fewshot/ (None = $GENEMASK_DATA_DIR).
    mode: "finetune" or "linear_probe".
    output_dir: where outputs go.
    overrides: hyper-parameter overrides (None = Script-B default).
    max_test_examples: None = the whole test set.
    seeds_in_parallel: 0 = all seeds in one vmapped step.
    eval_batch_size: test rows per forward.
    plot_metrics: metrics drawn in the PNG.
    progress: progress bars on stderr.
  """
  models: tuple[tuple[str, str], ...]
  model_size: str | None
  tasks: tuple[str, ...]
  shots: tuple[int, ...]
  seeds: tuple[int, ...]
  resample: bool
  data_dir: str | None
  mode: str
  output_dir: str
  overrides: dict[str, Any]
  max_test_examples: int | None = None
  seeds_in_parallel: int = 0
  eval_batch_size: int = 64
  plot_metrics: tuple[str, ...] = ("accuracy", "mcc")
  progress: bool = True


# ------------------------------------------------------------------------------- data
@dataclasses.dataclass
class Job:
  """One (task, shot): its data (tokenized) and settings, shared by every model."""
  task: Any  # tasks.TaskSpec
  shot: int
  hp: Any  # finetune.Hparams
  train: list[tuple[np.ndarray, np.ndarray]]  # One (ids, labels) per seed.
  test: tuple[np.ndarray, np.ndarray]
  n_test_full: int
  removed_overlaps: int
  test_set: str
  note: str

  @property
  def cost(self) -> float:
    """Rough work units (token-passes) per seed, for the ETA."""
    steps, _ = finetune.num_train_steps(len(self.train[0][0]), self.hp)
    return 3.0 * steps * self.hp.batch_size * self.hp.max_len + len(self.test[0]) * (
        self.hp.max_len)


def _encode(examples, spec, max_len: int) -> tuple[np.ndarray, np.ndarray]:
  if max_len >= spec.max_len:
    return tasks.encode_examples(examples, max_len, spec.k)
  ids = tokenizer.pack((tokenizer.encode(s, spec.k) for s in examples.sequences), max_len,
                       policy="truncate")
  return ids, np.asarray(examples.labels, np.int32)


def resample_train(pool, spec, shot: int, seed: int):
  """A new N-shot draw (``spec.examples_per_class(shot)`` rows per class) from ``pool``."""
  per_class = spec.examples_per_class(shot)
  rng = np.random.default_rng([seed, shot, sum(map(ord, spec.name))])
  keep = np.zeros(len(pool), bool)
  for c in range(spec.num_classes):
    rows = np.flatnonzero(pool.labels == c)
    if len(rows) < per_class:
      raise FewShotError(f"--resample: {spec.name} has only {len(rows)} distinct class-{c} "
                         f"train sequences, fewer than the {per_class} a {shot}-shot set needs")
    keep[rng.choice(rows, per_class, replace=False)] = True
  return pool.select(keep)


def _union_pool(spec, data_dir):
  """Every distinct (sequence, label) of a task's shipped train sets, as `Examples`."""
  seqs, labels, lines, seen = [], [], [], set()
  for s in spec.shots:
    ex = tasks.load_split(spec, f"train_{s}", data_dir)
    for q, y, ln in zip(ex.sequences, ex.labels, ex.lines):
      if q not in seen:
        seen.add(q)
        seqs.append(q)
        labels.append(int(y))
        lines.append(int(ln))
  return tasks.Examples(seqs, np.asarray(labels, np.int32), f"union of {spec.dir_name} "
                        "train sets", np.asarray(lines, np.int32), 0, 0)


def prepare_jobs(rc: RunConfig) -> list[Job]:
  """Validates tasks/shots and loads, dedups and tokenizes every (task, shot)."""
  data_dir = tasks.resolve_data_dir(rc.data_dir)
  specs = [tasks.get_task(t) for t in rc.tasks]
  if not specs:
    raise FewShotError("--tasks is empty")
  for spec in specs:
    for shot in rc.shots:
      tasks.check_shot(spec, shot)
  # Hyper-parameters checked for every job before any file is read.
  for spec in specs:
    for shot in rc.shots or spec.shots:
      try:
        finetune.resolve_hparams(shot, spec.max_len, **rc.overrides)
      except ValueError as e:
        raise FewShotError(f"{spec.name} {shot}-shot: {e}") from e
  jobs = []
  for spec in specs:
    pool = _union_pool(spec, data_dir) if rc.resample else None
    for shot in rc.shots or spec.shots:
      hp = finetune.resolve_hparams(shot, spec.max_len, **rc.overrides)
      if rc.resample:
        test_raw = tasks.load_split(spec, "test", data_dir)
        overlap = tasks.overlap_mask(test_raw, pool)
        test_ex, removed = test_raw.select(~overlap), int(overlap.sum())
        trains = [_encode(resample_train(pool, spec, shot, s), spec, hp.max_len)
                  for s in rc.seeds]
      else:
        data = tasks.load_task(spec, shot, data_dir)
        test_ex, removed = data.test, data.removed_overlaps
        trains = [_encode(data.train, spec, hp.max_len)] * len(rc.seeds)
      test = _encode(test_ex, spec, hp.max_len)
      n_full = len(test[0])
      test = finetune.subsample(test, rc.max_test_examples, seed=0)
      test_set = "GUE proxy (prom_300_all)" if spec.proxy_test else "shipped"
      jobs.append(Job(spec, shot, hp, trains, test, n_full, removed, test_set, spec.note))
  return jobs


# ------------------------------------------------------------------------------- run
def load_models(rc: RunConfig, vocab_size: int) -> list[tuple[str, Any, Any, dict]]:
  """[(name, ModelConfig, encoder params or None, info)], every checkpoint checked.

  A checkpoint that cannot be restored (truncated, missing files) is a one-line
  `checkpoints.CheckpointError` naming the model, one whose encoder weights are not all
  finite a `FewShotError`: both before any training.
  """
  out = []
  for name, source in rc.models:
    path = source
    if source != checkpoints.RANDOM and not source.startswith(checkpoints.HF_PREFIX):
      path = os.path.abspath(source)  # Orbax restores absolute paths only.
    try:
      cfg, enc, info = checkpoints.load_encoder(path, model_size=rc.model_size,
                                                vocab_size=vocab_size)
    except checkpoints.CheckpointError as e:
      raise checkpoints.CheckpointError(f"model {name}: {_one_line(str(e))}") from e
    if enc is not None:
      _check_finite_weights(name, info.get("step_dir") or source, enc)
    out.append((name, cfg, enc, info))
  return out


def _one_line(message: str) -> str:
  """A checkpoint error in one line: orbax/tensorstore append a multi-line spec dump."""
  first = message.split(" See full TensorStore details", 1)[0].splitlines()[0].rstrip(" .:(")
  first += ")" * max(first.count("(") - first.count(")"), 0)  # Close what the cut left open.
  if "no 'params' in the saved tree (keys: <class 'NoneType'>)" in first:
    # Orbax reads no tree at all when the step's metadata is missing or damaged.
    first = first.split(":", 1)[0] + (": no readable parameter tree (its metadata is missing "
                                      "or damaged)")
  if first != message.strip():
    first += ("; the checkpoint is damaged or incomplete: evaluate another step with "
              "--checkpoint=WORKDIR/checkpoints/STEP")
  return first


def _check_finite_weights(name: str, where: str, params: Any) -> None:
  """Raises FewShotError if any encoder weight is NaN or infinite."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  bad, total, first = 0, 0, None
  for path, leaf in leaves:
    arr = np.asarray(leaf)
    n = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    total += arr.size
    if n and first is None:
      first = "/".join(str(getattr(k, "key", k)) for k in path)
    bad += n
  if bad:
    raise FewShotError(
        f"model {name} ({where}): {bad:,} of {total:,} encoder weights are NaN or infinite "
        f"(first in {first}); the checkpoint is damaged or its pretraining diverged: "
        "evaluate an earlier step with --checkpoint=WORKDIR/checkpoints/STEP")


def check_output_dir(path: str) -> pathlib.Path:
  """Returns ``path`` if results can be written there (`report.check_output_dir`)."""
  return report.check_output_dir(path, FewShotError)


def _linear_probe_runs(cfg, enc, job: Job, seeds: Sequence[int], eval_batch_size: int,
                       desc: str = "linear probe"):
  """Per-seed metrics of a frozen-encoder logistic regression (random encoders per seed)."""
  feature_fn = finetune.make_feature_fn(finetune.encoder_encode_fn(cfg))
  test_cache = None
  out = []
  for i, s in enumerate(seeds):
    params = enc
    if params is None:
      bert = model_lib.BertModel(dataclasses.replace(cfg, dtype="float32"))
      params = nn.unbox(bert.init(jax.random.key(s), jnp.zeros((1, 8), jnp.int32))["params"])
    xtr = finetune.extract_features(feature_fn, params, job.train[i][0], eval_batch_size)
    clf = finetune.fit_logistic_regression(xtr, job.train[i][1], job.task.num_classes)
    if test_cache is None or enc is None:
      test_cache = finetune.extract_features(feature_fn, params, job.test[0], eval_batch_size)
    if not (np.all(np.isfinite(xtr)) and np.all(np.isfinite(test_cache))):
      raise finetune.NonFiniteError(f"{desc}: the encoder's features are NaN or infinite "
                                    f"(seed {s}); no metrics are reported")
    out.append(finetune.classification_metrics(job.test[1], clf.predict_proba(test_cache)))
  return out


def _fmt_time(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def run(rc: RunConfig) -> list[dict[str, Any]]:
  """Runs every (model, task, shot) over the seeds and writes the outputs.

  Everything a user can get wrong (output dir, tasks, shots, hyper-parameters, data,
  checkpoints and their weights) is checked before the first fine-tune. ``results.csv`` is
  rewritten after every (model, task, shot), so an interrupted grid keeps what finished. A
  run whose train loss turns NaN or infinite gets no metrics: the others go on, the outputs
  list it as failed, and a `FewShotError` naming it is raised at the end.

  Returns:
    The CSV rows.
  """
  out_dir = check_output_dir(rc.output_dir)
  if rc.mode not in MODES:
    raise FewShotError(f"mode {rc.mode!r}; expected one of {MODES}")
  bad = [m for m in rc.plot_metrics if m not in finetune.METRICS]
  if bad:
    raise FewShotError(f"--plot_metrics {bad}: expected some of {finetune.METRICS}")
  jobs = prepare_jobs(rc)
  ks = {j.task.k for j in jobs}
  models = load_models(rc, tokenizer.vocab_size(ks.pop()) if len(ks) == 1 else None)
  for name, cfg, _, _ in models:
    for j in jobs:
      if j.hp.max_len > cfg.max_len:
        raise FewShotError(f"{j.task.name}: max_len {j.hp.max_len} exceeds model {name}'s "
                           f"{cfg.max_len} positions")
  try:
    out_dir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise FewShotError(f"--output_dir={rc.output_dir}: cannot create it: "
                       f"{e.strerror or e}") from e

  total_cost = sum(j.cost for j in jobs) * len(models) * len(rc.seeds)
  done_cost, t_start = 0.0, time.time()
  rows: list[dict[str, Any]] = []
  failures: list[dict[str, Any]] = []
  n_runs = len(jobs) * len(models)
  i_run = 0
  for name, cfg, enc, _ in models:
    for job in jobs:
      i_run += 1
      desc = f"[{i_run}/{n_runs}] {name} {job.task.name} {job.shot}-shot"
      t0 = time.time()
      try:
        if rc.mode == "finetune":
          res = finetune.finetune(cfg, enc, job.train, job.test, job.task.num_classes, job.hp,
                                  rc.seeds, seeds_in_parallel=rc.seeds_in_parallel,
                                  eval_batch_size=rc.eval_batch_size, progress=rc.progress,
                                  desc=desc)
          per_seed = res.metrics
        else:
          per_seed = _linear_probe_runs(cfg, enc, job, rc.seeds, rc.eval_batch_size, desc)
      except finetune.NonFiniteError as e:
        failures.append({"model": name, "task": job.task.name, "shot": job.shot,
                         "error": str(e)})
        print(f"failed: {e}", file=sys.stderr, flush=True)  # The message starts with desc.
        continue
      finally:
        done_cost += job.cost * len(rc.seeds)
      for seed, metrics in zip(rc.seeds, per_seed):
        for metric in finetune.METRICS:
          rows.append({
              "model": name, "task": job.task.name, "shot": job.shot, "seed": seed,
              "metric": metric, "value": metrics[metric], "mode": rc.mode,
              "n_train": len(job.train[0][0]), "n_test": len(job.test[0]),
              "n_test_full": job.n_test_full, "removed_overlaps": job.removed_overlaps,
              "test_set": job.test_set, "resampled": rc.resample})
      report.write_csv(rows, out_dir / "results.csv")  # Finished runs survive an interruption.
      elapsed = time.time() - t_start
      eta = elapsed / done_cost * (total_cost - done_cost) if done_cost else float("nan")
      acc = [m["accuracy"] for m in per_seed]
      acc_mean, acc_std = report.mean_std(acc)
      print(f"{desc}: accuracy {acc_mean:.4f} ± {acc_std:.4f} over {len(acc)} "
            f"seed(s) in {_fmt_time(time.time() - t0)}; elapsed {_fmt_time(elapsed)}, "
            f"ETA {_fmt_time(eta)}", file=sys.stderr, flush=True)
  report.write_outputs(rows, jobs, models, rc, out_dir, failures)
  if failures:
    first = failures[0]["error"]
    raise FewShotError(
        f"{len(failures)} of {n_runs} run(s) diverged and have no metrics; "
        f"{n_runs - len(failures)} finished and are in {out_dir / 'results.csv'} (failures "
        f"listed in results.md and run.json). First: {first}")
  return rows
