"""The pretraining run's data: corpus, NPMI rank lookup and fixed evaluation batches.

One entry point for the trainer, from the `ConfigDict` of `configs/pretrain.py`::

  inputs = sources.check_inputs(config, workdir)   # setup: reads only, fails early
  ...                                               # (the trainer locks the workdir)
  data = sources.get_datasets(config, workdir, inputs)
  it = data.train_iterator(start_batch=step)        # batches {"input_ids": (B_local, L)}
  data.eval_batches                                 # fixed masked held-out batches
  data.rank                                         # (4^k + 5,) int32 NPMI rank lookup

`get_datasets` builds the corpus into a TFDS array_record dataset (`WORKDIR/tfds` unless
``config.data.tfds_dir`` is set; one process builds, the others wait and open it), checks
that the splits hold at least one batch, and, for ``config.npmi.source = "corpus"``,
computes the NPMI table from the FASTA files once (cached in `WORKDIR/npmi`, keyed by the
files' paths and sizes; a cloud workdir keeps the table on local disk and gets a copy).
A given table (``"authors"`` or a path) is read by `check_inputs`, before anything is
written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from genemask_jax import distributed
from genemask_jax import errors
from genemask_jax import masking
from genemask_jax import metrics_writer
from genemask_jax import npmi as npmi_lib
from genemask_jax.data import fasta
from genemask_jax.data import genome
from genemask_jax.data import genome_tfds
from genemask_jax.data import pipeline

# The authors' published table, under GENEMASK_DATA_DIR (npmi.source = "authors").
AUTHORS_NPMI_CSV = "npmi/genemask_grch38_chr1-3_6mer_npmi.csv"


class DataConfigError(errors.UserError):
  """The config's data or NPMI source cannot give a run its data."""


@dataclasses.dataclass(frozen=True)
class Inputs:
  """What setup checks before anything is written.

  Attributes:
    fasta_paths: the corpus's FASTA files, checked readable.
    lookup: the NPMI lookup of a given table; None when it is computed from the corpus.
  """
  fasta_paths: list[str]
  lookup: npmi_lib.NpmiLookup | None


@dataclasses.dataclass(frozen=True)
class Datasets:
  """A run's data, from `get_datasets`.

  Attributes:
    train: the train split as a random-access data source; read it with `train_iterator`.
    eval_batches: the held-out batches, masked once with fixed keys (every evaluation sees
      the same masks): dicts of numpy input_ids (B, L), masked_lm_positions/ids/weights
      (B, P), B = this process's share of config.eval.batch_size.
    rank: (4^k + 5,) int32 NPMI rank lookup the masking reads (1 = best).
    local_batch_size: training sequences per batch on this process.
    shuffle_seed, worker_count: config.data's, for the iterator.
  """
  train: Any
  eval_batches: list[dict[str, np.ndarray]]
  rank: np.ndarray
  local_batch_size: int
  shuffle_seed: int
  worker_count: int

  def train_iterator(self, start_batch: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Training batches from global batch `start_batch` (= the step: the same on any
    process count), each {"input_ids": int32 (local_batch_size, L)}."""
    return pipeline.train_iterator(
        self.train, local_batch_size=self.local_batch_size, seed=self.shuffle_seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
        worker_count=self.worker_count, start_batch=start_batch)


def check_inputs(config: ml_collections.ConfigDict, workdir: epath.Path) -> Inputs:
  """The FASTA files checked and a given NPMI table read; writes nothing."""
  fasta_paths = fasta_paths_of(config)
  lookup = (npmi_lookup(config, fasta_paths, workdir) if config.npmi.source != "corpus"
            else None)
  return Inputs(fasta_paths, lookup)


def get_datasets(config: ml_collections.ConfigDict, workdir: epath.Path,
                 inputs: Inputs | None = None) -> Datasets:
  """Builds (or opens) the corpus and returns the run's train source, eval batches, rank.

  Writes `WORKDIR/tfds` (or config.data.tfds_dir) and `WORKDIR/npmi`; every process calls
  it (process 0 builds, the others wait).

  Raises:
    DataConfigError: a split smaller than one batch (genome_tfds.CorpusError: an empty
      corpus; pipeline.PipelineError: a train split smaller than one global batch).
  """
  inputs = inputs or check_inputs(config, workdir)
  tfds_dir = config.data.tfds_dir or os.fspath(workdir / "tfds")
  chunking = chunk_config_of(config)
  with distributed.quiet_logs(logging.ERROR):  # TFDS logs every config it opens.
    if jax.process_index() == 0:  # One process builds; the others wait, then open it.
      genome_tfds.build(tfds_dir, inputs.fasta_paths, chunking,
                        num_workers=config.data.num_workers)
    distributed.sync("tfds")
    builder = genome_tfds.build(tfds_dir, inputs.fasta_paths, chunking)
  splits = genome_tfds.data_sources(builder)
  n = jax.process_count()
  local_batch = config.train.batch_size // n
  # Fails early if the corpus is smaller than one batch; the reading iterator is made by
  # the trainer after its restore, at the restored step.
  pipeline.train_dataset(splits["train"], local_batch_size=local_batch,
                         seed=config.data.shuffle_seed, process_index=jax.process_index(),
                         process_count=n)
  eval_data = pipeline.eval_dataset(
      splits["validation"], local_batch_size=config.eval.batch_size // n,
      num_examples=config.eval.num_examples, process_index=jax.process_index(),
      process_count=n)
  if len(eval_data) == 0:
    raise DataConfigError(
        f"the validation split has {len(splits['validation'])} examples, fewer than "
        f"config.eval.batch_size={config.eval.batch_size}; use a larger corpus")
  lookup = inputs.lookup or npmi_lookup(config, inputs.fasta_paths, workdir)
  rank = np.asarray(lookup.rank, np.int32)
  return Datasets(train=splits["train"], eval_batches=fixed_eval_batches(config, eval_data, rank),
                  rank=rank, local_batch_size=local_batch,
                  shuffle_seed=config.data.shuffle_seed, worker_count=config.data.worker_count)


def fasta_paths_of(config: ml_collections.ConfigDict) -> list[str]:
  """config.data.fasta's comma-separated paths (checked readable), or the embedded sample."""
  paths = [p.strip() for p in config.data.fasta.split(",") if p.strip()]
  if not paths:
    paths = [os.fspath(p) for p in genome.default_genome_paths()]
  fasta.check_files(paths)
  return paths


def chunk_config_of(config: ml_collections.ConfigDict) -> genome.ChunkConfig:
  """The paper's chunking for this block size: chunks of max_len - 1 bp (511 for 512)."""
  d = config.data
  return genome.ChunkConfig(
      seed=config.seed, max_chunk_bp=d.max_len - 1, min_chunk_bp=d.min_chunk_bp,
      p_max_chunk=d.long_chunk_prob, validation_fraction=d.validation_fraction,
      join_across_n=d.join_across_n, k=d.k, max_len=d.max_len)


def masking_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """config.masking as the keyword options of `masking.mask_batch` / `make_mask_fn`."""
  m = config.masking
  opts: dict[str, Any] = {"random_over": m.random_over}
  if m.p is not None:
    opts["p"] = m.p
  if m.strategy == "genemask":
    opts.update(rank_source=m.rank_source, all_high_if_few=m.all_high_if_few,
                specials_rank_zero=bool(m.get("specials_rank_zero", False)))
  return opts


def fixed_eval_batches(config: ml_collections.ConfigDict, eval_data: Any,
                       rank: np.ndarray) -> list[dict[str, np.ndarray]]:
  """Masks the held-out batches once with fixed keys: every evaluation sees the same masks."""
  key = jax.random.key(config.seed + 7919)
  batches = []
  for i, batch in enumerate(eval_data):
    m = masking.mask_batch(jax.random.fold_in(key, i), jnp.asarray(batch["input_ids"]),
                           jnp.asarray(rank), config.masking.strategy,
                           max_predictions=config.masking.max_predictions,
                           **masking_options(config))
    m = jax.device_get(m)
    batches.append({"input_ids": m.masked_ids, "masked_lm_positions": m.masked_lm_positions,
                    "masked_lm_ids": m.masked_lm_ids, "masked_lm_weights": m.masked_lm_weights})
  return batches


# ----------------------------------------------------------------------------- NPMI
def npmi_lookup(config: ml_collections.ConfigDict, fasta_paths: list[str],
                workdir: epath.Path) -> npmi_lib.NpmiLookup:
  """The rank lookup the masking reads: computed from the corpus (cached) or loaded."""
  source = config.npmi.source
  # The scored-6-mer floor matters only to GeneMask's masking (npmi.DEFAULT_MIN_SCORED_FRACTION).
  floor = config.npmi.min_scored_fraction if config.masking.strategy == "genemask" else 0.0
  if source == "authors":
    data_dir = os.environ.get("GENEMASK_DATA_DIR")
    if not data_dir:
      raise DataConfigError("config.npmi.source='authors' needs GENEMASK_DATA_DIR (the "
                            f"folder holding {AUTHORS_NPMI_CSV})")
    return npmi_lib.load_lookup(os.path.join(data_dir, AUTHORS_NPMI_CSV), k=config.data.k,
                                min_scored_fraction=floor)
  if source != "corpus":
    return npmi_lib.load_lookup(source, k=config.data.k, min_scored_fraction=floor)
  fingerprint = {"fasta": [(os.path.abspath(p), os.path.getsize(p)) for p in fasta_paths],
                 "min_count": config.npmi.min_count, "k": config.data.k}
  remote = workdir / "npmi"
  # The table is computed and read on local disk; a cloud workdir gets a copy.
  local = (epath.Path(os.path.expanduser("~/.cache/genemask_jax/npmi")) /
           _hash(fingerprint) if metrics_writer.is_remote(os.fspath(workdir)) else remote)
  cache, stamp = local / "table.csv", local / "source.json"
  fresh = not (cache.exists() and stamp.exists() and  # (JSON turns tuples into lists.)
               json.loads(stamp.read_text()) == json.loads(json.dumps(fingerprint)))
  if fresh and jax.process_index() == 0:
    t0 = time.time()
    counts = npmi_lib.count_fasta(fasta_paths, k=config.data.k)
    table = npmi_lib.score_counts(counts, min_count=config.npmi.min_count,
                                  min_scored_fraction=floor, source="config.data.fasta")
    local.mkdir(parents=True, exist_ok=True)
    npmi_lib.write_table(table, os.fspath(cache))
    stamp.write_text(json.dumps(fingerprint))
    if local != remote:
      remote.mkdir(parents=True, exist_ok=True)
      for f in local.iterdir():
        (remote / f.name).write_bytes(f.read_bytes())
    logging.info("NPMI table from %d FASTA file(s) in %.1f s -> %s", len(fasta_paths),
                 time.time() - t0, remote)
  distributed.sync("npmi")
  if not cache.exists():  # Another host's local cache, next to a cloud workdir.
    local.mkdir(parents=True, exist_ok=True)
    for f in remote.iterdir():
      (local / f.name).write_bytes(f.read_bytes())
  return npmi_lib.load_lookup(os.fspath(cache), k=config.data.k, min_scored_fraction=floor)


# ----------------------------------------------------------------------------- helpers
def _hash(obj: Any) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
