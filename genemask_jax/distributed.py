"""Multi-process start-up: `jax.distributed.initialize` when the environment asks for it.

Three ways a run becomes multi-process:
- explicit: `--coordinator=HOST:PORT --num_processes=N --process_id=I` (local tests,
  `launch/local_multihost.sh`, any cluster without auto-detection);
- auto-detected: a Cloud TPU pod slice (several TPU workers) or a SLURM job step with more
  than one task, where `jax.distributed.initialize()` reads everything from the environment;
- neither: one process, nothing to initialise (the default on one machine).

An unreachable coordinator fails with a clear message within the timeout instead of the
runtime's abort (a C++ check failure with a stack dump). `sync(name)` is the barrier the
data set-up and the checkpoint code share; `quiet_logs(level)` keeps other processes' and
libraries' chatter (TFDS, orbax) out of a run's output.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

import jax
from absl import logging
from jax.experimental import multihost_utils

from genemask_jax import errors


class DistributedError(errors.UserError):
  """Multi-process start-up failed (bad flags, unreachable coordinator)."""


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise DistributedError(f"--coordinator must be HOST:PORT, got {address!r}")
  deadline = time.monotonic() + timeout_s
  last_error: OSError | None = None
  while time.monotonic() < deadline:
    try:
      with socket.create_connection((host, int(port)), timeout=2):
        return
    except OSError as e:
      last_error = e
      time.sleep(0.5)
  raise DistributedError(
      f"coordinator {address} unreachable after {timeout_s:.0f} s ({last_error}); is process 0 "
      "running, and are the address and port right?")


def auto_detected() -> str | None:
  """Names the cluster environment that asks for multi-process start-up, if any."""
  if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_STEP_ID" in os.environ:
    return "slurm"
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if "," in hosts:
    return "tpu_pod"
  return None


def initialize(coordinator: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None,
               timeout_s: int = 300, force_auto: bool = False) -> bool:
  """Starts the multi-controller runtime if asked to; returns True when it did.

  Must run before anything touches a JAX backend. ``force_auto`` initialises with JAX's
  own cluster detection even where `auto_detected` sees nothing (a Cloud TPU VM slice made
  with gcloud is found through its metadata server, not the environment).
  """
  explicit = [v is not None for v in (coordinator, num_processes, process_id)]
  if any(explicit):
    if not all(explicit):
      raise DistributedError(
          "--coordinator, --num_processes and --process_id go together; got "
          f"coordinator={coordinator!r}, num_processes={num_processes!r}, "
          f"process_id={process_id!r}")
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise DistributedError(
          f"--process_id must be in 0..{num_processes - 1}, got {process_id}")
    if num_processes == 1:
      return False
    if process_id != 0:
      _wait_for_coordinator(coordinator, timeout_s)
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=timeout_s)
    return True
  env = auto_detected() or ("auto" if force_auto else None)
  if env is None:
    return False
  logging.info("multi-process environment detected: %s", env)
  jax.distributed.initialize(initialization_timeout=timeout_s)
  return True


def banner() -> str:
  """One line: process index/count and local/global devices."""
  return (f"process {jax.process_index()}/{jax.process_count()}: "
          f"{jax.local_device_count()} local / {jax.device_count()} global devices "
          f"({jax.devices()[0].platform})")


def sync(name: str) -> None:
  """Waits until every process reaches barrier `name` (a no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def quiet_logs(level: int):
  """absl logging at `level` and above only, inside the block."""
  old = logging.get_verbosity()
  logging.set_verbosity(min(old, level))  # absl: lower = quieter.
  try:
    yield
  finally:
    logging.set_verbosity(old)
