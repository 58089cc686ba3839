"""TFDS genome builder (array_record, read back without TensorFlow) and the grain pipeline."""
import json
import subprocess
import sys

import numpy as np
import pytest

from genemask_jax import tokenizer
from genemask_jax.data import fasta
from genemask_jax.data import genome
from genemask_jax.data import genome_tfds
from genemask_jax.data import pipeline


@pytest.fixture(scope="module")
def small_fasta(tmp_path_factory) -> str:
  """200 kbp of the embedded real chrX plus three soft-masked chr22 blocks."""
  records = []
  for record, seq in fasta.iter_records(genome.default_genome_paths()[0]):
    records.append((record.name.split()[0], seq[:200_000] if not records else seq))
    if len(records) == 4:
      break
  path = tmp_path_factory.mktemp("fa") / "small.fa"
  with open(path, "wb") as f:
    for name, seq in records:
      f.write(b">" + name.encode() + b"\n")
      for i in range(0, len(seq), 60):
        f.write(seq[i:i + 60] + b"\n")
  return str(path)


@pytest.fixture(scope="module")
def built(small_fasta, tmp_path_factory):
  tfds_dir = tmp_path_factory.mktemp("tfds")
  builder = genome_tfds.build(tfds_dir, [small_fasta], genome.ChunkConfig(seed=7))
  return tfds_dir, builder, genome_tfds.data_sources(builder)


def _rows(source, indices=None) -> list[bytes]:
  indices = range(len(source)) if indices is None else indices
  return [np.asarray(source[i]["input_ids"]).tobytes() for i in indices]


def test_tfds_build_reads_back_every_chunk(built, small_fasta):
  _, builder, sources = built
  expect = {genome.TRAIN: [], genome.VALIDATION: []}
  lengths = {}
  for c in genome.iter_chunks([small_fasta], genome.ChunkConfig(seed=7)):
    expect[c.split].append(c.input_ids.tobytes())
    lengths[c.input_ids.tobytes()] = c.length
  summary = genome_tfds.summary(builder)
  for split in (genome.TRAIN, genome.VALIDATION):
    src = sources[split]
    assert summary["examples"][split] == len(src) == len(expect[split]) > 0
    assert sorted(_rows(src)) == sorted(expect[split])
    ex = src[0]
    assert ex["input_ids"].dtype == np.int32 and ex["input_ids"].shape == (512,)
    assert ex["input_ids"][0] == tokenizer.CLS_ID
    assert int(ex["length"]) == lengths[ex["input_ids"].tobytes()]
  assert "tensorflow" not in sys.modules


def test_tfds_config_name_tracks_corpus_and_settings(built, small_fasta, tmp_path):
  tfds_dir, builder, _ = built
  same = genome_tfds.make_config([small_fasta], genome.ChunkConfig(seed=7))
  assert same.name == builder.builder_config.name
  other_seed = genome_tfds.make_config([small_fasta], {"seed": 8})
  joined = genome_tfds.make_config([small_fasta], {"seed": 7, "join_across_n": True})
  sample = genome_tfds.make_config(None)
  names = {same.name, other_seed.name, joined.name, sample.name}
  assert len(names) == 4
  again = genome_tfds.build(tfds_dir, [small_fasta], genome.ChunkConfig(seed=7))
  assert str(again.data_dir) == str(builder.data_dir)  # Reused, not rebuilt elsewhere.
  with pytest.raises(fasta.FastaError, match="no such file"):
    genome_tfds.make_config([str(tmp_path / "missing.fa")])


def test_train_batches_are_seeded_and_shaped(built):
  _, _, sources = built
  it = pipeline.train_iterator(sources["train"], local_batch_size=4, seed=1)
  first = [next(it) for _ in range(3)]
  assert set(first[0]) == {"input_ids"}
  assert first[0]["input_ids"].shape == (4, 512) and first[0]["input_ids"].dtype == np.int32
  again = pipeline.train_iterator(sources["train"], local_batch_size=4, seed=1)
  for a in first:
    np.testing.assert_array_equal(a["input_ids"], next(again)["input_ids"])
  other = pipeline.train_iterator(sources["train"], local_batch_size=4, seed=2)
  assert not np.array_equal(first[0]["input_ids"], next(other)["input_ids"])


def test_process_batches_are_disjoint_and_form_the_global_batch(built):
  """n processes read disjoint rows whose concatenation is the 1-process global batch."""
  _, _, sources = built
  src = sources["train"]
  everything = _rows(src)
  assert len(set(everything)) == len(everything)
  count, batch = 3, 4
  steps = len(everything) // (count * batch)  # One epoch of global batches.
  single = pipeline.train_iterator(src, local_batch_size=count * batch, seed=0)
  its = [pipeline.train_iterator(src, local_batch_size=batch, seed=0, process_index=i,
                                 process_count=count) for i in range(count)]
  seen = []
  for _ in range(steps):
    parts = [next(it)["input_ids"] for it in its]
    np.testing.assert_array_equal(np.concatenate(parts), next(single)["input_ids"])
    seen.extend(r.tobytes() for p in parts for r in p)
  assert len(set(seen)) == len(seen)  # No row twice within an epoch, across processes.
  assert set(seen) <= set(everything)
  with pytest.raises(pipeline.PipelineError, match="process_index"):
    pipeline.train_iterator(src, local_batch_size=batch, seed=0, process_index=3,
                            process_count=3)


def test_iterator_state_resumes_exactly(built):
  _, _, sources = built
  make = lambda: pipeline.train_iterator(sources["train"], local_batch_size=8, seed=3)
  it = make()
  n_epoch = len(sources["train"]) // 8
  for _ in range(n_epoch + 2):  # Past an epoch boundary.
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # JSON-able, as orbax stores it.
  expect = [next(it)["input_ids"] for _ in range(3)]
  resumed = make()
  resumed.set_state(state)
  for e in expect:
    np.testing.assert_array_equal(next(resumed)["input_ids"], e)


def test_iterator_state_in_an_orbax_checkpoint(built, tmp_path):
  import grain
  import orbax.checkpoint as ocp
  _, _, sources = built
  make = lambda: pipeline.train_iterator(sources["train"], local_batch_size=8, seed=4)
  it = make()
  for _ in range(5):
    next(it)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
  expect = next(it)["input_ids"]
  resumed = make()
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
  np.testing.assert_array_equal(next(resumed)["input_ids"], expect)


def test_eval_batches_are_fixed_and_even_across_processes(built):
  _, _, sources = built
  src = sources["validation"]
  n = min(len(src), 20)
  per_proc = [pipeline.eval_dataset(src, local_batch_size=3, num_examples=20,
                                    process_index=i, process_count=2) for i in range(2)]
  assert len(per_proc[0]) == len(per_proc[1]) == n // 6
  # Fixed: a second pass over each process's dataset yields the same batches.
  rows = [np.concatenate([b["input_ids"] for b in ds]) for ds in per_proc]
  again = [np.concatenate([b["input_ids"] for b in ds]) for ds in per_proc]
  for x, y in zip(rows, again):
    np.testing.assert_array_equal(x, y)
  # Process i reads rows i, i+2, ... of the fixed set: the two differ and, interleaved,
  # are exactly the first n // 6 * 6 validation rows in file order.
  fixed = np.stack([src[i]["input_ids"] for i in range(n // 6 * 6)])
  assert len({r.tobytes() for r in fixed}) == len(fixed)  # Distinct rows: the check bites.
  np.testing.assert_array_equal(rows[0], fixed[0::2])
  np.testing.assert_array_equal(rows[1], fixed[1::2])
  assert not {r.tobytes() for r in rows[0]} & {r.tobytes() for r in rows[1]}
  with pytest.raises(pipeline.PipelineError, match="global batch"):
    pipeline.eval_dataset(src, local_batch_size=len(src) + 1)


def _prepare(*args):
  return subprocess.run([sys.executable, "-m", "genemask_jax.data.prepare", *args],
                        capture_output=True, text=True, timeout=300)


def test_prepare_command_builds_and_prints(small_fasta, data_dir, tmp_path):
  res = _prepare(f"--tfds_dir={tmp_path}", f"--fasta={small_fasta}",
                 f"--fewshot_data_dir={data_dir}", "--tasks=prom_core")
  assert res.returncode == 0, res.stderr[-3000:]
  expect = {genome.TRAIN: 0, genome.VALIDATION: 0}
  for c in genome.iter_chunks([small_fasta]):
    expect[c.split] += 1
  assert (f"examples: train={expect['train']}, validation={expect['validation']}"
          in res.stdout)
  assert "Prom-core" in res.stdout and "1000-shot=1" in res.stdout
  assert (tmp_path / "genemask_genome").is_dir()


def test_prepare_rejects_bad_input_before_building(small_fasta, tmp_path):
  res = _prepare(f"--tfds_dir={tmp_path}", f"--fasta={tmp_path / 'missing.fa'}")
  assert res.returncode == 2 and "missing.fa: no such file" in res.stderr
  res = _prepare(f"--tfds_dir={tmp_path}", f"--fasta={small_fasta}",
                 f"--fewshot_data_dir={tmp_path}")
  assert res.returncode == 2 and "no fewshot/ directory" in res.stderr
  assert not (tmp_path / "genemask_genome").exists()


def test_tensorflow_never_imported():
  """Building, reading, grain and the orbax round trip above all ran without TensorFlow."""
  assert "tensorflow" not in sys.modules


def test_start_batch_resumes_at_a_step_on_any_process_count(built):
  """Batch s from a fresh iterator started at s equals batch s of a running one."""
  _, _, sources = built
  src = sources["train"]
  run = pipeline.train_iterator(src, local_batch_size=8, seed=5)
  batches = [next(run)["input_ids"] for _ in range(len(src) // 8 + 3)]  # Past an epoch.
  s = len(batches) - 2
  again = pipeline.train_iterator(src, local_batch_size=8, seed=5, start_batch=s)
  np.testing.assert_array_equal(next(again)["input_ids"], batches[s])
  halves = [pipeline.train_iterator(src, local_batch_size=4, seed=5, process_index=i,
                                    process_count=2, start_batch=s) for i in range(2)]
  np.testing.assert_array_equal(np.concatenate([next(h)["input_ids"] for h in halves]),
                                batches[s])
