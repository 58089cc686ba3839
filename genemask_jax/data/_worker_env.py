"""Environment of the corpus build's worker processes, set before they import numpy.

The first module that `pool.process_pool`'s fork server imports. The workers do
no linear algebra, and an OpenBLAS thread pool started for nothing spins for a while
beside the build: one BLAS thread each (a value the user set is kept).
"""

import os

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ.setdefault(_name, "1")
