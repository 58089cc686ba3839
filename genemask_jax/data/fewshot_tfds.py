"""TFDS (array_record) datasets of the four few-shot benchmarks, built without TensorFlow.

One builder, `FewShotBenchmarks` (registered as ``genemask_fewshot``), with one config per
task in ``tasks.TASKS`` (``prom_core``, ``prom_300``, ``cohn_enh``, ``splice_40``). Each
config has the splits ``train_<N>`` for the N-shot train sets that exist and ``test``.

``test`` is the raw test file, as shipped. Overlap with a train set depends on which shot
is trained on, so it is removed at evaluation time: ``tasks.load_task`` does it from the
source files, and each example carries ``in_train`` so that the same filtering can be done
from this dataset (``keep = ~ex["in_train"][task.shots.index(shot)]``). The counts are in
``builder.info.metadata`` (``removed_overlaps`` per shot), next to ``proxy_test`` and
``note`` (Prom-300's test set is the GUE proxy).

Features of every example:

* ``input_ids``: int32 (max_len,), ``[CLS] 6-mer ids [SEP] [PAD]...`` (`tokenizer.pack`);
* ``label``: ClassLabel (int64 scalar), 0..num_classes-1;
* ``sequence``: Text, the raw bases (read back as bytes);
* ``in_train``: bool (len(task.shots),): the sequence occurs in the N-shot train file, one
  entry per shot in ``task.shots`` order.

Read it with ``as_data_source()`` (array_record random access, no TensorFlow); never with
``tfds.load`` / ``as_dataset``, which import TensorFlow::

    summary = build_fewshot("/path/to/data", "/path/to/tfds")
    builder = FewShotBenchmarks(data_dir="/path/to/tfds", config="prom_core")
    test = builder.as_data_source()["test"]           # test[i]["input_ids"]: (67,) int32
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds

from genemask_jax.data import tasks as tasks_lib

_DESCRIPTION = """\
The four few-shot DNA classification benchmarks of GeneMask (Prom-core, Prom-300,
Cohn-enh, Splice-40), tokenized as DNABERT 6-mers with [CLS]/[SEP] and padding.
Splits train_<N> are the shipped N-shot train files (Splice-40's hold 10*N per class);
test is the raw test file: remove rows with in_train[shot] before scoring on an N-shot run.
"""

_HOMEPAGE = "https://github.com/roysoumya/GeneMask"


class FewShotConfig(tfds.core.BuilderConfig):
  """One benchmark task."""

  def __init__(self, *, task: tasks_lib.TaskSpec, **kwargs: Any):
    description = f"{task.display_name}: {task.note}"
    if task.proxy_test:
      description = f"{task.display_name} [PROXY TEST SET]: {task.note}"
    super().__init__(name=task.name, description=description, **kwargs)
    self.task = task


class FewShotBenchmarks(tfds.core.GeneratorBasedBuilder):
  """The GeneMask few-shot benchmarks as array_record files.

  Building needs ``source_data_dir`` (the directory holding ``fewshot/``); reading an
  already built dataset does not.
  """

  name = "genemask_fewshot"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "The four tasks as shipped, 6-mer ids, in_train per shot."}
  BUILDER_CONFIGS = [FewShotConfig(task=t) for t in tasks_lib.TASKS.values()]

  def __init__(self, *, source_data_dir: str | os.PathLike | None = None,
               file_format: str = "array_record", **kwargs: Any):
    self._source_data_dir = source_data_dir
    super().__init__(file_format=file_format, **kwargs)

  @property
  def task(self) -> tasks_lib.TaskSpec:
    return self.builder_config.task

  def _info(self) -> tfds.core.DatasetInfo:
    task = self.task
    return self.dataset_info_from_configs(
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict({
            "input_ids": tfds.features.Tensor(shape=(task.max_len,), dtype=np.int32),
            "label": tfds.features.ClassLabel(num_classes=task.num_classes),
            "sequence": tfds.features.Text(),
            "in_train": tfds.features.Tensor(shape=(len(task.shots),), dtype=np.bool_),
        }),
        supervised_keys=("input_ids", "label"),
        homepage=_HOMEPAGE,
        metadata=tfds.core.MetadataDict(
            task=task.name, display_name=task.display_name, shots=list(task.shots),
            examples_per_class={str(s): task.examples_per_class(s) for s in task.shots},
            proxy_test=task.proxy_test, note=task.note, seq_len=task.seq_len,
            max_len=task.max_len, k=task.k),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager
                        ) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
    del dl_manager  # Reads local files only.
    if self._source_data_dir is None:
      raise tasks_lib.FewShotDataError(
          f"building {self.name}/{self.task.name} needs source_data_dir (the directory that "
          "holds fewshot/): pass --data_dir or set GENEMASK_DATA_DIR")
    task = self.task
    # Read and validate every file before writing anything.
    splits = {s: tasks_lib.load_split(task, s, self._source_data_dir) for s in task.splits}
    train_sets = [set(splits[f"train_{s}"].sequences) for s in task.shots]
    test = splits["test"]
    metadata = self.info.metadata
    metadata["removed_overlaps"] = {
        str(shot): int(tasks_lib.overlap_mask(test, splits[f"train_{shot}"]).sum())
        for shot in task.shots}
    metadata["duplicates"] = {name: ex.duplicate_rows for name, ex in splits.items()}
    metadata["sources"] = {
        name: os.path.relpath(ex.source, self._source_data_dir) for name, ex in splits.items()}
    return {name: self._generate_examples(ex, train_sets) for name, ex in splits.items()}

  def _generate_examples(self, examples: tasks_lib.Examples, train_sets: list[set[str]]
                         ) -> Iterator[tuple[int, dict[str, Any]]]:
    ids, labels = tasks_lib.encode_examples(examples, self.task.max_len, self.task.k)
    for i, seq in enumerate(examples.sequences):
      yield int(examples.lines[i]), {
          "input_ids": ids[i],
          "label": int(labels[i]),
          "sequence": seq,
          "in_train": np.array([seq in t for t in train_sets], np.bool_),
      }


def build_fewshot(source_data_dir: str | os.PathLike, tfds_dir: str | os.PathLike,
                  tasks: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
  """Builds the TFDS datasets of the given tasks (all four by default).

  Every source file is validated (``tasks.load_split``) before anything is written; an
  already built task is kept as it is.

  Args:
    source_data_dir: the directory holding ``fewshot/``.
    tfds_dir: the TFDS data dir to write to.
    tasks: task keys; None builds all of ``tasks.TASKS``.

  Returns:
    Per task: ``display_name``, ``path`` (the built dataset's directory), ``examples``
    ({split: rows}), ``removed_overlaps`` ({shot: test rows also in that train file}),
    ``duplicates`` ({split: repeated rows inside the file}), ``proxy_test``, ``note``.
  """
  names = (list(tasks_lib.TASKS) if tasks is None
           else [tasks_lib.get_task(t).name for t in tasks])
  for name in names:  # Validate everything first: errors before any long work.
    for split in tasks_lib.TASKS[name].splits:
      tasks_lib.load_split(name, split, source_data_dir)
  summary = {}
  for name in names:
    builder = FewShotBenchmarks(source_data_dir=source_data_dir, data_dir=tfds_dir,
                                config=name)
    builder.download_and_prepare()
    info = builder.info
    meta = info.metadata
    summary[name] = {
        "display_name": tasks_lib.TASKS[name].display_name,
        "path": os.fspath(builder.data_dir),
        "examples": {split: int(info.splits[split].num_examples)
                     for split in tasks_lib.TASKS[name].splits},
        "removed_overlaps": {int(k): int(v) for k, v in meta["removed_overlaps"].items()},
        "duplicates": dict(meta["duplicates"]),
        "proxy_test": bool(meta["proxy_test"]),
        "note": meta["note"],
    }
  return summary


def format_summary(summary: dict[str, dict[str, Any]]) -> str:
  """Human-readable lines for `build_fewshot`'s summary (what ``prepare`` prints)."""
  out = []
  for name, s in summary.items():
    flag = "  [PROXY TEST SET: " + s["note"] + "]" if s["proxy_test"] else ""
    out.append(f"{s['display_name']} ({name}) -> {s['path']}{flag}")
    out.append("  examples: " + ", ".join(f"{k}={v}" for k, v in s["examples"].items()))
    out.append("  test rows also in train (removed at evaluation): "
               + ", ".join(f"{k}-shot={v}" for k, v in s["removed_overlaps"].items()))
    dups = {k: v for k, v in s["duplicates"].items() if v}
    out.append("  duplicate rows inside files (kept): "
               + (", ".join(f"{k}={v}" for k, v in dups.items()) or "none"))
  return "\n".join(out)
