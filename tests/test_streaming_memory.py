"""Streaming memory is flat in the FASTA line length (#20 item 12).

One 100 Mbp line used to take 1.5 GB in the chunker and 427 MB in the NPMI count: the
reader held whole lines. Each reader of FASTA runs here in a fresh subprocess on a file
whose sequence is one line, at two line lengths; its peak RSS (VmHWM) must not grow by
as much as the line does.
"""
import subprocess
import sys

import numpy as np
import pytest

_SCRIPT = """
import sys
from genemask_jax.data import fasta, genome
from genemask_jax import npmi
what, path = sys.argv[1], sys.argv[2]
if what == "reader":
  n = sum(len(b) for _, b in fasta.iter_blocks(path))
elif what == "chunker":
  n = sum(c.length for c in genome.iter_chunks([path]))
else:
  n = npmi.count_fasta([path]).letters
# VmHWM, the peak RSS of this process image: ru_maxrss would carry over the peak of
# the (large) pytest process that forked this one.
peak = next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(n, peak)
"""
_SHORT, _LONG = 8_000_000, 32_000_000


@pytest.fixture(scope="module")
def one_line_files(tmp_path_factory) -> dict[int, str]:
  d = tmp_path_factory.mktemp("oneline")
  rng = np.random.default_rng(0)
  seq = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, _LONG)]
  seq[::100_000] = ord("N")
  out = {}
  for n in (_SHORT, _LONG):
    path = d / f"one_{n}.fa"
    path.write_bytes(b">one line\n" + seq[:n].tobytes() + b"\n")
    out[n] = str(path)
  return out


def _peak_kib(what: str, path: str) -> int:
  res = subprocess.run([sys.executable, "-c", _SCRIPT, what, path], capture_output=True,
                       text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-2000:]
  n, peak = res.stdout.split()
  assert int(n) > 0
  return int(peak)  # KiB.


@pytest.mark.parametrize("what", ["reader", "chunker", "npmi"])
def test_peak_memory_does_not_grow_with_line_length(one_line_files, what):
  short = _peak_kib(what, one_line_files[_SHORT])
  long = _peak_kib(what, one_line_files[_LONG])
  growth_mib = (long - short) / 1024
  line_growth_mib = (_LONG - _SHORT) / 2**20
  # Holding the line once would add ~23 MiB; the old reader held it two to five times
  # (+46 MiB reader, +114 MiB NPMI). Measured now: +1.4, +5.5 (chunker), +4.8 MiB.
  assert growth_mib < line_growth_mib / 2, (what, short, long)
