"""Classification and regression metrics of fine-tuned models, in plain numpy.

`classification_metrics` agrees with scikit-learn's `accuracy_score`, macro `f1_score` /
`precision_score` / `recall_score` (zero_division=0), `matthews_corrcoef` and
`roc_auc_score` (binary: score of class 1; multi-class: ``multi_class="ovo",
average="macro"``). `regression_metrics` gives Pearson's r, Spearman's rho (as scipy's
`pearsonr` / `spearmanr`) and the mean squared error.
"""

from __future__ import annotations

import math

import numpy as np

METRICS = ("accuracy", "f1", "precision", "recall", "mcc", "roc_auc")
REGRESSION_METRICS = ("pearson", "spearman", "mse")


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


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
  x = x - x.mean()
  y = y - y.mean()
  den = math.sqrt(float(x @ x) * float(y @ y))
  return float(x @ y / den) if den > 0 else float("nan")


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
  """Metrics of one regression model's test predictions.

  Args:
    y_true: float (N,) targets.
    y_pred: float (N,) or (N, 1) predictions.

  Returns:
    {"pearson", "spearman" (Pearson's r of average ranks), "mse"} as Python floats;
    the correlations are nan when either side is constant (as scipy returns).
  """
  y_true = np.asarray(y_true, np.float64).reshape(-1)
  y_pred = np.asarray(y_pred, np.float64)
  if y_pred.ndim == 2 and y_pred.shape[1] == 1:
    y_pred = y_pred[:, 0]
  if y_pred.shape != y_true.shape:
    raise ValueError(f"y_pred must be (N,) or (N, 1) with N = len(y_true) = {len(y_true)}, "
                     f"got {np.shape(y_pred)}")
  return {
      "pearson": _pearson(y_true, y_pred),
      "spearman": _pearson(_rankdata(y_true), _rankdata(y_pred)),
      "mse": float(np.mean((y_true - y_pred) ** 2)),
  }
