r"""Command line of the motif analysis: top-NPMI 6-mers against JASPAR and the few-shot data.

    python -m genemask_jax.motifs \
        --npmi=$GENEMASK_DATA_DIR/npmi/genemask_grch38_chr1-3_6mer_npmi.csv \
        --top=100 --jaspar=JASPAR2024 --collection=CORE --tax_group=vertebrates \
        --tasks=prom_core,prom_300,cohn_enh,splice_40 --data_dir=$GENEMASK_DATA_DIR \
        --output_dir=/tmp/motifs/authors

Every input is checked before the work starts (the table is read and must hold 6-mers, K
must fit it and its GC-matched background, the release, collection, tax group and tasks
must exist, the few-shot files must parse); a bad one is printed as one line
(``motifs: error: ...``) with exit code 2. The few-shot data come from --data_dir or
$GENEMASK_DATA_DIR; ``--tasks=`` (empty) skips the sequence side. Writes the files listed in
`genemask_jax.motifs.report` into --output_dir.
"""

from __future__ import annotations

import importlib.util
import os
import time
from typing import Sequence

from absl import app
from absl import flags

from genemask_jax import errors
from genemask_jax.data import tasks
from genemask_jax.motifs import database
from genemask_jax.motifs import enrichment
from genemask_jax.motifs import report
from genemask_jax.motifs import table as table_lib
from genemask_jax.motifs.table import MotifsError

ALL_TASKS = "prom_core,prom_300,cohn_enh,splice_40"

flags.DEFINE_string("npmi", None, "NPMI table of 6-mers: our CSV, the authors' CSV, "
                    "<stem>.rank.npy or .npz (anything genemask_jax.npmi.load_lookup reads).")
flags.DEFINE_integer("top", 100, "K: the top-K 6-mers by NPMI.")
flags.DEFINE_string("jaspar", database.DEFAULT_RELEASE, "JASPAR release shipped by pyjaspar.")
flags.DEFINE_string("collection", database.DEFAULT_COLLECTION, "JASPAR collection.")
flags.DEFINE_string("tax_group", database.DEFAULT_TAX_GROUP,
                    "JASPAR taxonomic group; empty = all groups.")
flags.DEFINE_list("tasks", ALL_TASKS.split(","), "Few-shot tasks for the sequence side; "
                  "empty = none.")
flags.DEFINE_string("data_dir", None, "Directory holding fewshot/ (default $GENEMASK_DATA_DIR).")
flags.DEFINE_string("output_dir", None, "Where the CSVs, report.md and PNGs go.")
flags.DEFINE_integer("draws", 1000, "GC-matched background draws.")
flags.DEFINE_integer("permutations", 1000, "Shuffles per correlation permutation p-value.")
flags.DEFINE_float("q_threshold", 0.05, "A 6-mer matches when its best JASPAR q-value is at "
                   "most this.")
flags.DEFINE_float("pseudocount", enrichment.DEFAULT_PSEUDOCOUNT, "Log-odds pseudo-count.")
flags.DEFINE_integer("seed", 0, "Seed of the background draws and permutations.")

FLAGS = flags.FLAGS


def _check_flags() -> None:
  if not FLAGS.npmi:
    raise MotifsError("--npmi is required: the NPMI table of 6-mers (CSV, .npy or .npz)")
  if not FLAGS.output_dir:
    raise MotifsError("--output_dir is required: where the report and tables go")
  if FLAGS.draws < 1:
    raise MotifsError(f"--draws={FLAGS.draws}: expected at least 1 background draw")
  if FLAGS.permutations < 1:
    raise MotifsError(f"--permutations={FLAGS.permutations}: expected at least 1")
  if not 0 < FLAGS.q_threshold <= 1:
    raise MotifsError(f"--q_threshold={FLAGS.q_threshold}: expected a value in (0, 1]")
  if FLAGS.pseudocount <= 0:
    raise MotifsError(f"--pseudocount={FLAGS.pseudocount}: expected a positive number")
  if os.path.exists(FLAGS.output_dir) and not os.path.isdir(FLAGS.output_dir):
    raise MotifsError(f"--output_dir={FLAGS.output_dir}: exists and is not a directory")


def _check_extra() -> None:
  """Raises MotifsError naming the missing packages of the ``motifs`` extra, if any."""
  missing = [m for m in ("pyjaspar", "memelite", "logomaker", "scipy")
             if importlib.util.find_spec(m) is None]
  if missing:
    raise MotifsError(f"the motif analysis needs {', '.join(missing)}: install the motifs "
                      "extra, pip install '.[motifs]'")


def run() -> None:
  """Checks every input, then runs both sides and writes the outputs."""
  t0 = time.perf_counter()
  _check_flags()
  _check_extra()
  table = table_lib.load_table(FLAGS.npmi)
  top = table.top(FLAGS.top)
  database.check_gc_background(table, top)
  specs = enrichment.parse_tasks(FLAGS.tasks)
  tax_group = FLAGS.tax_group or None
  database.check_selection(FLAGS.jaspar, FLAGS.collection, tax_group)
  training = []
  if specs:
    data_dir = tasks.resolve_data_dir(FLAGS.data_dir)
    training = [enrichment.load_training(spec, data_dir) for spec in specs]
  motifs = database.load_jaspar(FLAGS.jaspar, FLAGS.collection, tax_group)
  try:
    os.makedirs(FLAGS.output_dir, exist_ok=True)
  except OSError as e:
    raise MotifsError(f"--output_dir={FLAGS.output_dir}: cannot create it: "
                      f"{e.strerror or e}") from e
  selection = database.describe_selection(FLAGS.jaspar, FLAGS.collection, tax_group,
                                          len(motifs))
  print(f"{table.source}: top {FLAGS.top} of {int(table.scored.sum())} scored 6-mers vs "
        f"{selection}; {FLAGS.draws} GC-matched draws", flush=True)
  db = database.analyse(table, motifs, FLAGS.top, n_draws=FLAGS.draws,
                        q_threshold=FLAGS.q_threshold, seed=FLAGS.seed, selection=selection)
  t = db.test
  print(f"database: {t.n_top_matched}/{t.n_top} top 6-mers match at q <= {FLAGS.q_threshold} "
        f"(background mean {t.background_shares.mean():.3f}, rest {t.rest_share:.3f}); "
        f"permutation p = {t.permutation_p:.3g}, Fisher p = {t.fisher_p:.3g} "
        f"({time.perf_counter() - t0:.1f} s)", flush=True)
  comparisons = []
  for ts in training:
    for c in enrichment.task_comparisons(ts, table, pseudocount=FLAGS.pseudocount,
                                         permutations=FLAGS.permutations, seed=FLAGS.seed):
      r = c.correlation
      print(f"{c.name}: {c.n_pos}/{c.n_neg} sequences, Spearman rho(NPMI, log-odds) = "
            f"{r.rho:+.3f}, permutation p = {r.p_permutation:.3g}, within GC "
            f"{r.p_permutation_gc:.3g}", flush=True)
      comparisons.append(c)
  args = {"npmi": FLAGS.npmi, "top": FLAGS.top, "jaspar": FLAGS.jaspar,
          "collection": FLAGS.collection, "tax_group": tax_group,
          "tasks": [s.name for s in specs], "draws": FLAGS.draws,
          "permutations": FLAGS.permutations, "q_threshold": FLAGS.q_threshold,
          "pseudocount": FLAGS.pseudocount, "seed": FLAGS.seed}
  written = report.write_all(FLAGS.output_dir, table, db, comparisons, args)
  print(f"wrote {', '.join(written)} in {FLAGS.output_dir} "
        f"({time.perf_counter() - t0:.1f} s in all)")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  with errors.exits_on_user_error("motifs"):
    run()


if __name__ == "__main__":
  app.run(main)
