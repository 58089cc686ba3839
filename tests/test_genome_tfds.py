"""The parallel corpus build: same dataset for any worker count, resumable, clear errors."""
import collections
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from genemask_jax import errors
from genemask_jax import tokenizer
from genemask_jax.data import fasta as fasta_lib
from genemask_jax.data import genome
from genemask_jax.data import genome_tfds
from genemask_jax.data import plan
from genemask_jax.data import pool as pool_lib
from genemask_jax.data import shards

_REPO = pathlib.Path(__file__).resolve().parents[1]


def _shard_bytes(builder) -> dict[str, bytes]:
  """Every shard file of a build, by name, with its bytes."""
  d = pathlib.Path(builder.data_dir)
  return {p.name: p.read_bytes() for p in sorted(d.glob("*.array_record-*"))}


def _rows(builder) -> dict[str, list[bytes]]:
  sources = genome_tfds.data_sources(builder)
  return {split: [src[i]["input_ids"].tobytes() + np.int32(src[i]["length"]).tobytes()
                  for i in range(len(src))] for split, src in sources.items()}


def test_encoder_writes_examples_that_tfds_decodes():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import example_serializer  # pylint: disable=g-import-not-at-top
  features = tfds.features.FeaturesDict({
      "input_ids": tfds.features.Tensor(shape=(512,), dtype=np.int32),
      "length": tfds.features.Scalar(dtype=np.int32)})
  ser = example_serializer.ExampleSerializer(features.get_serialized_info())
  rng = np.random.default_rng(0)
  rows = rng.integers(0, tokenizer.vocab_size(6), (200, 512)).astype(np.int32)
  rows[:20] = 0
  rows[20:40] = 127  # The one- and two-byte varint edges.
  rows[40:60] = 128
  ntok = rng.integers(0, 513, 200).astype(np.int32)
  ntok[:4] = [0, 127, 128, 512]
  ours = shards.ExampleEncoder(512, tokenizer.vocab_size(6) - 1).encode(rows, ntok)
  for r in range(200):
    ex = features.deserialize_example_np(ours[r])
    np.testing.assert_array_equal(ex["input_ids"], rows[r])
    assert int(ex["length"]) == ntok[r]
    theirs = ser.serialize_example(
        features.encode_example({"input_ids": rows[r], "length": ntok[r]}))
    assert len(ours[r]) == len(theirs)  # The same fields; TFDS's entry order varies.
  # The general path, for ids of three varint bytes.
  big = rng.integers(0, 70_000, (5, 64)).astype(np.int32)
  feats8 = tfds.features.FeaturesDict({
      "input_ids": tfds.features.Tensor(shape=(64,), dtype=np.int32),
      "length": tfds.features.Scalar(dtype=np.int32)})
  enc8 = shards.ExampleEncoder(64, 70_000).encode(big, np.full(5, 64))
  for r in range(5):
    np.testing.assert_array_equal(feats8.deserialize_example_np(enc8[r])["input_ids"], big[r])


# streamed: the sample's 4 MB record comes in installments of 32 KiB, whose first-pass
# ranges go to the worker processes while the rest is read (as a chromosome's do).
@pytest.mark.parametrize("streamed", [False, True])
def test_one_and_two_workers_build_the_same_dataset(tmp_path, monkeypatch, streamed):
  if streamed:
    monkeypatch.setattr(plan, "_BATCH_BYTES", 64 << 10)
    monkeypatch.setattr(plan, "_RANGE_BYTES", 8 << 10)
  one = genome_tfds.build(tmp_path / "one", None, num_workers=1)
  two = genome_tfds.build(tmp_path / "two", None, num_workers=2)
  s1, s2 = genome_tfds.summary(one), genome_tfds.summary(two)
  assert (s1["num_workers"], s2["num_workers"]) == (1, 2)
  assert s1["units"] == s2["units"] > 2  # More units than workers: both did work.
  files = _shard_bytes(one)
  assert files == _shard_bytes(two) and len(files) == 2 * s1["units"]
  rows = _rows(one)
  assert rows == _rows(two)
  # The same examples, in the same order, as the single-process chunker.
  expect = {genome.TRAIN: [], genome.VALIDATION: []}
  for c in genome.iter_chunks(genome.default_genome_paths()):
    expect[c.split].append(c.input_ids.tobytes() + np.int32(c.length).tobytes())
  assert rows == expect
  assert s1["stats"]["share_kept"] > 0.9999 and s1["stats"]["chunks"] == sum(
      s1["examples"].values())
  # Rebuilding is a no-op; the work dir is gone once the dataset is complete.
  again = genome_tfds.build(tmp_path / "one", None, num_workers=2)
  assert genome_tfds.summary(again)["num_workers"] == 1
  assert not os.path.exists(one.work_dir())


_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from genemask_jax.data import genome_tfds, shards
    real = shards.write_unit
    def write_unit(unit, work_dir):
      if unit.index == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)  # A crash mid-build: no clean-up runs.
      return real(unit, work_dir)
    shards.write_unit = write_unit
    if int(sys.argv[3]):  # Streamed: the 4 MB record read in 32 KiB installments.
      from genemask_jax.data import plan
      plan._BATCH_BYTES, plan._RANGE_BYTES = 64 << 10, 8 << 10
    genome_tfds.build(sys.argv[1], None, num_workers=1)
    """)


@pytest.mark.parametrize("streamed", [False, True])
def test_killed_build_is_not_taken_for_finished_and_resumes(tmp_path, monkeypatch, streamed):
  if streamed:  # As the script plans; the rerun has 2 workers.
    monkeypatch.setattr(plan, "_BATCH_BYTES", 64 << 10)
    monkeypatch.setattr(plan, "_RANGE_BYTES", 8 << 10)
  res = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(tmp_path / "t"), "3",
                        str(int(streamed))],
                       cwd=_REPO, capture_output=True, text=True, timeout=300)
  assert res.returncode == -9, res.stderr[-2000:]
  config = genome_tfds.make_config(None)
  builder = genome_tfds.builder_for(tmp_path / "t", config)
  assert not builder.is_prepared()
  assert not list((tmp_path / "t").rglob("dataset_info.json"))
  markers = sorted(pathlib.Path(builder.work_dir()).glob("unit-*.json"))
  assert len(markers) == 3  # Units 0-2 finished before the kill.
  # A damaged finished unit is redone, not trusted.
  shard = pathlib.Path(shards.shard_path(builder.work_dir(), 1, genome.TRAIN))
  shard.write_bytes(shard.read_bytes()[:100])
  resumed = genome_tfds.build(tmp_path / "t", None, num_workers=2 if streamed else 1)
  s = genome_tfds.summary(resumed)
  assert s["reused_units"] == 2
  assert not list((tmp_path / "t" / "genemask_genome").rglob("incomplete.*"))
  fresh = genome_tfds.build(tmp_path / "fresh", None, num_workers=1)
  assert _shard_bytes(resumed) == _shard_bytes(fresh)


_SLOW_BUILD = textwrap.dedent("""
    import sys, time
    from genemask_jax.data import genome_tfds, shards
    real = shards.write_unit
    def write_unit(unit, work_dir):
      time.sleep(0.3)  # Slow enough that the test's SIGKILL lands mid-build.
      return real(unit, work_dir)
    shards.write_unit = write_unit
    genome_tfds.build(sys.argv[1], None, num_workers=1)
    """)


def test_build_killed_from_outside_restarts_cleanly_to_the_same_dataset(tmp_path):
  import signal  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  builder = genome_tfds.builder_for(tmp_path / "t", genome_tfds.make_config(None))
  work = pathlib.Path(builder.work_dir())
  proc = subprocess.Popen([sys.executable, "-c", _SLOW_BUILD, str(tmp_path / "t")], cwd=_REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          start_new_session=True)
  try:
    deadline = time.monotonic() + 240
    while len(list(work.glob("unit-*.json"))) < 2:
      assert proc.poll() is None, proc.stderr.read()[-2000:]
      assert time.monotonic() < deadline, "no unit finished in 240 s"
      time.sleep(0.02)
  finally:
    os.killpg(proc.pid, signal.SIGKILL)  # Anywhere: between units or inside a shard.
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert not builder.is_prepared()
  assert not list((tmp_path / "t").rglob("dataset_info.json"))
  resumed = genome_tfds.build(tmp_path / "t", None, num_workers=2)
  s = genome_tfds.summary(resumed)
  assert s["reused_units"] >= 2 and s["num_workers"] == 2
  assert not work.exists() and not list((tmp_path / "t").rglob("*.tmp"))
  fresh = genome_tfds.build(tmp_path / "fresh", None, num_workers=1)
  assert _shard_bytes(resumed) == _shard_bytes(fresh)
  assert _rows(resumed) == _rows(fresh)


_HOLD_LOCK = textwrap.dedent("""
    import sys
    from genemask_jax.data import genome_tfds
    with genome_tfds._locked(sys.argv[1]):
      print("held", flush=True)
      sys.stdin.read()  # Until the test closes our stdin.
    """)


def test_second_concurrent_build_names_the_lock_and_waits(tmp_path, chrx_head):
  import queue  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  fa = _fasta(tmp_path / "x.fa", chrx_head[:50_000])
  builder = genome_tfds.builder_for(tmp_path / "t", genome_tfds.make_config([fa]))
  lock = builder.work_dir() + ".lock"
  holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, lock], cwd=_REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  env = {k: v for k, v in os.environ.items() if k != "GENEMASK_DATA_DIR"}
  env["PYTHONPATH"] = str(_REPO) + os.pathsep + env.get("PYTHONPATH", "")
  second = None
  try:
    assert holder.stdout.readline().strip() == "held"
    second = subprocess.Popen(
        [sys.executable, "-u", "-m", "genemask_jax.data.prepare", f"--tfds_dir={tmp_path / 't'}",
         f"--fasta={fa}", "--num_workers=1"], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in second.stdout] + [lines.put(None)],
                     daemon=True).start()
    seen = []
    while not any(l.startswith("waiting for ") for l in seen):
      line = lines.get(timeout=120)
      assert line is not None, "".join(seen)[-3000:]
      seen.append(line)
    wait_line = next(l for l in seen if l.startswith("waiting for "))
    assert lock in wait_line and f"(pid {holder.pid}) holds it" in wait_line
    assert second.poll() is None and not builder.is_prepared()  # It waits, builds nothing.
    holder.stdin.close()  # The first build ends: the second goes on.
    assert holder.wait(timeout=60) == 0
    assert second.wait(timeout=240) == 0
    while lines.get(timeout=10) is not None:
      pass
  finally:
    for p in (holder, second):
      if p is not None and p.poll() is None:
        p.kill()
        p.wait()
  assert genome_tfds.builder_for(tmp_path / "t", genome_tfds.make_config([fa])).is_prepared()


def _messy_fasta(path: pathlib.Path, chrx: bytes, crlf: bool) -> str:
  """Records with N runs, IUPAC letters, soft-masking, short pieces, repeated and empty
  headers, a record with no sequence, records of N only (short and long) and lines of
  several widths."""
  rng = np.random.default_rng(7)
  seq = bytearray(chrx[:60_000])
  for _ in range(40):  # N runs and single IUPAC letters, some a few bp apart.
    a, n = int(rng.integers(0, len(seq) - 50)), int(rng.integers(1, 40))
    seq[a:a + n] = b"N" * n
    seq[int(rng.integers(0, len(seq)))] = ord("R")
  low = bytes(seq).lower()
  seq = bytes(seq[:30_000]) + low[30_000:]
  eol = b"\r\n" if crlf else b"\n"

  def lines(s: bytes, width: int) -> bytes:
    return b"".join(s[i:i + width] + eol for i in range(0, len(s), width))

  recs = [b">a desc" + eol + lines(seq[:12_000], 60) + b";a comment" + eol
          + lines(seq[12_000:25_000], 60), b">empty" + eol,
          b">a" + eol + lines(seq[25_000:40_000], 7), b">" + eol + lines(seq[40_000:41_000], 80),
          b">tiny" + eol + b"ACGTA" + eol, b">ns" + eol + lines(b"N" * 3000, 60),
          b">ns_long" + eol + lines(b"N" * 9000, 60),
          b">one_line" + eol + seq[41_000:] + eol]
  path.write_bytes(b"".join(recs))
  return str(path)


# batch_bytes 7,000: every record but the tiny ones goes to the first pass as byte ranges,
# chunked by the main process; 1 MiB: every record goes whole, chunked in the first pass.
@pytest.mark.parametrize("crlf,cfg,batch_bytes", [
    (False, {}, 7_000), (True, {"seed": 5}, 7_000), (False, {"join_across_n": True}, 7_000),
    (False, {"keep_tail": False, "min_chunk_bp": 20, "max_offset": 3000}, 7_000),
    (False, {}, 1 << 20), (True, {"join_across_n": True, "seed": 3}, 1 << 20),
])
def test_planned_units_hold_exactly_the_sequential_chunks(tmp_path, chrx_head, monkeypatch,
                                                          crlf, cfg, batch_bytes):
  import gzip  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(plan, "_RANGE_BYTES", 997)  # Many ranges: runs cross them.
  monkeypatch.setattr(plan, "_BATCH_BYTES", batch_bytes)
  monkeypatch.setattr(plan, "_READ_BYTES", 4096)  # Long records come in many installments.
  tasks = collections.Counter()

  def submit(fn, *args):  # In this process, counting the two kinds of first-pass task.
    tasks[fn.__name__] += 1
    return plan.run_now(fn, *args)
  plain = _messy_fasta(tmp_path / "m.fa", chrx_head, crlf)
  gz = tmp_path / "m2.fa.gz"
  gz.write_bytes(gzip.compress(pathlib.Path(plain).read_bytes()))
  paths = [plain, str(gz)]
  cfg = genome.ChunkConfig(**cfg)
  want_stats, got_stats = genome.ChunkStats(), genome.ChunkStats()
  cuts = list(genome.iter_cuts(paths, cfg, 1 << 12, want_stats))
  (tmp_path / "w").mkdir()
  units = [u.load() for u in plan.plan_units(paths, cfg, 5_000, got_stats,
                                              str(tmp_path / "w"), submit)]
  assert tasks["scan_records"] and (tasks["scan_ranges"] > 0) == (batch_bytes < 20_000)
  assert len(units) > 10 and [u.index for u in units] == list(range(len(units)))
  assert got_stats == want_stats and want_stats.acgt > want_stats.kept  # Something was lost.
  np.testing.assert_array_equal(np.concatenate([u.bases for u in units]),
                                np.concatenate([c.bases for c in cuts]))
  np.testing.assert_array_equal(np.concatenate([u.lengths for u in units]),
                                np.concatenate([c.lengths for c in cuts]))
  want_val = np.concatenate([genome.validation_flags(c, cfg) for c in cuts])
  np.testing.assert_array_equal(np.concatenate([u.validation() for u in units]), want_val)
  keys = lambda names, first, counts: [(n, f + i) for n, f, c in zip(names, first, counts)
                                       for i in range(c)]
  assert [k for u in units for k in keys(u.names, u.first, u.counts)] == keys(
      [c.record_name for c in cuts], [c.first_index for c in cuts],
      [c.lengths.shape[0] for c in cuts])


def test_a_bad_byte_deep_in_a_file_names_its_line_from_a_worker(tmp_path, chrx_head):
  lines = [chrx_head[i:i + 60] for i in range(0, 60_000, 60)]
  lines[700] = lines[700][:10] + b"\x00" + lines[700][11:]
  fa = tmp_path / "bad.fa"
  fa.write_bytes(b">x\n" + b"\n".join(lines) + b"\n")
  with pytest.raises(fasta_lib.FastaError, match=r"bad.fa:702: byte b'\\x00'"):
    genome_tfds.build(tmp_path / "t", [str(fa)], num_workers=2)


def test_comment_lines_are_skipped_as_the_sequential_reader_skips_them(tmp_path, chrx_head):
  seq = chrx_head[:40_000]
  fa = tmp_path / "c.fa"
  fa.write_bytes(b">a\n" + seq[:20_000] + b"\n;a comment line\n" + seq[20_000:] + b"\n")
  builder = genome_tfds.build(tmp_path / "t", [str(fa)], num_workers=2)
  expect = {genome.TRAIN: [], genome.VALIDATION: []}
  for c in genome.iter_chunks([str(fa)]):
    expect[c.split].append(c.input_ids.tobytes() + np.int32(c.length).tobytes())
  assert _rows(builder) == expect


def test_failed_build_raises_and_leaves_no_dataset(tmp_path, monkeypatch):
  real = shards.write_unit

  def failing(unit, work_dir):
    if unit.index == 2:
      raise OSError(28, "No space left on device")
    return real(unit, work_dir)

  monkeypatch.setattr(shards, "write_unit", failing)
  with pytest.raises(OSError, match="No space left"):
    genome_tfds.build(tmp_path, None, num_workers=1)
  builder = genome_tfds.builder_for(tmp_path, genome_tfds.make_config(None))
  assert not builder.is_prepared()
  monkeypatch.setattr(shards, "write_unit", real)
  s = genome_tfds.summary(genome_tfds.build(tmp_path, None, num_workers=1))
  assert s["reused_units"] == 2 and s["examples"][genome.TRAIN] > 10_000


def _fasta(path, seq: bytes) -> str:
  path.write_bytes(b">tiny\n" + seq + b"\n")
  return str(path)


def test_too_small_corpus_says_so(tmp_path, chrx_head):
  # #20 item 11: a 51-bp corpus said it "needs runs of at least 6 bp".
  path = _fasta(tmp_path / "tiny.fa", chrx_head[:51])
  with pytest.raises(genome_tfds.CorpusError) as e:
    genome_tfds.build(tmp_path / "t", [path], num_workers=1)
  msg = str(e.value)
  assert "tiny.fa: the corpus yields no training chunk (51 letters, 51 A/C/G/T" in msg
  assert "0 train and 1 validation chunks" in msg and "give more sequence" in msg
  assert "at least 6 bp" not in msg
  assert isinstance(e.value, errors.UserError)
  all_n = _fasta(tmp_path / "n.fa", b"N" * 5000)
  with pytest.raises(genome_tfds.CorpusError, match="none of them A/C/G/T"):
    genome_tfds.build(tmp_path / "t", [all_n], num_workers=1)
  with pytest.raises(genome_tfds.CorpusError, match="num_workers must be >= 0"):
    genome_tfds.build(tmp_path / "t", [path], num_workers=-1)


def test_unit_size_follows_the_input_not_the_workers(tmp_path):
  small = _fasta(tmp_path / "s.fa", b"ACGT" * 1000)
  assert genome_tfds.unit_bp([small]) == 1 << 20
  assert genome_tfds.resolve_num_workers(None, [small]) == 1  # Too small to spread.
  assert genome_tfds.resolve_num_workers(3, [small]) == 3
  big = tmp_path / "big.fa"
  with open(big, "wb") as f:  # A sparse 3.2 GB file: sizes only, nothing read.
    f.truncate(3_200_000_000)
  assert genome_tfds.unit_bp([str(big)]) == 1 << 24  # ~190 units, not thousands.


@pytest.fixture(scope="module")
def chrx_head() -> bytes:
  from genemask_jax.data import fasta  # pylint: disable=g-import-not-at-top
  for _, seq in fasta.iter_records(genome.default_genome_paths()[0]):
    return seq[:100_000]
  raise AssertionError("no record")


def test_metadata_survives_reloading(tmp_path):
  genome_tfds.build(tmp_path, None, num_workers=1)
  reloaded = genome_tfds.builder_for(tmp_path, genome_tfds.make_config(None))
  meta = reloaded.info.metadata
  assert meta["stats"]["kept"] <= meta["stats"]["acgt"] <= meta["stats"]["letters"]
  assert json.loads(json.dumps(genome_tfds.summary(reloaded)))["units"] == meta["units"]


def _prepare(*args, cwd=None):
  env = {k: v for k, v in os.environ.items() if k != "GENEMASK_DATA_DIR"}
  env["PYTHONPATH"] = str(_REPO) + os.pathsep + env.get("PYTHONPATH", "")
  return subprocess.run([sys.executable, "-m", "genemask_jax.data.prepare", *args],
                        capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def test_prepare_command_runs_workers_and_reports_what_it_kept(tmp_path, chrx_head):
  path = tmp_path / "two.fa"
  path.write_bytes(b">a\n" + chrx_head[:60_000] + b"\n>b\n" + chrx_head[60_000:] + b"\n")
  res = _prepare(f"--tfds_dir={tmp_path / 't'}", f"--fasta={path}", "--num_workers=2")
  assert res.returncode == 0, res.stderr[-3000:]
  assert "read: 100,000 letters, 100,000 A/C/G/T, " in res.stdout
  assert "on 2 process(es)" in res.stdout


@pytest.mark.parametrize("make,args,expect", [
    (lambda d: str(d), [], "is a directory"),
    (lambda d: _fasta(d / "tiny.fa", b"ACGTACGTAC" * 5 + b"A"), [], "give more sequence"),
    (lambda d: _fasta(d / "ok.fa", b"ACGT" * 100), ["--num_workers=-1"],
     "--num_workers must be >= 0"),
])
def test_prepare_user_errors_are_one_line_exit_2(tmp_path, make, args, expect):
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "x.fa").write_bytes(b">x\nACGT\n")
  fa = make(tmp_path / "in")
  res = _prepare(f"--tfds_dir={tmp_path / 't'}", f"--fasta={fa}", "--num_workers=1", *args)
  assert res.returncode == 2, res.stderr[-3000:]
  lines = [l for l in res.stderr.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1 and expect in lines[0], res.stderr[-3000:]
  assert "Traceback" not in res.stderr


class _DiesInWorker(shards.RangeUnit):
  """A unit whose unpickling ends the worker process at once, as an OOM kill would."""

  def __reduce__(self):
    return (os._exit, (1,))


def test_a_dying_worker_is_one_clear_error_and_the_rerun_completes(tmp_path):
  import dataclasses  # pylint: disable=g-import-not-at-top
  work = str(tmp_path / "work")
  os.makedirs(work)
  units = list(plan.plan_units(genome.default_genome_paths(), genome.ChunkConfig(),
                               1 << 20, genome.ChunkStats(), work))
  assert len(units) >= 4
  # The first unit always goes to a worker (the main process writes one only while every
  # worker has two).
  bad = _DiesInWorker(**{f.name: getattr(units[0], f.name)
                         for f in dataclasses.fields(shards.RangeUnit)})
  with pytest.raises(RuntimeError, match="worker died.*run the same command again"):
    genome_tfds.write_units(iter([bad] + units[1:]), work, 2)
  results, reused = genome_tfds.write_units(iter(units), work, 1)
  os.makedirs(tmp_path / "clean")
  clean, _ = genome_tfds.write_units(iter(units), str(tmp_path / "clean"), 1)
  assert [r["digest"] for r in results] == [r["digest"] for r in clean]
  assert [r["examples"] for r in results] == [r["examples"] for r in clean]
  for r in results:  # Reused or rewritten, every shard matches the clean build's.
    for split in shards.SPLITS:
      if r["examples"][split]:
        a = pathlib.Path(shards.shard_path(work, r["index"], split)).read_bytes()
        b = pathlib.Path(shards.shard_path(str(tmp_path / "clean"), r["index"],
                                           split)).read_bytes()
        assert a == b
  assert 0 <= reused < len(units)  # The unit the worker died on was never finished.


_PROBE_MAIN = textwrap.dedent("""
    import os
    if __name__ != "__main__":  # A child importing this file as its __mp_main__.
      open(os.environ["PROBE_MARKER"], "w").close()
    from genemask_jax.data import genome_tfds  # What the data command imports.
    from genemask_jax.data import pool as pool_lib
    if __name__ == "__main__":
      with pool_lib.process_pool(1) as pool:
        print(pool.submit(eval, "('tensorflow_datasets' in __import__('sys').modules, "
                                "__import__('os').environ.get('OPENBLAS_NUM_THREADS'))"
                          ).result())
    """)


@pytest.mark.skipif(not pool_lib.LEAN_START, reason="CPython's own start for this Python")
@pytest.mark.parametrize("how", ["path", "module"])
def test_build_workers_do_not_import_the_main_module(tmp_path, how):
  # `python -m genemask_jax.data.prepare` or `python main.py`: multiprocessing would have
  # every worker import that module (TFDS, absl) before its first unit.
  (tmp_path / "probe_main.py").write_text(_PROBE_MAIN)
  marker = tmp_path / "imported"
  env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
  env.update(PROBE_MARKER=str(marker),
             PYTHONPATH=os.pathsep.join([str(_REPO), env.get("PYTHONPATH", "")]))
  cmd = ["probe_main.py"] if how == "path" else ["-m", "probe_main"]
  res = subprocess.run([sys.executable, *cmd], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
  assert res.returncode == 0, res.stderr[-2000:]
  assert res.stdout.strip().splitlines()[-1] == "(False, '1')"
  assert not marker.exists()


def test_packed_record_scans_come_back_as_they_were():
  # A worker's first-pass result travels packed (plan.pack_scans): every record's counts,
  # coordinates, segments and chunks, in order, whatever the sizes (a record without
  # sequence, one whose segments keep no chunk, places past 65,535 and past 2**32).
  rng = np.random.default_rng(0)
  scans = [
      (0, 0, np.zeros(1, np.int64), [], None),
      (40, 3, np.array([0, 40]), [(5, 8)], []),
      (70_000, 69_990, np.array([0, 40_000, 70_000]), [(0, 30_000), (30_010, 70_000)],
       [(0, 4, rng.integers(6, 512, 50)), (30_010, 0, rng.integers(6, 512, 70))]),
      (5 << 32, 5 << 32, np.array([0, 5 << 32]), [(0, 5 << 32)],
       [(0, 999, np.array([300, 511, 6]))]),
  ]
  back = plan.unpack_scans(plan.pack_scans(scans))
  assert len(back) == len(scans)
  for want, got in zip(scans, back):
    assert got[:2] == want[:2] and got[3] == want[3]
    np.testing.assert_array_equal(got[2], want[2])
    assert got[2].dtype == np.int64
    assert [(a, f) for a, f, _ in got[4]] == [(a, f) for a, f, _ in want[4] or []]
    for (_, _, g), (_, _, w) in zip(got[4], want[4] or []):
      np.testing.assert_array_equal(g, w)
      assert g.dtype == np.int64
  assert plan.unpack_scans(plan.pack_scans([])) == []
