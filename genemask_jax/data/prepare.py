"""The data command: builds the genome pretraining and few-shot benchmark TFDS datasets.

  python -m genemask_jax.data.prepare --tfds_dir=~/tensorflow_datasets            # embedded genome
  python -m genemask_jax.data.prepare --tfds_dir=DIR --fasta=chr1.fa.gz,chr2.fa.gz
  GENEMASK_DATA_DIR=/path/to/data genemask-data --tfds_dir=DIR   # plus the four benchmarks

The genome dataset comes from ``--fasta`` (default: the human genome slice shipped in the
package); the few-shot datasets are built when ``--fewshot_data_dir`` is given or
``GENEMASK_DATA_DIR`` is set (a directory holding ``fewshot/``, as the download command
writes it). All inputs are checked before any long work; what was built is printed:
examples per split and the test rows that also occur in a training file.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

from absl import app
from absl import flags

from genemask_jax.data import fasta
from genemask_jax.data import genome
from genemask_jax.data import genome_tfds

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


def _fewshot_dir(flag_value: str | None) -> str | None:
  path = flag_value or os.environ.get("GENEMASK_DATA_DIR") or None
  if path is None:
    return None
  path = os.path.expanduser(path)
  if not os.path.isdir(os.path.join(path, "fewshot")):
    raise ValueError(f"{path}: no fewshot/ directory; expected a data dir laid out like the "
                     "download command writes it (see genemask_jax.data.download)")
  return path


def prepare(tfds_dir: str, fasta_paths: Sequence[str] | None = None,
            fewshot_data_dir: str | None = None, tasks: Sequence[str] | None = None,
            chunk_cfg: genome.ChunkConfig = genome.ChunkConfig(),
            build_genome: bool = True, log=print) -> dict[str, Any]:
  """Builds the datasets and returns {"genome": summary, "fewshot": summary}.

  Inputs (FASTA files, chunking settings, the few-shot dir) are all checked before any
  dataset is built.
  """
  out: dict[str, Any] = {}
  config = genome_tfds.make_config(fasta_paths or None, chunk_cfg) if build_genome else None
  fewshot_tfds = None
  if fewshot_data_dir is not None:
    try:
      from genemask_jax.data import fewshot_tfds  # pylint: disable=g-import-not-at-top
      from genemask_jax.data import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise RuntimeError("few-shot datasets need genemask_jax.data.fewshot_tfds, which "
                         f"could not be imported: {e}") from e
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
    builder = genome_tfds.builder_for(tfds_dir, config)
    builder.download_and_prepare(download_dir=os.path.join(tfds_dir, "downloads"))
    s = genome_tfds.summary(builder)
    out["genome"] = s
    log(f"genome ({s['name']}) -> {s['data_dir']}")
    log("  from: " + ", ".join(s["files"]))
    log("  examples: " + ", ".join(f"{k}={v}" for k, v in s["examples"].items()))
  return out


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()
  try:
    chunk_cfg = genome.ChunkConfig(seed=_SEED.value, join_across_n=_JOIN.value,
                                   max_len=_MAX_LEN.value).validate()
    prepare(os.path.expanduser(_TFDS_DIR.value), _FASTA.value or None,
            _fewshot_dir(_FEWSHOT_DIR.value), _TASKS.value or None, chunk_cfg,
            build_genome=not _SKIP_GENOME.value)
  except (fasta.FastaError, ValueError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(1) from e


def run() -> None:
  """Console-script entry point (``genemask-data``)."""
  app.run(main)


if __name__ == "__main__":
  run()
