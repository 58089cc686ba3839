"""TFDS builder for the genome pretraining corpus (array_record, no TensorFlow).

Examples are the chunks of `genome.iter_chunks`::

  {"input_ids": int32 (max_len,)  [CLS] k-mer ids [SEP] [PAD]...,
   "length":    int32 ()          number of non-pad tokens}

in splits "train" and "validation". The FASTA files and chunking parameters live in the
builder config, whose name carries a hash of them (file names and sizes, every chunking
field), so a different corpus or setting never reuses a stale build. The default config
is the genome slice embedded in the package.

The build runs on all cores. The main process plans (`plan.plan_units`): it reads each
file once for its structure (headers, comment lines; a gzip input is unpacked
into the work dir on the way: a gzip stream cannot be read from the middle, so the copy
costs the uncompressed size on disk until the build completes); worker processes check
and scan the records for their runs of A/C/G/T and cut short records into their seeded
chunks from each segment's place and length alone (no bases touched; the main process does
this for long records, which have few segments); the main process groups the chunks into
work units of 1-16 Mbp (the size follows the input's size, never the worker count). Each
worker then reads its unit's bases from the file itself and writes one array_record shard
per split (`shards.write_unit`); with ``num_workers`` = N the main process is one of the
N and writes a unit itself whenever the N - 1 worker processes all have theirs (see
`write_units`). Reading, scanning, planning and writing overlap: records are planned as
they are read. Shards are numbered in unit order, so the dataset is
byte-identical, example for example and in the same order, for any ``num_workers``, and
the examples are exactly `genome.iter_chunks`'s. Memory is bounded by the units in flight
(two per worker process), not by the genome or its line length. Finished units are kept in
``TFDS_DIR/downloads/genemask_genome/CONFIG/VERSION/`` until the build completes, so a
build that was killed resumes from them; TFDS only marks the dataset as built
(``dataset_info.json``) after the last shard is in place, so a half-written build is never
taken for a finished one. One build of a config runs at a time: a second one logs the lock
file it waits for (``...CONFIG/VERSION.lock``) and the pid holding it, then waits.
Examples are stored in corpus order (TFDS's key-hash shuffle is not applied: grain
shuffles when reading). The stats of what was read and kept (`genome.ChunkStats`) are in
the dataset's ``metadata.json`` and in `summary`.

Read back only with ``builder.as_data_source()`` (random access, what grain wants); never
``tfds.load``/``as_dataset``, which import TensorFlow::

  builder = genome_tfds.build(tfds_dir, fasta_paths=None)   # None: embedded sample
  sources = genome_tfds.data_sources(builder)              # {"train": ..., "validation": ...}
  sources["train"][0]["input_ids"]                         # np.int32 (512,)
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from genemask_jax import errors
from genemask_jax.data import fasta
from genemask_jax.data import genome
from genemask_jax.data import plan as plan_lib
from genemask_jax.data import pool as pool_lib
from genemask_jax.data import shards

# 2.0.0: parallel build; the chunk straddling a segment's start is kept (#20 item 7);
# corpus order instead of TFDS's key-hash shuffle; snappy-compressed shards.
VERSION = "2.0.0"
_MIN_UNIT_BP, _MAX_UNIT_BP = 1 << 20, 1 << 24
_TARGET_UNITS = 256  # Units (so shards per split) a corpus is cut into, at most ~.
_GZIP_RATIO = 3.3  # Letters per byte of gzip FASTA, for the size estimate only.
_MIN_PARALLEL_BP = 16 << 20  # Below this (estimated), the automatic worker count is 1.
_IN_FLIGHT = 2  # Units handed to each worker process at a time.


class CorpusError(errors.UserError):
  """The FASTA input gives no usable corpus (e.g. too little sequence for both splits)."""


def estimated_letters(paths: Sequence[str]) -> int:
  """A size estimate of the sequence in the files, from their sizes (gzip counted 3.3x)."""
  total = 0.0
  for p in paths:
    with open(p, "rb") as f:
      gz = f.read(2) == b"\x1f\x8b"
    total += os.path.getsize(p) * (_GZIP_RATIO if gz else 1.0)
  return int(total)


def unit_bp(paths: Sequence[str]) -> int:
  """Bases per work unit: a power of two in [1, 16] Mbp, ~256 units for the input."""
  want = estimated_letters(paths) / _TARGET_UNITS
  bp = 1 << max(0, math.ceil(math.log2(max(want, 1))))
  return int(min(max(bp, _MIN_UNIT_BP), _MAX_UNIT_BP))


def default_num_workers() -> int:
  """All cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not Linux.
    return os.cpu_count() or 1


def resolve_num_workers(num_workers: int | None, paths: Sequence[str]) -> int:
  """num_workers >= 1 as given; None or 0: all cores, or 1 for a small input."""
  if num_workers is not None and num_workers < 0:
    raise CorpusError(f"num_workers must be >= 0 (0: all cores), got {num_workers}")
  if num_workers:
    return int(num_workers)
  if estimated_letters(paths) < _MIN_PARALLEL_BP:
    return 1  # Starting processes would cost more than they save.
  return default_num_workers()


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


def _broken(e: BaseException, work_dir: str) -> RuntimeError:
  return RuntimeError(
      f"a corpus build worker died ({e}; out of memory?); run the same command again: "
      f"the finished units in {work_dir} are kept and the build resumes from them")


def write_units(units: Iterator[shards.Unit | shards.RangeUnit], work_dir: str,
                num_workers: int, log: Callable[[str], None] = logging.info,
                pool: concurrent.futures.Executor | None = None
                ) -> tuple[list[dict[str, Any]], int]:
  """Writes every unit not already finished in work_dir; returns (results, reused).

  With num_workers > 1 the main process is one of them: num_workers - 1 worker processes
  (`pool`, or started here) get the units, at most two each in flight (which bounds
  memory), and the main process writes a unit itself whenever they all have theirs, in
  the time it would otherwise wait (three processes on two cores cost more than the
  start-up and hand-off of a third worker). Results come back in unit order either way.
  """
  results: dict[int, dict[str, Any]] = {}
  reused = 0
  t0 = last = time.monotonic()
  bases = 0

  markers = set(shards.finished_indices(work_dir))  # Units an earlier run finished.

  def todo() -> Iterator[shards.Unit | shards.RangeUnit]:
    nonlocal reused, bases, last
    for unit in units:
      bases += unit.num_bases()
      done = shards.finished(work_dir, unit) if unit.index in markers else None
      if done is not None:
        results[unit.index] = done
        reused += 1
      else:
        yield unit
      if time.monotonic() - last > 30:
        last = time.monotonic()
        log(f"  ... {bases / 1e6:,.0f} Mbp of chunks in {last - t0:.0f} s, "
            f"{len(results)} units done")

  if num_workers <= 1:
    for unit in todo():
      results[unit.index] = shards.write_unit(unit, work_dir)
    return [results[i] for i in sorted(results)], reused
  try:
    with contextlib.ExitStack() as stack:
      if pool is None:
        pool = stack.enter_context(pool_lib.process_pool(num_workers - 1))
      pending: set[concurrent.futures.Future] = set()

      def collect(return_when, timeout=None):
        nonlocal pending
        done, pending = concurrent.futures.wait(pending, timeout, return_when)
        for fut in done:
          r = fut.result()
          results[r["index"]] = r

      for unit in todo():
        collect(concurrent.futures.FIRST_COMPLETED, 0)  # Without waiting.
        if len(pending) < _IN_FLIGHT * (num_workers - 1):
          pending.add(pool.submit(shards.write_unit, unit, work_dir))
        else:  # Every worker has two: this one is the main process's.
          results[unit.index] = shards.write_unit(unit, work_dir)
      if pending:
        collect(concurrent.futures.ALL_COMPLETED)
  except concurrent.futures.process.BrokenProcessPool as e:
    raise _broken(e, work_dir) from e
  return [results[i] for i in sorted(results)], reused


class GenemaskGenome(tfds.core.GeneratorBasedBuilder):
  """Genome chunks as k-mer token ids, for masked-language-model pretraining."""

  VERSION = tfds.core.Version(VERSION)

  def __init__(self, *, config: GenomeConfig | None = None, num_workers: int | None = None,
               log: Callable[[str], None] | None = None, **kwargs):
    super().__init__(config=config if config is not None else make_config(), **kwargs)
    self._num_workers = num_workers
    self._log = log or logging.info

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
        metadata=tfds.core.MetadataDict(),
    )

  def work_dir(self) -> str:
    """Where finished units wait until the build completes (kept across a crash)."""
    return os.path.join(os.fspath(self.data_dir_root), "downloads", self.name, self.builder_config.name, str(self.version))

  def _download_and_prepare(self, dl_manager, download_config=None):
    del dl_manager, download_config  # The FASTA files are local; no TFDS shuffling.
    cfg = self._chunk_cfg()
    paths = list(self.builder_config.fasta)
    work = self.work_dir()
    os.makedirs(work, exist_ok=True)
    workers = resolve_num_workers(self._num_workers, paths)
    bp = unit_bp(paths)
    stats = genome.ChunkStats()
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
      pool = stack.enter_context(pool_lib.process_pool(workers - 1)) if workers > 1 else None
      units = plan_lib.plan_units(paths, cfg, bp, stats, work,
                                   pool.submit if pool else plan_lib.run_now)
      results, reused = write_units(units, work, workers, self._log, pool=pool)
    seconds = time.monotonic() - t0
    counts = {s: sum(r["examples"][s] for r in results) for s in shards.SPLITS}
    if not counts[genome.TRAIN] or (cfg.validation_fraction > 0
                                    and not counts[genome.VALIDATION]):
      which = "training" if not counts[genome.TRAIN] else "validation"
      raise CorpusError(
          f"{', '.join(paths)}: the corpus yields no {which} chunk ({stats.describe()}: "
          f"{counts[genome.TRAIN]} train and {counts[genome.VALIDATION]} validation chunks); "
          f"both splits need at least one (about 1 chunk in "
          f"{1 / max(cfg.validation_fraction, 1e-9):.0f} goes to validation): give more "
          "sequence")
    split_infos = []
    for split in shards.SPLITS:
      template = self._get_filename_template(split_name=split)
      used = [r for r in results if r["examples"][split]]
      for j, r in enumerate(used):
        os.replace(shards.shard_path(work, r["index"], split),
                   os.fspath(template.sharded_filepath(shard_index=j, num_shards=len(used))))
      split_infos.append(tfds.core.SplitInfo(
          name=split, shard_lengths=[r["examples"][split] for r in used],
          num_bytes=sum(r["bytes"][split] for r in used), filename_template=template))
    self.info.set_splits(tfds.core.SplitDict(split_infos))
    self.info.metadata.update({
        "stats": stats.as_dict(), "units": len(results), "unit_bp": bp,
        "num_workers": workers, "reused_units": reused, "seconds": round(seconds, 3)})

  def _post_download_and_prepare_hook(self) -> None:
    shutil.rmtree(self.work_dir(), ignore_errors=True)  # The dataset is complete now.

  # Required by GeneratorBasedBuilder; the build above does not use them. They give the
  # same examples in one process, in corpus order.
  def _split_generators(self, dl_manager):
    del dl_manager
    return {genome.TRAIN: self._generate_examples(genome.TRAIN),
            genome.VALIDATION: self._generate_examples(genome.VALIDATION)}

  def _generate_examples(self, split: str):
    for chunk in genome.iter_chunks(self.builder_config.fasta, self._chunk_cfg()):
      if chunk.split == split:
        yield chunk.key, {"input_ids": chunk.input_ids, "length": np.int32(chunk.length)}


@contextlib.contextmanager
def _locked(path: str, log: Callable[[str], None] = logging.info) -> Iterator[None]:
  """An exclusive lock on `path` (created), held by one build of a config at a time.

  A second build of the same config logs one line naming the lock file and the pid that
  holds it, then waits; the lock goes with its holder's process, however that ends.
  """
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "a+") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "unknown"
      log(f"waiting for {path}: another build of this dataset (pid {holder}) holds it")
      fcntl.flock(f, fcntl.LOCK_EX)
    try:
      f.seek(0)
      f.truncate()
      f.write(str(os.getpid()))
      f.flush()
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def build(tfds_dir: str | os.PathLike,
          fasta_paths: Sequence[str | os.PathLike] | None = None,
          chunk_cfg: genome.ChunkConfig | Mapping[str, Any] | None = None,
          num_workers: int | None = None,
          log: Callable[[str], None] | None = None) -> GenemaskGenome:
  """Builds the dataset under tfds_dir (a no-op if this exact config is built already).

  Args:
    tfds_dir: TFDS data directory.
    fasta_paths: FASTA files; None for the embedded genome sample.
    chunk_cfg: chunking settings (ChunkConfig or dict); None for the defaults.
    num_workers: processes for the build; None or 0: all cores (1 for a small input).
      The dataset does not depend on it.
    log: progress lines (default: logging.info).

  Returns:
    the prepared builder; read it with `data_sources`.

  Raises:
    fasta.FastaError, genome.GenomeConfigError: bad input, before any work.
    CorpusError: the input gives an empty split.
  """
  config = make_config(fasta_paths, chunk_cfg)
  if num_workers is not None and num_workers < 0:
    raise CorpusError(f"num_workers must be >= 0 (0: all cores), got {num_workers}")
  tfds_dir = os.fspath(tfds_dir)
  builder = builder_for(tfds_dir, config, num_workers, log)
  if builder.is_prepared():
    if os.path.isdir(builder.work_dir()):  # Left if the last build died after finishing.
      shutil.rmtree(builder.work_dir(), ignore_errors=True)
    return builder
  with _locked(builder.work_dir() + ".lock", log or logging.info):
    builder = builder_for(tfds_dir, config, num_workers, log)  # Another build may have won.
    if not builder.is_prepared():
      # Under the lock, a TFDS temporary dir of this config is a killed build's: remove.
      variant = os.fspath(builder.data_path)
      parent = os.path.dirname(variant)
      if os.path.isdir(parent):
        for name in os.listdir(parent):
          if name.startswith("incomplete.") and name.endswith("_" + os.path.basename(variant)):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
      builder.download_and_prepare(
          download_dir=os.path.join(tfds_dir, "downloads"),
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


def builder_for(tfds_dir: str | os.PathLike, config: GenomeConfig,
                num_workers: int | None = None,
                log: Callable[[str], None] | None = None) -> GenemaskGenome:
  """The builder for `config` under tfds_dir, array_record format, not yet prepared."""
  return GenemaskGenome(config=config, data_dir=os.fspath(tfds_dir), file_format="array_record",
                        num_workers=num_workers, log=log)


def data_sources(builder: GenemaskGenome) -> dict[str, Any]:
  """{"train": source, "validation": source}: random-access sources of numpy dicts."""
  return dict(builder.as_data_source())


def summary(builder: GenemaskGenome) -> dict[str, Any]:
  """What a build holds: config name, directory, examples per split, bytes on disk, and
  (from the build's metadata) the letters read, the share of A/C/G/T bases kept, units,
  workers and seconds."""
  meta = dict(builder.info.metadata or {})
  return {"name": builder.builder_config.name, "data_dir": str(builder.data_dir),
          "files": list(builder.builder_config.fasta),
          "examples": {k: v.num_examples for k, v in builder.info.splits.items()},
          "bytes": sum(v.num_bytes for v in builder.info.splits.values()),
          **{k: meta[k] for k in ("stats", "units", "num_workers", "reused_units", "seconds")
             if k in meta}}
