"""The data command: builds the genome pretraining and few-shot benchmark TFDS datasets.

  python -m genemask_jax.data.prepare --tfds_dir=~/tensorflow_datasets            # embedded genome
  python -m genemask_jax.data.prepare --tfds_dir=DIR --fasta=chr1.fa.gz,chr2.fa.gz
  python -m genemask_jax.data.prepare --tfds_dir=DIR --fasta=DATA/genome/hg38.fa.gz --num_workers=16
  GENEMASK_DATA_DIR=/path/to/data genemask-data --tfds_dir=DIR   # plus the four benchmarks

The genome dataset comes from ``--fasta`` (default: the human genome slice shipped in the
package); the few-shot datasets are built when ``--fewshot_data_dir`` is given or
``GENEMASK_DATA_DIR`` is set (a directory holding ``fewshot/``, as the download command
writes it). All inputs are checked before any long work; what was built is printed:
examples per split, the share of A/C/G/T bases kept in chunks, and the test rows that also
occur in a training file. The genome build runs on ``--num_workers`` processes (default:
all cores); the dataset is the same for any number. A gzip FASTA is unpacked under
``TFDS_DIR/downloads/`` while the build runs (its uncompressed size on disk: ~3.1 GB for
hg38), so that the workers can read it in parallel. A killed build, run again with the
same arguments, resumes from its finished work units; a second build of the same dataset
started meanwhile prints the lock file it waits for. A user error prints one line and
exits with status 2.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

from absl import app
from absl import flags
import tensorflow_datasets as tfds

from genemask_jax import errors
from genemask_jax.data import fewshot_tfds
from genemask_jax.data import genome
from genemask_jax.data import genome_tfds
from genemask_jax.data import tasks as tasks_lib

_TFDS_DIR = flags.DEFINE_string("tfds_dir", None, "TFDS data dir to write", required=True)
_FASTA = flags.DEFINE_list("fasta", [], "genome FASTA files (plain or gzip); empty: the "
                           "embedded GRCh37 sample")
_FEWSHOT_DIR = flags.DEFINE_string(
    "fewshot_data_dir", None, "data dir holding fewshot/ (default: $GENEMASK_DATA_DIR; "
    "neither: no few-shot datasets)")
_TASKS = flags.DEFINE_list("tasks", [], "few-shot tasks to build (default: all four)")
_SEED = flags.DEFINE_integer("seed", 0, "chunking seed (offsets, lengths, 90/10 split)")
_JOIN = flags.DEFINE_bool("join_across_n", False,
                          "delete non-ACGT letters and glue the pieces (the GeneMask "
                          "authors' way) instead of splitting records there")
_MAX_LEN = flags.DEFINE_integer("max_len", 512, "tokens per genome example")
_SKIP_GENOME = flags.DEFINE_bool("skip_genome", False, "build only the few-shot datasets")
_NUM_WORKERS = flags.DEFINE_integer(
    "num_workers", 0, "processes for the genome build; 0: all cores (1 for a small input). "
    "The dataset does not depend on it")


class PrepareError(errors.UserError):
  """A bad argument to the data command."""


def _fewshot_dir(flag_value: str | None) -> str | None:
  path = flag_value or os.environ.get("GENEMASK_DATA_DIR") or None
  if path is None:
    return None
  path = os.path.expanduser(path)
  if not os.path.isdir(os.path.join(path, "fewshot")):
    raise PrepareError(f"{path}: no fewshot/ directory; expected a data dir laid out like the "
                     "download command writes it (see genemask_jax.data.download)")
  return path


def prepare(tfds_dir: str, fasta_paths: Sequence[str] | None = None,
            fewshot_data_dir: str | None = None, tasks: Sequence[str] | None = None,
            chunk_cfg: genome.ChunkConfig = genome.ChunkConfig(),
            build_genome: bool = True, log=print, num_workers: int = 0) -> dict[str, Any]:
  """Builds the datasets and returns {"genome": summary, "fewshot": summary}.

  Inputs (FASTA files, chunking settings, the few-shot dir, num_workers) are all checked
  before any dataset is built.
  """
  out: dict[str, Any] = {}
  if num_workers < 0:
    raise PrepareError(f"--num_workers must be >= 0 (0: all cores), got {num_workers}")
  config = genome_tfds.make_config(fasta_paths or None, chunk_cfg) if build_genome else None
  if fewshot_data_dir is not None:
    for name in tasks or ():
      tasks_lib.get_task(name)  # Unknown task names fail here.
    # The few-shot build checks every file first and is quick: do it before the genome.
    log(f"few-shot benchmarks from {fewshot_data_dir} ...")
    summary = fewshot_tfds.build_fewshot(fewshot_data_dir, tfds_dir,
                                         tasks=list(tasks) if tasks else None)
    out["fewshot"] = summary
    log(fewshot_tfds.format_summary(summary))
  if config is not None:
    log(f"genome: chunking {len(config.fasta)} FASTA file(s) into {tfds_dir} ...")
    builder = genome_tfds.build(tfds_dir, list(config.fasta) if fasta_paths else None,
                                chunk_cfg, num_workers=num_workers, log=log)
    s = genome_tfds.summary(builder)
    out["genome"] = s
    log(f"genome ({s['name']}) -> {s['data_dir']}")
    log("  from: " + ", ".join(s["files"]))
    log("  examples: " + ", ".join(f"{k}={v}" for k, v in s["examples"].items()))
    if "stats" in s:
      st = genome.ChunkStats(**{k: s["stats"][k] for k in ("letters", "acgt", "kept", "chunks")})
      log(f"  read: {st.describe()}")
    if "seconds" in s:
      log(f"  built in {s['seconds']:.1f} s on {s['num_workers']} process(es), "
          f"{s['bytes'] / 1e6:,.0f} MB on disk"
          + (f", {s['reused_units']} of {s['units']} units reused from an interrupted build"
             if s.get("reused_units") else ""))
  return out


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  tfds.disable_progress_bar()
  try:
    chunk_cfg = genome.ChunkConfig(seed=_SEED.value, join_across_n=_JOIN.value,
                                   max_len=_MAX_LEN.value).validate()
    prepare(os.path.expanduser(_TFDS_DIR.value), _FASTA.value or None,
            _fewshot_dir(_FEWSHOT_DIR.value), _TASKS.value or None, chunk_cfg,
            build_genome=not _SKIP_GENOME.value, num_workers=_NUM_WORKERS.value)
  except errors.UserError as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from e
  except (ValueError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(1) from e


def run() -> None:
  """Console-script entry point (``genemask-data``)."""
  app.run(main)


if __name__ == "__main__":
  run()
