"""The few-shot TFDS builder: builds from the real files, reads back without TensorFlow."""

import collections
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from genemask_jax import tokenizer
from genemask_jax.data import fewshot_tfds
from genemask_jax.data import tasks


@pytest.fixture(scope="module")
def built(data_dir, tmp_path_factory):
  """All four tasks built once (~8 s on the 2-core dev machine)."""
  tfds_dir = tmp_path_factory.mktemp("tfds")
  return tfds_dir, fewshot_tfds.build_fewshot(data_dir, tfds_dir)


@pytest.fixture(scope="module")
def loaded(data_dir):
  """tasks.load_task for every (task, shot), read once."""
  return {(name, shot): tasks.load_task(name, shot, data_dir)
          for name, spec in tasks.TASKS.items() for shot in spec.shots}


def _read_all(source):
  return source.__getitems__(list(range(len(source))))


def test_summary_matches_the_readers(built, loaded):
  _, summary = built
  assert list(summary) == list(tasks.TASKS)
  for name, spec in tasks.TASKS.items():
    s = summary[name]
    examples = {f"train_{shot}": len(loaded[name, shot].train) for shot in spec.shots}
    examples["test"] = len(loaded[name, spec.shots[0]].test) + loaded[
        name, spec.shots[0]].removed_overlaps
    assert s["examples"] == examples
    assert s["removed_overlaps"] == {
        shot: loaded[name, shot].removed_overlaps for shot in spec.shots}
    assert s["proxy_test"] == spec.proxy_test
  assert summary["splice_40"]["examples"]["train_10"] == 300
  assert summary["splice_40"]["duplicates"] == {
      "train_10": 0, "train_50": 1, "train_100": 0, "train_500": 28, "test": 1}
  assert "train_1000" not in summary["cohn_enh"]["examples"]
  text = fewshot_tfds.format_summary(summary)
  assert "Prom-300 (prom_300)" in text and "[PROXY TEST SET: scored on the GUE" in text
  assert "1000-shot=116" in text


@pytest.mark.parametrize("name", ["prom_core", "cohn_enh", "splice_40", "prom_300"])
def test_reads_back_through_data_source(data_dir, built, loaded, name):
  tfds_dir, _ = built
  spec = tasks.TASKS[name]
  builder = fewshot_tfds.FewShotBenchmarks(data_dir=tfds_dir, config=name)
  sources = builder.as_data_source()
  assert set(sources) == set(spec.splits)
  assert builder.info.metadata["proxy_test"] == spec.proxy_test
  assert builder.info.metadata["note"] == spec.note
  assert "[PROXY TEST SET]" in builder.builder_config.description or not spec.proxy_test

  test = _read_all(sources["test"])
  reader_test = tasks.load_split(name, "test", data_dir)
  assert len(test) == len(reader_test)
  ex = test[0]
  assert ex["input_ids"].shape == (spec.max_len,) and ex["input_ids"].dtype == np.int32
  assert ex["in_train"].shape == (len(spec.shots),) and ex["in_train"].dtype == bool
  assert collections.Counter((e["sequence"].decode(), int(e["label"])) for e in test) == \
      collections.Counter(zip(reader_test.sequences, reader_test.labels.tolist()))
  for e in test[:50]:
    np.testing.assert_array_equal(e["input_ids"][1:-1], tokenizer.encode(e["sequence"]))
    assert e["input_ids"][0] == tokenizer.CLS_ID and e["input_ids"][-1] == tokenizer.SEP_ID

  # Filtering on in_train gives load_task's deduplicated test set for every shot.
  in_train = np.stack([e["in_train"] for e in test])
  for j, shot in enumerate(spec.shots):
    data = loaded[name, shot]
    kept = sorted(e["sequence"].decode() for e, m in zip(test, in_train[:, j]) if not m)
    assert kept == sorted(data.test.sequences)
    assert int(in_train[:, j].sum()) == data.removed_overlaps

  smallest = _read_all(sources[f"train_{spec.shots[0]}"])
  counts = np.bincount([int(e["label"]) for e in smallest], minlength=spec.num_classes)
  np.testing.assert_array_equal(counts, [spec.examples_per_class(spec.shots[0])] *
                                spec.num_classes)
  assert all(e["in_train"][0] for e in smallest)


def test_registered_name_reads_with_tfds_data_source(built):
  tfds_dir, summary = built
  sources = tfds.data_source("genemask_fewshot/splice_40", data_dir=tfds_dir)
  assert {k: len(v) for k, v in sources.items()} == summary["splice_40"]["examples"]


def test_bad_source_fails_before_writing(data_dir, tmp_path):
  src = tmp_path / "src"
  task_dir = src / "fewshot" / "Prom-core"
  for shot in tasks.TASKS["prom_core"].shots:
    (task_dir / str(shot)).mkdir(parents=True)
    (task_dir / str(shot) / "train.tsv").write_bytes(
        (data_dir / "fewshot" / "Prom-core" / str(shot) / "train.tsv").read_bytes())
  good_test = (data_dir / "fewshot" / "Prom-core" / "test.tsv").read_text().splitlines()
  good_test[3] = good_test[3].replace("\t", "\t9\t")  # An extra column on line 4.
  (task_dir / "test.tsv").write_text("\n".join(good_test) + "\n")
  out = tmp_path / "tfds"
  with pytest.raises(tasks.FewShotDataError, match=r"Prom-core/test.tsv:4: 3 fields"):
    fewshot_tfds.build_fewshot(src, out, tasks=["prom_core"])
  assert not (out / "genemask_fewshot").exists()
  with pytest.raises(tasks.FewShotDataError, match="unknown few-shot task 'prom'"):
    fewshot_tfds.build_fewshot(src, out, tasks=["prom"])


def test_building_needs_the_source_dir(tmp_path):
  builder = fewshot_tfds.FewShotBenchmarks(data_dir=tmp_path, config="splice_40")
  with pytest.raises(tasks.FewShotDataError, match="needs source_data_dir"):
    builder.download_and_prepare()


def test_tensorflow_never_imported():
  """Runs last in this file: building and reading above must not have imported TF."""
  assert "tensorflow" not in sys.modules
