"""The pure mapping between HuggingFace BERT and genemask-jax: configs, vocabulary, weights.

Nothing here reads or writes files (see `genemask_jax.hf.files` for directories)::

    cfg = model_config_from_hf(hf_config_dict)              # BertConfig dict -> ModelConfig
    ckpt = checkpoint_from_state_dict(state, hf_config_dict)  # HF tensors -> our params
    params = mlm_params(ckpt)                               # for BertForMaskedLM
    state = params_to_state_dict(params, cfg)               # our params -> HF tensors

The weight table (`_weight_table`) is the one place that states which HF tensor is which
of our leaves and how it is transposed or reshaped; ``genemask_jax.model``'s docstring
gives the same correspondence in prose.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from genemask_jax import model as model_lib
from genemask_jax import tokenizer
from genemask_jax.hf.errors import HFImportError

SAFETENSORS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
VOCAB_NAME = "vocab.txt"


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
def vocab_differences(lines: Sequence[str], k: int = 6, *, where: str = VOCAB_NAME,
                      max_lines: int = 5) -> list[str]:
  """How the lines of a ``vocab.txt`` differ from ``tokenizer.vocab(k)`` (empty if equal).

  Each entry is a human-readable line naming ``where``: the token counts if they differ,
  and the first ``max_lines`` differing lines as ``line N: 'file token' vs 'ours'``.
  """
  theirs = list(lines)
  while theirs and not theirs[-1].strip():
    theirs.pop()
  theirs = [t.strip() for t in theirs]
  ours = tokenizer.vocab(k)
  out = []
  if len(theirs) != len(ours):
    out.append(f"{where}: {len(theirs)} tokens; the {k}-mer tokenizer has {len(ours)}")
  diffs = [(i, a, b) for i, (a, b) in enumerate(zip(theirs, ours)) if a != b]
  for i, a, b in diffs[:max_lines]:
    out.append(f"{where} line {i + 1} (id {i}): {a!r}, tokenizer has {b!r}")
  if len(diffs) > max_lines:
    out.append(f"{where}: {len(diffs) - max_lines} more differing lines "
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


def checkpoint_from_state_dict(state: Mapping[str, np.ndarray],
                               hf_config: Mapping[str, Any], *, k: int = 6,
                               vocab_problems: Sequence[str] = (),
                               vocab_pad_multiple: int = 1, where: str = "HF model",
                               source: pathlib.Path = pathlib.Path(SAFETENSORS_NAME)
                               ) -> HFCheckpoint:
  """Our parameter tree for an HF BERT state dict and its ``config.json`` dict.

  Accepts checkpoints of ``BertForMaskedLM``, ``BertModel`` (no ``bert.`` prefix) and
  ``BertForSequenceClassification``; the tied decoder weight may be present (it must then
  equal the word embeddings) or absent; ``position_ids`` buffers and an NSP head are
  ignored. The pooler, MLM head and classifier are each taken whole or not at all.

  Args:
    state: HF name -> numpy array.
    hf_config: the HF ``config.json`` as a dict.
    k: the k-mer size whose tokenizer the model must use (vocab size 4**k + 5).
    vocab_problems: differences of ``vocab.txt`` found by the caller, reported with the rest.
    vocab_pad_multiple: pad vocabulary rows (zeros) as ``ModelConfig.vocab_pad_multiple``.
    where: the directory, for messages.
    source: the weights file read (kept in the result).

  Raises:
    HFImportError: listing at once every missing weight, unexpected weight, shape
      mismatch, vocabulary size mismatch and vocab.txt difference.
  """
  cfg = model_config_from_hf(hf_config, where=f"{where}/{CONFIG_NAME}",
                             vocab_pad_multiple=vocab_pad_multiple)
  problems: list[str] = []
  want_vocab = tokenizer.vocab_size(k)
  if cfg.vocab_size != want_vocab:
    problems.append(f"vocabulary size: config.json vocab_size={cfg.vocab_size}, the {k}-mer "
                    f"tokenizer has {want_vocab} tokens")
  problems += list(vocab_problems)

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
    raise HFImportError(f"{where} ({source.name}): cannot import as a genemask-jax BERT:\n  - "
                        + "\n  - ".join(problems))
  archs = hf_config.get("architectures") or []
  return HFCheckpoint(config=cfg, params=params, num_labels=num_labels,
                      architectures=list(archs), source=source)


def _init_params(module: Any, cfg: model_lib.ModelConfig, seed: int) -> dict[str, Any]:
  """Fresh float32 numpy params for ``module``, distributed as its own initializers
  (kernels/embeddings normal(``initializer_range``), biases 0, LayerNorm scales 1).

  Drawn in numpy from ``jax.eval_shape`` shapes: compiling ``init`` takes seconds on CPU.
  """
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


def config_differences(a: model_lib.ModelConfig, b: model_lib.ModelConfig,
                       fields: Sequence[str] = model_lib.SIGNATURE_FIELDS) -> dict[str, tuple[Any, Any]]:
  """``{field: (a's value, b's value)}`` for the ``fields`` where the configs differ."""
  return {f: (getattr(a, f), getattr(b, f)) for f in fields
          if getattr(a, f) != getattr(b, f)}


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
