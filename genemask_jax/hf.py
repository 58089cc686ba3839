r"""HuggingFace BERT interop: import DNABERT-style checkpoints, export ours for PyTorch users.

Two directions, one command each::

    python -m genemask_jax.hf import --hf_dir=DNA_bert_6 --output=ckpt/dnabert6
    python -m genemask_jax.hf export --checkpoint=workdir/run --output=hf/run \
        [--step=N] [--fewshot_results=results.md]

**Import** reads a local HF BERT directory (``config.json``; ``model.safetensors``, a
sharded ``model.safetensors.index.json`` or ``pytorch_model.bin``; ``vocab.txt``) saved from
``BertForMaskedLM``, ``BertModel`` or ``BertForSequenceClassification``, and returns our
``ModelConfig`` and parameter tree (see ``genemask_jax.model``'s docstring for the tensor
correspondence). Safetensors are parsed here by hand (8-byte little-endian header length,
JSON header, raw little-endian buffers), so DNABERT's weights load with the core install;
only ``pytorch_model.bin`` needs torch (the ``hf`` extra). Everything wrong with a
directory (missing weights, unknown weights, wrong shapes, a vocabulary that is not our
tokenizer's) is reported together in one ``HFImportError``.

The ``import`` command writes a checkpoint directory in the pretraining binary's layout
(``config.json`` with ``model_signature`` and ``model_config``, and
``checkpoints/0`` = orbax ``Composite(state=TrainState, data={})``), which the few-shot
binary and ``--init_from`` accept. ``init_state_from_hf`` (pretraining ``--init_from_hf``)
and ``load_hf_encoder`` (few-shot ``--init_from_hf``) read the HF directory directly.

**Export** restores a pretraining checkpoint (a workdir, its ``checkpoints`` folder or one
step's folder) and writes ``config.json`` (``BertConfig``), ``model.safetensors`` (the tied
decoder is left out, as ``save_pretrained`` does), DNABERT's ``vocab.txt`` and a short
``README.md`` model card, a directory that ``transformers.BertForMaskedLM.from_pretrained``
loads with no missing or unexpected keys.

No torch or transformers import happens in this module except for reading ``.bin`` files.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import pathlib
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from genemask_jax import errors
from genemask_jax import model as model_lib
from genemask_jax import tokenizer

PathLike = str | os.PathLike

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
TORCH_BIN_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"
VOCAB_NAME = "vocab.txt"

# ModelConfig fields that must agree for HF weights to drop into an existing model.
STRUCTURAL_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "mlp_dim",
                     "max_len", "type_vocab_size", "layer_norm_eps")


class HFImportError(errors.UserError):
  """An HF directory that cannot become genemask-jax parameters (all problems listed)."""


class HFExportError(errors.UserError):
  """A checkpoint that cannot be exported, or an output directory that is in the way."""


# ----------------------------------------------------------------------------- safetensors
_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
    "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
    "BF16": np.uint16,  # Widened to float32 below (numpy has no bfloat16).
}
_NP_TO_ST = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32",
             np.dtype(np.float16): "F16", np.dtype(np.int64): "I64",
             np.dtype(np.int32): "I32", np.dtype(np.int16): "I16", np.dtype(np.int8): "I8",
             np.dtype(np.uint8): "U8", np.dtype(np.bool_): "BOOL"}


def read_safetensors(path: PathLike) -> dict[str, np.ndarray]:
  """Reads a ``.safetensors`` file into numpy arrays, without torch or ``safetensors``.

  Format: an unsigned little-endian 64-bit header size n, n bytes of JSON
  ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``,
  then the raw little-endian buffers (offsets relative to the end of the header).

  Returns:
    name -> array with the stored shape; BF16 tensors come back as float32, every other
    dtype as stored.

  Raises:
    HFImportError: a truncated file, a bad header or an unsupported dtype (naming the file
      and the tensor).
  """
  path = pathlib.Path(path)
  size = path.stat().st_size
  if size < 8:
    raise HFImportError(f"{path}: {size} bytes; not a safetensors file")
  data = np.memmap(path, dtype=np.uint8, mode="r")  # Only the copies below are resident.
  (n,) = struct.unpack("<Q", data[:8].tobytes())
  if n > size - 8:
    raise HFImportError(f"{path}: header size {n} exceeds the file ({size} bytes); "
                        "not a safetensors file or truncated")
  try:
    header = json.loads(data[8:8 + n].tobytes())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise HFImportError(f"{path}: safetensors header is not JSON ({e})") from e
  body = data[8 + n:]
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    dtype = _ST_DTYPES.get(info.get("dtype"))
    if dtype is None:
      raise HFImportError(f"{path}: tensor {name!r} has dtype {info.get('dtype')!r}; "
                          f"expected one of {sorted(_ST_DTYPES)}")
    begin, end = info["data_offsets"]
    shape = tuple(info["shape"])
    count = int(np.prod(shape, dtype=np.int64))
    if end > len(body) or end - begin != count * np.dtype(dtype).itemsize:
      raise HFImportError(f"{path}: tensor {name!r} ({info['dtype']} {list(shape)}) has "
                          f"data_offsets {[begin, end]} that do not fit the file")
    arr = body[begin:end].view(np.dtype(dtype).newbyteorder("<"))
    if info["dtype"] == "BF16":
      arr = (arr.astype(np.uint32) << 16).view(np.float32)
    out[name] = np.array(arr, dtype=arr.dtype.newbyteorder("=")).reshape(shape)
  return out


def write_safetensors(path: PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
  """Writes numpy arrays as a ``.safetensors`` file (``{"format": "pt"}`` metadata).

  Tensors are laid out in name order; the header is space-padded to a multiple of 8 bytes
  as the reference writer does.
  """
  header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
  buffers, offset = [], 0
  for name in sorted(tensors):
    arr = np.ascontiguousarray(tensors[name])
    if arr.dtype not in _NP_TO_ST:
      raise ValueError(f"tensor {name!r}: dtype {arr.dtype} cannot be written to safetensors")
    raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    header[name] = {"dtype": _NP_TO_ST[arr.dtype], "shape": list(arr.shape),
                    "data_offsets": [offset, offset + len(raw)]}
    buffers.append(raw)
    offset += len(raw)
  head = json.dumps(header, separators=(",", ":")).encode()
  head += b" " * (-len(head) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(head)))
    f.write(head)
    for raw in buffers:
      f.write(raw)


def _read_torch_bin(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
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


# ----------------------------------------------------------------------------- configs
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


def model_config_from_hf(hf_config: Mapping[str, Any], *, where: str = CONFIG_NAME,
                         **overrides: Any) -> model_lib.ModelConfig:
  """Our ``ModelConfig`` for an HF ``BertConfig`` dict (``overrides`` win).

  Raises:
    HFImportError: a missing key or a feature our model does not implement (another
      activation, relative positions, a non-BERT model type), all listed at once.
  """
  problems = []
  model_type = hf_config.get("model_type", "bert")
  if model_type != "bert":
    problems.append(f"model_type={model_type!r}; expected 'bert'")
  act = hf_config.get("hidden_act", "gelu")
  if act != "gelu":
    problems.append(f"hidden_act={act!r}; this model implements exact 'gelu' only")
  pos = hf_config.get("position_embedding_type", "absolute")
  if pos != "absolute":
    problems.append(f"position_embedding_type={pos!r}; expected 'absolute'")
  if hf_config.get("is_decoder", False) or hf_config.get("add_cross_attention", False):
    problems.append("is_decoder/add_cross_attention set; expected an encoder-only BERT")
  pad = hf_config.get("pad_token_id", model_lib.PAD_ID)
  if pad not in (None, model_lib.PAD_ID):
    problems.append(f"pad_token_id={pad}; the DNABERT tokenizer's [PAD] is {model_lib.PAD_ID}")
  keys = {"vocab_size": "vocab_size", "hidden_size": "hidden_size",
          "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
          "mlp_dim": "intermediate_size", "max_len": "max_position_embeddings"}
  missing = [hf for hf in keys.values() if hf not in hf_config]
  if missing:
    problems.append(f"missing key(s) {missing}")
  if problems:
    raise HFImportError(f"{where}: not a BERT this project can load:\n  - "
                        + "\n  - ".join(problems))
  bad = [f"{hf}={hf_config[hf]!r}" for hf in keys.values()
         if isinstance(hf_config[hf], bool) or not isinstance(hf_config[hf], int)]
  if bad:
    raise HFImportError(f"{where}: expected positive integer sizes, got {', '.join(bad)}")
  fields = {ours: int(hf_config[hf]) for ours, hf in keys.items()}
  fields["type_vocab_size"] = int(hf_config.get("type_vocab_size", 2))
  fields["layer_norm_eps"] = float(hf_config.get("layer_norm_eps", 1e-12))
  fields["initializer_range"] = float(hf_config.get("initializer_range", 0.02))
  fields["dropout_rate"] = float(hf_config.get("hidden_dropout_prob", 0.1))
  fields["attention_dropout_rate"] = float(hf_config.get("attention_probs_dropout_prob", 0.1))
  fields.update(overrides)
  try:
    return model_lib.ModelConfig(**fields)
  except ValueError as e:
    raise HFImportError(f"{where}: {e}") from e


def hf_config_from_model_config(cfg: model_lib.ModelConfig, *,
                                num_labels: int | None = None) -> dict[str, Any]:
  """A ``BertConfig`` dict for ``cfg``: ``BertForMaskedLM``, or with ``num_labels``
  ``BertForSequenceClassification``.

  ``type_vocab_size`` 0 (no token types) is written as 1 with a zero row, which HF adds
  to every position: the same function.
  """
  out = {
      "architectures": ["BertForMaskedLM" if num_labels is None
                        else "BertForSequenceClassification"],
      "model_type": "bert",
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "intermediate_size": cfg.mlp_dim,
      "hidden_act": "gelu",
      "hidden_dropout_prob": cfg.dropout_rate,
      "attention_probs_dropout_prob": cfg.attention_dropout_rate,
      "max_position_embeddings": cfg.max_len,
      "type_vocab_size": max(cfg.type_vocab_size, 1),
      "initializer_range": cfg.initializer_range,
      "layer_norm_eps": cfg.layer_norm_eps,
      "pad_token_id": cfg.pad_id,
      "position_embedding_type": "absolute",
      "classifier_dropout": None,
      "tie_word_embeddings": True,
      "use_cache": True,
      "torch_dtype": "float32",
  }
  if num_labels is not None:
    out["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
    out["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
  return out


# ----------------------------------------------------------------------------- vocabulary
def vocab_differences(vocab_path: PathLike, k: int = 6, *, max_lines: int = 5) -> list[str]:
  """How ``vocab.txt`` differs from ``tokenizer.vocab(k)`` (empty list if identical).

  Each entry is a human-readable line: the token counts if they differ, and the first
  ``max_lines`` differing lines as ``line N: 'file token' vs 'ours'``.
  """
  path = pathlib.Path(vocab_path)
  theirs = path.read_text(encoding="utf-8").splitlines()
  while theirs and not theirs[-1].strip():
    theirs.pop()
  theirs = [t.strip() for t in theirs]
  ours = tokenizer.vocab(k)
  out = []
  if len(theirs) != len(ours):
    out.append(f"{path}: {len(theirs)} tokens; the {k}-mer tokenizer has {len(ours)}")
  diffs = [(i, a, b) for i, (a, b) in enumerate(zip(theirs, ours)) if a != b]
  for i, a, b in diffs[:max_lines]:
    out.append(f"{path} line {i + 1} (id {i}): {a!r}, tokenizer has {b!r}")
  if len(diffs) > max_lines:
    out.append(f"{path}: {len(diffs) - max_lines} more differing lines "
               f"({len(diffs)} of the first {min(len(theirs), len(ours))})")
  return out


# ----------------------------------------------------------------------------- weight table
@dataclasses.dataclass(frozen=True)
class _Weight:
  """One HF tensor <-> one of our leaves. ``hf`` has no ``bert.`` prefix for encoder parts."""
  hf: str
  path: tuple[str, ...]
  hf_shape: tuple[int, ...]
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]


def _ident(x):
  return x


def _transpose(x):
  return x.T


def _dense(hf: str, path: tuple[str, ...], n_out: int, n_in: int) -> list[_Weight]:
  return [_Weight(hf + ".weight", path + ("kernel",), (n_out, n_in), _transpose, _transpose),
          _Weight(hf + ".bias", path + ("bias",), (n_out,), _ident, _ident)]


def _layer_norm(hf: str, path: tuple[str, ...], e: int) -> list[_Weight]:
  return [_Weight(hf + ".weight", path + ("scale",), (e,), _ident, _ident),
          _Weight(hf + ".bias", path + ("bias",), (e,), _ident, _ident)]


def _pad_rows(v_padded: int) -> Callable[[np.ndarray], np.ndarray]:
  def pad(x):
    if x.shape[0] == v_padded:
      return x
    return np.concatenate([x, np.zeros((v_padded - x.shape[0],) + x.shape[1:], x.dtype)])
  return pad


def _weight_table(cfg: model_lib.ModelConfig, *, pooler: bool, mlm: bool,
                  num_labels: int | None) -> list[_Weight]:
  """Every tensor of the requested parts, in HF naming, with its conversion."""
  e, n, d, m = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.mlp_dim
  v, vp = cfg.vocab_size, cfg.padded_vocab_size
  emb = ("bert", "embeddings")

  def unpad(x):
    return x[:v]

  table = [
      _Weight("embeddings.word_embeddings.weight", emb + ("word_embeddings", "embedding"),
              (v, e), _pad_rows(vp), unpad),
      _Weight("embeddings.position_embeddings.weight",
              emb + ("position_embeddings", "embedding"), (cfg.max_len, e), _ident, _ident),
  ]
  if cfg.type_vocab_size:
    table.append(_Weight("embeddings.token_type_embeddings.weight",
                         emb + ("token_type_embeddings", "embedding"),
                         (cfg.type_vocab_size, e), _ident, _ident))
  table += _layer_norm("embeddings.LayerNorm", emb + ("LayerNorm",), e)
  for i in range(cfg.num_layers):
    hf, ours = f"encoder.layer.{i}", ("bert", "encoder", f"layer_{i}")
    for name in ("query", "key", "value"):
      p = ours + ("attention", "self", name)
      table += [
          _Weight(f"{hf}.attention.self.{name}.weight", p + ("kernel",), (e, e),
                  lambda w: w.T.reshape(e, n, d), lambda k: k.reshape(e, e).T),
          _Weight(f"{hf}.attention.self.{name}.bias", p + ("bias",), (e,),
                  lambda b: b.reshape(n, d), lambda b: b.reshape(e)),
      ]
    p = ours + ("attention", "output")
    table += [
        _Weight(f"{hf}.attention.output.dense.weight", p + ("dense", "kernel"), (e, e),
                lambda w: w.T.reshape(n, d, e), lambda k: k.reshape(e, e).T),
        _Weight(f"{hf}.attention.output.dense.bias", p + ("dense", "bias"), (e,),
                _ident, _ident),
    ]
    table += _layer_norm(f"{hf}.attention.output.LayerNorm", p + ("LayerNorm",), e)
    table += _dense(f"{hf}.intermediate.dense", ours + ("intermediate_dense",), m, e)
    table += _dense(f"{hf}.output.dense", ours + ("output_dense",), e, m)
    table += _layer_norm(f"{hf}.output.LayerNorm", ours + ("output_LayerNorm",), e)
  if pooler:
    table += _dense("pooler.dense", ("bert", "pooler", "dense"), e, e)
  if mlm:
    table += _dense("cls.predictions.transform.dense", ("cls", "transform_dense"), e, e)
    table += _layer_norm("cls.predictions.transform.LayerNorm",
                         ("cls", "transform_LayerNorm"), e)
    table.append(_Weight("cls.predictions.bias", ("cls", "bias"), (v,), _pad_rows(vp), unpad))
  if num_labels is not None:
    table += _dense("classifier", ("classifier",), num_labels, e)
  return table


def _hf_key(name: str) -> str:
  """Full HF name (``bert.`` prefix on encoder parts) of a table name."""
  return name if name.startswith(("cls.", "classifier.")) else "bert." + name


def _normalize(name: str) -> str:
  """Table name of a state-dict key: no ``bert.`` prefix; old ``gamma``/``beta`` renamed."""
  if name.startswith("bert."):
    name = name[len("bert."):]
  if ".LayerNorm." in name or name.startswith("LayerNorm."):
    name = name.replace(".gamma", ".weight").replace(".beta", ".bias")
  return name


# Keys that HF checkpoints may carry and that hold nothing we need.
def _ignorable(name: str) -> bool:
  return (name.endswith("embeddings.position_ids")  # a buffer, not a weight
          or name == "cls.predictions.decoder.bias"  # tied to cls.predictions.bias
          or name.startswith("cls.seq_relationship."))  # BertForPreTraining's NSP head


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...]) -> Any:
  for p in path:
    tree = tree[p]
  return tree


# ----------------------------------------------------------------------------- import
@dataclasses.dataclass
class HFCheckpoint:
  """Parameters read from an HF directory.

  Attributes:
    config: our ``ModelConfig`` (``vocab_pad_multiple`` as requested).
    params: nested dict of float32 numpy arrays: ``bert`` (with ``pooler`` when the
      checkpoint has one), ``cls`` (MLM head, when present), ``classifier`` (when present).
    num_labels: classifier outputs, or None without a classifier.
    architectures: ``config.json``'s ``architectures`` (empty if absent).
    source: the weights file read.
  """
  config: model_lib.ModelConfig
  params: dict[str, Any]
  num_labels: int | None
  architectures: list[str]
  source: pathlib.Path

  @property
  def has_mlm_head(self) -> bool:
    return "cls" in self.params

  @property
  def has_pooler(self) -> bool:
    return "pooler" in self.params["bert"]


def load_hf_checkpoint(hf_dir: PathLike, *, k: int = 6, check_vocab: bool = True,
                       vocab_pad_multiple: int = 1) -> HFCheckpoint:
  """Reads an HF BERT directory into our parameter tree.

  Accepts checkpoints of ``BertForMaskedLM``, ``BertModel`` (no ``bert.`` prefix) and
  ``BertForSequenceClassification``; the tied decoder weight may be present (it must then
  equal the word embeddings) or absent; ``position_ids`` buffers and an NSP head are
  ignored. The pooler, MLM head and classifier are each taken whole or not at all.

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
  cfg = model_config_from_hf(hf_config, where=str(hf_dir / CONFIG_NAME),
                             vocab_pad_multiple=vocab_pad_multiple)
  state, source = read_state_dict(hf_dir)
  problems: list[str] = []

  want_vocab = tokenizer.vocab_size(k)
  if cfg.vocab_size != want_vocab:
    problems.append(f"vocabulary size: config.json vocab_size={cfg.vocab_size}, the {k}-mer "
                    f"tokenizer has {want_vocab} tokens")
  if check_vocab:
    if (hf_dir / VOCAB_NAME).is_file():
      problems += [f"vocab.txt: {d}" for d in vocab_differences(hf_dir / VOCAB_NAME, k)]
    else:
      problems.append(f"vocab.txt: {hf_dir / VOCAB_NAME} is missing (pass check_vocab=False "
                      "/ --nocheck_vocab to skip the vocabulary check)")

  names: dict[str, str] = {}  # normalized -> original key
  unexpected: list[str] = []
  for key in state:
    norm = _normalize(key)
    if norm in names:
      unexpected.append(f"{key} (duplicate of {names[norm]})")
    else:
      names[norm] = key

  classifier = names.get("classifier.weight")
  num_labels = int(state[classifier].shape[0]) if classifier is not None else None
  parts = {"pooler": any(n.startswith("pooler.") for n in names),
           "mlm": any(n.startswith("cls.predictions.") and not _ignorable(n)
                      and n != "cls.predictions.decoder.weight" for n in names)}
  table = _weight_table(cfg, pooler=parts["pooler"], mlm=parts["mlm"], num_labels=num_labels)
  known = {w.hf for w in table}

  if num_labels is not None:
    id2label = hf_config.get("id2label")
    if isinstance(id2label, Mapping) and len(id2label) != num_labels:
      problems.append(f"classifier: classifier.weight has {num_labels} rows but config.json's "
                      f"id2label has {len(id2label)} labels")

  missing = [_hf_key(w.hf) for w in table if w.hf not in names]
  for norm, key in names.items():
    if norm in known or _ignorable(norm):
      continue
    if norm == "cls.predictions.decoder.weight" and parts["mlm"]:
      continue  # Checked against the word embeddings below.
    unexpected.append(key)

  params: dict[str, Any] = {}
  shape_errors = []
  for w in table:
    key = names.get(w.hf)
    if key is None:
      continue
    arr = state[key]
    if tuple(arr.shape) != w.hf_shape:
      what = f"{key}: shape {list(arr.shape)}, expected {list(w.hf_shape)}"
      if w.hf == "embeddings.word_embeddings.weight":
        what += f" (vocabulary size: the {k}-mer tokenizer has {want_vocab} tokens)"
      shape_errors.append(what)
      continue
    _set(params, w.path, np.asarray(w.to_ours(arr.astype(np.float32))))

  decoder = names.get("cls.predictions.decoder.weight")
  word = names.get("embeddings.word_embeddings.weight")
  if decoder is not None and word is not None and parts["mlm"]:
    a, b = state[decoder], state[word]
    if a.shape != b.shape or not np.array_equal(a, b):
      problems.append(f"{decoder}: differs from {word}; this model ties the MLM decoder to "
                      "the word embeddings (tie_word_embeddings=True)")

  if missing:
    problems.append(f"missing weights ({len(missing)}): {', '.join(missing)}")
  if unexpected:
    problems.append(f"unexpected weights ({len(unexpected)}): {', '.join(sorted(unexpected))}")
  problems += [f"shape mismatch: {s}" for s in shape_errors]
  if problems:
    raise HFImportError(f"{hf_dir} ({source.name}): cannot import as a genemask-jax BERT:\n  - "
                        + "\n  - ".join(problems))
  archs = hf_config.get("architectures") or []
  return HFCheckpoint(config=cfg, params=params, num_labels=num_labels,
                      architectures=list(archs), source=source)


def _init_params(module: Any, cfg: model_lib.ModelConfig, seed: int) -> dict[str, Any]:
  """Fresh float32 numpy params for ``module``, distributed as its own initializers
  (kernels/embeddings normal(``initializer_range``), biases 0, LayerNorm scales 1).

  Drawn in numpy from ``jax.eval_shape`` shapes: compiling ``init`` takes seconds on CPU.
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  rng = np.random.default_rng(seed)

  def fill(path, x):
    name = getattr(path[-1], "key", str(path[-1]))
    if name in ("kernel", "embedding"):
      return (rng.standard_normal(x.shape) * cfg.initializer_range).astype(np.float32)
    return np.ones(x.shape, np.float32) if name == "scale" else np.zeros(x.shape, np.float32)

  return jax.tree_util.tree_map_with_path(fill, nn.meta.unbox(shapes["params"]))


def mlm_params(ckpt: HFCheckpoint, *, seed: int = 0) -> dict[str, Any]:
  """Parameters for our ``BertForMaskedLM`` (``bert`` without pooler, and ``cls``).

  A checkpoint without the MLM head (``BertModel``, ``BertForSequenceClassification``)
  gets a freshly initialised head (from ``seed``), as HF does when loading such a
  checkpoint into ``BertForMaskedLM``.
  """
  bert = {k: v for k, v in ckpt.params["bert"].items() if k != "pooler"}
  if ckpt.has_mlm_head:
    head = ckpt.params["cls"]
  else:
    head = _init_params(model_lib.BertForMaskedLM(ckpt.config), ckpt.config, seed)["cls"]
  return {"bert": bert, "cls": head}


def classification_params(ckpt: HFCheckpoint, num_labels: int | None = None, *,
                          seed: int = 0) -> dict[str, Any]:
  """Parameters for our ``BertForSequenceClassification(config, num_labels)``.

  The pooler and classifier come from the checkpoint when it has them (the classifier only
  if its size is ``num_labels``); missing parts are freshly initialised from ``seed``.

  Args:
    ckpt: the imported checkpoint.
    num_labels: classes; None means the checkpoint's classifier size (required then).
  """
  if num_labels is None:
    if ckpt.num_labels is None:
      raise ValueError(f"{ckpt.source}: no classifier in the checkpoint; pass num_labels")
    num_labels = ckpt.num_labels
  fresh = None
  if not ckpt.has_pooler or ckpt.num_labels != num_labels:
    fresh = _init_params(model_lib.BertForSequenceClassification(ckpt.config, num_labels),
                         ckpt.config, seed)
  bert = {k: v for k, v in ckpt.params["bert"].items()}
  if not ckpt.has_pooler:
    bert["pooler"] = fresh["bert"]["pooler"]
  head = ckpt.params["classifier"] if ckpt.num_labels == num_labels else fresh["classifier"]
  return {"bert": bert, "classifier": head}


def load_hf_encoder(hf_dir: PathLike, *, k: int = 6,
                    check_vocab: bool = True) -> tuple[model_lib.ModelConfig, dict[str, Any]]:
  """(ModelConfig, ``BertForMaskedLM`` params) of an HF directory, for the few-shot binary.

  The encoder is ``params["bert"]``; arrays are float32 numpy.
  """
  ckpt = load_hf_checkpoint(hf_dir, k=k, check_vocab=check_vocab)
  return ckpt.config, mlm_params(ckpt)


def config_differences(a: model_lib.ModelConfig, b: model_lib.ModelConfig,
                       fields: Sequence[str] = STRUCTURAL_FIELDS) -> dict[str, tuple[Any, Any]]:
  """``{field: (a's value, b's value)}`` for the ``fields`` where the configs differ."""
  return {f: (getattr(a, f), getattr(b, f)) for f in fields
          if getattr(a, f) != getattr(b, f)}


def _put_like(value: np.ndarray, like: jax.Array) -> jax.Array:
  """``value`` as an array with ``like``'s dtype and sharding (multi-process safe)."""
  value = np.asarray(value, dtype=like.dtype)
  if value.shape != like.shape:
    raise ValueError(f"shape {value.shape} does not match the model's {like.shape}")
  sharding = getattr(like, "sharding", None)
  if sharding is None:
    return jnp.asarray(value)
  # Equivalent to jax.device_put(value, sharding), but also valid when the sharding spans
  # devices of other processes: each process fills only its own shards.
  return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])


def replace_params(old: Any, new: Mapping[str, Any]) -> Any:
  """``new`` laid out as ``old``: same tree structure, each leaf with old's dtype/sharding.

  Raises:
    ValueError: the trees differ (names the extra/missing paths) or a shape differs.
  """
  old_paths = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(old)}
  new_paths = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(new)}
  if set(old_paths) != set(new_paths):
    raise ValueError("parameter trees differ: missing "
                     f"{sorted(set(old_paths) - set(new_paths))}, extra "
                     f"{sorted(set(new_paths) - set(old_paths))}")

  def put(path, like):
    name = jax.tree_util.keystr(path)
    try:
      return _put_like(new_paths[name], like)
    except ValueError as e:
      raise ValueError(f"parameter {name}: {e}") from e

  return jax.tree_util.tree_map_with_path(put, old)


def init_state_from_hf(state: Any, hf_dir: PathLike, cfg: model_lib.ModelConfig, *,
                       k: int | None = None, check_vocab: bool = True) -> Any:
  """``state`` (a ``TrainState`` of ``BertForMaskedLM``) with params from an HF directory.

  Each new leaf keeps the dtype and sharding of the leaf it replaces; step and optimizer
  state are unchanged. Vocabulary rows are padded to ``cfg.padded_vocab_size``.

  Args:
    state: anything with ``params`` and ``.replace(params=...)`` (``TrainState``).
    hf_dir: the HF directory.
    cfg: the model config the state was built for.
    k: k-mer size of the tokenizer; None infers it from ``cfg.vocab_size``.
    check_vocab: compare ``vocab.txt`` with the tokenizer.

  Raises:
    HFImportError: the HF model's shape differs from ``cfg`` (differing fields listed), or
      a bad directory.
  """
  ckpt = load_hf_for_init(hf_dir, cfg, k=k, check_vocab=check_vocab)
  return state.replace(params=replace_params(state.params, mlm_params(ckpt)))


def load_hf_for_init(hf_dir: PathLike, cfg: model_lib.ModelConfig, *, k: int | None = None,
                     check_vocab: bool = True) -> HFCheckpoint:
  """Reads an HF directory and checks it fits ``cfg``; the first half of `init_state_from_hf`.

  The pretraining binary calls it during setup, before anything is written.

  Raises:
    HFImportError: a bad directory, or an HF model of another shape than ``cfg``.
  """
  if k is None:
    k = next((kk for kk in range(tokenizer.MIN_K, tokenizer.MAX_K + 1)
              if tokenizer.vocab_size(kk) == cfg.vocab_size), 6)
  ckpt = load_hf_checkpoint(hf_dir, k=k, check_vocab=check_vocab,
                            vocab_pad_multiple=cfg.vocab_pad_multiple)
  diff = config_differences(ckpt.config, cfg)
  if diff:
    details = ", ".join(f"{f}: HF {a!r} vs ours {b!r}" for f, (a, b) in diff.items())
    raise HFImportError(f"{hf_dir}: the HF model does not match the configured model "
                        f"({details}); choose the model size that matches the HF checkpoint")
  return ckpt


# ----------------------------------------------------------------------------- export
def params_to_state_dict(params: Mapping[str, Any],
                         cfg: model_lib.ModelConfig) -> dict[str, np.ndarray]:
  """HF state dict (float32 numpy, full ``bert.`` names) of our params.

  Whatever parts ``params`` holds are converted: encoder (+ pooler), MLM head,
  classifier. The tied decoder weight is not written (HF ties it on load).
  """
  params = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), dict(params))
  has_pooler = "pooler" in params["bert"]
  num_labels = (int(np.shape(params["classifier"]["kernel"])[1])
                if "classifier" in params else None)
  table = _weight_table(cfg, pooler=has_pooler, mlm="cls" in params, num_labels=num_labels)
  out = {}
  for w in table:
    out[_hf_key(w.hf)] = np.ascontiguousarray(w.to_hf(_get(params, w.path)))
  if not cfg.type_vocab_size:
    out["bert.embeddings.token_type_embeddings.weight"] = np.zeros((1, cfg.hidden_size),
                                                                   np.float32)
  return out


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
  state = params_to_state_dict(params, cfg)
  num_labels = (int(np.shape(params["classifier"]["kernel"])[1])
                if "classifier" in params else None)
  (output / CONFIG_NAME).write_text(
      json.dumps(hf_config_from_model_config(cfg, num_labels=num_labels), indent=2) + "\n")
  write_safetensors(output / SAFETENSORS_NAME, state)
  tokenizer.write_vocab(output / VOCAB_NAME, k)
  (output / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "BertTokenizer", "do_lower_case": False,
      "model_max_length": cfg.max_len}, indent=2) + "\n")
  if model_card is not None:
    (output / "README.md").write_text(model_card)
  return output


# ----------------------------------------------------------------------------- checkpoints
def _resolve_step(checkpoint: PathLike, step: int | None) -> tuple[pathlib.Path, pathlib.Path]:
  """(workdir, step dir): ``checkpoints.resolve_checkpoint``'s paths, or ``step`` of them."""
  from genemask_jax import checkpoints  # pylint: disable=g-import-not-at-top
  try:
    workdir, step_dir = checkpoints.resolve_checkpoint(checkpoint)
  except checkpoints.CheckpointError as e:
    raise HFExportError(str(e)) from e
  if step is None or int(step_dir.name) == step:
    return workdir, step_dir
  if pathlib.Path(checkpoint).name.isdigit():
    raise HFExportError(f"{checkpoint}: is step {step_dir.name}, but step={step} was asked for")
  wanted = step_dir.parent / str(step)
  if not (wanted / "state").is_dir():
    steps = sorted(int(p.name) for p in step_dir.parent.iterdir()
                   if p.name.isdigit() and (p / "state").is_dir())
    raise HFExportError(f"{step_dir.parent}: no step {step}; saved steps are {steps}")
  return workdir, wanted


def model_config_from_workdir(workdir: PathLike) -> tuple[model_lib.ModelConfig,
                                                          dict[str, Any]]:
  """(ModelConfig, parsed config.json) of a workdir.

  The full ``model_config`` dict (written by the import command) wins; otherwise the
  pretraining binary's ``model_signature`` is read by ``checkpoints.read_model_config``.
  """
  from genemask_jax import checkpoints  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(workdir) / CONFIG_NAME
  try:
    run_config = json.loads(path.read_text())
  except FileNotFoundError as e:
    raise HFExportError(f"{path}: missing; the pretraining binary records the model's "
                        "shape there") from e
  except json.JSONDecodeError as e:
    raise HFExportError(f"{path}: not valid JSON ({e})") from e
  if isinstance(run_config.get("model_config"), Mapping):
    fields = {f.name for f in dataclasses.fields(model_lib.ModelConfig)}
    try:
      return model_lib.ModelConfig(**{k: v for k, v in run_config["model_config"].items()
                                      if k in fields}), run_config
    except (TypeError, ValueError) as e:
      raise HFExportError(f"{path}: model_config does not make a model ({e})") from e
  try:
    cfg, _ = checkpoints.read_model_config(workdir)
  except checkpoints.CheckpointError as e:
    raise HFExportError(str(e)) from e
  return cfg, run_config


def restore_params(checkpoint: PathLike, step: int | None = None
                   ) -> tuple[model_lib.ModelConfig, dict[str, Any], dict[str, Any]]:
  """Restores the MLM params of a pretraining (or imported) checkpoint onto the host.

  Args:
    checkpoint: WORKDIR, WORKDIR/checkpoints[/STEP] or WORKDIR/STEP (as the few-shot
      binary's ``--init_from``).
    step: the step; None = the latest (or the one the path names).

  Returns:
    (ModelConfig, BertForMaskedLM params as float32 numpy, info) where info holds
    ``step``, ``workdir`` and ``run_config`` (the parsed ``config.json``).

  Raises:
    HFExportError: no checkpoint there, or params that do not fit the recorded config.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  workdir, step_dir = _resolve_step(checkpoint, step)
  cfg, run_config = model_config_from_workdir(workdir)
  state_dir = (step_dir / "state").absolute()
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    meta = checkpointer.metadata(state_dir)
  except Exception as e:  # pylint: disable=broad-except  (orbax raises many types)
    raise HFExportError(f"{state_dir}: unreadable orbax checkpoint "
                        f"({type(e).__name__}: {_first_line(e)})") from None
  tree = getattr(meta, "item_metadata", meta)
  tree = getattr(tree, "tree", tree)
  if tree is None:
    missing = "" if (state_dir / "_METADATA").exists() else " (_METADATA missing)"
    raise HFExportError(f"{state_dir}: damaged checkpoint, its tree metadata cannot be "
                        f"read{missing}; export another step with --step=N")
  if not isinstance(tree, Mapping) or "params" not in tree:
    raise HFExportError(f"{state_dir}: no 'params' in the saved tree; expected "
                        "TrainState(step, params, opt_state)")
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  want = nn.meta.unbox(jax.eval_shape(model_lib.BertForMaskedLM(cfg).init, jax.random.key(0),
                                      jnp.zeros((1, 4), jnp.int32))["params"])
  want_shapes = {jax.tree_util.keystr(p): tuple(x.shape)
                 for p, x in jax.tree_util.tree_leaves_with_path(want)}
  have_shapes = {jax.tree_util.keystr(p): tuple(x.shape)
                 for p, x in jax.tree_util.tree_leaves_with_path(tree["params"])}
  if want_shapes != have_shapes:
    bad = sorted(k for k in set(want_shapes) | set(have_shapes)
                 if want_shapes.get(k) != have_shapes.get(k))
    raise HFExportError(
        f"{state_dir}: saved params differ from the BertForMaskedLM that "
        f"{workdir / CONFIG_NAME} describes ({len(bad)} leaves, e.g. "
        + ", ".join(f"{k}: saved {have_shapes.get(k)}, config {want_shapes.get(k)}"
                    for k in bad[:3]) + ")")
  single = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = {"params": jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=single), want)}
  try:
    restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
  except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many types)
    raise HFExportError(f"{state_dir}: damaged checkpoint, its arrays cannot be read "
                        f"({type(e).__name__}: {_first_line(e)}); export another step with "
                        "--step=N") from None
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), restored["params"])
  return cfg, params, {"step": int(step_dir.name), "workdir": workdir,
                       "run_config": run_config}


def _first_line(e: BaseException) -> str:
  """An exception's message cut to one line (tensorstore's run to dozens)."""
  return str(e).strip().split("\n")[0].split(" See full TensorStore details")[0][:200]


def _results_markdown(path: pathlib.Path) -> str:
  text = path.read_text(encoding="utf-8")
  if path.suffix.lower() != ".csv":
    return text.strip()
  rows = list(csv.reader(io.StringIO(text)))
  rows = [r for r in rows if r]
  if not rows:
    return "(empty results file)"
  head, body = rows[0], rows[1:]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines += ["| " + " | ".join(r) + " |" for r in body]
  return "\n".join(lines)


def model_card(cfg: model_lib.ModelConfig, run_config: Mapping[str, Any], step: int, *,
               fewshot_results: PathLike | None = None, k: int = 6) -> str:
  """A short README.md for an exported model: masking, steps, data, shape, results."""
  conf = run_config.get("config", {}) or {}
  masking = conf.get("masking", {}) or {}
  data = conf.get("data", {}) or {}
  train = conf.get("train", {}) or {}
  source = run_config.get("source", {}) or {}
  strategy = masking.get("strategy") or ("not recorded (imported weights)"
                                          if source.get("hf_dir") else "not recorded")
  strategy_text = {
      "genemask": "GeneMask (NPMI-guided span masking: high-PMI k-mer spans are masked "
                  "preferentially)",
      "dnabert": "DNABERT span masking (contiguous k-mer spans)",
      "bert": "BERT random token masking",
  }.get(strategy, strategy)
  if source.get("hf_dir"):
    origin = f"Imported from the HuggingFace directory `{source['hf_dir']}`."
  else:
    fasta = data.get("fasta") or "the human-genome sample embedded in genemask-jax"
    origin = (f"Pretrained with genemask-jax on {fasta} (k={data.get('k', k)}, sequences of "
              f"up to {data.get('max_len', cfg.max_len)} tokens).")
  n_steps = train.get("num_steps")
  steps = f"{step}" + (f" of {n_steps} planned" if n_steps else "")
  lines = [
      "---", "library_name: transformers", "tags:", "- dna", "- genomics", "- bert",
      "- genemask", "---", "",
      f"# {run_config.get('model_signature', {}).get('size', 'custom')} DNA BERT "
      f"({k}-mer, genemask-jax)", "",
      origin, "",
      f"- Masking strategy: {strategy_text}"
      + (f", masking rate p={masking['p']}" if masking.get("p") is not None else "") + ".",
      f"- Optimizer steps: {steps}"
      + (f", global batch {train['batch_size']}" if train.get("batch_size") else "") + ".",
      f"- Shape: {cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_heads} heads, "
      f"MLP {cfg.mlp_dim}, {cfg.max_len} positions, vocabulary {cfg.vocab_size} "
      f"(DNABERT's {k}-mer vocab.txt).", "",
      "## Use", "", "```python",
      "from transformers import BertForMaskedLM, BertTokenizer",
      "model = BertForMaskedLM.from_pretrained(PATH)",
      "tokenizer = BertTokenizer.from_pretrained(PATH)  # input: space-separated "
      f"{k}-mers", "```", "",
  ]
  if fewshot_results is not None:
    lines += ["## Few-shot results", "", _results_markdown(pathlib.Path(fewshot_results)), ""]
  return "\n".join(lines)


def export_checkpoint(checkpoint: PathLike, output: PathLike, *, step: int | None = None,
                      fewshot_results: PathLike | None = None,
                      overwrite: bool = False) -> pathlib.Path:
  """Exports a pretraining checkpoint as a ``BertForMaskedLM`` HF directory (with card)."""
  output = pathlib.Path(output)
  if output.exists() and any(output.iterdir()) and not overwrite:
    raise HFExportError(f"{output}: exists and is not empty (pass overwrite=True / "
                        "--overwrite)")
  if fewshot_results is not None and not pathlib.Path(fewshot_results).is_file():
    raise HFExportError(f"{fewshot_results}: few-shot results file not found")
  cfg, params, info = restore_params(checkpoint, step)
  k = int(info["run_config"].get("config", {}).get("data", {}).get("k", 6))
  card = model_card(cfg, info["run_config"], info["step"], fewshot_results=fewshot_results,
                    k=k)
  return export_params({"bert": {n: v for n, v in params["bert"].items() if n != "pooler"},
                        "cls": params["cls"]}, cfg, output, k=k, model_card=card)


def _size_name(cfg: model_lib.ModelConfig) -> str:
  for name, fields in model_lib.MODEL_SIZES.items():
    shape = {f: v for f, v in fields.items() if f in ("num_layers", "hidden_size",
                                                       "num_heads", "mlp_dim")}
    if all(getattr(cfg, f) == v for f, v in shape.items()) and cfg.max_len == 512:
      return name
  return "custom"


def import_to_checkpoint(hf_dir: PathLike, output: PathLike, *, k: int = 6,
                         check_vocab: bool = True, overwrite: bool = False) -> pathlib.Path:
  """Writes an HF directory as a pretraining-style checkpoint dir (step 0).

  Layout: ``output/config.json`` = ``{"config", "model_signature", "model_config",
  "source"}`` and ``output/checkpoints/0`` = orbax ``Composite(state=TrainState(step=0,
  params=BertForMaskedLM params, opt_state=fresh AdamW state), data={})``.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from genemask_jax import optim  # pylint: disable=g-import-not-at-top
  from genemask_jax import train_step  # pylint: disable=g-import-not-at-top
  output = pathlib.Path(output).absolute()
  if (output / "checkpoints").exists() and not overwrite:
    raise HFExportError(f"{output}: already holds checkpoints (pass overwrite=True / "
                        "--overwrite)")
  ckpt = load_hf_checkpoint(hf_dir, k=k, check_vocab=check_vocab)
  cfg = ckpt.config
  params = jax.tree.map(jnp.asarray, mlm_params(ckpt))
  tx = optim.make_optimizer(optim.make_lr_schedule(total_steps=1, warmup_steps=0))
  state = train_step.init_train_state(params, tx)
  size = _size_name(cfg)
  signature = {"size": size, "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
               "num_layers": cfg.num_layers, "num_heads": cfg.num_heads,
               "mlp_dim": cfg.mlp_dim, "max_len": cfg.max_len,
               "type_vocab_size": cfg.type_vocab_size, "layer_norm_eps": cfg.layer_norm_eps}
  run_config = {
      "config": {"model": {"size": size, "dtype": cfg.dtype,
                           "dropout_rate": cfg.dropout_rate},
                 "data": {"k": k, "max_len": cfg.max_len}},
      "model_signature": signature,
      "model_config": dataclasses.asdict(cfg),
      "source": {"hf_dir": str(pathlib.Path(hf_dir).absolute()),
                 "architectures": ckpt.architectures, "weights": ckpt.source.name,
                 "mlm_head": "imported" if ckpt.has_mlm_head else "freshly initialised"},
  }
  if overwrite and (output / "checkpoints").exists():
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(output / "checkpoints")
  output.mkdir(parents=True, exist_ok=True)
  (output / CONFIG_NAME).write_text(json.dumps(run_config, indent=2) + "\n")
  with ocp.CheckpointManager(output / "checkpoints") as manager:
    manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            data=ocp.args.JsonSave({})))
    manager.wait_until_finished()
  return output


# ----------------------------------------------------------------------------- command
def _define_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("hf_dir", None, "import: the HuggingFace model directory to read.")
  flags.DEFINE_string("checkpoint", None,
                      "export: a pretraining workdir, its checkpoints/ dir or a step dir.")
  flags.DEFINE_string("output", None, "import: checkpoint dir to write; export: HF dir.")
  flags.DEFINE_integer("step", None, "export: checkpoint step (default: the latest).")
  flags.DEFINE_string("fewshot_results", None,
                      "export: a few-shot results .csv or .md to put in the model card.")
  flags.DEFINE_integer("k", 6, "import: k-mer size of the tokenizer the model must use.")
  flags.DEFINE_bool("check_vocab", True, "import: compare vocab.txt with the tokenizer.")
  flags.DEFINE_bool("overwrite", False, "replace what --output already holds.")


_USAGE = ("usage: python -m genemask_jax.hf import --hf_dir=DIR --output=CKPT_DIR\n"
          "       python -m genemask_jax.hf export --checkpoint=CKPT_DIR --output=DIR "
          "[--step=N] [--fewshot_results=FILE]")


def main(argv: Sequence[str]) -> int:
  """absl main: ``import`` or ``export`` (see module docstring)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.ERROR)  # Orbax logs every file it opens.
  f = flags.FLAGS
  if len(argv) != 2 or argv[1] not in ("import", "export"):
    print(_USAGE, file=sys.stderr)
    return 2
  try:
    if argv[1] == "import":
      if not f.hf_dir or not f.output:
        raise HFImportError("import needs --hf_dir and --output\n" + _USAGE)
      out = import_to_checkpoint(f.hf_dir, f.output, k=f.k, check_vocab=f.check_vocab,
                                 overwrite=f.overwrite)
      print(f"wrote checkpoint {out} (step 0) from {f.hf_dir}")
    else:
      if not f.checkpoint or not f.output:
        raise HFExportError("export needs --checkpoint and --output\n" + _USAGE)
      out = export_checkpoint(f.checkpoint, f.output, step=f.step,
                              fewshot_results=f.fewshot_results, overwrite=f.overwrite)
      print(f"wrote HuggingFace BertForMaskedLM directory {out}")
  except (HFImportError, HFExportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2  # A user error, as in every other binary.
  return 0


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
