r"""HuggingFace BERT directories on disk: read one into our params, write ours as one.

    ckpt = load_hf_checkpoint("DNA_bert_6")           # config.json + weights + vocab.txt
    cfg, params = load_hf_encoder("DNA_bert_6")        # few-shot: BertForMaskedLM params
    ckpt = load_hf_for_init("DNA_bert_6", cfg)         # pretraining --init_from_hf, checked
    export_params(params, cfg, "out/")                 # config.json, model.safetensors, ...

A directory holds ``config.json``; ``model.safetensors``, a sharded
``model.safetensors.index.json`` or ``pytorch_model.bin``; and ``vocab.txt``, saved from
``BertForMaskedLM``, ``BertModel`` or ``BertForSequenceClassification``. Only
``pytorch_model.bin`` needs torch (the ``hf`` extra), imported when such a file is read.
Everything wrong with a directory is reported together in one ``HFImportError``.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from genemask_jax import model as model_lib
from genemask_jax import tokenizer
from genemask_jax.hf import mapping
from genemask_jax.hf.errors import HFExportError
from genemask_jax.hf.errors import HFImportError
from genemask_jax.hf.safetensors import read_safetensors
from genemask_jax.hf.safetensors import write_safetensors

PathLike = str | os.PathLike

SAFETENSORS_NAME = mapping.SAFETENSORS_NAME
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
TORCH_BIN_NAME = "pytorch_model.bin"
CONFIG_NAME = mapping.CONFIG_NAME
VOCAB_NAME = mapping.VOCAB_NAME


def _read_torch_bin(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top  (optional, heavy: .bin files only)
  except ImportError as e:
    raise HFImportError(
        f"{path}: reading pytorch_model.bin needs PyTorch; install the hf extra "
        "(pip install 'genemask-jax[hf]') or convert the checkpoint to model.safetensors"
    ) from e
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  (pickle and torch raise many types)
    # torch's message suggests weights_only=False, which would run arbitrary code: not here.
    raise HFImportError(
        f"{path}: not a plain tensor state dict that can be loaded safely (it holds other "
        f"Python objects, or is damaged: {type(e).__name__}); convert the model to "
        f"{SAFETENSORS_NAME} with the tool that wrote it") from None
  if not isinstance(state, Mapping):
    raise HFImportError(f"{path}: expected a state dict (name -> tensor), got "
                        f"{type(state).__name__}")
  out = {}
  for name, t in state.items():
    if not isinstance(t, torch.Tensor):
      raise HFImportError(f"{path}: entry {name!r} is a {type(t).__name__}, not a tensor")
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
      t = t.float()
    out[name] = t.numpy().copy()
  return out


def read_state_dict(hf_dir: PathLike) -> tuple[dict[str, np.ndarray], pathlib.Path]:
  """The weights of an HF directory as numpy arrays, and the file they came from.

  Prefers ``model.safetensors``, then a sharded ``model.safetensors.index.json``, then
  ``pytorch_model.bin`` (which needs torch).
  """
  hf_dir = pathlib.Path(hf_dir)
  if (hf_dir / SAFETENSORS_NAME).is_file():
    return read_safetensors(hf_dir / SAFETENSORS_NAME), hf_dir / SAFETENSORS_NAME
  if (hf_dir / SAFETENSORS_INDEX_NAME).is_file():
    index_path = hf_dir / SAFETENSORS_INDEX_NAME
    try:
      weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise HFImportError(f"{index_path}: expected JSON with a 'weight_map' ({e})") from e
    out = {}
    for shard in sorted(set(weight_map.values())):
      out.update(read_safetensors(hf_dir / shard))
    return out, index_path
  if (hf_dir / TORCH_BIN_NAME).is_file():
    return _read_torch_bin(hf_dir / TORCH_BIN_NAME), hf_dir / TORCH_BIN_NAME
  raise HFImportError(f"{hf_dir}: no {SAFETENSORS_NAME}, {SAFETENSORS_INDEX_NAME} or "
                      f"{TORCH_BIN_NAME}; is this a HuggingFace model directory?")


def read_hf_config(hf_dir: PathLike) -> dict[str, Any]:
  """``config.json`` of an HF directory as a dict."""
  path = pathlib.Path(hf_dir) / CONFIG_NAME
  if not path.is_file():
    raise HFImportError(f"{path}: missing; an HF model directory needs its config.json")
  try:
    cfg = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise HFImportError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(cfg, dict):
    raise HFImportError(f"{path}: expected a JSON object")
  return cfg


def load_hf_checkpoint(hf_dir: PathLike, *, k: int = 6, check_vocab: bool = True,
                       vocab_pad_multiple: int = 1) -> mapping.HFCheckpoint:
  """Reads an HF BERT directory into our parameter tree (see
  `mapping.checkpoint_from_state_dict` for what is accepted).

  Args:
    hf_dir: the directory.
    k: the k-mer size whose tokenizer the model must use (vocab size 4**k + 5).
    check_vocab: compare ``vocab.txt`` line by line with ``tokenizer.vocab(k)``.
    vocab_pad_multiple: pad vocabulary rows (zeros) as ``ModelConfig.vocab_pad_multiple``.

  Returns:
    An ``HFCheckpoint``; arrays are float32 numpy.

  Raises:
    HFImportError: listing at once every missing weight, unexpected weight, shape
      mismatch, vocabulary size mismatch and vocab.txt difference.
  """
  hf_dir = pathlib.Path(hf_dir)
  if not hf_dir.is_dir():
    raise HFImportError(f"{hf_dir}: not a directory")
  hf_config = read_hf_config(hf_dir)
  mapping.model_config_from_hf(hf_config, where=str(hf_dir / CONFIG_NAME))  # Config first.
  state, source = read_state_dict(hf_dir)
  vocab_problems = []
  if check_vocab:
    vocab_path = hf_dir / VOCAB_NAME
    if vocab_path.is_file():
      lines = vocab_path.read_text(encoding="utf-8").splitlines()
      vocab_problems = [f"vocab.txt: {d}" for d in
                        mapping.vocab_differences(lines, k, where=str(vocab_path))]
    else:
      vocab_problems = [f"vocab.txt: {vocab_path} is missing (pass check_vocab=False / "
                        "--nocheck_vocab to skip the vocabulary check)"]
  return mapping.checkpoint_from_state_dict(
      state, hf_config, k=k, vocab_problems=vocab_problems,
      vocab_pad_multiple=vocab_pad_multiple, where=str(hf_dir), source=source)


def load_hf_encoder(hf_dir: PathLike, *, k: int = 6,
                    check_vocab: bool = True) -> tuple[model_lib.ModelConfig, dict[str, Any]]:
  """(ModelConfig, ``BertForMaskedLM`` params) of an HF directory, for the few-shot binary.

  The encoder is ``params["bert"]``; arrays are float32 numpy.
  """
  ckpt = load_hf_checkpoint(hf_dir, k=k, check_vocab=check_vocab)
  return ckpt.config, mapping.mlm_params(ckpt)


def load_hf_for_init(hf_dir: PathLike, cfg: model_lib.ModelConfig, *, k: int | None = None,
                     check_vocab: bool = True) -> mapping.HFCheckpoint:
  """Reads an HF directory and checks it fits ``cfg``; `state.init_state_from_hf` reads it.

  The pretraining binary calls it during setup, before anything is written.

  Raises:
    HFImportError: a bad directory, or an HF model of another shape than ``cfg``.
  """
  if k is None:
    k = next((kk for kk in range(tokenizer.MIN_K, tokenizer.MAX_K + 1)
              if tokenizer.vocab_size(kk) == cfg.vocab_size), 6)
  ckpt = load_hf_checkpoint(hf_dir, k=k, check_vocab=check_vocab,
                            vocab_pad_multiple=cfg.vocab_pad_multiple)
  diff = mapping.config_differences(ckpt.config, cfg)
  if diff:
    details = ", ".join(f"{f}: HF {a!r} vs ours {b!r}" for f, (a, b) in diff.items())
    raise HFImportError(f"{hf_dir}: the HF model does not match the configured model "
                        f"({details}); choose the model size that matches the HF checkpoint")
  return ckpt


def export_params(params: Mapping[str, Any], cfg: model_lib.ModelConfig, output: PathLike, *,
                  k: int = 6, model_card: str | None = None) -> pathlib.Path:
  """Writes ``params`` as an HF directory: config.json, model.safetensors, vocab.txt,
  and ``model_card`` as README.md when given.

  ``params`` with a ``classifier`` give a ``BertForSequenceClassification`` directory,
  otherwise a ``BertForMaskedLM`` one (``params`` must then hold ``cls``).
  """
  if "classifier" not in params and "cls" not in params:
    raise HFExportError("params hold neither an MLM head ('cls') nor a 'classifier'")
  if cfg.vocab_size != tokenizer.vocab_size(k):
    raise HFExportError(f"ModelConfig.vocab_size={cfg.vocab_size} but the {k}-mer vocab.txt "
                        f"has {tokenizer.vocab_size(k)} tokens")
  output = pathlib.Path(output)
  output.mkdir(parents=True, exist_ok=True)
  state = mapping.params_to_state_dict(params, cfg)
  num_labels = (int(np.shape(params["classifier"]["kernel"])[1])
                if "classifier" in params else None)
  (output / CONFIG_NAME).write_text(
      json.dumps(mapping.hf_config_from_model_config(cfg, num_labels=num_labels), indent=2) + "\n")
  write_safetensors(output / SAFETENSORS_NAME, state)
  tokenizer.write_vocab(output / VOCAB_NAME, k)
  (output / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "BertTokenizer", "do_lower_case": False,
      "model_max_length": cfg.max_len}, indent=2) + "\n")
  if model_card is not None:
    (output / "README.md").write_text(model_card)
  return output
