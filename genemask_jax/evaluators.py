"""Periodic actions of the pretraining loop: when they run (`itstime`) and the evaluators.

The loop in `genemask_jax.train` runs every evaluator whose time has come after a step::

  evaluators = [MlmEvaluator(...), ProbeEvaluator(...)]
  for ev in evaluators:
    if itstime(step, ev.every, total_steps):
      metrics = ev.run(state, step)                  # {name: float}
      writer.write_scalars(step, metrics, prefix=ev.prefix)
      print(ev.describe(step, metrics))

An evaluator is a small object with ``name``, ``every`` (steps; <= 0 = never),
``prefix`` (of its logged metric names), ``run(state, step) -> dict[str, float]`` and
``describe(step, metrics) -> str`` (its console line). Two exist: `MlmEvaluator` (masked-LM
loss, perplexity and accuracy on fixed held-out batches, logged as ``eval/...``) and
`ProbeEvaluator` (the few-shot linear probe on frozen features, ``fewshot/<task>/<metric>``),
as big_vision's evaluators run inside its training loop.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Protocol, Sequence

import jax
import ml_collections

from genemask_jax import errors
from genemask_jax import finetune
from genemask_jax import model as model_lib
from genemask_jax import sharding as sharding_lib
from genemask_jax.data import tasks


class ProbeConfigError(errors.UserError):
  """config.probe names tasks or data that cannot be loaded."""


def itstime(step: int, every: int, total_steps: int, *, first: bool = False,
            last: bool = True) -> bool:
  """Whether a periodic action runs after `step` (1-based: the step just completed).

  As big_vision's ``u.itstime``: every `every` steps, plus the first step if `first` and
  the last (`total_steps`) if `last`. `every` <= 0 turns the action off (never, not even
  at the first or last step). Unlike big_vision, `first` defaults to False: an action
  every N steps does not also run after step 1.
  """
  if every <= 0:
    return False
  return (step % every == 0 or (first and step == 1) or (last and step == total_steps))


class Evaluator(Protocol):
  name: str
  every: int
  prefix: str

  def run(self, state: Any, step: int) -> dict[str, float]:
    ...

  def describe(self, step: int, metrics: dict[str, float]) -> str:
    ...


class MlmEvaluator:
  """Masked-LM loss, perplexity and accuracy of the params on fixed, pre-masked batches."""

  name = "eval"
  prefix = "eval/"

  def __init__(self, eval_step: Callable[[Any, Any], dict[str, Any]],
               batches: Sequence[dict[str, Any]], mesh: jax.sharding.Mesh,
               rules: Any, every: int):
    """`eval_step(params, global batch) -> sums` (`train_step.jit_eval_step`); `batches`:
    this process's fixed batches (`data.sources.Datasets.eval_batches`)."""
    self._eval_step, self._batches = eval_step, list(batches)
    self._mesh, self._rules = mesh, rules
    self.every = every

  def run(self, state: Any, step: int) -> dict[str, float]:
    del step  # The batches and their masks are the same at every step.
    sums = {"loss_sum": 0.0, "weight_sum": 0.0, "correct": 0.0}
    for b in self._batches:
      out = self._eval_step(state.params,
                            sharding_lib.global_batch_from_local(b, self._mesh, self._rules))
      for k in sums:
        sums[k] += float(out[k])
    loss = sums["loss_sum"] / max(sums["weight_sum"], 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
            "accuracy": sums["correct"] / max(sums["weight_sum"], 1.0)}

  def describe(self, step: int, metrics: dict[str, float]) -> str:
    return (f"eval step {step}: loss {metrics['loss']:.4f}  perplexity "
            f"{metrics['perplexity']:.1f}  masked accuracy {metrics['accuracy']:.3f}")


class ProbeEvaluator:
  """The few-shot linear probe on frozen features (`finetune.make_in_training_probe`)."""

  name = "probe"
  prefix = ""  # Its metric names already start with "fewshot/".

  def __init__(self, probe: Callable[[Any], dict[str, float]], every: int):
    self._probe = probe
    self.every = every

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict,
                  cfg: model_lib.ModelConfig) -> ProbeEvaluator | None:
    """config.probe's evaluator, its data loaded and checked now; None when it is off.

    Raises:
      ProbeConfigError: a task or its data cannot be loaded (names config.probe).
    """
    pr = config.probe
    if pr.every <= 0:
      return None
    shots = [int(x) for x in str(pr.shots).split(",") if x.strip()]
    specs = {t.strip(): shots for t in pr.tasks.split(",") if t.strip()}
    try:
      probe_data = finetune.probe_tasks_from_data(
          specs, tasks.resolve_data_dir(pr.data_dir or None),
          max_test_examples=pr.max_test_examples)
    except ValueError as e:
      raise ProbeConfigError(f"config.probe: {e}") from e
    return cls(finetune.make_in_training_probe(cfg, probe_data), pr.every)

  def run(self, state: Any, step: int) -> dict[str, float]:
    del step
    return self._probe(state.params)

  def describe(self, step: int, metrics: dict[str, float]) -> str:
    return f"probe step {step}: " + "  ".join(
        f"{k.removeprefix('fewshot/')} {v:.3f}" for k, v in metrics.items())
