"""TFDS builder for the genome pretraining corpus (array_record, no TensorFlow).

Examples are the chunks of `genome.iter_chunks`::

  {"input_ids": int32 (max_len,)  [CLS] k-mer ids [SEP] [PAD]...,
   "length":    int32 ()          number of non-pad tokens}

in splits "train" and "validation". The FASTA files and chunking parameters live in the
builder config, whose name carries a hash of them (file names and sizes, every chunking
field), so a different corpus or setting never reuses a stale build. The default config
is the genome slice embedded in the package.

Read back only with ``builder.as_data_source()`` (random access, what grain wants); never
``tfds.load``/``as_dataset``, which import TensorFlow::

  builder = genome_tfds.build(tfds_dir, fasta_paths=None)   # None: embedded sample
  sources = genome_tfds.data_sources(builder)              # {"train": ..., "validation": ...}
  sources["train"][0]["input_ids"]                         # np.int32 (512,)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from genemask_jax.data import fasta
from genemask_jax.data import genome

VERSION = "1.0.0"


@dataclasses.dataclass(eq=False)
class GenomeConfig(tfds.core.BuilderConfig):
  """Which FASTA files and chunking parameters a build uses.

  Attributes:
    fasta: FASTA paths (plain or gzip), read in order.
    chunking: fields of `genome.ChunkConfig`.
  """
  fasta: tuple[str, ...] = ()
  chunking: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _fingerprint(paths: Sequence[str], chunk_cfg: genome.ChunkConfig) -> str:
  """Short hash of the corpus (file names and sizes) and every chunking field."""
  files = [(os.path.basename(p), os.path.getsize(p)) for p in paths]
  blob = json.dumps({"files": files, "chunking": dataclasses.asdict(chunk_cfg),
                     "version": VERSION}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:12]


def make_config(fasta_paths: Sequence[str | os.PathLike] | None = None,
                chunk_cfg: genome.ChunkConfig | Mapping[str, Any] | None = None
                ) -> GenomeConfig:
  """A builder config for FASTA files (None: the embedded sample) and chunking settings.

  Checks the files' first lines (fasta.check_files) and the chunking fields, so bad input
  fails here, before any long work.
  """
  embedded = fasta_paths is None
  paths = genome.default_genome_paths() if embedded else [os.fspath(p) for p in fasta_paths]
  fasta.check_files(paths)
  if chunk_cfg is None:
    chunk_cfg = genome.ChunkConfig()
  elif not isinstance(chunk_cfg, genome.ChunkConfig):
    chunk_cfg = genome.ChunkConfig.from_dict(chunk_cfg)
  chunk_cfg.validate()
  label = "sample" if embedded else "fasta"
  return GenomeConfig(
      name=f"{label}_{_fingerprint(paths, chunk_cfg)}",
      version=VERSION,
      description=(f"{len(paths)} FASTA file(s): "
                   f"{', '.join(os.path.basename(p) for p in paths)}; chunking "
                   f"{dataclasses.asdict(chunk_cfg)}"),
      fasta=tuple(os.path.abspath(p) for p in paths),
      chunking=dataclasses.asdict(chunk_cfg),
  )


class GenemaskGenome(tfds.core.GeneratorBasedBuilder):
  """Genome chunks as k-mer token ids, for masked-language-model pretraining."""

  VERSION = tfds.core.Version(VERSION)

  def __init__(self, *, config: GenomeConfig | None = None, **kwargs):
    super().__init__(config=config if config is not None else make_config(), **kwargs)

  def _chunk_cfg(self) -> genome.ChunkConfig:
    return genome.ChunkConfig.from_dict(self.builder_config.chunking)

  def _info(self) -> tfds.core.DatasetInfo:
    max_len = self._chunk_cfg().max_len
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.builder_config.description,
        features=tfds.features.FeaturesDict({
            "input_ids": tfds.features.Tensor(shape=(max_len,), dtype=np.int32),
            "length": tfds.features.Scalar(dtype=np.int32),
        }),
        homepage="https://github.com/roysoumya/GeneMask",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The FASTA files are local.
    return {genome.TRAIN: self._generate_examples(genome.TRAIN),
            genome.VALIDATION: self._generate_examples(genome.VALIDATION)}

  def _generate_examples(self, split: str):
    for chunk in genome.iter_chunks(self.builder_config.fasta, self._chunk_cfg()):
      if chunk.split == split:
        yield chunk.key, {"input_ids": chunk.input_ids, "length": np.int32(chunk.length)}


def build(tfds_dir: str | os.PathLike,
          fasta_paths: Sequence[str | os.PathLike] | None = None,
          chunk_cfg: genome.ChunkConfig | Mapping[str, Any] | None = None
          ) -> GenemaskGenome:
  """Builds the dataset under tfds_dir (a no-op if this exact config is built already).

  Args:
    tfds_dir: TFDS data directory.
    fasta_paths: FASTA files; None for the embedded genome sample.
    chunk_cfg: chunking settings (ChunkConfig or dict); None for the defaults.

  Returns:
    the prepared builder; read it with `data_sources`.
  """
  builder = builder_for(tfds_dir, make_config(fasta_paths, chunk_cfg))
  builder.download_and_prepare(
      download_dir=os.path.join(os.fspath(tfds_dir), "downloads"),
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


def builder_for(tfds_dir: str | os.PathLike, config: GenomeConfig) -> GenemaskGenome:
  """The builder for `config` under tfds_dir, array_record format, not yet prepared."""
  return GenemaskGenome(config=config, data_dir=os.fspath(tfds_dir), file_format="array_record")


def data_sources(builder: GenemaskGenome) -> dict[str, Any]:
  """{"train": source, "validation": source}: random-access sources of numpy dicts."""
  return dict(builder.as_data_source())


def summary(builder: GenemaskGenome) -> dict[str, Any]:
  """What a build holds: config name, directory, examples per split."""
  return {"name": builder.builder_config.name, "data_dir": str(builder.data_dir),
          "files": list(builder.builder_config.fasta),
          "examples": {k: v.num_examples for k, v in builder.info.splits.items()}}
