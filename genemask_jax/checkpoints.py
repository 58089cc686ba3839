"""Loading a pretrained encoder for downstream use (few-shot fine-tuning, linear probes).

`load_encoder` is the one entry point the few-shot binary uses for every model source; it
returns ``(ModelConfig, encoder params or None, info)``, where the encoder params are the
``bert`` subtree (embeddings + encoder) that `finetune.init_classifier_params` takes::

    cfg, encoder, info = load_encoder("runs/tiny/checkpoints/400", vocab_size=4101)
    cfg, encoder, info = load_encoder("hf:DNA_bert_6")       # a HuggingFace directory
    cfg, encoder, info = load_encoder("random", model_size="tiny")

The workdir layout, its config.json and the restore itself belong to
`genemask_jax.workdir`; HF directories to `genemask_jax.hf`. This module checks what the
caller asked for (a size, a vocabulary) and re-exports the workdir names that downstream
code imports from here (`resolve_checkpoint`, `read_model_config`, `CheckpointError`).
"""

from __future__ import annotations

import os
from typing import Any

from genemask_jax import hf
from genemask_jax import model as model_lib
from genemask_jax import workdir as workdir_lib

CONFIG_FILE = workdir_lib.CONFIG_FILE
CHECKPOINT_DIR = workdir_lib.CHECKPOINT_DIR
STATE_ITEM = workdir_lib.STATE_ITEM
RANDOM = "random"
HF_PREFIX = "hf:"  # --checkpoint=NAME=hf:DIR evaluates a HuggingFace BERT directory.

CheckpointError = workdir_lib.CheckpointError
resolve_checkpoint = workdir_lib.resolve_checkpoint
abstract_mlm_params = workdir_lib.abstract_mlm_params

_DAMAGED_HINT = ("the checkpoint is damaged or incomplete: evaluate another step with "
                 "--checkpoint=WORKDIR/checkpoints/STEP")


def read_model_config(workdir: str | os.PathLike) -> tuple[model_lib.ModelConfig, dict]:
  """The `ModelConfig` a pretraining run used, and the raw ``model_signature`` dict.

  Raises:
    CheckpointError: config.json is missing, not JSON, or lacks a usable model signature.
  """
  cfg, saved = workdir_lib.read_model_config(workdir)
  return cfg, saved["model_signature"]


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
    diff = [f"{k} {getattr(cfg, k)} vs {getattr(want, k)}" for k in model_lib.SIZE_FIELDS
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
  params = workdir_lib.restore_params(step_dir, cfg, hint=_DAMAGED_HINT)
  info = {"workdir": str(workdir), "step_dir": str(step_dir), "step": int(step_dir.name),
          "signature": sig}
  return cfg, params, info


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
