"""When the pretraining loop's periodic actions run, and the evaluators it iterates."""
import types

import jax
import numpy as np
import pytest

from genemask_jax import evaluators
from genemask_jax import sharding as sharding_lib


def _steps(every, total, **kw):
  return [s for s in range(1, total + 1) if evaluators.itstime(s, every, total, **kw)]


def test_itstime_every_n_steps_and_the_last():
  assert _steps(4, 10) == [4, 8, 10]
  assert _steps(5, 10) == [5, 10]  # The last step once, not twice.
  assert _steps(1, 3) == [1, 2, 3]
  assert _steps(20, 6) == [6]  # A period longer than the run: the last step only.


def test_itstime_first_and_last_are_optional():
  assert _steps(4, 10, first=True) == [1, 4, 8, 10]
  assert _steps(4, 10, last=False) == [4, 8]
  assert _steps(4, 10, first=True, last=False) == [1, 4, 8]


@pytest.mark.parametrize("every", [0, -1])
def test_itstime_zero_or_negative_every_is_never(every):
  assert _steps(every, 10) == []
  assert _steps(every, 10, first=True, last=True) == []


def test_mlm_evaluator_sums_over_batches_and_describes_itself():
  mesh = sharding_lib.make_mesh((-1, 1), ("data", "model"))
  rules = sharding_lib.rules_from_config(sharding_lib.DEFAULT_RULES)
  batches = [{"input_ids": np.zeros((jax.device_count(), 4), np.int32)}] * 3
  calls = []

  def eval_step(params, batch):
    calls.append(params)
    assert isinstance(batch["input_ids"], jax.Array)  # A global array, not the host batch.
    return {"loss_sum": 2.0, "weight_sum": 4.0, "correct": 1.0}

  ev = evaluators.MlmEvaluator(eval_step, batches, mesh, rules, every=7)
  assert (ev.name, ev.prefix, ev.every) == ("eval", "eval/", 7)
  out = ev.run(types.SimpleNamespace(params="p"), step=7)
  assert calls == ["p"] * 3
  assert out == pytest.approx({"loss": 0.5, "perplexity": np.exp(0.5), "accuracy": 3 / 12})
  assert ev.describe(7, out) == ("eval step 7: loss 0.5000  perplexity 1.6  "
                                 "masked accuracy 0.250")


def test_probe_evaluator_is_none_when_off_and_logs_fewshot_names():
  config = types.SimpleNamespace(probe=types.SimpleNamespace(every=0))
  assert evaluators.ProbeEvaluator.from_config(config, cfg=None) is None
  ev = evaluators.ProbeEvaluator(lambda params: {"fewshot/t_10shot/accuracy": 0.75}, every=5)
  out = ev.run(types.SimpleNamespace(params="p"), step=5)
  assert ev.prefix == "" and out == {"fewshot/t_10shot/accuracy": 0.75}
  assert ev.describe(5, out) == "probe step 5: t_10shot/accuracy 0.750"
