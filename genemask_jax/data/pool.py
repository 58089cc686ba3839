"""The corpus build's worker processes (`process_pool`), started lean.

Workers fork from multiprocessing's fork server, never from the build's process (which
may run JAX: main.py builds the corpus in-process). This module imports nothing but the
standard library: each worker unpickles its process object, whose class is defined here,
so whatever this module imported every worker would import too.
"""

from __future__ import annotations

import concurrent.futures
import io
import multiprocessing
from multiprocessing import context as mp_context
from multiprocessing import popen_forkserver
from multiprocessing import spawn
import os
import sys
import threading


class _WorkerPopen(popen_forkserver.Popen):
  """Starts a fork-server child that does not import the parent's main module.

  multiprocessing tells every child which module is the parent's ``__main__``, and the
  child imports it (as ``__mp_main__``) before it runs anything: for
  ``python -m genemask_jax.data.prepare`` that is TensorFlow Datasets and absl, ~0.2
  CPU-seconds and ~27 MiB in every worker on the 2-core dev machine
  (``benchmarks/bench_pipeline.py --scaling_only`` measures it). The
  workers run only functions of `plan` and `shards`, which they import by name, so they
  need no main module. This is CPython's own ``_launch`` (the same code in 3.8-3.13)
  with the main module left out of the preparation data.
  """

  def _launch(self, process_obj):
    prep_data = spawn.get_preparation_data(process_obj._name)  # pylint: disable=protected-access
    prep_data.pop("init_main_from_name", None)
    prep_data.pop("init_main_from_path", None)
    buf = io.BytesIO()
    popen_forkserver.set_spawning_popen(self)
    try:
      popen_forkserver.reduction.dump(prep_data, buf)
      popen_forkserver.reduction.dump(process_obj, buf)
    finally:
      popen_forkserver.set_spawning_popen(None)
    self.sentinel, w = popen_forkserver.forkserver.connect_to_new_process(self._fds)
    # A duplicate of the data pipe's write end: the child's sign that its parent lives.
    parent_w = os.dup(w)
    self.finalizer = popen_forkserver.util.Finalize(
        self, popen_forkserver.util.close_fds, (parent_w, self.sentinel))
    with open(w, "wb", closefd=True) as f:
      f.write(buf.getbuffer())
    self.pid = popen_forkserver.forkserver.read_signed(self.sentinel)


class _WorkerProcess(mp_context.ForkServerProcess):
  @staticmethod
  def _Popen(process_obj):  # pylint: disable=invalid-name
    return _WorkerPopen(process_obj)


class _WorkerContext(mp_context.ForkServerContext):
  Process = _WorkerProcess


# Checked against the Pythons whose _launch is the code above; elsewhere the standard one.
LEAN_START = (3, 8) <= sys.version_info[:2] <= (3, 13)


def process_pool(num_workers: int) -> concurrent.futures.ProcessPoolExecutor:
  """Worker processes forked from a fresh server process (multiprocessing's forkserver).

  Never a fork of this process, which may run JAX (main.py builds the corpus in-process).
  The server imports the planner's and shard writer's modules once and each worker forks
  from it, instead of starting Python and importing them itself; the workers do not
  import this process's main module (`_WorkerPopen`). The server's OpenBLAS runs one
  thread (`_worker_env`; the workers do no linear algebra), so no idle BLAS threads spin
  beside the build. The workers start in a thread, while the main process reads the first
  records.
  """
  ctx = _WorkerContext() if LEAN_START else multiprocessing.get_context("forkserver")
  ctx.set_forkserver_preload(["genemask_jax.data._worker_env", "genemask_jax.data.pool",
                             "genemask_jax.data.plan"])
  pool = concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=ctx)

  def start():
    try:
      for _ in range(num_workers):
        pool.submit(int)
    except RuntimeError:  # The build ended (failed) first: the pool is shut down.
      pass

  threading.Thread(target=start, daemon=True).start()
  return pool
