"""DNABERT-compatible BERT encoder in Flax Linen, partitioned by logical axis names.

The model follows HuggingFace ``BertForMaskedLM`` / ``BertForSequenceClassification``
semantics exactly (post-LayerNorm blocks with eps 1e-12, exact erf GELU, learned absolute
positions, optional token types, attention mask from ``[PAD]`` = 0, MLM head = dense +
GELU + LayerNorm + decoder tied to the word embeddings + bias, classifier = tanh pooler on
``[CLS]`` + dropout + dense), so DNABERT checkpoints map onto it one tensor at a time.

Every parameter carries logical axis names (``vocab``, ``embed``, ``heads``, ``kv``,
``mlp``); key activations are constrained with (``batch``, ``length``, ...). Which mesh
axis each name lands on is decided outside the model by the rules in
``genemask_jax.sharding``; with no rules in context the model runs unsharded.

Parameter tree and its HF state-dict counterpart (``W`` is a torch ``Linear.weight`` of
shape (out, in); ``E`` = hidden size, ``N`` = heads, ``D`` = E / N, ``V`` = padded vocab):

  bert/embeddings/word_embeddings/embedding        (V, E)       word_embeddings.weight
  bert/embeddings/position_embeddings/embedding    (512, E)     position_embeddings.weight
  bert/embeddings/token_type_embeddings/embedding  (T, E)       token_type_embeddings.weight
  bert/embeddings/LayerNorm/{scale,bias}           (E,)         LayerNorm.{weight,bias}
  HF prefix ``bert.encoder.layer.{i}.`` for the per-layer rows below.
  bert/encoder/layer_{i}/attention/self/{query,key,value}/kernel
                                                   (E, N, D)    W.T.reshape(E, N, D)
  bert/encoder/layer_{i}/attention/self/{query,key,value}/bias
                                                   (N, D)       b.reshape(N, D)
  bert/encoder/layer_{i}/attention/output/dense/kernel  (N, D, E)  W.T.reshape(N, D, E)
  bert/encoder/layer_{i}/attention/output/dense/bias    (E,)
  bert/encoder/layer_{i}/attention/output/LayerNorm/{scale,bias}
  bert/encoder/layer_{i}/intermediate_dense/{kernel (E, M), bias (M,)}  intermediate.dense (W.T)
  bert/encoder/layer_{i}/output_dense/{kernel (M, E), bias (E,)}        output.dense (W.T)
  bert/encoder/layer_{i}/output_LayerNorm/{scale,bias}                   output.LayerNorm
  bert/pooler/dense/{kernel (E, E), bias}         (classification model only)
  cls/transform_dense/{kernel (E, E), bias}        cls.predictions.transform.dense (W.T)
  cls/transform_LayerNorm/{scale,bias}             cls.predictions.transform.LayerNorm
  cls/bias                                         (V,)         cls.predictions.bias
  classifier/{kernel (E, C), bias (C,)}            (classification model only)

The MLM decoder weight is the word-embedding table (tied), as in HF. When
``vocab_pad_multiple`` > 1 the vocabulary rows are padded (extra rows are never produced
by the tokenizer; logits are sliced back to ``vocab_size``): an HF import pads rows with
zeros, an export slices ``[:vocab_size]``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from genemask_jax import attention as attention_lib

PAD_ID = 0  # Same as genemask_jax.tokenizer.PAD_ID; the attention mask is ids != PAD_ID.

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# Activations dtype of "auto", by JAX platform name: bfloat16 where the matrix units run it
# at full rate (parameters and optimizer state stay float32), float32 on CPU, where bfloat16
# matmuls are emulated and slower.
AUTO_DTYPE = {"gpu": "bfloat16", "cuda": "bfloat16", "rocm": "bfloat16", "tpu": "bfloat16"}


def resolve_dtype(dtype: str, platform: str | None = None) -> str:
  """The computation dtype name for a config's ``dtype``: "auto" resolved, others unchanged.

  Args:
    dtype: "auto", or a name of ``_DTYPES`` ("float32", "bfloat16", "float16").
    platform: a JAX platform name ("cpu", "gpu", "tpu", ...); default the default backend.

  Returns:
    "bfloat16" for "auto" on GPU/TPU, "float32" for "auto" elsewhere; ``dtype`` otherwise.

  Raises:
    ValueError: an unknown dtype name.
  """
  if dtype == "auto":
    return AUTO_DTYPE.get(platform or jax.default_backend(), "float32")
  if dtype not in _DTYPES:
    raise ValueError(f"dtype={dtype!r}; expected 'auto' or one of {sorted(_DTYPES)}")
  return dtype


#: ``ModelConfig.remat`` values -> ``jax.checkpoint`` policy (None: no remat wrapper;
#: "full" saves nothing inside the layer).
REMAT_POLICIES = ("none", "full", "dots")
_REMAT_POLICY = {"full": None,
                 "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of the BERT encoder (names follow HF ``BertConfig`` where it has one).

  Attributes:
    vocab_size: Number of token ids (4**k + 5; 4101 for 6-mers).
    hidden_size: Width E of the residual stream.
    num_layers: Number of encoder blocks.
    num_heads: Attention heads N; must divide ``hidden_size``.
    mlp_dim: Width M of the feed-forward layer (HF ``intermediate_size``).
    max_len: Learned absolute positions (HF ``max_position_embeddings``).
    type_vocab_size: Token-type rows; 0 drops the token-type embedding entirely.
    dropout_rate: Hidden dropout (HF ``hidden_dropout_prob``).
    attention_dropout_rate: Dropout on attention probabilities.
    layer_norm_eps: LayerNorm epsilon.
    initializer_range: Std of the truncation-free normal init of kernels and embeddings.
    dtype: Computation dtype name ("float32" or "bfloat16"); a run config's "auto" is
      resolved by ``resolve_dtype`` before it gets here.
    param_dtype: Parameter dtype name (keep "float32" for training).
    vocab_pad_multiple: Pad the vocabulary rows to a multiple of this, so the ``vocab``
      axis can be sharded (4101 is odd) and matmuls tile well on accelerators.
    pad_id: Token id that is masked out of attention.
    attention_impl: "auto" (blockwise on CPU; the Pallas kernel on TPU; cuDNN flash
      attention on a GPU where its constraints hold, else blockwise), "blockwise", "xla",
      "cudnn" (no attention dropout), "pallas_gpu" (fused, with dropout) or "pallas_tpu";
      see ``genemask_jax.attention``. Numerics are the same.
    remat: Rematerialisation of each encoder layer in the backward pass (MaxText's
      ``remat_policy``): "none" keeps every activation; "full" keeps only the layer's input
      and recomputes the rest; "dots" keeps the outputs of the weight matmuls
      (``jax.checkpoint_policies.dots_with_no_batch_dims_saveable``) and recomputes the
      cheap element-wise work and attention. Numerics are the same for all three.
    scan_layers: Apply the encoder layers as one ``jax.lax.scan`` over their stacked
      parameters instead of ``num_layers`` unrolled copies (MaxText's ``scan_layers``):
      XLA compiles one layer body (BERT-base for a TPU: 1.8x less compile CPU time,
      measured). The parameter tree (``layer_{i}``) and the numbers are the same either
      way; the memory is not: the scan stores every layer's backward residuals, so pair
      it with ``remat="dots"`` (docs/scaling.md).
  """
  vocab_size: int = 4101
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  max_len: int = 512
  type_vocab_size: int = 2
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  layer_norm_eps: float = 1e-12
  initializer_range: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"
  vocab_pad_multiple: int = 1
  pad_id: int = PAD_ID
  attention_impl: str = "auto"
  remat: str = "none"
  scan_layers: bool = False

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "mlp_dim",
                 "max_len", "vocab_pad_multiple"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
    if self.hidden_size % self.num_heads:
      raise ValueError(
          f"ModelConfig.hidden_size={self.hidden_size} is not divisible by "
          f"num_heads={self.num_heads}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(
            f"ModelConfig.{name}={getattr(self, name)!r}; expected one of {sorted(_DTYPES)}"
            + (" (resolve 'auto' with model.resolve_dtype)" if name == "dtype" else ""))
    if self.attention_impl not in attention_lib.IMPLEMENTATIONS:
      raise ValueError(f"ModelConfig.attention_impl={self.attention_impl!r}; expected one "
                       f"of {attention_lib.IMPLEMENTATIONS}")
    if self.attention_impl == "cudnn" and self.attention_dropout_rate > 0.0:
      raise ValueError(f"ModelConfig.attention_impl='cudnn' has no attention dropout; set "
                       f"attention_dropout_rate=0 (got {self.attention_dropout_rate}) or "
                       "use 'auto'")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"ModelConfig.remat={self.remat!r}; expected one of {REMAT_POLICIES}")
    for name in ("dropout_rate", "attention_dropout_rate"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f"ModelConfig.{name} must be in [0, 1), got {getattr(self, name)}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def padded_vocab_size(self) -> int:
    m = self.vocab_pad_multiple
    return -(-self.vocab_size // m) * m

  @property
  def jnp_dtype(self) -> Any:
    return _DTYPES[self.dtype]

  @property
  def jnp_param_dtype(self) -> Any:
    return _DTYPES[self.param_dtype]


# The ModelConfig fields that fix a model's parameter tree and numerics: a workdir's
# "model signature" (checked on resume) and what HF weights must match to drop into a
# configured model. The other fields (dropout, dtype, attention_impl, remat) may change
# between runs of the same weights.
SIGNATURE_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "mlp_dim",
                    "max_len", "type_vocab_size", "layer_norm_eps", "vocab_pad_multiple")
# The fields a named size (a key of MODEL_SIZES) sets that give it its shape.
SIZE_FIELDS = ("num_layers", "hidden_size", "num_heads", "mlp_dim")


MODEL_SIZES: dict[str, dict[str, Any]] = {
    # Small BERT for tests and quick runs.
    "tiny": dict(num_layers=2, hidden_size=256, num_heads=8, mlp_dim=1024),
    # The GeneMask authors' "Code-E" LOGO-like model.
    "logo": dict(num_layers=2, hidden_size=256, num_heads=8, mlp_dim=3072,
                 dropout_rate=0.0, attention_dropout_rate=0.0),
    # DNABERT-6 (BERT-base), ~89 M parameters with the tied decoder.
    "dnabert_base": dict(num_layers=12, hidden_size=768, num_heads=12, mlp_dim=3072),
    # BERT-large shape, for pods.
    "large": dict(num_layers=24, hidden_size=1024, num_heads=16, mlp_dim=4096),
}


def model_config(name: str, **overrides: Any) -> ModelConfig:
  """Returns the named size (a key of ``MODEL_SIZES``) with ``overrides`` applied.

  Raises:
    ValueError: unknown size name or unknown override key.
  """
  if name not in MODEL_SIZES:
    raise ValueError(f"unknown model size {name!r}; expected one of {sorted(MODEL_SIZES)}")
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"unknown ModelConfig key(s) {unknown}; expected some of {sorted(fields)}")
  return ModelConfig(**{**MODEL_SIZES[name], **overrides})


def param_count_formula(cfg: ModelConfig, *, mlm_head: bool = True,
                        num_labels: int | None = None) -> int:
  """Number of parameters, from the config alone (the tied decoder counted once).

  Args:
    cfg: the model config.
    mlm_head: count the MLM head (``BertForMaskedLM``).
    num_labels: if given, count pooler + classifier (``BertForSequenceClassification``)
      instead of the MLM head.
  """
  e, m, v = cfg.hidden_size, cfg.mlp_dim, cfg.padded_vocab_size
  embeddings = (v + cfg.max_len + cfg.type_vocab_size) * e + 2 * e
  attention = 4 * (e * e + e) + 2 * e
  mlp = (e * m + m) + (m * e + e) + 2 * e
  total = embeddings + cfg.num_layers * (attention + mlp)
  if num_labels is not None:
    total += (e * e + e) + (e * num_labels + num_labels)
  elif mlm_head:
    total += (e * e + e) + 2 * e + v
  return total


def _dense_init(cfg: ModelConfig, axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range), axes)


def _zeros(axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def _ones(axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), axes)


def _layer_norm(cfg: ModelConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=cfg.layer_norm_eps, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype,
      scale_init=_ones(("embed",)), bias_init=_zeros(("embed",)), name=name)


class Dropout(nn.Module):
  """Inverted dropout like ``nn.Dropout`` (same "dropout" rng collection).

  The mask comes from ``attention.keep_mask`` (a hash of the element index seeded from the
  rng), not from ``jax.random`` bits, which cost more than the layer itself on CPU.
  """
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    rate = 0.0 if deterministic else self.rate
    return attention_lib.dropout(x, rate, _dropout_seed(self, rate))


def _dropout_seed(module: nn.Module, rate: float) -> jax.Array | None:
  """A keep-mask seed from the module's "dropout" rng, or None when nothing is dropped."""
  return attention_lib.dropout_seed(module.make_rng("dropout")) if rate > 0.0 else None


def _gelu(x: jax.Array) -> jax.Array:
  return nn.gelu(x, approximate=False)


class _DenseGeneral(nn.Module):
  """``x @ kernel + bias`` contracting x's last ``len(in_shape)`` dims.

  Kernel shape ``in_shape + out_shape`` with logical names ``kernel_axes``; bias
  ``out_shape``. (``nn.DenseGeneral`` reshapes its kernel to 2-D inside init, which breaks
  multi-dimensional logical names under a mesh.)
  """
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  kernel_axes: tuple[str | None, ...]
  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    kernel = self.param("kernel", _dense_init(cfg, self.kernel_axes),
                        self.in_shape + self.out_shape, cfg.jnp_param_dtype)
    bias = self.param("bias", _zeros(self.kernel_axes[len(self.in_shape):]), self.out_shape,
                      cfg.jnp_param_dtype)
    n_in = len(self.in_shape)
    y = jax.lax.dot_general(
        x.astype(cfg.jnp_dtype), kernel.astype(cfg.jnp_dtype),
        ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ())))
    return y + bias.astype(cfg.jnp_dtype)


class BertEmbeddings(nn.Module):
  """Word + position (+ token type) embeddings, LayerNorm, dropout."""
  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.word_embeddings = nn.Embed(
        cfg.padded_vocab_size, cfg.hidden_size, dtype=cfg.jnp_dtype,
        param_dtype=cfg.jnp_param_dtype,
        embedding_init=_dense_init(cfg, ("vocab", "embed")))
    self.position_embeddings = nn.Embed(
        cfg.max_len, cfg.hidden_size, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype,
        embedding_init=_dense_init(cfg, (None, "embed")))
    if cfg.type_vocab_size:
      self.token_type_embeddings = nn.Embed(
          cfg.type_vocab_size, cfg.hidden_size, dtype=cfg.jnp_dtype,
          param_dtype=cfg.jnp_param_dtype, embedding_init=_dense_init(cfg, (None, "embed")))
    self.LayerNorm = _layer_norm(cfg, "LayerNorm")  # pylint: disable=invalid-name
    self.dropout = Dropout(cfg.dropout_rate)

  def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array | None,
               deterministic: bool) -> jax.Array:
    """(B, L) int ids -> (B, L, E) embeddings in ``config.dtype``."""
    cfg = self.config
    length = input_ids.shape[1]
    if length > cfg.max_len:
      raise ValueError(f"sequence length {length} exceeds max_len={cfg.max_len}")
    x = self.word_embeddings(input_ids)
    x = x + self.position_embeddings(jnp.arange(length))[None]
    if cfg.type_vocab_size:
      if token_type_ids is None:
        # HF adds row 0 of the token-type table when no types are given.
        x = x + self.token_type_embeddings(jnp.zeros((1, length), jnp.int32))
      else:
        x = x + self.token_type_embeddings(token_type_ids)
    elif token_type_ids is not None:
      raise ValueError("token_type_ids given but ModelConfig.type_vocab_size is 0")
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    x = self.LayerNorm(x)
    return self.dropout(x, deterministic=deterministic)

  def attend(self, x: jax.Array) -> jax.Array:
    """Tied decoder: (..., E) -> (..., padded V) logits against the word embeddings."""
    return self.word_embeddings.attend(x)


def _attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array,
               module: nn.Module, cfg: ModelConfig, deterministic: bool) -> jax.Array:
  """Scaled dot-product attention; q, k, v (B, L, N, D), key_mask (B, L) bool.

  ``cfg.attention_impl`` chooses blockwise (CPU) or ``jax.nn.dot_product_attention``
  (fused kernels on GPU); attention dropout (HF semantics) draws a hashed mask from the
  module's "dropout" rng.
  """
  rate = 0.0 if deterministic else cfg.attention_dropout_rate
  return attention_lib.dot_product_attention(
      q, k, v, key_mask, dropout_rate=rate, seed=_dropout_seed(module, rate),
      implementation=cfg.attention_impl)


class BertSelfAttention(nn.Module):
  """Query, key and value projections, kernels (E, N, D), attention -> (B, L, N, D)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, deterministic: bool,
               x_query: jax.Array | None = None) -> jax.Array:
    """x (B, L, E) keys/values (and queries unless ``x_query`` (B, P, E) is given)."""
    cfg = self.config

    def proj(name, inputs):
      return _DenseGeneral((cfg.hidden_size,), (cfg.num_heads, cfg.head_dim),
                           ("embed", "heads", "kv"), cfg, name=name)(inputs)

    q = proj("query", x if x_query is None else x_query)
    k, v = proj("key", x), proj("value", x)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
    k = nn.with_logical_constraint(k, ("batch", "length", "heads", "kv"))
    v = nn.with_logical_constraint(v, ("batch", "length", "heads", "kv"))
    out = _attention(q, k, v, mask, self, cfg, deterministic)
    return nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))


class BertAttention(nn.Module):
  """Self-attention + output projection (N, D, E) + dropout + residual + post-LayerNorm."""
  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.self = BertSelfAttention(cfg)
    self.output = _AttentionOutput(cfg)

  def __call__(self, x: jax.Array, mask: jax.Array, deterministic: bool,
               query_positions: jax.Array | None = None) -> jax.Array:
    """(B, L, E) -> (B, L, E), or (B, P, E) at ``query_positions`` (B, P) when given."""
    if query_positions is None:
      return self.output(self.self(x, mask, deterministic), x, deterministic)
    x_query = gather_positions(x, query_positions)
    return self.output(self.self(x, mask, deterministic, x_query), x_query, deterministic)


class _AttentionOutput(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, a: jax.Array, residual: jax.Array, deterministic: bool) -> jax.Array:
    cfg = self.config
    y = _DenseGeneral((cfg.num_heads, cfg.head_dim), (cfg.hidden_size,),
                      ("heads", "kv", "embed"), cfg, name="dense")(a)
    y = Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    y = _layer_norm(cfg, "LayerNorm")(y + residual)
    return nn.with_logical_constraint(y, ("batch", "length", "embed"))


class BertLayer(nn.Module):
  """One post-LN encoder block: attention, then GELU MLP; (B, L, E) -> (B, L, E).

  With ``query_positions`` (B, P) only those rows are computed (attending to all L keys):
  (B, L, E) -> (B, P, E), the same numbers as the full block's output at those rows.
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, deterministic: bool,
               query_positions: jax.Array | None = None) -> jax.Array:
    cfg = self.config
    x = BertAttention(cfg, name="attention")(x, mask, deterministic, query_positions)
    h = nn.Dense(cfg.mlp_dim, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype,
                 kernel_init=_dense_init(cfg, ("embed", "mlp")), bias_init=_zeros(("mlp",)),
                 name="intermediate_dense")(x)
    h = nn.with_logical_constraint(_gelu(h), ("batch", "length", "mlp"))
    y = nn.Dense(cfg.hidden_size, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype,
                 kernel_init=_dense_init(cfg, ("mlp", "embed")), bias_init=_zeros(("embed",)),
                 name="output_dense")(h)
    y = Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    y = _layer_norm(cfg, "output_LayerNorm")(y + x)
    return nn.with_logical_constraint(y, ("batch", "length", "embed"))


class BertEncoder(nn.Module):
  """``num_layers`` BertLayers named ``layer_{i}``, unrolled or as one ``lax.scan``.

  The parameters are ``layer_0 .. layer_{n-1}`` either way (created by ordinary child
  modules at init). Applied, every layer is the same pure function of its own parameter
  subtree and dropout key (``_layer_fn``): a Python loop over it with
  ``scan_layers=False``, a ``jax.lax.scan`` over the stacked subtrees with
  ``scan_layers=True``, so XLA compiles one layer body instead of ``num_layers`` copies.
  Both give the same numbers (dropout included: layer i's key is split ``i`` of one
  "dropout" key), and checkpoints, HF conversion and sharding rules see the same tree.
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, deterministic: bool,
               output_positions: jax.Array | None = None) -> jax.Array:
    """(B, L, E) -> (B, L, E), or (B, P, E) at ``output_positions`` (B, P) when given.

    With ``output_positions`` the last layer computes only those rows (its other rows feed
    nothing): for a 2-layer model at 20% masked positions that skips ~40% of the encoder.
    """
    cfg = self.config
    n = cfg.num_layers
    if self.is_initializing():  # Child modules create (and name) the parameters.
      for i in range(n):
        last = output_positions if i == n - 1 else None
        x = BertLayer(cfg, name=f"layer_{i}")(x, mask, deterministic, last)
      return x
    params = nn.unbox(self.variables["params"])
    layers = [params[f"layer_{i}"] for i in range(n)]
    drops = not deterministic and (cfg.dropout_rate > 0 or cfg.attention_dropout_rate > 0)
    keys = jax.random.split(self.make_rng("dropout"), n) if drops else None
    layer = _layer_fn(cfg, deterministic, prevent_cse=not cfg.scan_layers)
    # The last layer runs apart when only some rows of it are wanted.
    body = n if output_positions is None else n - 1
    if cfg.scan_layers and body:
      stacked = _stack_layers(cfg, layers[:body], x, mask)

      def step(h, layer_and_key):
        p, key = layer_and_key
        return layer(p, h, mask, key, None), None

      x, _ = jax.lax.scan(step, x, (stacked, None if keys is None else keys[:body]))
    else:
      for i in range(body):
        x = layer(layers[i], x, mask, None if keys is None else keys[i], None)
    if body < n:
      x = layer(layers[-1], x, mask, None if keys is None else keys[-1], output_positions)
    return x


def _layer_fn(cfg: ModelConfig, deterministic: bool, prevent_cse: bool = True):
  """``f(params, x, mask, dropout_key, query_positions)``: one BertLayer, as a pure function.

  Wrapped in ``jax.checkpoint`` with ``cfg.remat``'s policy unless it is "none".
  ``prevent_cse=False`` is safe inside ``lax.scan`` (the loop already keeps XLA from
  merging the recomputation into the forward pass; see ``jax.checkpoint``'s docs).
  """
  module = BertLayer(cfg, parent=None)

  def apply(params, x, mask, key, query_positions):
    rngs = {} if key is None else {"dropout": key}
    return module.apply({"params": params}, x, mask, deterministic, query_positions,
                        rngs=rngs)

  if cfg.remat == "none":
    return apply
  return jax.checkpoint(apply, policy=_REMAT_POLICY[cfg.remat], prevent_cse=prevent_cse)


def _stack_layers(cfg: ModelConfig, layers: list[Any], x: jax.Array,
                  mask: jax.Array) -> Any:
  """The layers' parameter subtrees stacked leaf by leaf on a new leading axis.

  Each stacked leaf is constrained to its parameter's logical axes with the layer axis
  unsplit, so a mesh shards it as the per-layer parameters are sharded.
  """
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *layers)
  boxed = jax.eval_shape(
      lambda x, mask: BertLayer(cfg, parent=None).init(jax.random.key(0), x, mask, True),
      jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(mask.shape, mask.dtype))
  specs = nn.get_partition_spec(boxed["params"])
  return jax.tree.map(lambda leaf, spec: nn.with_logical_constraint(leaf, (None, *spec)),
                      stacked, specs)


class BertModel(nn.Module):
  """Embeddings + encoder (+ tanh pooler on [CLS] when ``add_pooling_layer``)."""
  config: ModelConfig
  add_pooling_layer: bool = False

  def setup(self):
    cfg = self.config
    self.embeddings = BertEmbeddings(cfg)
    self.encoder = BertEncoder(cfg)
    if self.add_pooling_layer:
      self.pooler = _Pooler(cfg)

  def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array | None = None,
               deterministic: bool = True,
               output_positions: jax.Array | None = None) -> jax.Array:
    """(B, L) int32 ids -> (B, L, E) final hidden states in ``config.dtype``.

    With ``output_positions`` (B, P) int32: (B, P, E), the final hidden states at those
    positions only (see ``BertEncoder``).
    """
    cfg = self.config
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids must be (batch, length), got shape {input_ids.shape}")
    mask = input_ids != cfg.pad_id  # (B, L): keys that count.
    x = self.embeddings(input_ids, token_type_ids, deterministic)
    return self.encoder(x, mask, deterministic, output_positions)

  def pool(self, hidden: jax.Array) -> jax.Array:
    """(B, L, E) hidden -> (B, E) tanh(dense(hidden[:, 0])) (needs ``add_pooling_layer``)."""
    return self.pooler(hidden[:, 0])

  def attend(self, x: jax.Array) -> jax.Array:
    return self.embeddings.attend(x)


class _Pooler(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, cls_hidden: jax.Array) -> jax.Array:
    cfg = self.config
    y = nn.Dense(cfg.hidden_size, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype,
                 kernel_init=_dense_init(cfg, ("embed", "mlp")), bias_init=_zeros(("mlp",)),
                 name="dense")(cls_hidden)
    return jnp.tanh(y)


class _MLMHead(nn.Module):
  """HF ``cls.predictions``: transform (dense + GELU + LayerNorm) and the decoder bias."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, decoder) -> jax.Array:
    cfg = self.config
    x = nn.Dense(cfg.hidden_size, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype,
                 kernel_init=_dense_init(cfg, ("embed", "mlp")), bias_init=_zeros(("mlp",)),
                 name="transform_dense")(x)
    x = _layer_norm(cfg, "transform_LayerNorm")(_gelu(x))
    bias = self.param("bias", _zeros(("vocab",)), (cfg.padded_vocab_size,),
                      cfg.jnp_param_dtype)
    logits = decoder(x) + bias.astype(cfg.jnp_dtype)
    return logits[..., :cfg.vocab_size]


def gather_positions(hidden: jax.Array, positions: jax.Array) -> jax.Array:
  """(B, L, E) hidden, (B, P) int positions -> (B, P, E) hidden at those positions."""
  return jnp.take_along_axis(hidden, positions[..., None].astype(jnp.int32), axis=1)


class BertForMaskedLM(nn.Module):
  """BERT with the MLM head (HF ``BertForMaskedLM``); params under ``bert`` and ``cls``."""
  config: ModelConfig

  def setup(self):
    self.bert = BertModel(self.config, add_pooling_layer=False)
    self.cls = _MLMHead(self.config)

  def __call__(self, input_ids: jax.Array, *, masked_positions: jax.Array | None = None,
               token_type_ids: jax.Array | None = None, deterministic: bool = True,
               return_hidden: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    """MLM logits.

    Args:
      input_ids: (B, L) int32 token ids (already masked for training).
      masked_positions: optional (B, P) int32 positions; when given only those positions
        go through the last encoder layer and the MLM head (cheaper: P << L), else all L
        positions.
      token_type_ids: optional (B, L) int32.
      deterministic: False enables dropout (needs a "dropout" rng).
      return_hidden: also return the (B, L, E) encoder output.

    Returns:
      logits (B, P, vocab_size) or (B, L, vocab_size) in ``config.dtype``, and with
      ``return_hidden`` the tuple (logits, hidden).
    """
    if return_hidden or masked_positions is None:
      hidden = self.bert(input_ids, token_type_ids, deterministic)
      x = hidden if masked_positions is None else gather_positions(hidden, masked_positions)
    else:  # The last layer only at the masked positions: same logits, less work.
      x = self.bert(input_ids, token_type_ids, deterministic, masked_positions)
    logits = self.cls(x, self.bert.attend)
    return (logits, hidden) if return_hidden else logits

  def encode(self, input_ids: jax.Array, token_type_ids: jax.Array | None = None) -> jax.Array:
    """(B, L) ids -> (B, L, E) encoder output (deterministic), e.g. for linear probes."""
    return self.bert(input_ids, token_type_ids, True)


class BertForSequenceClassification(nn.Module):
  """BERT + tanh pooler on [CLS] + dropout + dense (HF ``BertForSequenceClassification``).

  Its ``bert`` subtree has the same names as ``BertForMaskedLM``'s (plus ``pooler``), so a
  pretrained MLM checkpoint's ``params["bert"]`` initialises it.
  """
  config: ModelConfig
  num_labels: int = 2

  def setup(self):
    cfg = self.config
    self.bert = BertModel(cfg, add_pooling_layer=True)
    self.dropout = Dropout(cfg.dropout_rate)
    self.classifier = nn.Dense(
        self.num_labels, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype,
        kernel_init=_dense_init(cfg, ("embed", None)), bias_init=_zeros((None,)))

  def __call__(self, input_ids: jax.Array, *, token_type_ids: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    """(B, L) int32 ids -> (B, num_labels) logits in ``config.dtype``."""
    pooled = self.bert.pool(self._cls_hidden(input_ids, token_type_ids, deterministic))
    return self.classifier(self.dropout(pooled, deterministic=deterministic))

  def pooled_features(self, input_ids: jax.Array, *,
                      token_type_ids: jax.Array | None = None) -> jax.Array:
    """(B, L) ids -> (B, E) pooled [CLS] features (deterministic), for linear probes."""
    return self.bert.pool(self._cls_hidden(input_ids, token_type_ids, True))

  def _cls_hidden(self, input_ids: jax.Array, token_type_ids: jax.Array | None,
                  deterministic: bool) -> jax.Array:
    """(B, 1, E) final hidden state at [CLS]: the last layer runs for that row only."""
    cls_position = jnp.zeros((input_ids.shape[0], 1), jnp.int32)
    return self.bert(input_ids, token_type_ids, deterministic, cls_position)


def first_layers(cfg: ModelConfig, bert_params: dict[str, Any],
                 n: int) -> tuple[ModelConfig, dict[str, Any]]:
  """The config and ``bert`` params of the encoder cut after its first ``n`` layers.

  ``BertModel(cfg_n).apply({"params": params_n}, ids)`` is then the output of layer ``n``
  (1-based; ``n = cfg.num_layers`` is the whole encoder): the hidden states of any layer
  without computing the layers above it (``genemask_jax.embed --layer``).

  Args:
    cfg: the full model's config.
    bert_params: the ``bert`` subtree (``embeddings``, ``encoder/layer_{i}``[, ``pooler``]).
    n: layers to keep, 1..cfg.num_layers.

  Raises:
    ValueError: ``n`` outside 1..cfg.num_layers.
  """
  if not 1 <= n <= cfg.num_layers:
    raise ValueError(f"layers to keep must be in 1..{cfg.num_layers}, got {n}")
  encoder = {f"layer_{i}": bert_params["encoder"][f"layer_{i}"] for i in range(n)}
  params = {"embeddings": bert_params["embeddings"], "encoder": encoder}
  return dataclasses.replace(cfg, num_layers=n), params
