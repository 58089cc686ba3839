"""A fine-tuned sequence classifier (or regressor) on disk: save, load, predict, HF export.

A saved model is a directory::

    DIR/model.json     {"kind": "sequence_classification", "model_config": {...},
                        "num_labels", "task_type", "label_values", "max_len", "k", ...}
    DIR/params/        orbax PyTree of `model.BertForSequenceClassification` params

written by ``python -m genemask_jax.finetune ... --save_model=DIR`` and read by
``python -m genemask_jax.predict --model=DIR``::

    model = saved.load_saved_model(DIR)
    probs = saved.predict(model, ["ACGT...", ...])          # (N, C), or (N,) for regression
    saved.export_hf(DIR, HF_DIR)       # HF BertForSequenceClassification (safetensors)

**Long sequences.** A sequence with more than ``max_len - 2`` k-mers (``max_len`` is the
input length the model was fine-tuned at, in model.json) is split into windows of that
many k-mers (`genemask_jax.windows`: half-window overlap, at most ``max_windows`` evenly
spaced), every window is scored, and the sequence's output is the **mean of its windows'
class probabilities** (regression: of their values). Probabilities rather than logits:
the mean of distributions is a distribution, the same quantity ``pred.csv`` reports and
the metrics score, and one window with an extreme logit cannot outvote the others (a
mean of logits is a product of the windows' probabilities, dominated by the most
confident window). Fine-tuning scores dev and test the same way (`own_task`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from genemask_jax import errors
from genemask_jax import hf
from genemask_jax import model as model_lib
from genemask_jax import tokenizer
from genemask_jax import windows
from genemask_jax.finetune import arrays

KIND = "sequence_classification"
MODEL_FILE = "model.json"
PARAMS_DIR = "params"


class SavedModelError(errors.UserError):
  """A directory that is not a saved fine-tuned model, or a damaged one."""


@dataclasses.dataclass(frozen=True)
class SavedModel:
  """A loaded fine-tuned model.

  Attributes:
    config: the model's `ModelConfig` (float32).
    params: `BertForSequenceClassification` params (numpy arrays).
    task_type: "classification" or "regression".
    label_values: class labels as written in the training data (index = class id); ()
      for regression.
    max_len: input length the model was fine-tuned at ([CLS] and [SEP] included).
    k: k-mer length of the tokenizer.
    info: the rest of model.json (source checkpoint, seed, dev score, ...).
  """
  config: model_lib.ModelConfig
  params: Any
  task_type: str
  label_values: tuple[str, ...]
  max_len: int
  k: int
  info: dict[str, Any]

  @property
  def num_labels(self) -> int:
    return len(self.label_values) if self.task_type == "classification" else 1


def check_new_dir(path: str | os.PathLike, flag: str) -> pathlib.Path:
  """``path`` if a model can be written there (absent or an empty directory), else raises."""
  out = pathlib.Path(path).absolute()
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise SavedModelError(f"{flag}={path}: exists and is not an empty directory; choose a new "
                          "one (nothing is overwritten)")
  parent = out.parent
  while not parent.exists():
    parent = parent.parent
  if not os.access(parent, os.W_OK):
    raise SavedModelError(f"{flag}={path}: cannot write in {parent}")
  return out


def save_model(path: str | os.PathLike, cfg: model_lib.ModelConfig, params: Any, *,
               task_type: str, label_values: Sequence[str], max_len: int, k: int,
               info: Mapping[str, Any] | None = None) -> pathlib.Path:
  """Writes params (orbax) and model.json to ``path`` (absent or empty; see module doc)."""
  out = check_new_dir(path, "--save_model")
  if out.exists():
    out.rmdir()  # Orbax writes the tree into a directory it creates.
  out.mkdir(parents=True)
  host = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params)
  ocp.PyTreeCheckpointer().save(out / PARAMS_DIR, host)
  num_labels = len(label_values) if task_type == "classification" else 1
  meta = {"kind": KIND, "model_config": dataclasses.asdict(cfg), "num_labels": num_labels,
          "task_type": task_type, "label_values": list(label_values), "max_len": int(max_len),
          "k": int(k), **dict(info or {})}
  (out / MODEL_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
  return out


def load_saved_model(path: str | os.PathLike) -> SavedModel:
  """Reads a directory written by `save_model`.

  Raises:
    SavedModelError: no model.json (e.g. a pretraining workdir or an HF directory), another
      kind, fields missing, or params that cannot be restored.
  """
  root = pathlib.Path(path).absolute()
  meta_path = root / MODEL_FILE
  if not root.is_dir():
    raise SavedModelError(f"--model={path}: not a directory; expected a fine-tuned model "
                          "saved with --save_model")
  if not meta_path.is_file():
    what = ("a pretraining workdir" if (root / "config.json").is_file()
            and (root / "checkpoints").exists() else
            "a HuggingFace directory" if (root / "config.json").is_file() else
            "not a saved model")
    raise SavedModelError(f"--model={path}: {what} (no {MODEL_FILE}); expected a fine-tuned "
                          "model saved by python -m genemask_jax.finetune --save_model=DIR")
  try:
    meta = json.loads(meta_path.read_text())
  except (OSError, ValueError) as e:
    raise SavedModelError(f"{meta_path}: unreadable JSON ({e})") from e
  if not isinstance(meta, dict) or meta.get("kind") != KIND:
    kind = meta.get("kind") if isinstance(meta, dict) else type(meta).__name__
    raise SavedModelError(f"{meta_path}: kind {kind!r}; expected {KIND!r} (a fine-tuned "
                          "sequence classifier)")
  need = ("model_config", "task_type", "label_values", "max_len", "k")
  missing = [f for f in need if f not in meta]
  if missing:
    raise SavedModelError(f"{meta_path}: missing {', '.join(missing)}")
  fields = {f.name for f in dataclasses.fields(model_lib.ModelConfig)}
  try:
    cfg = model_lib.ModelConfig(**{k: v for k, v in meta["model_config"].items()
                                   if k in fields})
  except (TypeError, ValueError) as e:
    raise SavedModelError(f"{meta_path}: bad model_config ({e})") from e
  try:
    params = ocp.PyTreeCheckpointer().restore(root / PARAMS_DIR)
  except Exception as e:  # pylint: disable=broad-except
    raise SavedModelError(f"{root / PARAMS_DIR}: cannot restore params "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                          ) from e
  info = {k: v for k, v in meta.items() if k not in need + ("kind", "num_labels")}
  return SavedModel(cfg, params, meta["task_type"], tuple(map(str, meta["label_values"])),
                    int(meta["max_len"]), int(meta["k"]), info)


def encode(sequences: Sequence[str], max_len: int, k: int, *,
           max_windows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Model-ready windows of the sequences (see the module doc).

  Returns:
    (ids int32 (W, max_len): ``[CLS] k-mers [SEP] [PAD]...`` per window, owner int32 (W,):
    the sequence of each window). A sequence of at most ``max_len - 2`` k-mers is one
    window, itself.
  """
  return windows.split([tokenizer.encode(s, k) for s in sequences], max_len,
                       max_windows=max_windows)


def pool(outputs: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
  """Per-window outputs (W, C) or (W,) -> per-sequence means (n, C) or (n,), float32."""
  return windows.pool(outputs, owner, n, reduce="mean")


def predict(model: SavedModel, sequences: Sequence[str], *, batch_size: int = 64,
            max_windows: int | None = None) -> np.ndarray:
  """float32 (N, C) class probabilities, or (N,) values for regression (jitted, batched).

  A long sequence's row is the mean over its windows (module doc); ``max_windows`` bounds
  the windows per sequence.
  """
  ids, owner = encode(sequences, model.max_len, model.k, max_windows=max_windows)
  return pool(predict_ids(model, ids, batch_size=batch_size), owner, len(sequences))


def predict_ids(model: SavedModel, ids: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
  """Outputs of each row of token ids int32 (W, L) (e.g. the windows of `encode`): (W, C)
  probabilities or (W,) values, not pooled."""
  net = model_lib.BertForSequenceClassification(model.config, num_labels=model.num_labels)
  regression = model.task_type == "regression"

  @jax.jit
  def forward(params, x):
    logits = net.apply({"params": params}, x, deterministic=True).astype(jnp.float32)
    return logits[:, 0] if regression else jax.nn.softmax(logits, axis=-1)

  params = jax.tree.map(jnp.asarray, model.params)
  return arrays.batched(lambda x: forward(params, x), ids, batch_size).astype(np.float32)


def export_hf(model_dir: str | os.PathLike, output: str | os.PathLike) -> pathlib.Path:
  """Writes a saved model as a HuggingFace ``BertForSequenceClassification`` directory.

  config.json carries ``num_labels``, ``problem_type`` ("single_label_classification" or
  "regression") and ``id2label`` / ``label2id`` with the training data's label values.
  """
  model = load_saved_model(model_dir)
  out = pathlib.Path(output)
  hf.export_params(model.params, model.config, out, k=model.k)
  cfg_path = out / hf.CONFIG_NAME
  hf_cfg = json.loads(cfg_path.read_text())
  hf_cfg["num_labels"] = model.num_labels
  if model.task_type == "regression":
    hf_cfg["problem_type"] = "regression"
    names = ["value"]
  else:
    hf_cfg["problem_type"] = "single_label_classification"
    names = list(model.label_values)
  hf_cfg["id2label"] = {str(i): n for i, n in enumerate(names)}
  hf_cfg["label2id"] = {n: i for i, n in enumerate(names)}
  cfg_path.write_text(json.dumps(hf_cfg, indent=2) + "\n")
  return out

