"""Loading pretrained encoders from a pretraining workdir (or a random one), for few-shot use.

A pretraining run (`genemask_jax.train`) leaves::

    WORKDIR/config.json                 {"config": {...}, "model_signature": {"size": ..., ...}}
    WORKDIR/checkpoints/<STEP>/state    orbax StandardSave of TrainState(step, params, opt_state)
    WORKDIR/checkpoints/<STEP>/data     orbax JsonSave of the input pipeline position

`load_pretrained` accepts ``WORKDIR`` (latest step), ``WORKDIR/checkpoints`` (latest),
``WORKDIR/checkpoints/STEP`` or ``WORKDIR/STEP``, rebuilds the `ModelConfig` from
``config.json``, checks the stored array shapes against that config (and against a size or
vocabulary the caller asks for) and restores only ``params`` (no optimizer state) onto one
device. Every problem raises `CheckpointError` naming the path and what was expected,
before any training starts.

`load_encoder` is the one entry point the few-shot binary uses for every model source; it
returns ``(ModelConfig, encoder params or None, info)``, where the encoder params are the
``bert`` subtree (embeddings + encoder) that `finetune.init_classifier_params` takes.
"""

from __future__ import annotations

import dataclasses
import json
import logging as std_logging
import os
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from genemask_jax import errors
from genemask_jax import model as model_lib

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
STATE_ITEM = "state"
RANDOM = "random"
HF_PREFIX = "hf:"  # --checkpoint=NAME=hf:DIR evaluates a HuggingFace BERT directory.

# model_signature keys that are not ModelConfig fields under the same name.
_SIGNATURE_ALIASES = {"max_position": "max_len", "max_position_embeddings": "max_len"}


class CheckpointError(errors.UserError):
  """A checkpoint that is missing, unreadable or of another model than requested."""


def _step_dirs(ckpt_dir: pathlib.Path) -> list[int]:
  if not ckpt_dir.is_dir():
    return []
  return sorted(int(p.name) for p in ckpt_dir.iterdir()
                if p.name.isdigit() and (p / STATE_ITEM).is_dir())


def resolve_checkpoint(path: str | os.PathLike) -> tuple[pathlib.Path, pathlib.Path]:
  """(workdir, step directory) of a checkpoint path.

  Accepts WORKDIR, WORKDIR/checkpoints, WORKDIR/checkpoints/STEP and WORKDIR/STEP; the
  first two mean the latest step.

  Raises:
    CheckpointError: the path does not exist or holds no step with a ``state`` item.
  """
  p = pathlib.Path(path).expanduser()
  if p.name.isdigit() and not p.exists() and (p.parent / CHECKPOINT_DIR / p.name).exists():
    p = p.parent / CHECKPOINT_DIR / p.name  # WORKDIR/STEP
  if not p.exists() and p.name.isdigit() and p.parent.is_dir():
    steps = _step_dirs(p.parent) or _step_dirs(p.parent / CHECKPOINT_DIR)
    raise CheckpointError(
        f"{p}: no checkpoint of step {p.name} (expected {p}/{STATE_ITEM}/); steps found: "
        f"{steps or 'none'}")
  if not p.exists():
    raise CheckpointError(
        f"checkpoint path {str(p)!r} does not exist; expected a pretraining workdir (with "
        f"{CONFIG_FILE} and {CHECKPOINT_DIR}/<step>/) or one of its step directories")
  if p.name.isdigit():
    if (p / STATE_ITEM).is_dir():  # WORKDIR/checkpoints/STEP
      workdir = p.parent.parent if p.parent.name == CHECKPOINT_DIR else p.parent
      return workdir, p
    alt = p.parent / CHECKPOINT_DIR / p.name  # WORKDIR/STEP
    if (alt / STATE_ITEM).is_dir():
      return p.parent, alt
    steps = _step_dirs(p.parent / CHECKPOINT_DIR) or _step_dirs(p.parent)
    raise CheckpointError(
        f"{p}: no checkpoint of step {p.name} (expected {p}/{STATE_ITEM}/ or "
        f"{alt}/{STATE_ITEM}/); steps found: {steps or 'none'}")
  if p.name == CHECKPOINT_DIR and not (p / CHECKPOINT_DIR).is_dir():
    workdir, ckpt_dir = p.parent, p
  else:
    workdir, ckpt_dir = p, p / CHECKPOINT_DIR
  steps = _step_dirs(ckpt_dir)
  if not steps:
    raise CheckpointError(
        f"{p}: no checkpoint found; expected {ckpt_dir}/<step>/{STATE_ITEM}/ written by the "
        "pretraining binary (python main.py --workdir=...)")
  return workdir, ckpt_dir / str(steps[-1])


def read_model_config(workdir: str | os.PathLike) -> tuple[model_lib.ModelConfig, dict]:
  """The `ModelConfig` a pretraining run used, from ``WORKDIR/config.json``.

  Returns:
    (config, the raw ``model_signature`` dict).

  Raises:
    CheckpointError: the file is missing, not JSON, or lacks a usable model signature.
  """
  path = pathlib.Path(workdir) / CONFIG_FILE
  try:
    text = path.read_text()
  except FileNotFoundError as e:
    raise CheckpointError(
        f"{path}: missing; a pretraining workdir holds {CONFIG_FILE} with the model "
        "signature next to checkpoints/") from e
  try:
    saved = json.loads(text)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: not valid JSON ({e}); is this a genemask-jax workdir?") from e
  sig = saved.get("model_signature") if isinstance(saved, dict) else None
  if not isinstance(sig, dict) or "size" not in sig:
    raise CheckpointError(
        f"{path}: no 'model_signature' with a 'size' key; expected "
        '{"config": {...}, "model_signature": {"size": "tiny", ...}}')
  fields = {f.name for f in dataclasses.fields(model_lib.ModelConfig)}
  overrides = {}
  for key, value in sig.items():
    name = _SIGNATURE_ALIASES.get(key, key)
    if name in fields:
      overrides[name] = value
  model_cfg = (saved.get("config") or {}).get("model") or {}
  if model_cfg.get("dropout_rate") is not None:
    overrides["dropout_rate"] = model_cfg["dropout_rate"]
  try:
    if sig["size"] in model_lib.MODEL_SIZES:
      cfg = model_lib.model_config(sig["size"], **overrides)
    else:  # An imported model of no named size ("custom"): the signature says it all.
      cfg = model_lib.ModelConfig(**overrides)
  except (ValueError, TypeError) as e:
    raise CheckpointError(f"{path}: model_signature {sig} does not make a model: {e}") from e
  return cfg, sig


def abstract_mlm_params(cfg: model_lib.ModelConfig) -> Any:
  """ShapeDtypeStructs of `BertForMaskedLM` params for ``cfg`` (no allocation)."""
  model = model_lib.BertForMaskedLM(cfg)
  return jax.eval_shape(
      lambda k: nn.unbox(model.init(k, jnp.zeros((1, 8), jnp.int32))["params"]),
      jax.random.key(0))


def _flatten(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, prefix + (str(k),)))
    return out
  return {prefix: tree}


def check_against(cfg: model_lib.ModelConfig, *, model_size: str | None = None,
                  vocab_size: int | None = None, signature: dict | None = None,
                  where: str = "checkpoint") -> None:
  """Raises `CheckpointError` if ``cfg`` is not the requested size or vocabulary."""
  if vocab_size is not None and cfg.vocab_size != vocab_size:
    raise CheckpointError(
        f"{where}: vocabulary of {cfg.vocab_size} tokens, but the tasks need {vocab_size} "
        f"(k-mer tokenizer); was it pretrained with another k?")
  if model_size is not None:
    if model_size not in model_lib.MODEL_SIZES:
      raise CheckpointError(f"unknown --model_size {model_size!r}; expected one of "
                            f"{sorted(model_lib.MODEL_SIZES)}")
    want = model_lib.model_config(model_size)
    have_size = (signature or {}).get("size")
    keys = ("hidden_size", "num_layers", "num_heads", "mlp_dim")
    diff = [f"{k} {getattr(cfg, k)} vs {getattr(want, k)}" for k in keys
            if getattr(cfg, k) != getattr(want, k)]
    if diff or (have_size is not None and have_size != model_size):
      raise CheckpointError(
          f"{where}: a {have_size or 'different'} model ({', '.join(diff) or 'size name'}) "
          f"but --model_size={model_size} was requested")


def load_pretrained(path: str | os.PathLike, *, model_size: str | None = None,
                    vocab_size: int | None = None
                    ) -> tuple[model_lib.ModelConfig, Any, dict[str, Any]]:
  """Restores the MLM params of a pretraining checkpoint onto the default device.

  Args:
    path: WORKDIR (latest step), WORKDIR/checkpoints[/STEP] or WORKDIR/STEP.
    model_size: if given, the checkpoint must be this size (a key of ``MODEL_SIZES``).
    vocab_size: if given, the checkpoint's vocabulary must have this many tokens.

  Returns:
    (ModelConfig, BertForMaskedLM params (float32 arrays, unboxed), info) where info has
    "workdir", "step_dir", "step" and "signature".

  Raises:
    CheckpointError: missing/corrupt checkpoint or config.json, or another model.
  """
  workdir, step_dir = resolve_checkpoint(path)
  cfg, sig = read_model_config(workdir)
  check_against(cfg, model_size=model_size, vocab_size=vocab_size, signature=sig,
                where=str(step_dir))
  state_dir = step_dir / STATE_ITEM
  abstract = abstract_mlm_params(cfg)
  checkpointer = ocp.PyTreeCheckpointer()
  # Orbax logs a warning for step metadata it keeps one level up; not useful here.
  absl_logger = std_logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(std_logging.ERROR)
  try:
    try:
      meta = checkpointer.metadata(state_dir)
      tree = getattr(meta, "item_metadata", meta)
      tree = getattr(tree, "tree", tree)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"{state_dir}: unreadable orbax checkpoint ({e})") from e
    if not isinstance(tree, dict) or "params" not in tree:
      raise CheckpointError(f"{state_dir}: no 'params' in the saved tree (keys: "
                            f"{sorted(tree) if isinstance(tree, dict) else type(tree)}); "
                            "expected TrainState(step, params, opt_state)")
    want = _flatten(abstract)
    have = _flatten(tree["params"])
    missing = sorted("/".join(k) for k in want if k not in have)
    if missing:
      raise CheckpointError(
          f"{state_dir}: {len(missing)} parameter(s) of a {sig.get('size')} BertForMaskedLM "
          f"are missing, e.g. {missing[:3]}")
    bad = [f"{'/'.join(k)}: saved {tuple(have[k].shape)}, config {tuple(v.shape)}"
           for k, v in want.items() if tuple(have[k].shape) != tuple(v.shape)]
    if bad:
      raise CheckpointError(
          f"{state_dir}: stored shapes differ from {workdir / CONFIG_FILE}'s model "
          f"({'; '.join(bad[:3])}); config and checkpoint are from different runs")
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = {"params": jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)}
    try:
      restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"{state_dir}: cannot restore params ({type(e).__name__}: {e})") from e
  finally:
    absl_logger.setLevel(level)
  info = {"workdir": str(workdir), "step_dir": str(step_dir), "step": int(step_dir.name),
          "signature": sig}
  return cfg, restored["params"], info


def load_encoder(source: str, *, model_size: str | None = None,
                 vocab_size: int | None = None
                 ) -> tuple[model_lib.ModelConfig, Any | None, dict[str, Any]]:
  """(ModelConfig, encoder params or None, info) for one model source.

  Args:
    source: a checkpoint path (see `load_pretrained`), ``"hf:DIR"`` for a HuggingFace
      BERT directory (e.g. DNABERT's published weights), or ``"random"`` for a randomly
      initialised model of ``model_size`` (default "tiny").
    model_size: required size; for "random" the size to build.
    vocab_size: required vocabulary size.

  Returns:
    The encoder params are the MLM model's ``bert`` subtree (None for "random").
  """
  if source.startswith(HF_PREFIX):
    from genemask_jax import hf  # pylint: disable=g-import-not-at-top
    hf_dir = source[len(HF_PREFIX):]
    try:
      cfg, params = hf.load_hf_encoder(hf_dir)
    except ValueError as e:
      raise CheckpointError(str(e)) from e
    check_against(cfg, model_size=None, vocab_size=vocab_size, where=hf_dir)
    return cfg, params["bert"], {"source": "hf", "hf_dir": hf_dir, "size": "hf"}
  if source == RANDOM:
    size = model_size or "tiny"
    if size not in model_lib.MODEL_SIZES:
      raise CheckpointError(f"unknown --model_size {size!r}; expected one of "
                            f"{sorted(model_lib.MODEL_SIZES)}")
    cfg = model_lib.model_config(size)
    check_against(cfg, vocab_size=vocab_size, where=f"random {size} model")
    return cfg, None, {"source": RANDOM, "size": size}
  cfg, params, info = load_pretrained(source, model_size=model_size, vocab_size=vocab_size)
  info = dict(info, source="pretrained", size=info["signature"].get("size"))
  return cfg, params["bert"], info
