"""benchmarks/build_timeline.py: every process of a real 2-worker build is stamped."""
import pathlib
import re
import subprocess
import sys

from genemask_jax.data import genome

_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "build_timeline.py"


def test_timeline_stamps_the_main_process_and_a_worker(tmp_path):
  res = subprocess.run(
      [sys.executable, str(_SCRIPT), "--workers=2", "--gap_ms=1000",
       "--fasta=" + ",".join(genome.default_genome_paths())],
      capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert res.returncode == 0, res.stderr[-2000:]
  out = res.stdout
  assert "on 2 worker(s)" in out
  worker = re.search(r"^worker \d+: .*write_unit (\d+)x", out, re.M)
  assert worker and int(worker.group(1)) >= 1  # The worker's unit writes were stamped.
  assert re.search(r"^worker \d+: .*scan_records \d+x", out, re.M)  # Its first pass too.
  # (The main process writes a unit only while the worker has two: timing decides.)
  sizes = re.search(r"pickled scan_records results: (\d+), ([\d,]+)-([\d,]+) bytes", out)
  assert sizes and int(sizes.group(1)) >= 1
