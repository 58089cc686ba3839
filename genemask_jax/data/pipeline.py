"""grain input pipeline: per-process batches of token ids from a TFDS data source.

Training batches are shuffled with a seed (a fresh permutation every epoch), repeated
forever and cut per process: global batch ``s`` is the ``s``-th run of
``n * local_batch_size`` shuffled records, and process ``i`` of ``n`` reads only its
``i``-th slice of it, so the processes' rows are disjoint, together cover the data, and
the global batch is the same for every process count.
Every batch is a dict of numpy arrays::

  {"input_ids": np.int32 (local_batch_size, max_len)}

which the trainer turns into a global array with
``jax.make_array_from_process_local_data``.

Resuming needs no iterator state: global batch ``s`` is a function of (source, seed, s)
only, so the trainer saves the step with its checkpoint and starts a new iterator there,
exactly and on any number of processes::

  it = pipeline.train_iterator(source, local_batch_size=8, seed=0, start_batch=step)
  next(it)                        # global batch `step`, this process's rows of it

The evaluation set is fixed: the first ``num_examples`` of the validation split, in file
order, rounded down to whole global batches so every process gets the same number of
batches; iterate it afresh at each evaluation.
"""

from __future__ import annotations

from typing import Any, Sequence

import grain
import numpy as np

from genemask_jax import errors

FEATURES = ("input_ids",)


class PipelineError(errors.UserError):
  """Settings that cannot produce batches (batch larger than a shard, bad process index)."""


def _check_process(process_index: int, process_count: int) -> None:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise PipelineError(f"process_index={process_index} must be in [0, process_count="
                        f"{process_count})")


def _select(features: Sequence[str]):
  def fn(example: dict[str, Any]) -> dict[str, np.ndarray]:
    missing = [f for f in features if f not in example]
    if missing:
      raise PipelineError(f"example has no feature(s) {missing}; it has {sorted(example)}")
    return {f: np.asarray(example[f]) for f in features}
  return fn


def shard(source: Any, process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """This process's records of `source`: indices process_index, +process_count, ..."""
  _check_process(process_index, process_count)
  return grain.MapDataset.source(source)[process_index::process_count]


def train_dataset(source: Any, *, local_batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1, features: Sequence[str] = FEATURES
                  ) -> grain.MapDataset:
  """The infinite, shuffled, batched training dataset of one process (random access).

  One global order for every process count: the source is shuffled (a fresh permutation
  every epoch) and cut into batches of ``local_batch_size``; global batch s is local
  batches s*n .. s*n+n-1 and process p takes number s*n+p. So the global batch (the
  processes' rows concatenated in process order) is the same whether 1 or n processes
  read it, and a run can move between process counts without changing its data.
  """
  _check_process(process_index, process_count)
  ds = grain.MapDataset.source(source)
  global_batch = local_batch_size * process_count
  if len(ds) < global_batch:
    raise PipelineError(
        f"the source holds {len(ds)} examples, fewer than one global batch of "
        f"{global_batch} ({process_count} process(es) x {local_batch_size}); use a smaller "
        "batch or more data")
  ds = ds.shuffle(seed=seed).repeat(None).map(_select(features))  # Reshuffled per epoch.
  ds = ds.batch(local_batch_size, drop_remainder=True)
  return ds[process_index::process_count]


def train_iterator(source: Any, *, local_batch_size: int, seed: int, process_index: int = 0,
                   process_count: int = 1, worker_count: int = 0,
                   features: Sequence[str] = FEATURES, prefetch: int = 2,
                   start_batch: int = 0) -> grain.DatasetIterator:
  """Iterator over training batches {"input_ids": int32 (local_batch_size, L)}.

  Args:
    source: random-access source (e.g. `genome_tfds.data_sources(b)["train"]`).
    local_batch_size: examples per batch on this process.
    seed: shuffle seed; the same seed gives the same batches.
    process_index, process_count: this process and how many read the data.
    worker_count: grain worker processes (0: read in this process; >0 needs a
      ``__main__`` guard, as grain spawns them).
    features: which features to keep.
    prefetch: batches read ahead by threads (worker_count == 0).
    start_batch: the global batch to start at. Batch s is the same for every process
      count, so a run resumes at batch = its step on any number of processes.

  Returns:
    a grain.DatasetIterator; ``get_state()`` / ``set_state(state)`` save and restore its
    position exactly (the state is a JSON-able dict).
  """
  ds = train_dataset(source, local_batch_size=local_batch_size, seed=seed,
                     process_index=process_index, process_count=process_count,
                     features=features)
  if start_batch:
    ds = ds[start_batch:]
  read = grain.ReadOptions(num_threads=max(prefetch, 1), prefetch_buffer_size=prefetch)
  it_ds = ds.to_iter_dataset(read)
  if worker_count > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(it_ds)


def eval_dataset(source: Any, *, local_batch_size: int, num_examples: int | None = None,
                 process_index: int = 0, process_count: int = 1,
                 features: Sequence[str] = FEATURES) -> grain.MapDataset:
  """Fixed evaluation batches: the first examples of `source`, in order, per process.

  Takes the first min(num_examples, len(source)) examples, rounded down to a whole number
  of global batches (local_batch_size * process_count), so every process yields the same
  number of batches; process i gets examples i, i+n, ... of them. Iterate it as often as
  needed (``for batch in ds``); the order never changes.

  Returns:
    a grain.MapDataset of batches {"input_ids": int32 (local_batch_size, L)}.
  """
  _check_process(process_index, process_count)
  n = len(source) if num_examples is None else min(num_examples, len(source))
  global_batch = local_batch_size * process_count
  n = n // global_batch * global_batch
  if n == 0:
    raise PipelineError(f"evaluation needs at least one global batch of {global_batch} "
                        f"examples; the source has {len(source)}, num_examples={num_examples}")
  ds = grain.MapDataset.source(source)[:n][process_index::process_count]
  return ds.map(_select(features)).batch(local_batch_size, drop_remainder=True)
