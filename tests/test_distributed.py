"""Multi-process start-up errors: clear, early, and never a hang."""
import pathlib
import subprocess
import sys

import jax
import pytest

from genemask_jax import distributed

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_unreachable_coordinator_times_out_with_a_clear_message(tmp_path):
  # The subprocess timeout only guards against a hang; how fast this exits is a figure
  # printed by benchmarks/bench_launch.py, not a test assertion.
  r = subprocess.run(
      [sys.executable, str(ROOT / "main.py"), "--config=configs/pretrain.py:test",
       f"--workdir={tmp_path / 'w'}", "--coordinator=127.0.0.1:9", "--num_processes=2",
       "--process_id=1", "--coordinator_timeout=3"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2
  assert "coordinator 127.0.0.1:9 unreachable after 3 s" in r.stderr
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("kwargs,match", [
    (dict(coordinator="127.0.0.1:1234"), "go together"),
    (dict(coordinator="127.0.0.1:1234", num_processes=2, process_id=2), "process_id must be"),
    (dict(coordinator="nohostport", num_processes=2, process_id=1), "HOST:PORT"),
])
def test_bad_flags(kwargs, match):
  with pytest.raises(distributed.DistributedError, match=match):
    distributed.initialize(timeout_s=1, **kwargs)


def test_global_batch_must_divide_over_processes(monkeypatch):
  import importlib.util  # pylint: disable=g-import-not-at-top
  from genemask_jax import train  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("cfg", ROOT / "configs" / "pretrain.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config("test")  # Global batch 8.
  monkeypatch.setattr(jax, "process_count", lambda: 3)
  with pytest.raises(train.UserError, match="batch_size=8 is not divisible by the 3 processes"):
    train.validate_config(config)


def test_single_machine_needs_no_initialisation(monkeypatch):
  for var in ("SLURM_NTASKS", "SLURM_STEP_ID", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(var, raising=False)
  assert distributed.auto_detected() is None
  assert distributed.initialize() is False
  monkeypatch.setenv("SLURM_NTASKS", "4")
  monkeypatch.setenv("SLURM_STEP_ID", "0")
  assert distributed.auto_detected() == "slurm"
