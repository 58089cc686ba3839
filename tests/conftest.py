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


@pytest.fixture(autouse=True)
def _trace_afresh_under_mutmut():
  """Under mutmut (MUTANT_UNDER_TEST set) every test retraces its jitted functions.

  mutmut forks each mutant's run from a process that already ran the tests, and its
  mutants are chosen when a function is traced: a jit cache hit would run the original
  code and let the mutant "survive". Clearing the caches also lets mutmut's first pass see
  every test that reaches a jitted function, not only the first to compile it.
  """
  if os.environ.get("MUTANT_UNDER_TEST"):
    import jax  # pylint: disable=g-import-not-at-top
    jax.clear_caches()
  yield
