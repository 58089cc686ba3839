"""The GPU check's record as benchmarks/run_all.py reads it, and the step-speed plot.

benchmarks/gpu_check.sh runs on a GPU machine; what it writes is parsed here from a record
laid out as the script and bench_train_step.py print it (the figures are made up).
"""

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import run_all  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

RECORD = """gpu_check.sh (gpu) at 2026-11-29 10:00 UTC, commit abc1234

=== versions and device (limit 60 s): python3 -c <the inline script in gpu_check.sh>
jax 0.11.2
device: NVIDIA H200 (gpu, 1 device(s))
=== versions and device: exit 0 after 4 s

=== bench_train_step (bf16 train step, JAX vs HF PyTorch, profile) (limit 170 s): ...
dnabert_base 64x512 bfloat16 on NVIDIA H200 (1 device; torch on cuda; dropout on; attention auto); model FLOPs per step 30.09 T; peak 989 TFLOP/s
  jax        412345 tokens/s per device   MFU  24.1%   (79.5 ms/step)
  jax_pallas_gpu     600000 tokens/s per device   MFU  35.0%   (54.6 ms/step)
  torch      400000 tokens/s per device   MFU  23.8%   (81.9 ms/step)

=== main.py :paper (limit 170 s): ...
step 50/60  loss 7.9  acc 0.050  lr 7.0e-04  2.10 steps/s  268,800 tokens/s  110 TFLOP/s/device  MFU 11.1%  ETA 0:00:05
step 60/60  loss 7.8  acc 0.060  lr 0.0e+00  5.50 steps/s  704,000 tokens/s  290 TFLOP/s/device  MFU 29.3%  ETA 0:00:00
main.py last log line: step 60/60  loss 7.8  acc 0.060  lr 0.0e+00  5.50 steps/s  704,000 tokens/s  290 TFLOP/s/device  MFU 29.3%  ETA 0:00:00

=== GPU test subset: tests/test_attention.py (limit 110 s): ...
3 failed, 52 passed, 1 skipped in 95.20s (0:01:35)
=== GPU test subset: exit 1 after 99 s

=== Pallas kernel tests: tests/test_attention_gpu.py -k compiled or model (limit 60 s): ...
.
=== Pallas kernel tests: exit 124 (timed out) after 60 s

"""


def test_record_reading_names_device_bench_main_and_tests():
  reading = run_all.read_gpu_record(RECORD)
  assert reading.startswith("on NVIDIA H200 (gpu, 1 device(s))")
  assert ("dnabert_base 64x512 bf16 (torch on cuda; dropout on; attention auto): jax 412,345 "
          "tokens/s (MFU 24.1%), jax_pallas_gpu 600,000 tokens/s (MFU 35.0%), torch 400,000 "
          "tokens/s (MFU 23.8%)") in reading
  assert "main.py :paper step 60/60: 704,000 tokens/s, MFU 29.3%" in reading
  assert "GPU test subset: 3 failed, 52 passed, 1 skipped in 95.20s (0:01:35) (exit 1" in reading
  assert "Pallas kernel tests: no pytest summary (exit 124 (timed out) after 60 s)" in reading
  # pytest's non-quiet summary line is framed by '='; a clean exit is not repeated.
  framed = RECORD.replace("3 failed, 52 passed, 1 skipped in 95.20s (0:01:35)",
                          "===== 55 passed in 80.10s (0:01:20) =====").replace(
                              "subset: exit 1 after", "subset: exit 0 after")
  assert "GPU test subset: 55 passed in 80.10s (0:01:20);" in run_all.read_gpu_record(framed)
  assert run_all.read_gpu_record("no device line here") is None


def test_gpu_rows_and_cpu_rows_feed_the_plot(tmp_path):
  rows, device = run_all.gpu_rows(RECORD)  # The first bench: dropout as the size says.
  assert rows == [("dnabert_base 64x512 bf16", 412345.0, 400000.0)] and device == "NVIDIA H200"
  cpu = run_all.train_step_rows(
      "size              B x L    P   jax tok/s  torch tok/s  jax/torch\n"
      "tiny              8x512  102        7399         2924      2.53x   (jax 554 ms)\n"
      "logo              8x512  102        5525         3805      1.45x   (jax 741 ms)\n")
  assert cpu == [("tiny 8x512", 7399.0, 2924.0), ("logo 8x512", 5525.0, 3805.0)]
  path = tmp_path / "speed.png"
  assert run_all.plot_step_speed(cpu, rows, device, path)
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not run_all.plot_step_speed([], [], None, tmp_path / "none.png")


def test_gpu_check_script_refuses_unknown_arguments_and_other_directories(tmp_path):
  bash = shutil.which("bash")
  if not bash:
    pytest.skip("no bash")
  r = subprocess.run([bash, str(ROOT / "benchmarks" / "gpu_check.sh"), "--gpuu"], cwd=ROOT,
                     capture_output=True, text=True, timeout=60)
  assert r.returncode == 2 and "unknown argument '--gpuu'" in r.stderr
  r = subprocess.run([bash, str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=tmp_path,
                     capture_output=True, text=True, timeout=60)
  assert r.returncode == 2 and "from the project root" in r.stderr
