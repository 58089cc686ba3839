"""Fine-tuning on your own labelled dataset (DNABERT-2/GUE layout), with dev model selection.

The library under ``python -m genemask_jax.finetune`` (see `genemask_jax.finetune.__main__`
for the command): every seed fine-tunes a `BertForSequenceClassification` from the
encoder (AdamW, linear warm-up and decay, clipping, dropout: `classifier.Hparams`) and
scores the dev set after every epoch. **Model selection**: the parameters of the epoch
with the best dev score are kept (classification: dev MCC; regression: dev MSE, lower is
better; ties keep the earlier epoch). **Early stopping**: a seed stops after ``patience``
epochs without a better dev score (0 = train every epoch). The test set is scored once,
with the selected parameters.

**Long sequences** (more k-mers than the input length, ``max_len - 2``: the model's 510,
or fewer with ``--max_len``) are not truncated but split into overlapping windows
(`genemask_jax.windows`: half-window overlap, at most ``max_windows`` evenly spaced):

* *Training*: every window is a training row carrying its sequence's label (so a
  sequence of n windows weighs n rows in the loss; ``--max_windows`` caps that).
* *dev/test scoring*: every window is scored and a sequence's output is the mean of its
  windows' class probabilities (regression: values), as `saved.predict` and the predict
  command do; the metrics are per sequence. Why probabilities and not logits: see
  `genemask_jax.finetune.saved`.

    res = own_task.train_seeds(cfg, encoder_params, data, hp, seeds=[0, 1, 2])
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from genemask_jax import checkpoints
from genemask_jax import errors
from genemask_jax import progress as progress_lib
from genemask_jax import report
from genemask_jax import tokenizer
from genemask_jax import windows
from genemask_jax.data import labelled
from genemask_jax.finetune import arrays
from genemask_jax.finetune import classifier
from genemask_jax.finetune import metrics as metrics_lib
from genemask_jax.finetune import saved

Params = Any

K = 6  # k-mer length of the tokenizer (the models' 4101-token vocabulary).
# Own-task defaults (DNABERT-2's GUE fine-tuning: batch 32, LR 3e-5); the rest of
# `classifier.Hparams` (warm-up 10%, wd 0.01, dropout 0.1, clip 1.0) as Script-B.
DEFAULT_HPARAMS = dict(batch_size=32, learning_rate=3e-5, epochs=10)


@dataclasses.dataclass(frozen=True)
class EncodedSplit:
  """One split as model windows.

  Attributes:
    ids: int32 (W, max_len) windows, ``[CLS] k-mers [SEP] [PAD]...``.
    owner: int32 (W,) the sequence (row of the split) of each window.
    labels: (N,) per sequence: int32 classes or float32 targets.
  """
  ids: np.ndarray
  owner: np.ndarray
  labels: np.ndarray

  @property
  def window_labels(self) -> np.ndarray:
    """(W,) each window's label: its sequence's."""
    return self.labels[self.owner]


@dataclasses.dataclass(frozen=True)
class EncodedData:
  """A dataset tokenized for the model.

  Attributes:
    train, dev, test: the splits as windows.
    max_len: input length ([CLS] k-mers [SEP]); windows hold max_len - 2 k-mers.
    windowed: sequences (over all splits) longer than max_len - 2 k-mers, split into
      several windows.
    num_labels: model outputs (classes; 1 for regression).
    task_type: "classification" or "regression".
  """
  train: EncodedSplit
  dev: EncodedSplit
  test: EncodedSplit
  max_len: int
  windowed: int
  num_labels: int
  task_type: str


def input_length(sequences: Sequence[str], model_max_len: int, k: int,
                 max_len: int | None = None) -> int:
  """``max_len`` if given, else the longest sequence's k-mers + 2, at most the model's."""
  if max_len is not None:
    return min(int(max_len), model_max_len)
  longest = max(max(len(s) - k + 1, 1) for s in sequences)
  return min(longest + 2, model_max_len)


def encode_dataset(ds: Any, model_max_len: int, k: int = 6, max_len: int | None = None,
                   max_windows: int | None = None) -> EncodedData:
  """Tokenizes a `genemask_jax.data.labelled.Dataset` into windows of one input length.

  Raises:
    windows.WindowError: ``max_windows`` < 1.
  """
  splits = (ds.train, ds.dev, ds.test)
  length = input_length([s for sp in splits for s in sp.sequences], model_max_len, k, max_len)
  out, windowed = [], 0
  for sp in splits:
    ids, owner = windows.split([tokenizer.encode(s, k) for s in sp.sequences], length,
                               max_windows=max_windows)
    windowed += int(np.sum(np.bincount(owner, minlength=len(sp)) > 1))
    out.append(EncodedSplit(ids, owner, sp.labels))
  return EncodedData(out[0], out[1], out[2], length, windowed, ds.num_labels, ds.task_type)


def score(task_type: str, y_true: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
  """The task's metrics: `classification_metrics` or `regression_metrics`."""
  if task_type == "regression":
    return metrics_lib.regression_metrics(y_true, outputs)
  return metrics_lib.classification_metrics(y_true, outputs)


def selection_score(task_type: str, metrics: dict[str, float]) -> float:
  """Higher is better: dev MCC (classification) or minus dev MSE (regression)."""
  value = -metrics["mse"] if task_type == "regression" else metrics["mcc"]
  return -math.inf if math.isnan(value) else value


@dataclasses.dataclass
class SeedResult:
  """One seed's run.

  Attributes:
    seed: the seed.
    best_epoch: 1-based epoch whose params were kept.
    epochs_run: epochs trained (fewer than asked when stopped early).
    dev_curve: dev selection score per epoch (see `selection_score`).
    dev_metrics: dev metrics at ``best_epoch``.
    test_metrics: test metrics of the kept params.
    test_outputs: float32 (N_test, C) probabilities or (N_test,) values.
    params: the kept params (numpy).
    train_seconds: wall time of the training loop (compilation and dev scoring included).
  """
  seed: int
  best_epoch: int
  epochs_run: int
  dev_curve: list[float]
  dev_metrics: dict[str, float]
  test_metrics: dict[str, float]
  test_outputs: np.ndarray
  params: Params
  train_seconds: float


def _unstack(tree: Params) -> Params:
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x))[0], tree)


def train_seed(cfg: Any, encoder_params: Params | None, data: EncodedData,
               hp: classifier.Hparams, seed: int, *, patience: int = 3,
               eval_batch_size: int = 64, progress: bool = True,
               desc: str = "finetune") -> SeedResult:
  """Fine-tunes one seed with dev-based model selection and early stopping.

  Raises:
    classifier.NonFiniteError: the train loss or the outputs turn NaN or infinite.
  """
  if hp.max_len != data.max_len:
    raise ValueError(f"hp.max_len={hp.max_len} but the data are encoded at {data.max_len}")
  n = len(data.train.ids)  # Training rows are windows.
  train_labels = data.train.window_labels
  regression = data.task_type == "regression"
  init_fn, opt_init_fn, step_fn, predict_fn = classifier.compiled_functions(
      cfg, data.num_labels, hp, n, data.task_type)
  steps_per_epoch = -(-n // hp.batch_size)
  labels_dtype = np.float32 if regression else np.int32

  def outputs(params, split):
    """Per-sequence outputs: the mean over each sequence's windows."""
    out = arrays.batched(lambda x: predict_fn(params, x), split.ids, eval_batch_size,
                         axis=1)[0]
    if not np.all(np.isfinite(out)):
      raise classifier.NonFiniteError(f"{desc}: the model's outputs hold NaN or infinite "
                                      f"values (seed {seed}); no metrics are reported")
    return windows.pool(out[:, 0] if regression else out, split.owner, len(split.labels))

  t0 = time.time()
  params = classifier.stack_trees([init_fn(jax.random.key(seed), encoder_params)])
  opt_state = opt_init_fn(params)
  rng = np.random.default_rng([seed, 1])
  key = jnp.stack([jax.random.key(seed + 1_000_003)])
  best, best_epoch, best_params, best_dev, curve = -math.inf, 0, None, {}, []
  bar = progress_lib.Progress(hp.epochs * steps_per_epoch, desc, enabled=progress)
  step = 0
  try:
    for epoch in range(1, hp.epochs + 1):
      order = classifier.epoch_batches(rng, n, hp.batch_size)
      for t in range(steps_per_epoch):
        idx = order[t]
        valid = idx >= 0
        safe = np.where(valid, idx, 0)
        params, opt_state, loss = step_fn(
            params, opt_state, data.train.ids[safe][None],
            train_labels[safe].astype(labels_dtype)[None], valid.astype(np.float32)[None],
            key, np.int32(step))
        loss = float(np.asarray(loss)[0])
        if not math.isfinite(loss):
          raise classifier.NonFiniteError(
              f"{desc}: the train loss is {loss} at step {step + 1} (seed {seed}); the "
              f"model's weights or --learning_rate={hp.learning_rate:g} make training "
              "diverge, so no metrics are reported")
        step += 1
        bar.update(1, loss=loss)
      dev = score(data.task_type, data.dev.labels, outputs(params, data.dev))
      value = selection_score(data.task_type, dev)
      curve.append(value)
      if value > best or best_params is None:
        best, best_epoch, best_dev = value, epoch, dev
        best_params = _unstack(params)
      elif patience and epoch - best_epoch >= patience:
        break
  finally:
    bar.close()
  train_seconds = time.time() - t0
  test_out = outputs(classifier.stack_trees([best_params]), data.test)
  return SeedResult(seed, best_epoch, len(curve), curve, best_dev,
                    score(data.task_type, data.test.labels, test_out), test_out, best_params,
                    train_seconds)


def train_seeds(cfg: Any, encoder_params: Params | None, data: EncodedData,
                hp: classifier.Hparams, seeds: Sequence[int], **kwargs: Any
                ) -> list[SeedResult]:
  """`train_seed` for each seed, one after another; a line per seed on stderr."""
  out = []
  for i, s in enumerate(seeds):
    res = train_seed(cfg, encoder_params, data, hp, s,
                     desc=f"[{i + 1}/{len(seeds)}] seed {s}", **kwargs)
    main = "mse" if data.task_type == "regression" else "mcc"
    print(f"seed {s}: best dev epoch {res.best_epoch} of {res.epochs_run}; test {main} "
          f"{res.test_metrics[main]:.4f} ({res.train_seconds:.0f}s)", file=sys.stderr,
          flush=True)
    out.append(res)
  return out


# --------------------------------------------------------------------------- the command
class OwnTaskError(errors.UserError):
  """A bad flag or flag combination of the own-task command, found before any training."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Everything one own-task run needs (the command's flags, parsed).

  Attributes:
    dataset_dir: folder with train.csv, dev.csv, test.csv.
    task_name: name in the reports (GUE: "group/task").
    checkpoint: pretraining WORKDIR[/checkpoints/STEP], "hf:DIR" or "random".
    model_size: the size for "random" (default tiny), or the size a checkpoint must have.
    task_type: "classification" or "regression".
    seeds: the seeds.
    output_dir: where results.csv, results.md and run.json go.
    overrides: hyper-parameter overrides of `DEFAULT_HPARAMS` and `classifier.Hparams`
      (None = default); "max_len" None = the longest sequence.
    max_windows: at most this many (evenly spaced) windows per long sequence; None = all.
    patience: early-stopping patience in epochs (0 = off).
    save_model: directory for the best-dev seed's model, or None.
    export_hf: directory for its HuggingFace export, or None.
    eval_batch_size: rows per jitted forward on dev/test.
    progress: progress bars on stderr.
  """
  dataset_dir: str
  task_name: str | None
  checkpoint: str
  model_size: str | None
  task_type: str
  seeds: tuple[int, ...]
  output_dir: str
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
  max_windows: int | None = None
  patience: int = 3
  save_model: str | None = None
  export_hf: str | None = None
  eval_batch_size: int = 64
  progress: bool = True


def resolve_hparams(overrides: dict[str, Any], max_len: int) -> classifier.Hparams:
  """`DEFAULT_HPARAMS` with the non-None overrides, at input length ``max_len``."""
  values = dict(DEFAULT_HPARAMS, **{k: v for k, v in overrides.items()
                                    if v is not None and k != "max_len"})
  fields = {f.name for f in dataclasses.fields(classifier.Hparams)}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise OwnTaskError(f"unknown hyper-parameter(s) {unknown}; expected some of "
                       f"{sorted(fields)}")
  try:
    return classifier.Hparams(**values, max_len=max_len)
  except ValueError as e:
    raise OwnTaskError(str(e)) from e


def run(rc: RunConfig) -> list[dict[str, Any]]:
  """Checks every input, fine-tunes each seed, writes the outputs; returns the CSV rows.

  Outputs in ``rc.output_dir``: results.csv (`report.OWN_TASK_COLUMNS`), results.md, and
  run.json (settings, per-seed dev curves). With ``rc.save_model`` the seed with the best
  dev score is saved (`saved.save_model`), and with ``rc.export_hf`` exported for HF.
  """
  # Everything a user can get wrong, before the model or the data are touched.
  if not rc.seeds:
    raise OwnTaskError("--seeds must be >= 1")
  if rc.max_windows is not None and rc.max_windows < 1:
    raise OwnTaskError(f"--max_windows must be >= 1, got {rc.max_windows}")
  if rc.patience < 0:
    raise OwnTaskError(f"--patience must be >= 0, got {rc.patience}")
  if rc.overrides.get("max_len") is not None and rc.overrides["max_len"] < 3:
    raise OwnTaskError(f"--max_len must be >= 3, got {rc.overrides['max_len']}")
  resolve_hparams(rc.overrides, 512)
  out_dir = report.check_output_dir(rc.output_dir, OwnTaskError)
  if rc.save_model:
    saved.check_new_dir(rc.save_model, "--save_model")
  if rc.export_hf:
    if not rc.save_model:
      raise OwnTaskError("--export_hf needs --save_model (the exported model is the saved "
                         "one)")
    saved.check_new_dir(rc.export_hf, "--export_hf")
  ds = labelled.load_dataset(rc.dataset_dir, rc.task_type, name=rc.task_name)
  source = rc.checkpoint
  if source != checkpoints.RANDOM and not source.startswith(checkpoints.HF_PREFIX):
    source = os.path.abspath(source)  # Orbax restores absolute paths only.
  cfg, enc, info = checkpoints.load_encoder(source, model_size=rc.model_size,
                                            vocab_size=tokenizer.vocab_size(K))
  data = encode_dataset(ds, cfg.max_len, K, rc.overrides.get("max_len"), rc.max_windows)
  if data.windowed:
    print(f"note: {data.windowed} sequence(s) have more than {data.max_len - 2} k-mers (the "
          f"input is {data.max_len} tokens) and are split into windows: {len(data.train.ids)} "
          f"train rows from {len(ds.train)} sequences; dev/test score the mean of each "
          "sequence's windows", file=sys.stderr, flush=True)
  hp = resolve_hparams(rc.overrides, data.max_len)
  cfg = classifier.classifier_config(cfg, hp.dropout)
  try:
    out_dir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise OwnTaskError(f"--output_dir={rc.output_dir}: cannot create it: "
                       f"{e.strerror or e}") from e

  results = train_seeds(cfg, enc, data, hp, rc.seeds, patience=rc.patience,
                        eval_batch_size=rc.eval_batch_size, progress=rc.progress)
  model_name = rc.checkpoint
  rows = []
  for res in results:
    for split, metrics in (("dev", res.dev_metrics), ("test", res.test_metrics)):
      for metric, value in metrics.items():
        rows.append({"model": model_name, "task": ds.name, "task_type": ds.task_type,
                     "seed": res.seed, "split": split, "metric": metric, "value": value,
                     "best_epoch": res.best_epoch, "epochs_run": res.epochs_run,
                     "n_train": len(ds.train), "n_dev": len(ds.dev), "n_test": len(ds.test)})
  best = max(results, key=lambda r: (selection_score(ds.task_type, r.dev_metrics), -r.seed))
  saved_dir = None
  if rc.save_model:
    saved_dir = saved.save_model(
        rc.save_model, cfg, best.params, task_type=ds.task_type,
        label_values=ds.label_values, max_len=data.max_len, k=K,
        info={"source": rc.checkpoint, "task": ds.name, "seed": best.seed,
              "best_epoch": best.best_epoch, "dev_metrics": best.dev_metrics,
              "hparams": dataclasses.asdict(hp)})
    if rc.export_hf:
      saved.export_hf(saved_dir, rc.export_hf)
  selection = (f"the parameters of the epoch with the best dev "
               f"{'MSE (lowest)' if ds.task_type == 'regression' else 'MCC'} are scored on "
               f"test; training stops after {rc.patience} epoch(s) without a better dev "
               "score." if rc.patience else "the parameters of the epoch with the best dev "
               "score are scored on test; no early stopping.")
  settings = {"model": model_name, "task": ds.name, "task_type": ds.task_type,
              "selection": selection, "hparams": dataclasses.asdict(hp),
              "n_train": len(ds.train), "n_dev": len(ds.dev), "n_test": len(ds.test),
              "max_len": data.max_len, "windowed": data.windowed,
              "max_windows": rc.max_windows,
              "train_windows": int(len(data.train.ids)),
              "saved_model": str(saved_dir) if saved_dir else None}
  report.write_csv(rows, out_dir / "results.csv", report.OWN_TASK_COLUMNS)
  (out_dir / "results.md").write_text(report.own_task_markdown(rows, settings))
  run_info = {"argv": sys.argv, "config": dataclasses.asdict(rc), "settings": settings,
              "model_info": info, "label_values": list(ds.label_values),
              "seeds": [{"seed": r.seed, "best_epoch": r.best_epoch,
                         "epochs_run": r.epochs_run, "dev_curve": r.dev_curve}
                        for r in results]}
  (out_dir / "run.json").write_text(json.dumps(run_info, indent=2, default=str))
  return rows
