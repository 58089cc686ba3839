"""The jitted MLM train and eval steps, as pure functions of an explicit state pytree.

``TrainState`` is a plain pytree (step, params, opt_state) that orbax saves and jit
shards as is. ``make_mlm_train_step`` builds ``(state, batch, key) -> (state, metrics)``
whose body masks the raw token ids on device (``mask_fn``), runs the model with only the
masked positions going through the MLM head, and applies one optimizer update.
``jit_train_step`` compiles it with explicit shardings and donates the old state.

Batch layout: ``batch["input_ids"]`` is (B, L) int32 raw tokenizer ids laid out as
``[CLS] k-mers [SEP] [PAD]...``; optional ``batch["token_type_ids"]`` (B, L) int32.

``mask_fn(key, input_ids)`` returns an object with attributes
  masked_ids          (B, L) int32   ids with [MASK]/random/kept replacements,
  masked_lm_positions (B, P) int32   positions predicted,
  masked_lm_ids       (B, P) int32   original ids there,
  masked_lm_weights   (B, P) float32 1 for real predictions, 0 for padding slots
(``genemask_jax.masking.make_mask_fn`` builds one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from genemask_jax import sharding as sharding_lib

MaskFn = Callable[[jax.Array, jax.Array], Any]


@flax.struct.dataclass
class TrainState:
  """Everything a training step updates.

  Attributes:
    step: int32 scalar, the number of optimizer updates applied so far.
    params: the model's (unboxed) ``params`` collection.
    opt_state: the optax state for ``params``.
  """
  step: jax.Array
  params: Any
  opt_state: Any


def init_train_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
  """A fresh state at step 0 (use inside ``jax.jit`` with out_shardings to create it sharded)."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params))


def mlm_loss_terms(logits: jax.Array, labels: jax.Array,
                   weights: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Weighted cross-entropy pieces.

  Args:
    logits: (B, P, V) any float dtype (computed in float32).
    labels: (B, P) int ids.
    weights: (B, P) float weights (0 for padding prediction slots).

  Returns:
    (loss_sum, weight_sum, correct_sum) float32 scalars; correct counts weighted argmax hits.
  """
  logits = logits.astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return jnp.sum(nll * weights), jnp.sum(weights), jnp.sum(correct * weights)


def _safe_div(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.where(b > 0, a / jnp.where(b > 0, b, 1.0), 0.0)


def make_mlm_train_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    mask_fn: MaskFn,
    *,
    learning_rate_fn: optax.Schedule | None = None,
    num_microbatches: int = 1,
) -> Callable[[TrainState, Mapping[str, jax.Array], jax.Array],
              tuple[TrainState, dict[str, jax.Array]]]:
  """Builds the MLM train step ``(state, batch, key) -> (new_state, metrics)``.

  Randomness: ``k = fold_in(key, state.step)`` is split into the masking key and the
  dropout key, so one fixed ``key`` for the whole run gives fresh masks every step and a
  resumed run repeats exactly.

  Gradient accumulation: with ``num_microbatches`` M > 1 the masked batch is split into M
  interleaved micro-batches (rows i, i+M, ...; so each device's rows stay local) that run
  one after another in a ``lax.scan``; the summed gradient is divided by the total mask
  weight, i.e. it equals the full-batch gradient (up to dropout draws). The batch size must
  be divisible by M.

  Args:
    model: a ``BertForMaskedLM``.
    optimizer: e.g. ``optim.make_optimizer(schedule)``.
    mask_fn: ``(key, input_ids (B, L)) -> masks`` (see module docstring).
    learning_rate_fn: the schedule, only for the ``learning_rate`` metric.
    num_microbatches: gradient-accumulation factor M.

  Returns:
    The step. Metrics (float32 scalars): loss (mean over masked tokens), grad_norm
    (before clipping), accuracy (masked-token argmax accuracy), num_masked,
    learning_rate (of this update; 0 if no ``learning_rate_fn``).
  """
  if num_microbatches < 1:
    raise ValueError(f"num_microbatches must be >= 1, got {num_microbatches}")

  def loss_sums(params, input_ids, token_type_ids, positions, labels, weights, dropout_key):
    logits = model.apply({"params": params}, input_ids, masked_positions=positions,
                         token_type_ids=token_type_ids, deterministic=False,
                         rngs={"dropout": dropout_key})
    loss_sum, weight_sum, correct = mlm_loss_terms(logits, labels, weights)
    return loss_sum, (weight_sum, correct)

  grad_fn = jax.value_and_grad(loss_sums, has_aux=True)

  def step(state: TrainState, batch: Mapping[str, jax.Array], key: jax.Array):
    input_ids = batch["input_ids"]
    if input_ids.ndim != 2:
      raise ValueError(f"batch['input_ids'] must be (batch, length), got {input_ids.shape}")
    mask_key, dropout_key = jax.random.split(jax.random.fold_in(key, state.step))
    m = mask_fn(mask_key, input_ids)
    args = (m.masked_ids, batch.get("token_type_ids"), m.masked_lm_positions,
            m.masked_lm_ids, m.masked_lm_weights)
    if num_microbatches == 1:
      (loss_sum, (weight_sum, correct)), grads = grad_fn(state.params, *args, dropout_key)
    else:
      b = input_ids.shape[0]
      if b % num_microbatches:
        raise ValueError(f"batch size {b} is not divisible by num_microbatches="
                         f"{num_microbatches}")

      def split(x):
        if x is None:
          return None
        x = x.reshape((b // num_microbatches, num_microbatches) + x.shape[1:])
        x = jnp.swapaxes(x, 0, 1)  # (M, B/M, ...): micro i = rows i, i+M, ...
        return nn.with_logical_constraint(x, (None, "batch") + (None,) * (x.ndim - 2))

      micro = tuple(split(x) for x in args)

      def body(carry, xs):
        i, micro_args = xs
        (ls, (ws, c)), g = grad_fn(state.params, *micro_args,
                                   jax.random.fold_in(dropout_key, i))
        acc_g, acc_ls, acc_ws, acc_c = carry
        return (jax.tree.map(jnp.add, acc_g, g), acc_ls + ls, acc_ws + ws, acc_c + c), None

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32),
              jnp.zeros((), jnp.float32))
      (grads, loss_sum, weight_sum, correct), _ = jax.lax.scan(
          body, init, (jnp.arange(num_microbatches), micro))
    grads = jax.tree.map(lambda g: _safe_div(g, weight_sum).astype(g.dtype), grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": _safe_div(loss_sum, weight_sum),
        "grad_norm": optax.tree.norm(grads).astype(jnp.float32),
        "accuracy": _safe_div(correct, weight_sum),
        "num_masked": weight_sum,
        "learning_rate": (jnp.asarray(learning_rate_fn(state.step), jnp.float32)
                          if learning_rate_fn is not None else jnp.zeros((), jnp.float32)),
    }
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


def make_mlm_eval_step(model: nn.Module) -> Callable[[Any, Mapping[str, jax.Array]],
                                                     dict[str, jax.Array]]:
  """Builds ``(params, batch) -> sums`` on fixed, already-applied masks.

  ``batch`` holds "input_ids" (B, L) masked ids, "masked_lm_positions" (B, P),
  "masked_lm_ids" (B, P), "masked_lm_weights" (B, P) and optionally "token_type_ids".
  Returns float32 scalars loss_sum, weight_sum and correct, to be summed over eval batches
  (mean loss = loss_sum / weight_sum).
  """

  def eval_step(params, batch):
    logits = model.apply({"params": params}, batch["input_ids"],
                         masked_positions=batch["masked_lm_positions"],
                         token_type_ids=batch.get("token_type_ids"), deterministic=True)
    loss_sum, weight_sum, correct = mlm_loss_terms(
        logits, batch["masked_lm_ids"], batch["masked_lm_weights"])
    return {"loss_sum": loss_sum, "weight_sum": weight_sum, "correct": correct}

  return eval_step


def jit_train_step(step: Callable, mesh: jax.sharding.Mesh, rules: sharding_lib.LogicalRules,
                   state_shardings: Any, *, donate: bool = True,
                   compiler_options: dict[str, Any] | None = None) -> Callable:
  """Compiles ``step`` with explicit shardings: state as ``state_shardings``, batch rows on
  the ``batch`` rule, key and metrics replicated; the input state is donated.

  The returned function traces inside ``sharding.axis_rules(mesh, rules)`` so the model's
  activation constraints bind to ``mesh``. ``compiler_options`` go to ``jax.jit`` (e.g.
  ``{"xla_backend_optimization_level": 0}`` halves CPU compile time in tests). The jitted
  function is available as ``.jitted`` (for ``.lower``).
  """
  repl = sharding_lib.replicated(mesh)
  jitted = jax.jit(step,
                   in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh, rules), repl),
                   out_shardings=(state_shardings, repl),
                   donate_argnums=(0,) if donate else (),
                   compiler_options=compiler_options)

  def run(state, batch, key):
    with sharding_lib.axis_rules(mesh, rules):
      return jitted(state, batch, key)

  run.jitted = jitted
  return run


def jit_eval_step(eval_step: Callable, mesh: jax.sharding.Mesh,
                  rules: sharding_lib.LogicalRules, params_shardings: Any) -> Callable:
  """Compiles ``eval_step`` with params as ``params_shardings`` and batch rows sharded."""
  repl = sharding_lib.replicated(mesh)
  jitted = jax.jit(eval_step,
                   in_shardings=(params_shardings, sharding_lib.batch_sharding(mesh, rules)),
                   out_shardings=repl)

  def run(params, batch):
    with sharding_lib.axis_rules(mesh, rules):
      return jitted(params, batch)

  run.jitted = jitted
  return run


def create_train_state(model: nn.Module, optimizer: optax.GradientTransformation,
                       rng: jax.Array, mesh: jax.sharding.Mesh,
                       rules: sharding_lib.LogicalRules, *, seq_len: int = 8,
                       compiler_options: dict[str, Any] | None = None,
                       ) -> tuple[TrainState, TrainState]:
  """Initialises params and optimizer state directly sharded on ``mesh``.

  Args:
    model: the Flax module (``BertForMaskedLM`` or ``BertForSequenceClassification``).
    optimizer: its optax transformation.
    rng: PRNG key for the parameter init.
    mesh, rules: the layout (check them first with ``sharding.validate``).
    seq_len: length of the dummy input used to trace ``init`` (parameter shapes do not
      depend on it).
    compiler_options: XLA options for the init compile.

  Returns:
    (state, state_shardings): a ``TrainState`` of sharded arrays and the matching
    ``TrainState`` of NamedShardings (pass it to ``jit_train_step`` and to orbax).
  """
  def init_fn(key):
    return model.init(key, jnp.zeros((1, seq_len), jnp.int32))

  return sharding_lib.create_sharded_state(
      init_fn, rng, mesh, rules, lambda params: init_train_state(params, optimizer),
      compiler_options=compiler_options)


def abstract_train_state(model: nn.Module, optimizer: optax.GradientTransformation,
                         rng: jax.Array, mesh: jax.sharding.Mesh,
                         rules: sharding_lib.LogicalRules, *, seq_len: int = 8,
                         ) -> tuple[TrainState, TrainState]:
  """As ``create_train_state`` but shapes only (``jax.ShapeDtypeStruct`` with shardings).

  Nothing is computed or allocated, so ``mesh`` may hold devices of a topology this
  machine does not have (ahead-of-time compilation, ``genemask_jax.aot``).
  """
  def init_fn(key):
    return model.init(key, jnp.zeros((1, seq_len), jnp.int32))

  return sharding_lib.abstract_sharded_state(
      init_fn, rng, mesh, rules, lambda params: init_train_state(params, optimizer))
