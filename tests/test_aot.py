"""Ahead-of-time compilation of the real train step for TPU topologies (needs libtpu,
which the test extra installs; nothing runs on a TPU)."""
import os
import pathlib
import subprocess
import sys

import pytest

from genemask_jax import aot
from genemask_jax import flops
from configs import pretrain

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, topology, chips, hbm_gib", [
    ("v5e:4x4", "v5e:4x4", 16, 16), ("v5litepod-16", "v5e:4x4", 16, 16),
    ("v4-8", "v4:2x2x1", 4, 32), ("v4-32", "v4:2x2x4", 16, 32), ("v5p-8", "v5p:2x2x1", 4, 95),
    ("v6e-8", "v6e:2x4", 8, 32), ("V6E:2x4", "v6e:2x4", 8, 32)])
def test_topology_names_and_accelerator_types_map_to_slices(name, topology, chips, hbm_gib):
  t = aot.parse_target(name)
  assert (t.topology, t.num_chips, t.hbm_bytes) == (topology, chips, hbm_gib * 2**30)


@pytest.mark.parametrize("name, message", [
    ("v9x:2x2", "unknown TPU generation 'v9x'"),
    ("v4:2x2", "a v4 topology is AxBxC chips"),
    ("v5e-12", "no standard v5e slice has 12 chips"),
    ("v4-6", "no standard v4 slice has 6 TensorCores"),
    ("tpu", "expected a topology such as v5e:4x4")])
def test_bad_topology_names_are_user_errors(name, message):
  with pytest.raises(aot.AotError, match=message):
    aot.parse_target(name)


def _cli(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, "-m", "genemask_jax.aot", *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)


def test_bad_topology_is_one_line_and_exit_status_2():
  r = _cli("--topology=v9x:2x2", "--config=configs/pretrain.py:test")
  assert r.returncode == 2, r.stderr
  errors = [l for l in r.stderr.splitlines() if "error" in l.lower()]
  assert errors == ["genemask_jax.aot: error: --topology=v9x:2x2: unknown TPU generation "
                    "'v9x'; expected one of v4, v5e, v5p, v6e"]
  assert "Traceback" not in r.stderr


def test_batch_that_does_not_split_over_the_topology_is_exit_status_2():
  r = _cli("--topology=v5e:2x2", "--config=configs/pretrain.py:test",
           "--config.train.batch_size=6")
  assert r.returncode == 2
  assert "global batch size=6 is not divisible by 4" in r.stderr
  assert "Traceback" not in r.stderr


def test_test_config_compiles_for_v5e_with_the_pallas_kernel_and_fits(tmp_path):
  config = pretrain.get_config("test")
  report = aot.compile_train_step(config, aot.parse_target("v5e:2x2"),
                                  dump_hlo=str(tmp_path))
  assert report.device_kind == "TPU v5 lite" and report.num_devices == 4
  assert report.mesh == {"data": 4, "model": 1} and report.batch_per_device == 2
  assert report.attention_impl == "pallas_tpu"
  # The donated state is updated in place: outputs alias it.
  assert report.alias_bytes > 0 and report.argument_bytes >= report.alias_bytes
  assert 0 < report.total_bytes < 2**30 and report.fits and aot.exit_code(report) == 0
  assert report.model_flops == flops.model_flops_per_step(
      aot.resolved_model_config(config, "tpu"), 8, 64, 16)
  assert report.xla_flops > 0
  compiled = (tmp_path / "train_step.compiled.hlo.txt").read_text()
  assert "tpu_custom_call" in compiled  # The Mosaic attention kernel, not XLA's.
  text = aot.format_report(report)
  assert "fits (" in text and "16 GiB HBM each" in text


def test_test_config_compiles_for_a_tpu_with_scanned_layers(tmp_path):
  config = pretrain.get_config("test")
  config.model.scan_layers = True
  report = aot.compile_train_step(config, aot.parse_target("v5e:2x2"),
                                  dump_hlo=str(tmp_path))
  assert report.scan_layers and report.fits and aot.exit_code(report) == 0
  compiled = (tmp_path / "train_step.compiled.hlo.txt").read_text()
  # The encoder layers run in a loop, each iteration with the Mosaic attention kernel.
  assert " while(" in compiled and "tpu_custom_call" in compiled
  assert "layers scanned" in aot.format_report(report)


def test_config_made_not_to_fit_says_by_how_much_and_exits_1():
  r = _cli("--topology=v5e:1x1", "--config=configs/pretrain.py:test",
           "--config.train.batch_size=2048", "--config.data.max_len=512")
  assert r.returncode == 1, r.stderr[-2000:]
  assert "does not fit, by" in r.stdout and "of 16 GiB" in r.stdout
