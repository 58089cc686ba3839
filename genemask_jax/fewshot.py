r"""Few-shot evaluation binary: fine-tune and score models on the four GeneMask benchmarks.

    python -m genemask_jax.fewshot --checkpoint=WORKDIR --tasks=prom_core,splice_40 \
        --shots=10,50,100 --seeds=3 --output_dir=DIR
    python -m genemask_jax.fewshot --checkpoint=genemask=WD1,dnabert=WD2,baseline=random \
        --seeds=3 --output_dir=DIR                            # side by side, every shot
    python -m genemask_jax.fewshot --init=random --model_size=tiny --shots=10 --seeds=2 \
        --output_dir=DIR                                      # no-pretraining baseline
    python -m genemask_jax.fewshot --checkpoint=WORKDIR/checkpoints/1200 \
        --mode=linear_probe --max_test_examples=1000 --output_dir=DIR

Data: ``--data_dir`` or ``$GENEMASK_DATA_DIR`` (the directory holding ``fewshot/``).

Defaults are the authors' Script-B: full fine-tuning; 10/50/100-shot: batch 5, LR 1e-4,
20 epochs; 500/1000-shot: batch 15, LR 5e-5, 5 epochs; AdamW (wd 0.01, none on biases and
LayerNorm), 10% linear warm-up then linear decay, clip 1.0, dropout 0.1, max length =
k-mers + 2 of the task. Each ``--batch_size`` ... ``--max_len`` flag overrides its value
for every shot. No model selection happens: each run trains for its epochs and is scored
once on the test set, from which sequences present in the train set were removed (counts
reported). Prom-300 is scored on the GUE proxy test set (marked in every output).

Outputs in ``--output_dir``: ``results.csv`` (one row per model, task, shot, seed, metric),
``results.md`` (means ± std over seeds and the settings used), ``results.png`` (metric vs
shots per task, one line per model) and ``run.json`` (everything needed to repeat the run).

``--max_test_examples=N`` scores a fixed random subset of N test rows (quick runs; Cohn-enh
has 6,948 test sequences of 497 tokens, the costly part on a CPU); the default scores all.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

from absl import app
from absl import flags
from absl import logging
import numpy as np

from genemask_jax import errors

_MODES = ("finetune", "linear_probe")

flags.DEFINE_list("checkpoint", [],
                  "Model(s) to evaluate: PATH, or NAME=PATH,... to compare several. PATH is a "
                  "pretraining WORKDIR (latest step), WORKDIR/checkpoints/STEP or WORKDIR/STEP; "
                  "the word 'random' gives a randomly initialised model of --model_size; "
                  "hf:DIR a HuggingFace BERT directory (e.g. DNABERT-6's weights).")
flags.DEFINE_string("init_from_hf", None,
                    "A HuggingFace BERT directory to evaluate (added as model 'hf'; same as "
                    "--checkpoint=hf=hf:DIR).")
flags.DEFINE_enum("init", "pretrained", ["pretrained", "random"],
                  "pretrained: the --checkpoint models; random: one randomly initialised "
                  "model of --model_size (no-pretraining baseline).")
flags.DEFINE_string("model_size", None,
                    "Size for --init=random (default tiny); with --checkpoint, the size the "
                    "checkpoints must have.")
flags.DEFINE_list("tasks", ["prom_core", "prom_300", "cohn_enh", "splice_40"],
                  "Tasks: prom_core, prom_300, cohn_enh, splice_40.")
flags.DEFINE_list("shots", [], "N-shot settings; empty = every shot each task ships.")
flags.DEFINE_integer("seeds", 3, "Runs per (model, task, shot), seeds 0..N-1.")
flags.DEFINE_integer("seed_offset", 0, "First seed.")
flags.DEFINE_bool("resample", False,
                  "Each seed draws a new N-shot train set (same size per class) from the union "
                  "of the task's shipped train sets; the test set then excludes every "
                  "sequence of that union.")
flags.DEFINE_string("data_dir", None, "Directory holding fewshot/ (else $GENEMASK_DATA_DIR).")
flags.DEFINE_enum("mode", "finetune", list(_MODES),
                  "finetune: train everything (Script-B); linear_probe: frozen encoder, "
                  "logistic regression on mean-pooled hidden states.")
flags.DEFINE_string("output_dir", None, "Where results.{csv,md,png} and run.json go.")
flags.DEFINE_integer("batch_size", None, "Override: train batch size (default per shot).")
flags.DEFINE_float("learning_rate", None, "Override: peak learning rate (default per shot).")
flags.DEFINE_integer("epochs", None, "Override: epochs (default per shot).")
flags.DEFINE_float("warmup_frac", None, "Override: warm-up fraction of the steps (0.1).")
flags.DEFINE_float("weight_decay", None, "Override: AdamW weight decay (0.01).")
flags.DEFINE_float("dropout", None, "Override: hidden/classifier dropout (0.1).")
flags.DEFINE_integer("max_len", None,
                     "Override: model input length incl. [CLS]/[SEP] (default k-mers + 2 of "
                     "each task; shorter truncates).")
flags.DEFINE_integer("max_test_examples", None,
                     "Score a fixed random subset of this many test rows (default: all).")
flags.DEFINE_integer("seeds_in_parallel", 0,
                     "Seeds trained together in one vmapped step (0 = auto: one at a time "
                     "on CPU, where vmapping measured no gain; all on accelerators).")
flags.DEFINE_integer("eval_batch_size", 64, "Test rows per jitted forward pass.")
flags.DEFINE_list("plot_metrics", ["accuracy", "mcc"], "Metrics drawn in results.png.")
flags.DEFINE_bool("progress", True, "Progress bar per fine-tune on stderr.")


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


def parse_models(values: Sequence[str], init: str) -> tuple[tuple[str, str], ...]:
  """``["PATH"]`` or ``["a=PATH", "b=random"]`` -> ((name, source), ...)."""
  if init == "random":
    if values:
      raise FewShotError("--init=random takes no --checkpoint; to compare with a random "
                         "baseline use --checkpoint=mine=PATH,baseline=random")
    return (("random", "random"),)
  if not values:
    raise FewShotError("no model: pass --checkpoint=WORKDIR (or NAME=PATH,...) or "
                       "--init=random")
  out = []
  for v in values:
    name, sep, path = v.partition("=")
    if not sep:
      path = v
      name = "random" if v == "random" else (pathlib.Path(v).name or v)
      if name.isdigit():  # WORKDIR/checkpoints/STEP -> "WORKDIR@STEP".
        parts = pathlib.Path(v).parts
        base = parts[-3] if len(parts) >= 3 and parts[-2] == "checkpoints" else (
            parts[-2] if len(parts) >= 2 else "model")
        name = f"{base}@{name}"
    if not name or not path:
      raise FewShotError(f"--checkpoint entry {v!r}: expected PATH or NAME=PATH")
    out.append((name, path))
  names = [n for n, _ in out]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise FewShotError(f"--checkpoint names repeat: {dup}; name them NAME=PATH")
  return tuple(out)


def parse_shots(values: Sequence[str]) -> tuple[int, ...]:
  out = []
  for v in values:
    try:
      out.append(int(v))
    except ValueError as e:
      raise FewShotError(f"--shots: {v!r} is not an integer") from e
  return tuple(out)


def config_from_flags(fl: flags.FlagValues) -> RunConfig:
  """Reads the flags into a `RunConfig` (the only place flags are read)."""
  if not fl.output_dir:
    raise FewShotError("--output_dir is required")
  if fl.seeds < 1:
    raise FewShotError(f"--seeds must be >= 1, got {fl.seeds}")
  overrides = {k: getattr(fl, k) for k in (
      "batch_size", "learning_rate", "epochs", "warmup_frac", "weight_decay", "dropout",
      "max_len")}
  return RunConfig(
      models=parse_models(
          list(fl.checkpoint) + ([f"hf=hf:{fl.init_from_hf}"]
                                 if fl.init_from_hf else []), fl.init),
      model_size=fl.model_size,
      tasks=tuple(fl.tasks), shots=parse_shots(fl.shots),
      seeds=tuple(range(fl.seed_offset, fl.seed_offset + fl.seeds)), resample=fl.resample,
      data_dir=fl.data_dir, mode=fl.mode, output_dir=fl.output_dir, overrides=overrides,
      max_test_examples=fl.max_test_examples, seeds_in_parallel=fl.seeds_in_parallel,
      eval_batch_size=fl.eval_batch_size, plot_metrics=tuple(fl.plot_metrics),
      progress=fl.progress)


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
    from genemask_jax import finetune  # pylint: disable=g-import-not-at-top
    steps, _ = finetune.num_train_steps(len(self.train[0][0]), self.hp)
    return 3.0 * steps * self.hp.batch_size * self.hp.max_len + len(self.test[0]) * (
        self.hp.max_len)


def _encode(examples, spec, max_len: int) -> tuple[np.ndarray, np.ndarray]:
  from genemask_jax import tokenizer  # pylint: disable=g-import-not-at-top
  from genemask_jax.data import tasks  # pylint: disable=g-import-not-at-top
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
  from genemask_jax.data import tasks  # pylint: disable=g-import-not-at-top
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
  from genemask_jax import finetune  # pylint: disable=g-import-not-at-top
  from genemask_jax.data import tasks  # pylint: disable=g-import-not-at-top
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
  from genemask_jax import checkpoints  # pylint: disable=g-import-not-at-top
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
  import jax  # pylint: disable=g-import-not-at-top
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
  """Returns ``path`` if results can be written there, checked before any work.

  Nothing is created: the first existing ancestor must be a writable directory (a file or a
  read-only directory there is a `FewShotError`).
  """
  out = pathlib.Path(path)
  if out.exists() and not out.is_dir():
    raise FewShotError(f"--output_dir={path} is a file, not a directory")
  existing = out.absolute()
  while not existing.exists():
    existing = existing.parent
  if not existing.is_dir():
    raise FewShotError(f"--output_dir={path}: {existing} is a file, not a directory")
  import tempfile  # pylint: disable=g-import-not-at-top
  try:
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as e:
    raise FewShotError(f"--output_dir={path}: cannot write in {existing}: "
                       f"{e.strerror or e}") from e
  return out


def _linear_probe_runs(cfg, enc, job: Job, seeds: Sequence[int], eval_batch_size: int,
                       desc: str = "linear probe"):
  """Per-seed metrics of a frozen-encoder logistic regression (random encoders per seed)."""
  import jax  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from genemask_jax import finetune  # pylint: disable=g-import-not-at-top
  from genemask_jax import model as model_lib  # pylint: disable=g-import-not-at-top
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
  from genemask_jax import finetune  # pylint: disable=g-import-not-at-top
  from genemask_jax import tokenizer  # pylint: disable=g-import-not-at-top
  out_dir = check_output_dir(rc.output_dir)
  if rc.mode not in _MODES:
    raise FewShotError(f"mode {rc.mode!r}; expected one of {_MODES}")
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
      write_csv(rows, out_dir / "results.csv")  # Finished runs survive an interruption.
      elapsed = time.time() - t_start
      eta = elapsed / done_cost * (total_cost - done_cost) if done_cost else float("nan")
      acc = [m["accuracy"] for m in per_seed]
      print(f"{desc}: accuracy {np.mean(acc):.4f} ± {np.std(acc):.4f} over {len(acc)} "
            f"seed(s) in {_fmt_time(time.time() - t0)}; elapsed {_fmt_time(elapsed)}, "
            f"ETA {_fmt_time(eta)}", file=sys.stderr, flush=True)
  write_outputs(rows, jobs, models, rc, out_dir, failures)
  if failures:
    first = failures[0]["error"]
    raise FewShotError(
        f"{len(failures)} of {n_runs} run(s) diverged and have no metrics; "
        f"{n_runs - len(failures)} finished and are in {out_dir / 'results.csv'} (failures "
        f"listed in results.md and run.json). First: {first}")
  return rows


# ---------------------------------------------------------------------------- outputs
CSV_COLUMNS = ("model", "task", "shot", "seed", "metric", "value", "mode", "n_train",
               "n_test", "n_test_full", "removed_overlaps", "test_set", "resampled")


def summarize(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str, int, str], tuple[float, float, int]]:
  """{(model, task, shot, metric): (mean, std (population, ddof=0), n seeds)}."""
  groups: dict[tuple[str, str, int, str], list[float]] = {}
  for r in rows:
    groups.setdefault((r["model"], r["task"], r["shot"], r["metric"]), []).append(r["value"])
  return {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in groups.items()}


def write_csv(rows: Sequence[dict[str, Any]], path: pathlib.Path) -> None:
  """Writes the rows atomically (a temporary file renamed over ``path``)."""
  import csv  # pylint: disable=g-import-not-at-top
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
    w.writeheader()
    for r in rows:
      w.writerow({**r, "value": f"{r['value']:.6f}"})
  os.replace(tmp, path)


def markdown_table(rows: Sequence[dict[str, Any]], jobs: Sequence[Job], rc: RunConfig,
                   models: Sequence[tuple[str, Any, Any, dict]],
                   failures: Sequence[dict[str, Any]] = ()) -> str:
  """The Markdown report: means ± std over seeds, test-set notes, settings."""
  from genemask_jax import finetune  # pylint: disable=g-import-not-at-top
  stats = summarize(rows)
  seeds = len(rc.seeds)
  lines = [f"# Few-shot results ({rc.mode}, {seeds} seed(s): mean ± std)", ""]
  if rc.resample:
    lines += ["**Resampled**: each seed drew its own N-shot train set from the union of the "
              "task's shipped train sets; test sets exclude every sequence of that union.", ""]
  head = ["model", "task", "shot", *finetune.METRICS, "test rows", "removed overlaps"]
  lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, *_ in models:
    for j in jobs:
      cells = [name, j.task.display_name + (" †" if j.task.proxy_test else ""), str(j.shot)]
      for m in finetune.METRICS:
        if (name, j.task.name, j.shot, m) not in stats:
          cells.append("failed")  # Diverged: no metrics (see Failures).
          continue
        mean, std, _ = stats[(name, j.task.name, j.shot, m)]
        cells.append("nan" if math.isnan(mean) else f"{mean:.4f} ± {std:.4f}")
      n_test = f"{len(j.test[0])}" + (f" of {j.n_test_full}" if len(j.test[0]) < j.n_test_full
                                      else "")
      cells += [n_test, str(j.removed_overlaps)]
      lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  if any(j.task.proxy_test for j in jobs):
    lines += ["† Prom-300 is scored on the GUE prom_300_all proxy test set (the authors' "
              "test set is not public): not comparable with the paper's Prom-300 column.", ""]
  lines += ["Test sequences that also occur in the train set were removed before scoring "
            "(\"removed overlaps\"). Macro averages for F1/precision/recall; MCC is the "
            "multi-class R_K; ROC-AUC of P(class 1), or one-vs-one macro for Splice-40.", ""]
  if failures:
    lines += ["## Failures", "", "These runs diverged (NaN or infinite train loss or "
              "outputs) and have no metrics:", ""]
    lines += [f"- {f['error']}" for f in failures] + [""]
  lines += ["## Settings", "", "| task | shot | train rows | batch | LR | epochs | warm-up | "
            "wd | dropout | max_len |", "|---|---|---|---|---|---|---|---|---|---|"]
  for j in jobs:
    hp = j.hp
    lines.append(f"| {j.task.display_name} | {j.shot} | {len(j.train[0][0])} | "
                 f"{hp.batch_size} | {hp.learning_rate:g} | {hp.epochs} | {hp.warmup_frac:g} | "
                 f"{hp.weight_decay:g} | {hp.dropout:g} | {hp.max_len} |")
  lines += ["", "## Models", ""]
  for name, cfg, _, info in models:
    where = info.get("step_dir", "random init")
    lines.append(f"- **{name}**: {info.get('size')} ({cfg.num_layers} layers, hidden "
                 f"{cfg.hidden_size}), {where}")
  return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], path: pathlib.Path, metrics: Sequence[str]) -> None:
  """PNG grid: one row per metric, one column per task; metric vs shots, a line per model."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  stats = summarize(rows)
  task_names = list(dict.fromkeys(r["task"] for r in rows))
  model_names = list(dict.fromkeys(r["model"] for r in rows))
  fig, axes = plt.subplots(len(metrics), len(task_names), squeeze=False,
                           figsize=(3.6 * len(task_names), 3.0 * len(metrics)))
  for mi, metric in enumerate(metrics):
    for ti, task in enumerate(task_names):
      ax = axes[mi][ti]
      for model in model_names:
        pts = sorted((k[2], v) for k, v in stats.items()
                     if k[0] == model and k[1] == task and k[3] == metric)
        if not pts:
          continue
        xs = [p[0] for p in pts]
        ax.errorbar(xs, [p[1][0] for p in pts], yerr=[p[1][1] for p in pts], marker="o",
                    capsize=3, label=model)
      ax.set_xscale("log")
      ax.set_title(task + (" (GUE proxy test)" if task == "prom_300" else ""), fontsize=9)
      ax.set_xlabel("shots")
      ax.set_ylabel(metric)
      ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_outputs(rows, jobs, models, rc: RunConfig, out_dir: pathlib.Path,
                  failures: Sequence[dict[str, Any]] = ()) -> None:
  """results.csv, results.md, results.png and run.json in ``out_dir``."""
  write_csv(rows, out_dir / "results.csv")
  (out_dir / "results.md").write_text(markdown_table(rows, jobs, rc, models, failures))
  if rows:
    plot(rows, out_dir / "results.png", rc.plot_metrics)
  run_info = {
      "argv": sys.argv, "config": dataclasses.asdict(rc),
      "models": [{"name": n, "info": {k: v for k, v in info.items()}} for n, _, _, info
                 in models],
      "jobs": [{"task": j.task.name, "shot": j.shot, "hparams": dataclasses.asdict(j.hp),
                "n_train": len(j.train[0][0]), "n_test": len(j.test[0]),
                "n_test_full": j.n_test_full, "removed_overlaps": j.removed_overlaps,
                "test_set": j.test_set, "note": j.note} for j in jobs],
      "failures": list(failures)}
  (out_dir / "run.json").write_text(json.dumps(run_info, indent=2, default=str))


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax/JAX info lines drown the progress.
  try:
    rc = config_from_flags(flags.FLAGS)
    run(rc)
  except errors.UserError as e:
    sys.stderr.write(f"fewshot: error: {' '.join(str(e).split())}\n")  # One line.
    sys.exit(2)
  print(f"wrote {os.path.join(rc.output_dir, 'results.csv')}, results.md, results.png, "
        "run.json")


if __name__ == "__main__":
  app.run(main)
