"""Shared test set-up.

Eight simulated CPU devices for every test (sharding tests need them; the rest run on
device 0), and the location of the shared real data.
"""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

_DEFAULT_DATA = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
DATA_DIR = pathlib.Path(os.environ.get("GENEMASK_DATA_DIR", _DEFAULT_DATA)).resolve()


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  """The real shared data (genome, few-shot benchmarks, NPMI table)."""
  if not (DATA_DIR / "genome").is_dir():
    pytest.fail(f"shared data not found at {DATA_DIR}; set GENEMASK_DATA_DIR")
  return DATA_DIR
