"""Full fine-tuning of a sequence classifier from a pretrained encoder (Script-B).

`finetune` follows the GeneMask authors' Script-B: a `BertForSequenceClassification` whose
encoder starts from the pretrained MLM encoder (pooler and classifier freshly
initialised), AdamW (weight decay on kernels and embeddings only), linear warm-up then
linear decay, global-norm clipping, dropout, a fixed number of epochs and no model
selection: the test set is only scored once, at the end.

Seeds can be trained together: the parameters of S seeds are stacked on a leading axis and
one jitted, `jax.vmap`-ed step updates all of them, each seed on its own shuffled batches
and dropout key (the same numbers as one seed at a time). `seeds_in_parallel` sets how
many; by default one at a time on CPU and all together on accelerators
(``benchmarks/bench_fewshot.py --compare_vmap`` measures both).

Nothing here reads flags or files: callers pass token ids and labels
(`genemask_jax.data.tasks.encode_examples`) and encoder parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from genemask_jax import errors
from genemask_jax import model as model_lib
from genemask_jax import optim
from genemask_jax import progress as progress_lib
from genemask_jax.finetune import arrays
from genemask_jax.finetune import metrics as metrics_lib

Params = Any
TASK_TYPES = ("classification", "regression")


class NonFiniteError(errors.UserError):
  """A fine-tune's train loss or test probabilities are NaN or infinite.

  Raised instead of returning metrics: the argmax of NaN probabilities is class 0, which
  scores plausibly on a balanced test set.
  """


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


# ------------------------------------------------------------------------ fine-tuning
@dataclasses.dataclass
class FinetuneResult:
  """What `finetune` returns.

  Attributes:
    probs: float32 (S, N_test, C) test-set class probabilities of each seed.
    metrics: one metrics dict (see `metrics.classification_metrics`) per seed.
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


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    task_type: str = "classification") -> Callable:
  """Jitted ``(params, opt_state, ids, labels, weights, keys, step) -> (params, opt_state,
  loss)``.

  Every argument but ``step`` carries a leading seed axis (S,): ids (S, B, L) int32, labels
  (S, B) int32 classes (float32 targets for ``task_type="regression"``), weights (S, B)
  float32 (0 for padding rows of a partial batch), keys (S,) PRNG keys of the seeds;
  ``step`` is an int32 scalar folded into each key for dropout. The loss is the weighted
  mean cross-entropy (regression: squared error of the one output) of each seed, (S,)
  float32.
  """
  _check_task_type(task_type)

  def loss_fn(params, ids, labels, weights, key):
    logits = model.apply({"params": params}, ids, deterministic=False,
                         rngs={"dropout": key}).astype(jnp.float32)
    if task_type == "regression":
      per_row = (logits[:, 0] - labels) ** 2
    else:
      per_row = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)[:, 0]
    return jnp.sum(per_row * weights) / jnp.maximum(jnp.sum(weights), 1.0)

  def one_seed(params, opt_state, ids, labels, weights, key, step):
    loss, grads = jax.value_and_grad(loss_fn)(params, ids, labels, weights,
                                              jax.random.fold_in(key, step))
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(jax.vmap(one_seed, in_axes=(0, 0, 0, 0, 0, 0, None)), donate_argnums=(0, 1))


def make_predict_fn(model: nn.Module, task_type: str = "classification") -> Callable:
  """Jitted ``(params (S, ...), ids (B, L)) -> (S, B, C)`` float32, deterministic: class
  probabilities, or for ``task_type="regression"`` the predicted values (C = 1)."""
  _check_task_type(task_type)

  def one_seed(params, ids):
    logits = model.apply({"params": params}, ids, deterministic=True).astype(jnp.float32)
    return logits if task_type == "regression" else jax.nn.softmax(logits, axis=-1)

  return jax.jit(jax.vmap(one_seed, in_axes=(0, None)))


def _check_task_type(task_type: str) -> None:
  if task_type not in TASK_TYPES:
    raise ValueError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")


def epoch_batches(rng: np.random.Generator, n: int, batch_size: int) -> np.ndarray:
  """int (ceil(n/B), B) row indices of one shuffled epoch; -1 pads the last batch."""
  perm = rng.permutation(n)
  steps = -(-n // batch_size)
  out = np.full(steps * batch_size, -1, np.int64)
  out[:n] = perm
  return out.reshape(steps, batch_size)


@functools.lru_cache(maxsize=8)
def compiled_functions(cfg: model_lib.ModelConfig, num_classes: int, hp: Hparams, n: int,
              task_type: str = "classification"):
  """(init, optimizer init, train step, predict) jitted functions, shared by every call with
  the same model, classes, hyper-parameters, train-set size and task type (so by every
  model of one size in a grid), so XLA compiles each once. Regression: ``num_classes=1``."""
  total, warmup = num_train_steps(n, hp)
  schedule = optim.make_lr_schedule(total_steps=total, warmup_steps=warmup,
                                    peak_learning_rate=hp.learning_rate)
  tx = optim.make_optimizer(schedule, b1=hp.b1, b2=hp.b2, eps=hp.eps,
                            weight_decay=hp.weight_decay, clip_norm=hp.clip_norm)
  model = model_lib.BertForSequenceClassification(classifier_config(cfg, hp.dropout),
                                                  num_labels=num_classes)
  init_fn = jax.jit(lambda key, enc: init_classifier_params(model, key, enc, 8))
  return (init_fn, jax.jit(jax.vmap(tx.init)), make_train_step(model, tx, task_type),
          make_predict_fn(model, task_type))


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
  init_fn, opt_init_fn, step_fn, predict_fn = compiled_functions(cfg, num_classes, hp, n)
  steps_per_epoch = -(-n // hp.batch_size)

  probs_all, losses_all = [], []
  bar = progress_lib.Progress(total * len(seeds), desc, enabled=progress)
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
        order = np.stack([epoch_batches(r, n, hp.batch_size) for r in rngs])  # (S, T, B)
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
      probs = arrays.batched(lambda x, p=params: predict_fn(p, x), test[0], eval_batch_size,
                             axis=1)
      if not np.all(np.isfinite(probs)):
        raise NonFiniteError(f"{desc}: the test-set probabilities hold NaN or infinite values "
                             "(the fine-tuned weights are not finite); no metrics are reported")
      probs_all.append(probs)
      eval_seconds += time.time() - te
  finally:
    bar.close()
  probs = np.concatenate(probs_all, axis=0)
  metrics = [metrics_lib.classification_metrics(test[1], p) for p in probs]
  return FinetuneResult(probs=probs, metrics=metrics, train_loss=np.concatenate(losses_all),
                        steps=total, train_seconds=time.time() - t0 - eval_seconds,
                        eval_seconds=eval_seconds)
