r"""What the top-NPMI 6-mers are made of: Alu-Sx 6-mers and two-letter simple repeats.

Produces the repeat rows of docs/motifs.md's results table: for each NPMI table, how many
of the top-K 6-mers occur in the Alu-Sx consensus (GenBank U14574, either strand) or use
at most two distinct letters, against GC-matched background draws (the same draws as the
motif command's), and how many of the top-K's JASPAR matches (q <= 0.05) are neither.

    python benchmarks/motifs_repeats.py --npmi=A.csv,B.csv [--top=100] [--draws=1000]
"""

from __future__ import annotations

import os
import pathlib
import sys

import numpy as np
from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_DATA_DIR = os.environ.get("GENEMASK_DATA_DIR", str(REPO.parent / "shared" / "data"))
_NPMI = flags.DEFINE_list(
    "npmi", [os.path.join(_DATA_DIR, "npmi", "genemask_grch38_chr1-3_6mer_npmi.csv")],
    "NPMI tables (CSV), comma-separated.")
_TOP = flags.DEFINE_integer("top", 100, "K.")
_DRAWS = flags.DEFINE_integer("draws", 1000, "GC-matched background draws.")
_MATCH = flags.DEFINE_bool("match", True, "Also run Tomtom (JASPAR2024 CORE vertebrates) to "
                           "count matched top-K 6-mers that are neither Alu nor two-letter.")

# Alu-Sx consensus, GenBank U14574.
ALU_SX = ("GGCCGGGCGCGGTGGCTCACGCCTGTAATCCCAGCACTTTGGGAGGCCGAGGCGGGCGGATCACCTGAGGTCAGGAGTTCGAG"
          "ACCAGCCTGGCCAACATGGTGAAACCCCGTCTCTACTAAAAATACAAAAATTAGCCGGGCGTGGTGGCGCGCGCCTGTAAT"
          "CCCAGCTACTCGGGAGGCTGAGGCAGGAGAATCGCTTGAACCCGGGAGGCGGAGGTTGCAGTGAGCCGAGATCGCGCCACT"
          "GCACTCCAGCCTGGGCGACAGAGCGAGACTCCGTCTCAAAAAAAA")


def kmers_of(seq: str, k: int) -> set[str]:
  """Every k-mer of ``seq`` and of its reverse complement."""
  from genemask_jax.motifs import table as table_lib  # pylint: disable=g-import-not-at-top
  out = set()
  for s in (seq, table_lib.reverse_complement(seq)):
    out |= {s[i:i + k] for i in range(len(s) - k + 1)}
  return out


def main(argv):
  del argv
  from genemask_jax.motifs import database  # pylint: disable=g-import-not-at-top
  from genemask_jax.motifs import table as table_lib  # pylint: disable=g-import-not-at-top
  motifs = database.load_jaspar("JASPAR2024", "CORE", "vertebrates") if _MATCH.value else None
  for path in _NPMI.value:
    table = table_lib.load_table(path)
    alu = kmers_of(ALU_SX, table.k)
    top = table.top(_TOP.value)
    draws = database.gc_matched_draws(table, top, _DRAWS.value, np.random.default_rng(0))
    in_alu = np.array([k in alu for k in table.kmers])
    simple = np.array([len(set(k)) <= 2 for k in table.kmers])
    print(f"{path}: top {len(top)} of {len(table.kmers)} 6-mers")
    for name, flag in (("in the Alu-Sx consensus", in_alu), ("with <= 2 distinct letters", simple)):
      bg = flag[draws].mean(axis=1)
      p = (1 + (bg >= flag[top].mean()).sum()) / (1 + len(bg))
      print(f"  {name}: {flag[top].sum()}  (GC-matched draws: mean {100 * bg.mean():.1f} %, "
            f"95 % {100 * np.quantile(bg, 0.025):.0f}-{100 * np.quantile(bg, 0.975):.0f} %; "
            f"permutation p {p:.3g})")
    if motifs is not None:
      matched = database.match(list(table.kmers), motifs).matched(0.05)
      top_matched = matched[top]
      neither = top_matched & ~in_alu[top] & ~simple[top]
      print(f"  JASPAR-matched top-{len(top)} 6-mers (q <= 0.05): {top_matched.sum()}; "
            f"neither Alu nor two-letter: {neither.sum()}")


if __name__ == "__main__":
  app.run(main)
