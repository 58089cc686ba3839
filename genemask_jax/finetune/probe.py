"""Linear probes of a frozen encoder: features, logistic regression, the in-training probe.

The encoder is frozen; the features are the mean of the final hidden states over non-pad
tokens (or the [CLS] state), and a multinomial logistic regression on standardised
features is fitted by full-batch gradient descent in one jitted loop: fast enough to run
every few hundred pretraining steps (`make_in_training_probe`).

Everything here takes token ids and parameters, except `probe_tasks_from_data`, which
reads and tokenizes the few-shot task files (`genemask_jax.data.tasks`) for the
pretraining loop's probe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from genemask_jax import model as model_lib
from genemask_jax.data import tasks
from genemask_jax.finetune import arrays
from genemask_jax.finetune import metrics as metrics_lib

Params = Any
# (params, ids (B, L) int32) -> hidden states (B, L, E).
EncodeFn = Callable[[Params, jax.Array], jax.Array]


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
  return arrays.batched(lambda x: feature_fn(params, x), ids, batch_size).astype(np.float32)


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
  return metrics_lib.classification_metrics(test[1], clf.predict_proba(xte))


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
    if m not in metrics_lib.METRICS:
      raise ValueError(f"unknown metric {m!r}; expected some of {metrics_lib.METRICS}")

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
  Reads the task files under ``data_dir`` (see `genemask_jax.data.tasks.load_task`).
  """
  out = []
  for task, shots in specs.items():
    for shot in shots:
      data = tasks.load_task(task, shot, data_dir)
      spec = data.task
      tr = tasks.encode_examples(data.train, spec.max_len, spec.k)
      te = tasks.encode_examples(data.test, spec.max_len, spec.k)
      te = arrays.subsample(te, max_test_examples, seed)
      out.append(ProbeTask(f"{spec.name}_{shot}shot", tr, te, spec.num_classes))
  return out
