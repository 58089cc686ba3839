"""The MLM train step's loss, gradient and accuracy against a hand-written reference.

The step must treat the fixed-size prediction slots as the user expects: padding slots
(weight 0) count in neither the loss, nor the gradient, nor the accuracy, and the gradient
is that of the *mean* loss over the real slots (not of their sum). The reference below
runs the model on all L positions, picks the predicted slots one by one in Python and
takes ``jax.grad`` of its own mean, so it shares nothing with ``mlm_loss_terms``, the
weight normalisation or the model's masked-positions path.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genemask_jax import model as model_lib
from genemask_jax import tokenizer
from genemask_jax import train_step
import fixture_scope  # tests/ is on sys.path (rootdir-relative test modules).

# Dropout off, so the step and the reference see the same function.
CFG = model_lib.ModelConfig(vocab_size=4101, hidden_size=32, num_layers=1, num_heads=2,
                            mlp_dim=64, max_len=64, dropout_rate=0.0,
                            attention_dropout_rate=0.0)
MODEL = model_lib.BertForMaskedLM(CFG)


class _Masks(NamedTuple):
  masked_ids: np.ndarray
  masked_lm_positions: np.ndarray
  masked_lm_ids: np.ndarray
  masked_lm_weights: np.ndarray


def _grad_recorder() -> optax.GradientTransformation:
  """An "optimizer" whose state after one update is exactly the gradient it was given."""
  return optax.GradientTransformation(
      init=lambda params: jax.tree.map(jnp.zeros_like, params),
      update=lambda g, state, params=None: (jax.tree.map(jnp.zeros_like, g), g))


@pytest.fixture(scope=fixture_scope.module_unless_mutmut)
def setup():
  params = nn.unbox(MODEL.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  params = jax.tree.map(np.asarray, params)
  rng = np.random.default_rng(0)
  length, slots = 16, 5
  ids = tokenizer.pack([rng.integers(tokenizer.NUM_SPECIAL, 4101, n) for n in (14, 9, 6)],
                       length)
  # Real slots per row: 4, 2 and none (a row with nothing masked still trains the others).
  real = [rng.choice(np.arange(1, n + 1), k, replace=False) for n, k in ((14, 4), (9, 2),
                                                                         (6, 0))]
  masked_ids = ids.copy()
  positions = np.zeros((3, slots), np.int32)
  labels = np.zeros((3, slots), np.int32)
  weights = np.zeros((3, slots), np.float32)
  for r, pos in enumerate(real):
    pos = np.sort(pos)
    masked_ids[r, pos] = tokenizer.MASK_ID
    positions[r, :len(pos)] = pos
    labels[r, :len(pos)] = ids[r, pos]
    weights[r, :len(pos)] = 1.0
  # Padding slots point at position 0 (as masking.py leaves them) and their labels are the
  # model's own argmax there: a step that counted them would score them right, and with a
  # finite loss, so loss, gradient and accuracy would all move.
  full = np.asarray(MODEL.apply({"params": params}, masked_ids))
  pad = weights == 0
  labels[pad] = full[np.nonzero(pad)[0], positions[pad]].argmax(-1)
  # One real slot predicted right too, so the accuracy is neither 0 nor 1.
  labels[0, 0] = full[0, positions[0, 0]].argmax()
  return params, ids, _Masks(masked_ids, positions, labels, weights)


def _reference(params, masks: _Masks, token_type_ids=None, model=MODEL):
  """(mean loss, grads, accuracy, count) over the real slots, written out by hand."""
  real = [(b, int(masks.masked_lm_positions[b, s]), int(masks.masked_lm_ids[b, s]))
          for b in range(masks.masked_lm_weights.shape[0])
          for s in range(masks.masked_lm_weights.shape[1]) if masks.masked_lm_weights[b, s]]

  def mean_loss(p):
    logits = model.apply({"params": p}, jnp.asarray(masks.masked_ids),
                         token_type_ids=token_type_ids)  # (B, L, V), deterministic
    total = 0.0
    for b, pos, label in real:
      total -= jax.nn.log_softmax(logits[b, pos])[label]
    return total / len(real)

  loss, grads = jax.value_and_grad(mean_loss)(params)
  logits = np.asarray(model.apply({"params": params}, masks.masked_ids,
                                  token_type_ids=token_type_ids))
  accuracy = np.mean([logits[b, pos].argmax() == label for b, pos, label in real])
  return float(loss), grads, float(accuracy), len(real)


@pytest.mark.parametrize("num_microbatches", [1, 3])
def test_loss_gradient_and_accuracy_are_the_mean_over_real_slots(setup, num_microbatches):
  params, ids, masks = setup
  step = train_step.make_mlm_train_step(MODEL, _grad_recorder(), lambda key, x: masks,
                                        num_microbatches=num_microbatches)
  state = train_step.init_train_state(params, _grad_recorder())
  new_state, metrics = jax.jit(step)(state, {"input_ids": ids}, jax.random.key(1))
  loss, grads, accuracy, count = _reference(params, masks)
  assert count == 6 and 0 < accuracy < 1
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"], accuracy, rtol=1e-6)
  assert float(metrics["num_masked"]) == count
  # float32 sums in another order: to 1e-5 of the largest gradient entry (some leaves,
  # e.g. the key bias, have an exactly zero gradient that both sides leave as noise).
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads))
  jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-3,
                                                            atol=1e-5 * scale),
               new_state.opt_state, grads)
  norm = np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads)))
  np.testing.assert_allclose(metrics["grad_norm"], norm, rtol=1e-4)
  assert int(new_state.step) == 1


def test_eval_step_sums_over_real_slots_only(setup):
  params, _, masks = setup
  sums = jax.jit(train_step.make_mlm_eval_step(MODEL))(params, {
      "input_ids": masks.masked_ids, "masked_lm_positions": masks.masked_lm_positions,
      "masked_lm_ids": masks.masked_lm_ids, "masked_lm_weights": masks.masked_lm_weights})
  loss, _, accuracy, count = _reference(params, masks)
  assert float(sums["weight_sum"]) == count
  np.testing.assert_allclose(sums["loss_sum"] / sums["weight_sum"], loss, rtol=1e-5)
  np.testing.assert_allclose(sums["correct"] / sums["weight_sum"], accuracy, rtol=1e-6)


def test_token_types_reach_the_model_and_eval_is_deterministic(setup):
  params, ids, masks = setup
  types = np.zeros_like(ids)
  types[:, ids.shape[1] // 2:] = 1
  loss, grads, accuracy, _ = _reference(params, masks, types)
  step = train_step.make_mlm_train_step(MODEL, _grad_recorder(), lambda key, x: masks)
  new_state, metrics = jax.jit(step)(train_step.init_train_state(params, _grad_recorder()),
                                     {"input_ids": ids, "token_type_ids": types},
                                     jax.random.key(1))
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads))
  np.testing.assert_allclose(new_state.opt_state["bert"]["embeddings"]["token_type_embeddings"]
                             ["embedding"], grads["bert"]["embeddings"]["token_type_embeddings"]
                             ["embedding"], rtol=1e-3, atol=1e-5 * scale)
  # Evaluation of a model with dropout runs it deterministically (no dropout rng needed).
  dropout_model = model_lib.BertForMaskedLM(dataclasses.replace(
      CFG, dropout_rate=0.3, attention_dropout_rate=0.3))
  sums = jax.jit(train_step.make_mlm_eval_step(dropout_model))(params, {
      "input_ids": masks.masked_ids, "token_type_ids": types,
      "masked_lm_positions": masks.masked_lm_positions, "masked_lm_ids": masks.masked_lm_ids,
      "masked_lm_weights": masks.masked_lm_weights})
  np.testing.assert_allclose(sums["loss_sum"] / sums["weight_sum"], loss, rtol=1e-5)
  np.testing.assert_allclose(sums["correct"] / sums["weight_sum"], accuracy, rtol=1e-6)


# A model whose dropout is on: the step must train it with dropout, drawn from the key.
DROPOUT_MODEL = model_lib.BertForMaskedLM(dataclasses.replace(
    CFG, dropout_rate=0.2, attention_dropout_rate=0.2))


def _keyed_mask_fn(masks: _Masks):
  """A mask_fn whose masks depend on both its key and the ids it is given."""

  def mask_fn(key, ids):
    keep = jax.random.bernoulli(key, 0.6, masks.masked_lm_weights.shape)
    masked_ids = jnp.where(jnp.asarray(masks.masked_ids) == tokenizer.MASK_ID,
                           tokenizer.MASK_ID, ids)
    return _Masks(masked_ids, jnp.asarray(masks.masked_lm_positions),
                  jnp.asarray(masks.masked_lm_ids),
                  jnp.asarray(masks.masked_lm_weights) * keep)

  return mask_fn


@pytest.mark.parametrize("num_microbatches", [1, 3])
def test_masks_dropout_and_update_follow_the_documented_keys(setup, num_microbatches):
  """The documented randomness and update of one step, checked against a reference.

  ``k = fold_in(key, step)`` is split into the masking key (given to ``mask_fn`` with the
  batch's ids) and the dropout key (micro-batch i of M > 1 uses ``fold_in(dropout_key,
  i)`` on rows i, i+M, ...); the optimizer gets the normalised gradient and the params;
  ``learning_rate`` is the schedule at the step. A resumed run relies on all of it.
  """
  params, ids, masks = setup
  mask_fn = _keyed_mask_fn(masks)
  # The metric reads the schedule at state.step; the update uses the optimizer's own count
  # (the same in a run, not in this state made up at step 5), so it gets a fixed rate.
  schedule = optax.linear_schedule(0.5, 0.1, 10)
  lr = 0.3
  optimizer = optax.chain(optax.add_decayed_weights(0.01), optax.sgd(lr))
  step = train_step.make_mlm_train_step(DROPOUT_MODEL, optimizer, mask_fn,
                                        learning_rate_fn=schedule,
                                        num_microbatches=num_microbatches)
  key, at_step = jax.random.key(7), 5
  state = train_step.init_train_state(params, optimizer).replace(
      step=jnp.asarray(at_step, jnp.int32))
  new_state, metrics = jax.jit(step)(state, {"input_ids": ids}, key)

  mask_key, dropout_key = jax.random.split(jax.random.fold_in(key, at_step))
  m = mask_fn(mask_key, jnp.asarray(ids))
  m_rows = int(np.count_nonzero(np.asarray(m.masked_lm_weights)))
  assert 0 < m_rows < int(masks.masked_lm_weights.sum())  # the key did drop some slots
  micro = ([(slice(None), dropout_key)] if num_microbatches == 1 else
           [(slice(i, None, num_microbatches), jax.random.fold_in(dropout_key, i))
            for i in range(num_microbatches)])

  def sums(p):
    loss, correct = 0.0, 0.0
    for rows, dkey in micro:
      logits = DROPOUT_MODEL.apply({"params": p}, m.masked_ids[rows],
                                   masked_positions=m.masked_lm_positions[rows],
                                   deterministic=False, rngs={"dropout": dkey})
      w = m.masked_lm_weights[rows]
      logp = jax.nn.log_softmax(logits)
      nll = -jnp.take_along_axis(logp, m.masked_lm_ids[rows][..., None], -1)[..., 0]
      loss += jnp.sum(nll * w)
      correct += jnp.sum((logits.argmax(-1) == m.masked_lm_ids[rows]) * w)
    return loss / m_rows, correct / m_rows

  (loss, accuracy), grads = jax.jit(jax.value_and_grad(sums, has_aux=True))(params)
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"], accuracy, rtol=1e-6)
  assert float(metrics["num_masked"]) == m_rows
  assert metrics["learning_rate"].dtype == jnp.float32
  np.testing.assert_allclose(metrics["learning_rate"], float(schedule(at_step)), rtol=1e-6)
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads))
  jax.tree.map(lambda got, p, g: np.testing.assert_allclose(
      got, p - lr * (g + 0.01 * p), rtol=1e-4, atol=lr * 1e-5 * scale),
               new_state.params, params, grads)
  assert int(new_state.step) == at_step + 1
  # The same key and step repeat the step exactly; the next step draws afresh.
  _, again = jax.jit(step)(state, {"input_ids": ids}, key)
  assert float(again["loss"]) == float(metrics["loss"])
  _, later = jax.jit(step)(state.replace(step=state.step + 1), {"input_ids": ids}, key)
  assert float(later["loss"]) != float(metrics["loss"])


@pytest.mark.parametrize("num_real", [0, 1])
def test_a_batch_with_one_or_no_masked_slot(setup, num_real):
  """No masked slot: loss, accuracy and gradient are 0, not nan; one slot: its own loss."""
  params, ids, masks = setup
  weights = np.zeros_like(masks.masked_lm_weights)
  weights[0, :num_real] = 1.0
  one = masks._replace(masked_lm_weights=weights)
  step = train_step.make_mlm_train_step(MODEL, _grad_recorder(), lambda key, x: one)
  new_state, metrics = jax.jit(step)(train_step.init_train_state(params, _grad_recorder()),
                                     {"input_ids": ids}, jax.random.key(1))
  assert float(metrics["num_masked"]) == num_real
  if num_real == 0:
    assert float(metrics["loss"]) == 0.0 and float(metrics["accuracy"]) == 0.0
    assert float(metrics["grad_norm"]) == 0.0
    assert all(not np.any(g) for g in jax.tree.leaves(new_state.opt_state))
  else:
    loss, grads, accuracy, _ = _reference(params, one)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], accuracy)
    norm = np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads)))
    np.testing.assert_allclose(metrics["grad_norm"], norm, rtol=1e-4)


def test_step_arguments_are_checked_before_tracing(setup):
  """Each misuse names what was expected."""
  _, ids, masks = setup
  with pytest.raises(ValueError, match="num_microbatches must be >= 1, got 0"):
    train_step.make_mlm_train_step(MODEL, _grad_recorder(), lambda key, x: masks,
                                   num_microbatches=0)
  state = train_step.init_train_state({"w": jnp.zeros(())}, _grad_recorder())
  step = train_step.make_mlm_train_step(MODEL, _grad_recorder(), lambda key, x: masks,
                                        num_microbatches=2)
  with pytest.raises(ValueError, match=r"batch size 3 is not divisible by num_microbatches=2"):
    step(state, {"input_ids": jnp.asarray(ids)}, jax.random.key(0))
  with pytest.raises(ValueError, match=r"must be \(batch, length\), got \(16,\)"):
    step(state, {"input_ids": jnp.asarray(ids[0])}, jax.random.key(0))


def test_initial_state_counts_steps_in_int32_and_holds_the_optimizers_state(setup):
  """Step 0 as an int32 scalar (checkpoints, `fold_in` and the schedule read it), and the
  optimizer's own state for these params: adamw's moments have the params' shapes."""
  params = setup[0]
  tx = optax.adamw(1e-3)
  state = train_step.init_train_state(params, tx)
  assert state.step.shape == () and state.step.dtype == jnp.int32 and int(state.step) == 0
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(tx.init(params))
  mu = state.opt_state[0].mu
  assert jax.tree.map(jnp.shape, mu) == jax.tree.map(jnp.shape, params)
  assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(mu))
