"""GeneMask's 6-mer NPMI statistics: count n-grams in a genome, score, rank, serve a lookup.

GeneMask masks spans centred on the k-mers with the highest Normalized PMI. The authors
released only their table (GRCh38 chr1-3); this package computes it from any FASTA and turns
it, or their table, into the lookup arrays the on-device masking reads:

* `counting`: n-gram counts (n = 1..k) streamed from FASTA (`count_fasta`) or memory;
* `scoring`: the NPMI of every k-mer from the counts (`score_counts`), formulas there;
* `table`: the CSV and .npy files (`write_table`) and the lookup from any table
  (`load_lookup`, `NpmiLookup`);
* `checks`: `NpmiError`, the limits and the scored-share floor shared by the three;
* `__main__`: the command, ``python -m genemask_jax.npmi --fasta=... --output=...``.

Every public name is re-exported here, so callers write ``npmi.load_lookup(path)``::

    counts = npmi.count_fasta(["genome.fa.gz"], k=6)
    table = npmi.score_counts(counts, min_scored_fraction=npmi.DEFAULT_MIN_SCORED_FRACTION)
    lookup = npmi.write_table(table, "/tmp/npmi/table.csv")  # rank, score: (4^k + 5,)
"""

from genemask_jax.npmi import checks
from genemask_jax.npmi import counting
from genemask_jax.npmi import scoring
from genemask_jax.npmi import table
from genemask_jax.npmi.checks import check_k
from genemask_jax.npmi.checks import check_min_count
from genemask_jax.npmi.checks import check_min_scored_fraction
from genemask_jax.npmi.checks import check_scored_fraction
from genemask_jax.npmi.checks import DEFAULT_MIN_COUNT
from genemask_jax.npmi.checks import DEFAULT_MIN_SCORED_FRACTION
from genemask_jax.npmi.checks import FLOOR_FIX
from genemask_jax.npmi.checks import lookup_size
from genemask_jax.npmi.checks import MAX_K
from genemask_jax.npmi.checks import MIN_K
from genemask_jax.npmi.checks import NpmiError
from genemask_jax.npmi.counting import both_strands
from genemask_jax.npmi.counting import count_fasta
from genemask_jax.npmi.counting import count_sequences
from genemask_jax.npmi.counting import NgramCounter
from genemask_jax.npmi.counting import NgramCounts
from genemask_jax.npmi.counting import ProgressFn
from genemask_jax.npmi.counting import reverse_complement_index
from genemask_jax.npmi.scoring import AUTHORS_LOG_Z
from genemask_jax.npmi.scoring import default_log_z
from genemask_jax.npmi.scoring import kmer_strings
from genemask_jax.npmi.scoring import NpmiTable
from genemask_jax.npmi.scoring import rank_desc
from genemask_jax.npmi.scoring import score_counts
from genemask_jax.npmi.scoring import SEGMENTATIONS
from genemask_jax.npmi.scoring import TRUE_SPLITS
from genemask_jax.npmi.table import check_output_path
from genemask_jax.npmi.table import CSV_COLUMNS
from genemask_jax.npmi.table import load_lookup
from genemask_jax.npmi.table import lookup_from_table
from genemask_jax.npmi.table import lookup_paths
from genemask_jax.npmi.table import NpmiLookup
from genemask_jax.npmi.table import scored_count
from genemask_jax.npmi.table import write_table
