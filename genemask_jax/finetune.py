"""Few-shot fine-tuning, linear probes and classification metrics.

The library under the few-shot binary (`genemask_jax.fewshot`) and the pretraining loop's
in-training probe. Nothing here reads flags or files: callers pass token ids and labels
(`genemask_jax.data.tasks.encode_examples`) and encoder parameters.

Full fine-tuning (`finetune`) follows the GeneMask authors' Script-B: a
`BertForSequenceClassification` whose encoder starts from the pretrained MLM encoder
(pooler and classifier freshly initialised), AdamW (weight decay on kernels and
embeddings only), linear warm-up then linear decay, global-norm clipping, dropout, a fixed
number of epochs and no model selection: the test set is only scored once, at the end.

Seeds can be trained together: the parameters of S seeds are stacked on a leading axis and
one jitted, `jax.vmap`-ed step updates all of them, each seed on its own shuffled batches
and dropout key (the same numbers as one seed at a time). On accelerators, where a batch
of 5 short sequences leaves the device idle, that is the default; on a 2-core CPU the step
is compute-bound and vmapping measured no gain (``benchmarks/bench_fewshot.py
--compare_vmap``), so there seeds run one after another. `seeds_in_parallel` sets it.

The linear probe (`linear_probe`, `make_in_training_probe`) freezes the encoder, takes the
mean of the final hidden states over non-pad tokens (or the [CLS] state) and fits a
multinomial logistic regression on standardised features by full-batch gradient descent
in one jitted loop: fast enough to run every few hundred pretraining steps.

Metrics (`classification_metrics`) are plain numpy and agree with scikit-learn's
`accuracy_score`, macro `f1_score` / `precision_score` / `recall_score` (zero_division=0),
`matthews_corrcoef` and `roc_auc_score` (binary: score of class 1; multi-class:
``multi_class="ovo", average="macro"``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from genemask_jax import errors
from genemask_jax import model as model_lib
from genemask_jax import optim

Params = Any
# (params, ids (B, L) int32) -> hidden states (B, L, E).
EncodeFn = Callable[[Params, jax.Array], jax.Array]

METRICS = ("accuracy", "f1", "precision", "recall", "mcc", "roc_auc")


class NonFiniteError(errors.UserError):
  """A fine-tune's train loss or test probabilities are NaN or infinite.

  Raised instead of returning metrics: the argmax of NaN probabilities is class 0, which
  scores plausibly on a balanced test set.
  """


# ---------------------------------------------------------------------------- metrics
def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
  """int64 (C, C): rows = true class, columns = predicted class."""
  y_true = np.asarray(y_true, np.int64)
  y_pred = np.asarray(y_pred, np.int64)
  return np.bincount(y_true * num_classes + y_pred,
                     minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  num = np.asarray(num, np.float64)
  den = np.asarray(den, np.float64)
  return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def matthews_corrcoef(cm: np.ndarray) -> float:
  """Multi-class MCC (Gorodkin's R_K) from a confusion matrix, as scikit-learn computes it."""
  cm = np.asarray(cm, np.float64)
  t_sum, p_sum = cm.sum(axis=1), cm.sum(axis=0)
  n = cm.sum()
  correct = np.trace(cm)
  cov_ytyp = correct * n - t_sum @ p_sum
  cov_ypyp = n * n - p_sum @ p_sum
  cov_ytyt = n * n - t_sum @ t_sum
  if cov_ypyp * cov_ytyt == 0:
    return 0.0
  return float(cov_ytyp / math.sqrt(cov_ytyt * cov_ypyp))


def _rankdata(x: np.ndarray) -> np.ndarray:
  """Average ranks (1-based) with ties sharing the mean rank, float64 (N,)."""
  x = np.asarray(x)
  order = np.argsort(x, kind="mergesort")
  xs = x[order]
  # Boundaries of runs of equal values.
  starts = np.r_[0, np.flatnonzero(xs[1:] != xs[:-1]) + 1]
  ends = np.r_[starts[1:], len(xs)]
  avg = (starts + ends + 1) / 2.0  # Mean of 1-based ranks starts+1..ends.
  ranks = np.empty(len(xs), np.float64)
  ranks[order] = np.repeat(avg, ends - starts)
  return ranks


def binary_roc_auc(is_positive: np.ndarray, score: np.ndarray) -> float:
  """Area under the ROC curve (Mann-Whitney U with tie correction); nan if one class only."""
  is_positive = np.asarray(is_positive, bool)
  n_pos = int(is_positive.sum())
  n_neg = len(is_positive) - n_pos
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  ranks = _rankdata(np.asarray(score, np.float64))
  u = ranks[is_positive].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def roc_auc(y_true: np.ndarray, probs: np.ndarray) -> float:
  """ROC-AUC of class probabilities.

  Args:
    y_true: int (N,) labels in 0..C-1.
    probs: float (N, C) class probabilities (rows sum to 1).

  Returns:
    C = 2: the AUC of P(class 1). C > 2: the one-vs-one macro average of Hand & Till
    (each pair (a, b) scored on the rows of classes a and b, the mean of the AUC of
    P(a) for "is a" and of P(b) for "is b"), as ``roc_auc_score(multi_class="ovo")``.
    nan where a class needed is absent from ``y_true``.
  """
  y_true = np.asarray(y_true)
  probs = np.asarray(probs, np.float64)
  c = probs.shape[1]
  if c == 2:
    return binary_roc_auc(y_true == 1, probs[:, 1])
  pair_scores = []
  for a in range(c):
    for b in range(a + 1, c):
      rows = (y_true == a) | (y_true == b)
      yt = y_true[rows]
      pair_scores.append((binary_roc_auc(yt == a, probs[rows, a])
                          + binary_roc_auc(yt == b, probs[rows, b])) / 2.0)
  return float(np.mean(pair_scores))


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
  """All few-shot metrics of one model's test predictions.

  Args:
    y_true: int (N,) labels in 0..C-1.
    probs: float (N, C) class probabilities; the prediction is their argmax.

  Returns:
    {"accuracy", "f1", "precision", "recall" (macro averages, 0 where undefined), "mcc",
    "roc_auc"} as Python floats.
  """
  y_true = np.asarray(y_true, np.int64)
  probs = np.asarray(probs, np.float64)
  if probs.ndim != 2 or probs.shape[0] != y_true.shape[0]:
    raise ValueError(f"probs must be (N, C) with N = len(y_true) = {len(y_true)}, got "
                     f"{probs.shape}")
  c = probs.shape[1]
  y_pred = probs.argmax(axis=1)
  cm = confusion_matrix(y_true, y_pred, c)
  tp = np.diag(cm).astype(np.float64)
  precision = _safe_ratio(tp, cm.sum(axis=0))
  recall = _safe_ratio(tp, cm.sum(axis=1))
  f1 = _safe_ratio(2 * tp, cm.sum(axis=0) + cm.sum(axis=1))
  # scikit-learn's macro averages run over the labels present in y_true or y_pred.
  present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
  return {
      "accuracy": float(tp.sum() / max(len(y_true), 1)),
      "f1": float(f1[present].mean()),
      "precision": float(precision[present].mean()),
      "recall": float(recall[present].mean()),
      "mcc": matthews_corrcoef(cm),
      "roc_auc": roc_auc(y_true, probs),
  }


# ---------------------------------------------------------------------- hyper-parameters
@dataclasses.dataclass(frozen=True)
class Hparams:
  """Fine-tuning hyper-parameters (defaults: the authors' Script-B, see `script_b_hparams`).

  Attributes:
    batch_size: train sequences per step (per seed).
    learning_rate: peak AdamW learning rate.
    epochs: passes over the train set (the last batch of an epoch may be partial).
    warmup_frac: fraction of all steps with linear warm-up from 0; then linear decay to 0.
    weight_decay: decoupled AdamW decay on kernels and embeddings (not biases/LayerNorm).
    dropout: hidden and classifier dropout of the fine-tuned model.
    max_len: model input length (k-mers + [CLS] + [SEP]); longer inputs are truncated.
    clip_norm: global gradient-norm clip.
    b1, b2, eps: AdamW moments (HF/DNABERT fine-tuning defaults 0.9, 0.999, 1e-8).
  """
  batch_size: int
  learning_rate: float
  epochs: int
  warmup_frac: float = 0.1
  weight_decay: float = 0.01
  dropout: float = 0.1
  max_len: int = 512
  clip_norm: float = 1.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8

  def __post_init__(self):
    if self.batch_size < 1 or self.epochs < 1:
      raise ValueError(f"batch_size and epochs must be >= 1, got {self.batch_size}, "
                       f"{self.epochs}")
    if self.learning_rate <= 0:
      raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
    if not 0.0 <= self.warmup_frac <= 1.0:
      raise ValueError(f"warmup_frac must be in [0, 1], got {self.warmup_frac}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
    if self.weight_decay < 0:
      raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
    if self.max_len < 3:
      raise ValueError(f"max_len must be >= 3 ([CLS] k-mer [SEP]), got {self.max_len}")


def script_b_hparams(shot: int, max_len: int) -> Hparams:
  """The authors' Script-B settings for an N-shot run.

  10/50/100-shot: batch 5, LR 1e-4, 20 epochs; 500/1000-shot (any N > 100): batch 15,
  LR 5e-5, 5 epochs. Always AdamW wd 0.01, 10% warm-up, clip 1.0, dropout 0.1.
  """
  if shot <= 100:
    return Hparams(batch_size=5, learning_rate=1e-4, epochs=20, max_len=max_len)
  return Hparams(batch_size=15, learning_rate=5e-5, epochs=5, max_len=max_len)


def resolve_hparams(shot: int, task_max_len: int, **overrides: Any) -> Hparams:
  """Script-B defaults for ``shot`` (input length ``task_max_len``) with every non-None
  override applied (``max_len`` among them)."""
  base = script_b_hparams(shot, task_max_len)
  fields = {f.name for f in dataclasses.fields(Hparams)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"unknown hyper-parameter(s) {unknown}; expected some of {sorted(fields)}")
  return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def num_train_steps(num_examples: int, hp: Hparams) -> tuple[int, int]:
  """(total optimizer steps, warm-up steps): ceil(N / batch) per epoch, warm-up int(frac*T)."""
  total = hp.epochs * -(-num_examples // hp.batch_size)
  return total, int(hp.warmup_frac * total)


# ------------------------------------------------------------------------ parameters
def classifier_config(cfg: model_lib.ModelConfig, dropout: float | None) -> model_lib.ModelConfig:
  """``cfg`` in float32 with the fine-tuning dropout (hidden + classifier dropout)."""
  changes: dict[str, Any] = {"dtype": "float32", "param_dtype": "float32"}
  if dropout is not None:
    changes["dropout_rate"] = dropout
  return dataclasses.replace(cfg, **changes)


def init_classifier_params(model: model_lib.BertForSequenceClassification, rng: jax.Array,
                           encoder_params: Params | None, max_len: int) -> Params:
  """Classifier params: encoder from ``encoder_params`` (if given), pooler/head from ``rng``.

  Args:
    model: the classification model.
    rng: PRNG key of this seed (used for every parameter not taken from the encoder).
    encoder_params: the ``bert`` subtree of a pretrained ``BertForMaskedLM`` (embeddings and
      encoder); None for a random initialisation.
    max_len: input length used to trace ``init``.

  Raises:
    ValueError: the encoder tree does not match the model (names or shapes).
  """
  params = nn.unbox(model.init(rng, jnp.zeros((1, max_len), jnp.int32))["params"])
  if encoder_params is None:
    return params
  bert = dict(params["bert"])
  for name, sub in encoder_params.items():
    if name not in bert:
      raise ValueError(f"encoder parameter group {name!r} does not exist in the classifier "
                       f"(has {sorted(bert)})")
    want = jax.tree.map(lambda x: tuple(x.shape), bert[name])
    have = jax.tree.map(lambda x: tuple(np.shape(x)), sub)
    if want != have:
      raise ValueError(f"pretrained encoder group {name!r} does not match the classifier's "
                       "shapes; was it saved by another model size?")
    bert[name] = jax.tree.map(lambda x, ref: jnp.asarray(x, ref.dtype), sub, params["bert"][name])
  params = dict(params)
  params["bert"] = bert
  return params


def stack_trees(trees: Sequence[Params]) -> Params:
  """S trees of identical structure -> one tree with a leading (S,) axis on every leaf."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


# --------------------------------------------------------------------------- progress
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
      import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm.tqdm(total=total, desc=desc, file=sys.stderr, leave=False,
                            dynamic_ncols=True,
                            mininterval=0.1 if sys.stderr.isatty() else 5.0)
    except ImportError:
      self._bar = None

  def update(self, n: int = 1, **postfix: float) -> None:
    self.n += n
    if not self._enabled:
      return
    if self._bar is not None:
      self._bar.update(n)
      if postfix:
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
    elif self.n == self.total or self.n % max(self.total // 20, 1) == 0:
      print(f"\r{self.desc}: {self.n}/{self.total} ({time.time() - self._t0:.0f}s)",
            end="", file=sys.stderr, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    elif self._enabled:
      print(file=sys.stderr)


# ------------------------------------------------------------------------ fine-tuning
@dataclasses.dataclass
class FinetuneResult:
  """What `finetune` returns.

  Attributes:
    probs: float32 (S, N_test, C) test-set class probabilities of each seed.
    metrics: one metrics dict (see `classification_metrics`) per seed.
    train_loss: float32 (S,) mean train loss over the last epoch, per seed.
    steps: optimizer steps per seed.
    train_seconds: wall time of the training loop (compilation included).
    eval_seconds: wall time of the test-set evaluation.
  """
  probs: np.ndarray
  metrics: list[dict[str, float]]
  train_loss: np.ndarray
  steps: int
  train_seconds: float
  eval_seconds: float


def make_train_step(model: nn.Module, tx: optax.GradientTransformation) -> Callable:
  """Jitted ``(params, opt_state, ids, labels, weights, keys, step) -> (params, opt_state,
  loss)``.

  Every argument but ``step`` carries a leading seed axis (S,): ids (S, B, L) int32, labels
  (S, B) int32, weights (S, B) float32 (0 for padding rows of a partial batch), keys (S,)
  PRNG keys of the seeds; ``step`` is an int32 scalar folded into each key for dropout. The
  loss is the weighted mean cross-entropy of each seed, (S,) float32.
  """

  def loss_fn(params, ids, labels, weights, key):
    logits = model.apply({"params": params}, ids, deterministic=False,
                         rngs={"dropout": key}).astype(jnp.float32)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)[:, 0]
    return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)

  def one_seed(params, opt_state, ids, labels, weights, key, step):
    loss, grads = jax.value_and_grad(loss_fn)(params, ids, labels, weights,
                                              jax.random.fold_in(key, step))
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(jax.vmap(one_seed, in_axes=(0, 0, 0, 0, 0, 0, None)), donate_argnums=(0, 1))


def make_predict_fn(model: nn.Module) -> Callable:
  """Jitted ``(params (S, ...), ids (B, L)) -> probs (S, B, C)`` float32, deterministic."""

  def one_seed(params, ids):
    logits = model.apply({"params": params}, ids, deterministic=True)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

  return jax.jit(jax.vmap(one_seed, in_axes=(0, None)))


def batched(fn: Callable[[jax.Array], jax.Array], ids: np.ndarray, batch_size: int,
            axis: int = 0) -> np.ndarray:
  """Applies ``fn`` to fixed-size row batches of ``ids`` (the last padded with [PAD] rows,
  so one compiled shape serves all) and concatenates the outputs along ``axis``."""
  n = len(ids)
  outs = []
  for start in range(0, n, batch_size):
    chunk = ids[start:start + batch_size]
    rows = len(chunk)
    if rows < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - rows,) + chunk.shape[1:],
                                              chunk.dtype)])
    out = np.asarray(fn(chunk))
    outs.append(np.take(out, np.arange(rows), axis=axis))
  return np.concatenate(outs, axis=axis)


def _epoch_batches(rng: np.random.Generator, n: int, batch_size: int) -> np.ndarray:
  """int (ceil(n/B), B) row indices of one shuffled epoch; -1 pads the last batch."""
  perm = rng.permutation(n)
  steps = -(-n // batch_size)
  out = np.full(steps * batch_size, -1, np.int64)
  out[:n] = perm
  return out.reshape(steps, batch_size)


@functools.lru_cache(maxsize=8)
def _compiled(cfg: model_lib.ModelConfig, num_classes: int, hp: Hparams, n: int):
  """(init, optimizer init, train step, predict) jitted functions, shared by every call with
  the same model, classes, hyper-parameters and train-set size (so by every model of one
  size in a grid), so XLA compiles each once."""
  total, warmup = num_train_steps(n, hp)
  schedule = optim.make_lr_schedule(total_steps=total, warmup_steps=warmup,
                                    peak_learning_rate=hp.learning_rate)
  tx = optim.make_optimizer(schedule, b1=hp.b1, b2=hp.b2, eps=hp.eps,
                            weight_decay=hp.weight_decay, clip_norm=hp.clip_norm)
  model = model_lib.BertForSequenceClassification(classifier_config(cfg, hp.dropout),
                                                  num_labels=num_classes)
  init_fn = jax.jit(lambda key, enc: init_classifier_params(model, key, enc, 8))
  return init_fn, jax.jit(jax.vmap(tx.init)), make_train_step(model, tx), make_predict_fn(model)


def finetune(cfg: model_lib.ModelConfig,
             encoder_params: Params | None,
             train: tuple[np.ndarray, np.ndarray] | Sequence[tuple[np.ndarray, np.ndarray]],
             test: tuple[np.ndarray, np.ndarray],
             num_classes: int,
             hp: Hparams,
             seeds: Sequence[int],
             *,
             seeds_in_parallel: int = 0,
             eval_batch_size: int = 64,
             progress: bool = True,
             desc: str = "finetune") -> FinetuneResult:
  """Fine-tunes a classifier once per seed and scores each on the test set.

  Args:
    cfg: the encoder's config (its dropout is replaced by ``hp.dropout``).
    encoder_params: the pretrained ``bert`` subtree, or None for a random init.
    train: (ids int32 (N, L), labels int32 (N,)) shared by all seeds, or a list of one
      such pair per seed (resampled train sets; all must have the same N).
    test: (ids int32 (M, L), labels int32 (M,)).
    num_classes: C.
    hp: hyper-parameters; ``hp.max_len`` must equal L.
    seeds: one run per seed; the seed sets the pooler/classifier init (all params for a
      random init), the batch order and the dropout.
    seeds_in_parallel: train this many seeds together in one vmapped step (0 = auto: one
      at a time on CPU, all together on accelerators).
    eval_batch_size: test rows per jitted forward.
    progress: show a stderr progress bar.
    desc: the bar's label; it starts the message of a `NonFiniteError`.

  Returns:
    A `FinetuneResult`.

  Raises:
    NonFiniteError: at the first step whose train loss is NaN or infinite, or if the test
      probabilities are: never metrics of a diverged model.
  """
  seeds = list(seeds)
  if not seeds:
    raise ValueError("no seeds given")
  trains = list(train) if isinstance(train, (list, tuple)) and isinstance(
      train[0], (list, tuple)) else [train] * len(seeds)
  if len(trains) != len(seeds):
    raise ValueError(f"{len(trains)} train sets for {len(seeds)} seeds")
  n = len(trains[0][0])
  for ids, labels in trains + [test]:
    if ids.ndim != 2 or ids.shape[1] != hp.max_len or len(labels) != len(ids):
      raise ValueError(f"ids must be (N, max_len={hp.max_len}) with one label per row, got "
                       f"{ids.shape} and {np.shape(labels)}")
  if any(len(t[0]) != n for t in trains):
    raise ValueError("all per-seed train sets must have the same size")
  if hp.max_len > cfg.max_len:
    raise ValueError(f"max_len={hp.max_len} exceeds the model's {cfg.max_len} positions")
  if seeds_in_parallel <= 0:
    # Measured on a 2-core CPU (benchmarks/bench_fewshot.py): vmapping seeds gains nothing
    # there (the step is compute-bound), so seeds run one after another on CPU and together
    # on accelerators, where a batch of 5 leaves the device mostly idle.
    seeds_in_parallel = 1 if jax.default_backend() == "cpu" else len(seeds)
  group = seeds_in_parallel
  total, _ = num_train_steps(n, hp)
  init_fn, opt_init_fn, step_fn, predict_fn = _compiled(cfg, num_classes, hp, n)
  steps_per_epoch = -(-n // hp.batch_size)

  probs_all, losses_all = [], []
  bar = Progress(total * len(seeds), desc, enabled=progress)
  t0 = time.time()
  eval_seconds = 0.0
  try:
    for g0 in range(0, len(seeds), group):
      gseeds = seeds[g0:g0 + group]
      gtrains = trains[g0:g0 + group]
      params = stack_trees([init_fn(jax.random.key(s), encoder_params) for s in gseeds])
      opt_state = opt_init_fn(params)
      rngs = [np.random.default_rng([s, 1]) for s in gseeds]
      keys = jnp.stack([jax.random.key(s + 1_000_003) for s in gseeds])
      epoch_loss = np.zeros(len(gseeds), np.float64)
      step = 0
      for _ in range(hp.epochs):
        order = np.stack([_epoch_batches(r, n, hp.batch_size) for r in rngs])  # (S, T, B)
        epoch_loss[:] = 0.0
        for t in range(steps_per_epoch):
          idx = order[:, t]  # (S, B)
          valid = idx >= 0
          safe = np.where(valid, idx, 0)
          ids = np.stack([tr[0][i] for tr, i in zip(gtrains, safe)])
          labels = np.stack([tr[1][i] for tr, i in zip(gtrains, safe)]).astype(np.int32)
          params, opt_state, loss = step_fn(params, opt_state, ids, labels,
                                            valid.astype(np.float32), keys,
                                            np.int32(step))
          loss = np.asarray(loss)
          if not np.all(np.isfinite(loss)):
            bad = [s for s, v in zip(gseeds, loss) if not np.isfinite(v)]
            raise NonFiniteError(
                f"{desc}: the train loss is {loss[~np.isfinite(loss)][0]} at step {step + 1} "
                f"of {total} (seed {bad[0]}); the model's weights or --learning_rate="
                f"{hp.learning_rate:g} make training diverge, so no metrics are reported")
          epoch_loss += loss
          step += 1
          bar.update(len(gseeds), loss=float(np.mean(loss)))
      losses_all.append(epoch_loss / steps_per_epoch)
      te = time.time()
      probs = batched(lambda x, p=params: predict_fn(p, x), test[0], eval_batch_size, axis=1)
      if not np.all(np.isfinite(probs)):
        raise NonFiniteError(f"{desc}: the test-set probabilities hold NaN or infinite values "
                             "(the fine-tuned weights are not finite); no metrics are reported")
      probs_all.append(probs)
      eval_seconds += time.time() - te
  finally:
    bar.close()
  probs = np.concatenate(probs_all, axis=0)
  metrics = [classification_metrics(test[1], p) for p in probs]
  return FinetuneResult(probs=probs, metrics=metrics, train_loss=np.concatenate(losses_all),
                        steps=total, train_seconds=time.time() - t0 - eval_seconds,
                        eval_seconds=eval_seconds)


# ----------------------------------------------------------------------- linear probe
def mlm_encode_fn(cfg: model_lib.ModelConfig) -> EncodeFn:
  """``(mlm_params, ids) -> (B, L, E)`` final hidden states of a ``BertForMaskedLM``."""
  model = model_lib.BertForMaskedLM(dataclasses.replace(cfg, dtype="float32"))

  def encode(params, ids):
    return model.apply({"params": params}, ids, method=model_lib.BertForMaskedLM.encode)

  return encode


def encoder_encode_fn(cfg: model_lib.ModelConfig) -> EncodeFn:
  """``(encoder_params, ids) -> (B, L, E)`` for the ``bert`` subtree alone."""
  model = model_lib.BertModel(dataclasses.replace(cfg, dtype="float32"))

  def encode(params, ids):
    return model.apply({"params": params}, ids)

  return encode


def make_feature_fn(encode_fn: EncodeFn, pooling: str = "mean", pad_id: int = 0) -> Callable:
  """Jitted ``(params, ids (B, L)) -> features (B, E)`` float32.

  pooling: "mean" = mean of the hidden states of non-pad tokens ([CLS], [SEP] included);
  "cls" = the [CLS] state.
  """
  if pooling not in ("mean", "cls"):
    raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")

  def features(params, ids):
    h = encode_fn(params, ids).astype(jnp.float32)
    if pooling == "cls":
      return h[:, 0]
    m = (ids != pad_id).astype(jnp.float32)[..., None]
    return jnp.sum(h * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)

  return jax.jit(features)


def extract_features(feature_fn: Callable, params: Params, ids: np.ndarray,
                     batch_size: int = 64) -> np.ndarray:
  """float32 (N, E) features of ``ids`` (N, L) in fixed-size batches."""
  return batched(lambda x: feature_fn(params, x), ids, batch_size).astype(np.float32)


@jax.jit(static_argnames=("num_classes", "steps"))
def _fit_logreg(x, y, num_classes: int, l2: float, lr: float, steps: int):
  n, d = x.shape
  onehot = jax.nn.one_hot(y, num_classes)

  def loss(wb):
    w, b = wb
    logits = x @ w + b
    return (-jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), axis=1))
            + 0.5 * l2 * jnp.sum(w * w))

  tx = optax.adam(lr)
  wb = (jnp.zeros((d, num_classes), jnp.float32), jnp.zeros((num_classes,), jnp.float32))
  state = tx.init(wb)

  def body(_, carry):
    wb, state = carry
    g = jax.grad(loss)(wb)
    upd, state = tx.update(g, state, wb)
    return optax.apply_updates(wb, upd), state

  wb, _ = jax.lax.fori_loop(0, steps, body, (wb, state))
  return wb


@dataclasses.dataclass(frozen=True)
class LogisticRegression:
  """A fitted multinomial logistic regression on standardised features.

  Attributes:
    mean, std: float32 (E,) feature standardisation from the train set.
    w: float32 (E, C); b: float32 (C,).
  """
  mean: np.ndarray
  std: np.ndarray
  w: np.ndarray
  b: np.ndarray

  def predict_proba(self, x: np.ndarray) -> np.ndarray:
    """float (N, E) features -> float64 (N, C) probabilities."""
    z = ((np.asarray(x, np.float64) - self.mean) / self.std) @ self.w + self.b
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def fit_logistic_regression(x: np.ndarray, y: np.ndarray, num_classes: int, *,
                            l2: float = 1e-3, learning_rate: float = 0.05,
                            steps: int = 300) -> LogisticRegression:
  """Full-batch Adam on the L2-regularised mean cross-entropy, jitted as one loop.

  Args:
    x: float (N, E) features; y: int (N,) labels in 0..C-1.
    num_classes: C. l2: weight penalty (on the mean loss). learning_rate, steps: Adam.
  """
  x = np.asarray(x, np.float32)
  mean = x.mean(axis=0)
  std = x.std(axis=0) + 1e-6
  w, b = _fit_logreg(jnp.asarray((x - mean) / std), jnp.asarray(y, jnp.int32), num_classes,
                     float(l2), float(learning_rate), int(steps))
  return LogisticRegression(mean, std, np.asarray(w), np.asarray(b))


def linear_probe(feature_fn: Callable, params: Params,
                 train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                 num_classes: int, *, batch_size: int = 64, l2: float = 1e-3,
                 steps: int = 300) -> dict[str, float]:
  """Frozen-encoder features + logistic regression, scored on ``test``.

  Args:
    feature_fn: from `make_feature_fn` (e.g. over `mlm_encode_fn(cfg)`).
    params: the params ``feature_fn`` takes (MLM params for `mlm_encode_fn`).
    train, test: (ids int32 (N, L), labels int32 (N,)).
    num_classes: C.

  Returns:
    `classification_metrics` of the test predictions.
  """
  xtr = extract_features(feature_fn, params, train[0], batch_size)
  clf = fit_logistic_regression(xtr, train[1], num_classes, l2=l2, steps=steps)
  xte = extract_features(feature_fn, params, test[0], batch_size)
  return classification_metrics(test[1], clf.predict_proba(xte))


@dataclasses.dataclass(frozen=True)
class ProbeTask:
  """One (task, shot) of the in-training probe, already tokenized.

  Attributes:
    name: the logging tag, e.g. "prom_core_10shot".
    train, test: (ids int32 (N, L), labels int32 (N,)).
    num_classes: C.
  """
  name: str
  train: tuple[np.ndarray, np.ndarray]
  test: tuple[np.ndarray, np.ndarray]
  num_classes: int


def make_in_training_probe(cfg: model_lib.ModelConfig, probe_tasks: Iterable[ProbeTask], *,
                           pooling: str = "mean", batch_size: int = 64,
                           metrics: Sequence[str] = ("accuracy", "mcc")
                           ) -> Callable[[Params], dict[str, float]]:
  """A probe the pretraining loop calls as ``probe(mlm_params) -> {tag: value}``.

  Tags are ``"fewshot/<task.name>/<metric>"``. The feature function is compiled once per
  input length and reused across calls; params may be sharded (jit follows them).
  """
  feature_fn = make_feature_fn(mlm_encode_fn(cfg), pooling)
  probe_tasks = list(probe_tasks)
  for m in metrics:
    if m not in METRICS:
      raise ValueError(f"unknown metric {m!r}; expected some of {METRICS}")

  def probe(params: Params) -> dict[str, float]:
    out = {}
    for t in probe_tasks:
      res = linear_probe(feature_fn, params, t.train, t.test, t.num_classes,
                         batch_size=batch_size)
      for m in metrics:
        out[f"fewshot/{t.name}/{m}"] = res[m]
    return out

  return probe


def probe_tasks_from_data(specs: Mapping[str, Sequence[int]], data_dir: Any, *,
                          max_test_examples: int | None = 1000, seed: int = 0
                          ) -> list[ProbeTask]:
  """Loads and tokenizes probe tasks: ``{"prom_core": [10, 100]}`` -> `ProbeTask`s.

  The test set (overlaps with the train set removed) is subsampled to
  ``max_test_examples`` rows with a fixed, class-stratified-by-chance random draw so the
  curve is comparable across steps.
  """
  from genemask_jax.data import tasks  # pylint: disable=g-import-not-at-top
  out = []
  for task, shots in specs.items():
    for shot in shots:
      data = tasks.load_task(task, shot, data_dir)
      spec = data.task
      tr = tasks.encode_examples(data.train, spec.max_len, spec.k)
      te = tasks.encode_examples(data.test, spec.max_len, spec.k)
      te = subsample(te, max_test_examples, seed)
      out.append(ProbeTask(f"{spec.name}_{shot}shot", tr, te, spec.num_classes))
  return out


def subsample(data: tuple[np.ndarray, np.ndarray], max_examples: int | None,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """At most ``max_examples`` rows of (ids, labels), a fixed random draw in original order."""
  ids, labels = data
  if max_examples is None or max_examples <= 0 or len(ids) <= max_examples:
    return ids, labels
  keep = np.sort(np.random.default_rng(seed).choice(len(ids), max_examples, replace=False))
  return ids[keep], labels[keep]
