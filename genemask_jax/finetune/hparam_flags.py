"""The fine-tuning hyper-parameter flags shared by both evaluation commands.

``python -m genemask_jax.fewshot`` and ``python -m genemask_jax.finetune`` take the same
seven override flags (``--batch_size`` ... ``--max_len``, all unset by default); only the
default each one overrides differs, so each command passes its own wording of those
defaults to `define` and reads the values back with `overrides`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from absl import flags

# Flag name -> (kind, what it sets). The names are fields of `classifier.Hparams`.
_FLAGS = {
    "batch_size": ("integer", "train batch size"),
    "learning_rate": ("float", "peak learning rate"),
    "epochs": ("integer", "epochs"),
    "warmup_frac": ("float", "warm-up fraction of the steps"),
    "weight_decay": ("float", "AdamW weight decay"),
    "dropout": ("float", "hidden/classifier dropout"),
    "max_len": ("integer", "model input length incl. [CLS]/[SEP]"),
}
NAMES = tuple(_FLAGS)
_DEFINE = {"integer": flags.DEFINE_integer, "float": flags.DEFINE_float}


def define(defaults: Mapping[str, str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the seven override flags, each unset (None) by default.

  Args:
    defaults: flag name -> how the command picks the value when the flag is unset, shown
      in ``--help`` (e.g. ``"32"`` or ``"per shot"``); every name must be given.
    flag_values: where to define them (absl's global FLAGS by default).
  """
  missing = sorted(set(NAMES) - set(defaults))
  extra = sorted(set(defaults) - set(NAMES))
  if missing or extra:
    raise ValueError(f"defaults must name exactly {list(NAMES)}: missing {missing}, "
                     f"unknown {extra}")
  for name, (kind, what) in _FLAGS.items():
    _DEFINE[kind](name, None, f"Override: {what} (default {defaults[name]}).",
                  flag_values=flag_values)


def overrides(fl: flags.FlagValues) -> dict[str, Any]:
  """The seven flags' values by name (None where unset), for ``resolve_hparams``."""
  return {name: getattr(fl, name) for name in NAMES}
