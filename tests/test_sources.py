"""The trainer's data entry point: get_datasets on a small real corpus, in process."""
import pathlib
import sys

import numpy as np
import pytest
import test_support  # tests/ is on sys.path (rootdir-relative test modules).
from etils import epath

from genemask_jax import tokenizer
from genemask_jax.data import sources

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(**overrides):
  sys.path.insert(0, str(ROOT))
  try:
    from configs import pretrain  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(str(ROOT))
  config = pretrain.get_config("test")
  for key, value in overrides.items():
    section, field = key.split(".")
    config[section][field] = value
  return config


@pytest.fixture(scope="module")
def built(tmp_path_factory, data_dir):
  base = tmp_path_factory.mktemp("sources")
  corpus = base / "chr22_small.fa"
  test_support.write_small_corpus(data_dir, corpus, records=100)
  config = _config(**{"data.fasta": str(corpus), "npmi.min_scored_fraction": 0.0})
  workdir = epath.Path(base / "wd")
  return config, workdir, sources.get_datasets(config, workdir)


def test_get_datasets_gives_train_source_fixed_eval_batches_and_rank(built):
  config, workdir, data = built
  assert data.rank.shape == (tokenizer.vocab_size(6),) and data.rank.dtype == np.int32
  assert (workdir / "npmi" / "table.csv").exists()  # Cached for the next run.
  assert (workdir / "tfds").is_dir()  # data.tfds_dir is empty: the workdir's.
  n = config.eval.num_examples // config.eval.batch_size
  assert len(data.eval_batches) == n
  b = data.eval_batches[0]
  assert b["input_ids"].shape == (config.eval.batch_size, config.data.max_len)
  assert b["masked_lm_positions"].shape == (config.eval.batch_size,
                                            config.masking.max_predictions)
  assert b["masked_lm_weights"].sum() > 0
  # Built again (the cached corpus and table), the eval masks are the same.
  again = sources.get_datasets(config, workdir)
  for x, y in zip(data.eval_batches, again.eval_batches):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_train_iterator_resumes_at_any_batch(built):
  _, _, data = built
  it = data.train_iterator()
  first = [next(it)["input_ids"] for _ in range(3)]
  assert first[0].shape == (data.local_batch_size, 64)
  np.testing.assert_array_equal(next(data.train_iterator(start_batch=2))["input_ids"],
                                first[2])


def test_authors_source_needs_the_data_dir(monkeypatch, tmp_path):
  monkeypatch.delenv("GENEMASK_DATA_DIR", raising=False)
  config = _config(**{"npmi.source": "authors"})
  with pytest.raises(sources.DataConfigError, match="needs GENEMASK_DATA_DIR"):
    sources.check_inputs(config, epath.Path(tmp_path))
  assert not list(tmp_path.iterdir())  # Setup's checks write nothing.
