"""The few-shot metrics equal scikit-learn's on random and degenerate predictions."""

import numpy as np
import pytest
from sklearn import metrics as skm

from genemask_jax.finetune import metrics


def _sklearn(y, probs):
  pred = probs.argmax(1)
  c = probs.shape[1]
  auc = (skm.roc_auc_score(y, probs[:, 1]) if c == 2 else
         skm.roc_auc_score(y, probs, multi_class="ovo", average="macro"))
  return {
      "accuracy": skm.accuracy_score(y, pred),
      "f1": skm.f1_score(y, pred, average="macro", zero_division=0),
      "precision": skm.precision_score(y, pred, average="macro", zero_division=0),
      "recall": skm.recall_score(y, pred, average="macro", zero_division=0),
      "mcc": skm.matthews_corrcoef(y, pred),
      "roc_auc": auc,
  }


def _random_probs(rng, n, c, *, quantize=None):
  logits = rng.normal(size=(n, c))
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  if quantize:  # Coarse scores make many ties, which the AUC must average.
    p = np.round(p * quantize) / quantize
    p[:, -1] = 1.0 - p[:, :-1].sum(1)
  return p


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_metrics_match_sklearn_on_random_predictions(num_classes, seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(20, 400))
  y = rng.integers(0, num_classes, n)
  # Predictions correlated with the labels, so the metrics are away from chance.
  probs = _random_probs(rng, n, num_classes)
  probs[np.arange(n), y] += rng.uniform(0, 1, n)
  probs /= probs.sum(1, keepdims=True)
  ours = metrics.classification_metrics(y, probs)
  ref = _sklearn(y, probs)
  assert set(ours) == set(metrics.METRICS)
  for k in ref:
    np.testing.assert_allclose(ours[k], ref[k], rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_auc_with_tied_scores_matches_sklearn(num_classes):
  rng = np.random.default_rng(7)
  y = rng.integers(0, num_classes, 300)
  probs = _random_probs(rng, 300, num_classes, quantize=4)
  ours = metrics.classification_metrics(y, probs)
  np.testing.assert_allclose(ours["roc_auc"], _sklearn(y, probs)["roc_auc"], rtol=1e-12)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_constant_prediction_gives_sklearn_zero_division_values(num_classes):
  # A collapsed classifier (every row predicted class 0): precision of the other classes is
  # undefined (0 in the macro average), MCC has a zero denominator (0).
  rng = np.random.default_rng(1)
  y = rng.integers(0, num_classes, 50)
  probs = np.tile(np.eye(num_classes)[0] * 0.5 + 0.5 / num_classes, (50, 1))
  ours = metrics.classification_metrics(y, probs)
  ref = _sklearn(y, probs)
  for k in ("accuracy", "f1", "precision", "recall", "mcc", "roc_auc"):
    np.testing.assert_allclose(ours[k], ref[k], atol=1e-12, err_msg=k)
  assert ours["mcc"] == 0.0 and ours["roc_auc"] == 0.5


def test_perfect_and_inverted_binary_predictions():
  y = np.array([0, 1, 1, 0, 1])
  good = np.stack([1 - y * 0.9 - 0.05, y * 0.9 + 0.05], 1)
  m = metrics.classification_metrics(y, good)
  assert m["accuracy"] == 1.0 and m["mcc"] == pytest.approx(1.0) and m["roc_auc"] == 1.0
  m = metrics.classification_metrics(y, good[:, ::-1])
  assert m["accuracy"] == 0.0 and m["mcc"] == pytest.approx(-1.0) and m["roc_auc"] == 0.0


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match="probs must be"):
    metrics.classification_metrics(np.zeros(3, int), np.zeros((4, 2)))


@pytest.mark.parametrize("absent_from", ["both", "y_true", "y_pred"])
def test_macro_averages_over_the_classes_scikit_learn_uses(absent_from):
  # Four classes; class 3 never occurs in y_true and never wins the argmax: scikit-learn
  # averages over the labels present in y_true or y_pred only (here 0, 1, 2, or 0..3 when
  # class 3 is in one of them), so a class absent from both must not pull the mean down.
  rng = np.random.default_rng(3)
  y = rng.integers(0, 3, 120)
  probs = _random_probs(rng, 120, 4)
  probs[:, 3] = 0.0
  probs[np.arange(120), y] += rng.uniform(0, 1, 120)
  if absent_from == "y_true":  # Class 3 predicted for a few rows, never true.
    probs[:7, 3] = 10.0
  elif absent_from == "y_pred":  # Class 3 true for a few rows, never predicted.
    y[:7] = 3
  probs /= probs.sum(1, keepdims=True)
  pred = probs.argmax(1)
  assert (3 in y) == (absent_from == "y_pred") and (3 in pred) == (absent_from == "y_true")
  ours = metrics.classification_metrics(y, probs)
  for k, fn in (("f1", skm.f1_score), ("precision", skm.precision_score),
                ("recall", skm.recall_score)):
    np.testing.assert_allclose(ours[k], fn(y, pred, average="macro", zero_division=0),
                               rtol=1e-12, err_msg=k)
  np.testing.assert_allclose(ours["mcc"], skm.matthews_corrcoef(y, pred), rtol=1e-12)
  np.testing.assert_allclose(ours["accuracy"], skm.accuracy_score(y, pred), rtol=1e-12)


def test_edge_cases_a_small_test_set_produces():
  # Few-shot test sets can be tiny or lopsided; each case here once scored differently
  # from scikit-learn under a one-character change of the metrics code (mutmut, #21).
  rng = np.random.default_rng(5)
  # Exactly one positive, then exactly one negative row: the AUC is defined.
  for y in (np.r_[1, np.zeros(9, int)], np.r_[0, np.ones(9, int)]):
    probs = _random_probs(rng, 10, 2)
    ours = metrics.classification_metrics(y, probs)
    np.testing.assert_allclose(ours["roc_auc"], skm.roc_auc_score(y, probs[:, 1]), rtol=1e-12)
  # A class with exactly one row, predicted right (precision = recall = 1 for it), and a
  # class predicted exactly once without being true.
  y = np.array([0, 0, 0, 1, 1, 2, 0, 1])
  pred = np.array([0, 3, 0, 1, 0, 2, 0, 1])
  probs = np.eye(4)[pred] * 0.7 + 0.075
  ours = metrics.classification_metrics(y, probs)
  for k, fn in (("f1", skm.f1_score), ("precision", skm.precision_score),
                ("recall", skm.recall_score)):
    np.testing.assert_allclose(ours[k], fn(y, pred, average="macro", zero_division=0),
                               rtol=1e-12, err_msg=k)
  # One class only in y_true: MCC is 0 (zero denominator) and the AUC undefined (nan).
  y = np.zeros(6, int)
  probs = _random_probs(rng, 6, 2)
  ours = metrics.classification_metrics(y, probs)
  assert ours["mcc"] == skm.matthews_corrcoef(y, probs.argmax(1)) == 0.0
  assert np.isnan(ours["roc_auc"])
  # A single row.
  assert metrics.classification_metrics(np.array([1]), np.array([[0.2, 0.8]]))["accuracy"] == 1.0


@pytest.mark.parametrize("scale", [1.0, 1e-3])  # 1e-3: variances far below 1.
def test_regression_metrics_in_float64_whatever_the_inputs_dtype_shape_and_scale(scale):
  """The model's float32 outputs, a column of targets, tiny variances: scipy's values on the
  float64 numbers (Pearson's r of average ranks for Spearman)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  y = (rng.normal(size=300) * scale).astype(np.float32)
  pred = (0.5 * y + rng.normal(size=300).astype(np.float32) * scale).astype(np.float32)
  pred[:30] = np.round(pred[:30] / scale) * scale  # Ties.
  y64, p64 = y.astype(np.float64), pred.astype(np.float64)
  m = metrics.regression_metrics(y[:, None], pred[:, None])
  assert m["pearson"] == pytest.approx(stats.pearsonr(y64, p64)[0], abs=1e-12)
  assert m["spearman"] == pytest.approx(stats.spearmanr(y64, p64)[0], abs=1e-12)
  assert m["mse"] == pytest.approx(np.mean((y64 - p64) ** 2), rel=1e-12)
  assert all(type(v) is float for v in m.values())
  with pytest.raises(ValueError, match=r"^y_pred must be \(N,\) or \(N, 1\) with N = "
                     r"len\(y_true\) = 300, got \(300, 2\)$"):
    metrics.regression_metrics(y, np.stack([pred, pred], 1))
