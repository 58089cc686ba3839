r"""Sequence embeddings from a pretrained model: one vector per sequence, any length.

    python -m genemask_jax.embed --checkpoint=WORKDIR --input=seqs.fa.gz --output=emb.npy
    python -m genemask_jax.embed --checkpoint=hf:DNA_bert_6 --input=test.csv \
        --output=emb.npy --layer=-2 --pooling=cls --batch_size=64 --max_windows=8

Writes ``OUT.npy`` (float32, one row per input sequence, in input order; width = the
model's hidden size) and ``OUT.index.tsv`` (``row, name, length, windows``: the row of
``OUT.npy``, the FASTA header or CSV name, the sequence's length in bases and how many
windows it was embedded in).

Inputs: FASTA (plain or gzip; every record is one sequence) or CSV (``.csv`` or
``.csv.gz``; a header with a ``sequence`` column of bases, or of spaced k-mers as in
DNABERT's files; an optional ``name`` or ``id`` column names the rows, else the CSV line
number does). Every sequence needs at least k bases (6 for DNABERT's vocabulary).

What a vector is:

* ``--layer``: which hidden states: 0 = the embeddings output (after LayerNorm), 1..L
  = the output of encoder layer i, -1 = the last layer (default), -2 the one below, ...
  Layers above the chosen one are not computed.
* ``--pooling``: ``mean`` (default) and ``max`` pool over the sequence's k-mer positions
  only: ``[CLS]``, ``[SEP]`` and padding are excluded (k-mers with an N are ``[UNK]``
  tokens and count); ``cls`` takes the ``[CLS]`` position's hidden state.
* Sequences of more than ``max_len - 2`` k-mers (510 for DNABERT) are embedded in
  overlapping windows (`genemask_jax.windows`: half-window overlap, at most
  ``--max_windows`` evenly spaced windows) and the window vectors are averaged; for
  ``max`` pooling their element-wise maximum is taken, so the result stays a maximum over
  the sequence's k-mers.

Windows are batched (``--batch_size`` windows per jit'd forward pass, grouped by length
and padded to a few fixed lengths, so a run compiles a handful of shapes) and run in
bfloat16 on GPU/TPU and float32 on the CPU (``--dtype`` overrides); parameters stay
float32. Bad input (an empty FASTA, a CSV without ``sequence``, a ``--layer`` the model
does not have, a path that is not a checkpoint) is one line on stderr, exit 2, before any
window is embedded.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from collections.abc import Sequence
from typing import Any, Iterable

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from genemask_jax import checkpoints
from genemask_jax import errors
from genemask_jax import model as model_lib
from genemask_jax import progress as progress_lib
from genemask_jax import tokenizer
from genemask_jax import windows
from genemask_jax.data import labelled

POOLINGS = ("mean", "max", "cls")
_MIN_BUCKET = 32  # Windows are padded to a power of two >= this (or max_len): few shapes.

FLAGS = flags.FLAGS


class EmbedError(errors.UserError):
  """Input, checkpoint or option that cannot be embedded."""


# ---------------------------------------------------------------------------- inputs
def check_lengths(path: str | os.PathLike, names: Sequence[str], seqs: Sequence[Any],
                  k: int) -> None:
  """Raises `EmbedError` naming the first sequence shorter than one k-mer."""
  for i, (name, seq) in enumerate(zip(names, seqs)):
    if len(seq) < k:
      raise EmbedError(f"{path}: sequence {i} ({name!r}) has {len(seq)} bases, fewer than "
                       f"the k={k} a k-mer needs")


# ---------------------------------------------------------------------------- model
def kmer_size(vocab_size: int) -> int:
  """k of a DNABERT vocabulary of ``4**k + 5`` tokens.

  Raises:
    EmbedError: the vocabulary is not a k-mer vocabulary (3 <= k <= 6).
  """
  for k in range(tokenizer.MIN_K, tokenizer.MAX_K + 1):
    if tokenizer.vocab_size(k) == vocab_size:
      return k
  raise EmbedError(f"the model's vocabulary has {vocab_size} tokens, not 4^k + 5 for a k in "
                   f"{tokenizer.MIN_K}..{tokenizer.MAX_K}: not a DNABERT k-mer model")


def resolve_layer(layer: int, num_layers: int) -> int:
  """``layer`` (0..L, or negative from the top: -1 = L) as 0..L.

  Raises:
    EmbedError: outside -(L+1)..L.
  """
  n = layer if layer >= 0 else num_layers + 1 + layer
  if not 0 <= n <= num_layers:
    raise EmbedError(f"--layer={layer}: the model has {num_layers} encoder layers; expected "
                     f"{-(num_layers + 1)}..{num_layers} (0 = embeddings output, -1 = last "
                     "layer)")
  return n


def _bucket(length: int, max_len: int) -> int:
  b = _MIN_BUCKET
  while b < length:
    b *= 2
  return min(b, max_len)


def _window_vectors(cfg: Any, n_layers: int, pooling: str, params: Any, ids: Any) -> Any:
  """(B, L) window ids -> (B, E) float32 pooled hidden states of layer ``n_layers``."""
  if n_layers == 0:
    hidden = model_lib.BertEmbeddings(cfg).apply({"params": params["embeddings"]}, ids, None,
                                                 True)
  else:
    cfg_n, params_n = model_lib.first_layers(cfg, params, n_layers)
    hidden = model_lib.BertModel(cfg_n).apply({"params": params_n}, ids)
  hidden = hidden.astype(jnp.float32)
  if pooling == "cls":
    return hidden[:, 0]
  real = ((ids >= tokenizer.NUM_SPECIAL) | (ids == tokenizer.UNK_ID))[..., None]
  if pooling == "max":
    return jnp.max(jnp.where(real, hidden, -jnp.inf), axis=1)
  return jnp.sum(jnp.where(real, hidden, 0.0), axis=1) / jnp.maximum(real.sum(axis=1), 1)


@functools.lru_cache(maxsize=16)
def _compiled(cfg: Any, n_layers: int, pooling: str) -> Any:
  """The jit'd `_window_vectors` of one model and setting: repeated calls reuse compiles."""
  return jax.jit(functools.partial(_window_vectors, cfg, n_layers, pooling))


def embed_windows(params: Any, cfg: Any, sequences: Iterable[Any], *, layer: int = -1,
                  pooling: str = "mean", batch_size: int = 32, max_windows: int | None = None,
                  overlap: int | None = None, dtype: str = "auto",
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Like `embed`, also returning how many windows each sequence was embedded in.

  Returns:
    (float32 [N, hidden_size], int32 [N] windows per sequence).
  """

  if pooling not in POOLINGS:
    raise EmbedError(f"--pooling={pooling!r}; expected one of {POOLINGS}")
  if batch_size < 1:
    raise EmbedError(f"--batch_size must be at least 1, got {batch_size}")
  if isinstance(params, dict) and "bert" in params:
    params = params["bert"]  # BertForMaskedLM / classifier params: the encoder part.
  n_layers = resolve_layer(layer, cfg.num_layers)
  k = kmer_size(cfg.vocab_size)
  ids_list = [tokenizer.encode(s, k) for s in sequences]
  if not ids_list:
    raise EmbedError("no sequences to embed")
  try:
    window_ids, owner = windows.split(ids_list, cfg.max_len, overlap, max_windows)
  except windows.WindowError as e:
    raise EmbedError(f"--max_windows/--overlap: {e}") from e
  counts = np.bincount(owner, minlength=len(ids_list)).astype(np.int32)

  try:
    act = model_lib.resolve_dtype(dtype)
  except ValueError as e:
    raise EmbedError(f"--dtype: {e}") from e
  cfg = dataclasses.replace(cfg, dtype=act, dropout_rate=0.0, attention_dropout_rate=0.0)
  fn = _compiled(cfg, n_layers, pooling)
  params = jax.device_put(params)

  lengths = (window_ids != tokenizer.PAD_ID).sum(axis=1)
  order = np.argsort(lengths, kind="stable")  # Similar lengths share a batch and a shape.
  out = np.zeros((len(window_ids), cfg.hidden_size), np.float32)
  bar = progress_lib.Progress(len(window_ids), "embed (windows)", enabled=progress)
  filler = np.array([tokenizer.CLS_ID, tokenizer.SEP_ID], np.int32)
  # Fewer windows than a batch: a smaller power of two, not rows of filler.
  batch_size = min(batch_size, 1 << (len(order) - 1).bit_length())
  try:
    for start in range(0, len(order), batch_size):
      rows = order[start:start + batch_size]
      width = _bucket(int(lengths[rows].max()), cfg.max_len)
      batch = np.full((batch_size, width), tokenizer.PAD_ID, np.int32)
      batch[:len(rows)] = window_ids[rows, :width]
      batch[len(rows):, :2] = filler  # Padding rows: never all-[PAD] (no key to attend to).
      out[rows] = np.asarray(fn(params, batch))[:len(rows)]
      bar.update(len(rows))
  finally:
    bar.close()
  reduce = "max" if pooling == "max" else "mean"
  return windows.pool(out, owner, len(ids_list), reduce=reduce), counts


def embed(params: Any, cfg: Any, sequences: Iterable[Any], *, layer: int = -1,
          pooling: str = "mean", batch_size: int = 32, max_windows: int | None = None,
          overlap: int | None = None, dtype: str = "auto", progress: bool = False
          ) -> np.ndarray:
  """One vector per sequence from a pretrained encoder.

  Args:
    params: the encoder's params: the ``bert`` subtree `checkpoints.load_encoder` returns
      (full ``BertForMaskedLM`` params are accepted too).
    cfg: its `model.ModelConfig`.
    sequences: bases (str, bytes or uint8 ASCII arrays; either case; non-ACGT letters make
      ``[UNK]`` k-mers), each at least k long.
    layer: 0 = embeddings output, 1..L = encoder layer L's output, -1 = last, -2, ...
    pooling: "mean" or "max" over k-mer positions (specials and padding excluded), or "cls".
    batch_size: windows per forward pass.
    max_windows: per-sequence bound on windows for long sequences (evenly spaced).
    overlap: k-mers shared by consecutive windows (default half a window).
    dtype: activations dtype, "auto" = bfloat16 on GPU/TPU, float32 on CPU.
    progress: show a progress bar on stderr.

  Returns:
    float32 [N, cfg.hidden_size], row i for ``sequences[i]``; a long sequence's row is the
    mean (for "max" pooling the maximum) of its windows' vectors (`genemask_jax.windows`).

  Raises:
    EmbedError: a layer the model does not have, an unknown pooling, no sequences, a
      vocabulary that is not a k-mer vocabulary, bad window settings.
  """
  vectors, _ = embed_windows(params, cfg, sequences, layer=layer, pooling=pooling,
                             batch_size=batch_size, max_windows=max_windows, overlap=overlap,
                             dtype=dtype, progress=progress)
  return vectors


# ---------------------------------------------------------------------------- binary
def index_path(output: str | os.PathLike) -> pathlib.Path:
  """``OUT.index.tsv`` for ``OUT.npy``."""
  p = pathlib.Path(output)
  return p.with_name(p.name[:-len(".npy")] + ".index.tsv")


def write_outputs(output: str | os.PathLike, vectors: np.ndarray, names: Sequence[str],
                  lengths: Sequence[int], counts: Sequence[int]) -> None:
  """Writes OUT.npy and OUT.index.tsv, each through a temporary file and a rename."""
  out = pathlib.Path(output)
  tmp = out.with_name(f".{out.name}.tmp")
  with open(tmp, "wb") as f:
    np.save(f, vectors.astype(np.float32))
  os.replace(tmp, out)
  idx = index_path(out)
  tmp = idx.with_name(f".{idx.name}.tmp")
  with open(tmp, "w", encoding="utf-8", newline="") as f:
    f.write("row\tname\tlength\twindows\n")
    for row, (name, length, count) in enumerate(zip(names, lengths, counts)):
      name = " ".join(str(name).split())  # No tabs or newlines inside a TSV cell.
      f.write(f"{row}\t{name}\t{int(length)}\t{int(count)}\n")
  os.replace(tmp, idx)


def _check_output(output: str | None) -> pathlib.Path:
  if not output:
    raise EmbedError("--output is required (OUT.npy)")
  out = pathlib.Path(output)
  if out.suffix != ".npy":
    raise EmbedError(f"--output={output}: expected a path ending in .npy")
  if out.is_dir():
    raise EmbedError(f"--output={output}: is a directory; expected a .npy file path")
  out.parent.mkdir(parents=True, exist_ok=True)
  if not os.access(out.parent, os.W_OK):
    raise EmbedError(f"--output={output}: directory {out.parent} is not writable")
  return out


def load_model(source: str) -> tuple[Any, Any, dict[str, Any]]:
  """(ModelConfig, encoder params, info) of ``WORKDIR`` or ``hf:DIR``.

  Raises:
    checkpoints.CheckpointError / EmbedError: not a checkpoint of a k-mer BERT.
  """
  if source == checkpoints.RANDOM:
    raise EmbedError("--checkpoint=random has no trained weights to embed with; pass a "
                     "pretraining WORKDIR or hf:DIR")
  cfg, params, info = checkpoints.load_encoder(source)
  kmer_size(cfg.vocab_size)
  return cfg, params, info


def run(checkpoint: str | None, input_path: str | None, output: str | None, *,
        layer: int = -1, pooling: str = "mean", batch_size: int = 32,
        max_windows: int | None = None, overlap: int | None = None, dtype: str = "auto",
        progress: bool = True) -> tuple[np.ndarray, pathlib.Path]:
  """The binary without flags: checks everything, then embeds and writes the outputs.

  Returns:
    (the vectors, the path of OUT.npy).
  """
  if not checkpoint:
    raise EmbedError("--checkpoint is required (a pretraining WORKDIR or hf:DIR)")
  if not input_path:
    raise EmbedError("--input is required (a FASTA or CSV file)")
  out = _check_output(output)
  if batch_size < 1:
    raise EmbedError(f"--batch_size must be at least 1, got {batch_size}")
  if max_windows is not None and max_windows < 1:
    raise EmbedError(f"--max_windows must be at least 1, got {max_windows}")
  names, seqs = labelled.read_sequences(input_path)  # The package's one FASTA/CSV reader.
  cfg, params, info = load_model(checkpoint)
  resolve_layer(layer, cfg.num_layers)
  check_lengths(input_path, names, seqs, kmer_size(cfg.vocab_size))
  logging.info("embedding %d sequences with %s", len(seqs), info)
  vectors, counts = embed_windows(params, cfg, seqs, layer=layer, pooling=pooling,
                                  batch_size=batch_size, max_windows=max_windows,
                                  overlap=overlap, dtype=dtype, progress=progress)
  write_outputs(out, vectors, names, [len(s) for s in seqs], counts)
  return vectors, out


def _define_flags() -> None:
  """The command's flags, defined only when it runs as a command (`python -m`), so that
  importing the library beside another binary's flags (fewshot's --checkpoint) is safe."""
  flags.DEFINE_string("checkpoint", None, "WORKDIR (or a step directory) of a pretraining run, "
                      "or hf:DIR for a HuggingFace BERT directory.")
  flags.DEFINE_string("input", None, "FASTA (.fa/.fasta/.fna[.gz]) or CSV (.csv[.gz]) with a "
                      "'sequence' column.")
  flags.DEFINE_string("output", None, "OUT.npy; OUT.index.tsv is written beside it.")
  flags.DEFINE_integer("layer", -1, "Hidden states of this layer: 0 = embeddings output, "
                       "1..L encoder layers, -1 = last.")
  flags.DEFINE_enum("pooling", "mean", list(POOLINGS), "mean/max over k-mer positions, or the "
                    "[CLS] position.")
  flags.DEFINE_integer("batch_size", 32, "Windows per jit'd forward pass.")
  flags.DEFINE_integer("max_windows", None, "At most this many (evenly spaced) windows per "
                       "sequence longer than the model; default all.")
  flags.DEFINE_integer("overlap", None, "k-mers shared by consecutive windows (default half a "
                       "window).")
  flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"], "Activations dtype; auto "
                    "= bfloat16 on GPU/TPU, float32 on CPU.")
  flags.DEFINE_bool("progress", True, "Progress bar on stderr.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax/JAX info lines drown the progress.
  with errors.exits_on_user_error("embed"):
    vectors, out = run(FLAGS.checkpoint, FLAGS.input, FLAGS.output, layer=FLAGS.layer,
                       pooling=FLAGS.pooling, batch_size=FLAGS.batch_size,
                       max_windows=FLAGS.max_windows, overlap=FLAGS.overlap,
                       dtype=FLAGS.dtype, progress=FLAGS.progress)
  print(f"wrote {out} ({vectors.shape[0]} x {vectors.shape[1]} float32) and "
        f"{index_path(out)}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
