"""Bad inputs to the NPMI command, few-shot evaluation and downloads (issue #20, items 6, 8-10).

Each test keeps a row of docs/reliability.md ("NPMI tables, few-shot evaluation and
downloads") true: a user error is one line on stderr, exit code 2, before the long work, and
finished work is kept.
"""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import test_support  # tests/ is on sys.path (rootdir-relative test modules).

from genemask_jax import npmi

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO))
ROOT = os.geteuid() == 0  # Permission bits do not stop root: read-only tests skip.


def _random_dna(n, seed=0):
  return "".join(np.random.default_rng(seed).choice(list("ACGT"), n))


def _fasta(path, seq, width=60):
  path.write_text(">r\n" + "".join(seq[i:i + width] + "\n" for i in range(0, len(seq), width)))
  return path


def _npmi_cmd(*args, cwd=None):
  return subprocess.run([sys.executable, "-m", "genemask_jax.npmi", *map(str, args)],
                        capture_output=True, text=True, env=ENV, cwd=cwd, timeout=120)


def _one_error_line(proc, prefix):
  """The last stderr line is the error; no traceback; exit code 2."""
  assert proc.returncode == 2, proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(prefix), proc.stderr
  return last


# ------------------------------------------------------------------ NPMI: scored 6-mer floor


@pytest.fixture(scope="module")
def counts_300kbp():
  return npmi.count_sequences([_random_dna(300_000)], k=6)


def test_a_corpus_scoring_too_few_kmers_is_an_error_with_the_fix(counts_300kbp):
  # 300 kbp at the authors' min_count=101: a handful of 6-mers reach 101 occurrences.
  with pytest.raises(npmi.NpmiError) as e:
    npmi.score_counts(counts_300kbp, min_scored_fraction=0.5, source="corpus.fa")
  msg = str(e.value)
  assert msg.startswith("corpus.fa (299,995 6-mer windows, min_count=101): ")
  n = int(msg.split(": ", 1)[1].split(" of ")[0])
  assert n < 100 and f"{n} of 4096 6-mers scored ({n / 4096:.1%})" in msg
  assert "min_scored_fraction=0.5" in msg
  assert "lower npmi.min_count" in msg and "--config=configs/pretrain.py:authors_npmi" in msg
  # A lower min_count scores (nearly) every 6-mer of the same counts and passes the floor.
  table = npmi.score_counts(counts_300kbp, min_count=20, min_scored_fraction=0.5)
  assert np.count_nonzero(~np.isnan(table.npmi)) > 0.9 * 4096
  # No floor: any table (analysis of small inputs).
  sparse = npmi.score_counts(counts_300kbp, min_scored_fraction=0.0)
  assert 0 < np.count_nonzero(~np.isnan(sparse.npmi)) < 100
  with pytest.raises(npmi.NpmiError, match=r"min_scored_fraction must be a number in \[0, 1\]"):
    npmi.score_counts(counts_300kbp, min_scored_fraction=1.5)


def test_load_lookup_refuses_a_sparse_table_in_every_format(counts_300kbp, tmp_path):
  sparse = npmi.score_counts(counts_300kbp, min_scored_fraction=0.0)
  csv_path = tmp_path / "sparse.csv"
  written = npmi.write_table(sparse, csv_path)
  np.savez(tmp_path / "sparse.npz", rank=written.rank, score=written.score)
  for path in (csv_path, tmp_path / "sparse.rank.npy", tmp_path / "sparse.npz"):
    with pytest.raises(npmi.NpmiError, match=r"of 4096 6-mers scored \(\d\.\d%\), fewer than "
                       r"min_scored_fraction=0\.5.*lower min_count.*authors_npmi") as e:
      npmi.load_lookup(path)
    assert str(e.value).startswith(f"{path}: ")  # The file the user passed, first.
    lk = npmi.load_lookup(path, min_scored_fraction=0.0)
    assert npmi.scored_count(lk) == np.count_nonzero(~np.isnan(sparse.npmi))
  # The floor is a share: the same table passes a floor below its share.
  share = npmi.scored_count(written) / 4096
  npmi.load_lookup(csv_path, min_scored_fraction=share)
  with pytest.raises(npmi.NpmiError):
    npmi.load_lookup(csv_path, min_scored_fraction=share + 1 / 4096)


def test_the_authors_table_passes_the_floor(data_dir):
  lk = npmi.load_lookup(data_dir / "npmi" / "genemask_grch38_chr1-3_6mer_npmi.csv",
                        min_scored_fraction=1.0)
  assert npmi.scored_count(lk) == 4096


@pytest.mark.parametrize("name, seq, why", [
    ("dna51", _random_dna(51), "51 letters, 51 of them A/C/G/T (46 6-mer windows"),
    ("rna", _random_dna(3000, 1).replace("T", "U"), "3,000 letters, "),
])
def test_npmi_command_refuses_to_write_a_table_without_scores(tmp_path, name, seq, why):
  fa = _fasta(tmp_path / f"{name}.fa", seq)
  out = tmp_path / "out" / "table.csv"
  proc = _npmi_cmd(f"--fasta={fa}", f"--output={out}")
  last = _one_error_line(proc, "npmi: error: ")
  assert why in last and "0 of 4096 6-mers scored (0.0%)" in last
  assert "lower --min_count (now 101)" in last and "authors_npmi" in last
  assert not out.exists() and not list(tmp_path.rglob("*.npy"))


def test_npmi_command_on_protein_names_the_file(tmp_path):
  rng = np.random.default_rng(0)
  fa = _fasta(tmp_path / "protein.fa", "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 3000)))
  proc = _npmi_cmd(f"--fasta={fa}", f"--output={tmp_path / 't.csv'}")
  last = _one_error_line(proc, "npmi: error: ")
  assert "protein.fa" in last and "6-mer" in last
  assert not (tmp_path / "t.csv").exists()


@pytest.mark.parametrize("output, extra, match", [
    ("{d}", [], "--output={d}: {d} is a directory; expected a file path such as {d}/table.csv"),
    ("{f}/t.csv", [], "--output={f}/t.csv: {f} is a file, not a directory"),
    ("{f}/sub/t.csv", [], "--output={f}/sub/t.csv: {f} is a file, not a directory"),
    ("{d}/t.csv", ["--min_count=0"], "--min_count=0: expected an integer >= 1"),
    ("{d}/t.csv", ["--min_scored_fraction=2"], "--min_scored_fraction=2.0: expected a number"),
    ("{d}/t.csv", ["--k=0"], "k must be an integer in 1..10, got 0"),
])
def test_npmi_command_bad_flags_fail_before_counting(tmp_path, output, extra, match):
  d = tmp_path / "dir"
  d.mkdir()
  f = _fasta(tmp_path / "g.fa", _random_dna(5000))
  output, match = (s.format(d=d, f=f) for s in (output, match))
  proc = _npmi_cmd(f"--fasta={f}", f"--output={output}", *extra)
  last = _one_error_line(proc, "npmi: error: ")
  assert match in last
  assert "counting" not in proc.stderr  # Refused before the (long) count.
  assert list(d.iterdir()) == []


@pytest.mark.skipif(ROOT, reason="permission bits do not stop root")
def test_npmi_command_read_only_output_dir(tmp_path):
  d = tmp_path / "ro"
  d.mkdir()
  d.chmod(0o500)
  try:
    f = _fasta(tmp_path / "g.fa", _random_dna(5000))
    proc = _npmi_cmd(f"--fasta={f}", f"--output={d / 't.csv'}")
    assert f"cannot write in {d}" in _one_error_line(proc, "npmi: error: ")
    assert "counting" not in proc.stderr
  finally:
    d.chmod(0o700)


def test_check_output_path_probes_the_directory(tmp_path, monkeypatch):
  # As root a read-only directory is writable, so the probe itself is tested: a failing
  # temporary file in the directory is the one-line error.
  import tempfile

  def refuse(*args, **kwargs):
    raise PermissionError(13, "Permission denied")

  monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
  with pytest.raises(npmi.NpmiError, match=f"cannot write in {tmp_path}: Permission denied"):
    npmi.check_output_path(str(tmp_path / "t.csv"))


def test_pretraining_applies_the_floor_for_genemask_only(tmp_path):
  """config.npmi.min_scored_fraction reaches the NPMI computation of sources.npmi_lookup."""
  from etils import epath
  from genemask_jax.data import sources
  sys.path.insert(0, str(REPO))
  try:
    from configs import pretrain
  finally:
    sys.path.remove(str(REPO))
  fa = _fasta(tmp_path / "small.fa", _random_dna(300_000))
  config = pretrain.get_config("test")
  assert config.npmi.min_scored_fraction == npmi.DEFAULT_MIN_SCORED_FRACTION
  workdir = epath.Path(tmp_path / "wd")
  with pytest.raises(npmi.NpmiError, match=r"config\.data\.fasta .*min_count=101\): \d+ of 4096 "
                     r"6-mers scored.*lower npmi\.min_count or use the authors' table: "
                     r"--config=configs/pretrain\.py:authors_npmi"):
    sources.npmi_lookup(config, [str(fa)], workdir)
  assert not (workdir / "npmi" / "table.csv").exists()  # Nothing cached.
  config.npmi.min_scored_fraction = 0.0
  assert npmi.scored_count(sources.npmi_lookup(config, [str(fa)], workdir)) < 100
  # Other masking strategies do not read the ranks: no floor.
  config = pretrain.get_config("test,dnabert")
  sources.npmi_lookup(config, [str(fa)], epath.Path(tmp_path / "wd2"))


# ------------------------------------------------------------------------- few-shot


def _save_workdir(wd, scale=1.0):
  """A pretraining workdir as main.py writes it (tiny model, step 7), weights x scale."""
  test_support.save_tiny_workdir(wd, scale)
  return wd


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  base = tmp_path_factory.mktemp("fewshot_inputs")
  return {name: _save_workdir(base / name, scale) for name, scale in (
      ("good", 1.0), ("nan", float("nan")), ("huge", 1e30))}


def _rc(tmp_path, data_dir, **kw):
  from genemask_jax import fewshot_lib
  base = dict(models=(("random", "random"),), model_size="tiny", tasks=("prom_core",),
              shots=(10,), seeds=(0,), resample=False, data_dir=str(data_dir), mode="finetune",
              output_dir=str(tmp_path / "out"), overrides={"epochs": 1, "max_len": 16},
              max_test_examples=8, progress=False)
  base.update(kw)
  return fewshot_lib.RunConfig(**base)


def _fewshot_cmd(*args, cwd=None):
  return subprocess.run([sys.executable, "-m", "genemask_jax.fewshot", *map(str, args)],
                        capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)


def test_nan_weights_are_one_line_naming_the_checkpoint_before_training(workdirs, data_dir,
                                                                         tmp_path):
  out = tmp_path / "out"
  proc = _fewshot_cmd(f"--checkpoint=broken={workdirs['nan']}", "--tasks=prom_core",
                      "--shots=10", "--seeds=1", f"--data_dir={data_dir}",
                      f"--output_dir={out}", "--noprogress")
  last = _one_error_line(proc, "fewshot: error: model broken (")
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert f"{workdirs['nan']}/checkpoints/7" in last
  assert "encoder weights are NaN or infinite" in last and "evaluate an earlier step" in last
  assert not out.exists()  # Refused before any training or output.


def test_a_diverging_run_gets_no_metrics_and_the_others_are_kept(workdirs, data_dir, tmp_path):
  import csv
  import json

  from genemask_jax import fewshot_lib
  rc = _rc(tmp_path, data_dir, models=(("huge", str(workdirs["huge"])), ("random", "random")))
  with pytest.raises(fewshot_lib.FewShotError) as e:
    fewshot_lib.run(rc)
  msg = str(e.value)
  assert msg.startswith("1 of 2 run(s) diverged and have no metrics; 1 finished")
  assert "[1/2] huge prom_core 10-shot: the train loss is nan at step 1" in msg
  out = tmp_path / "out"
  with open(out / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert {r["model"] for r in rows} == {"random"} and len(rows) == 6  # Six metrics, one seed.
  md = (out / "results.md").read_text()
  assert "| huge | Prom-core | 10 | failed |" in md and "## Failures" in md
  assert json.loads((out / "run.json").read_text())["failures"][0]["model"] == "huge"


def test_linear_probe_with_nan_features_gets_no_metrics(workdirs, data_dir, tmp_path):
  from genemask_jax import fewshot_lib
  from genemask_jax import report
  rc = _rc(tmp_path, data_dir, models=(("huge", str(workdirs["huge"])),), mode="linear_probe")
  with pytest.raises(fewshot_lib.FewShotError, match=(
      r"^1 of 1 run\(s\) diverged .* huge prom_core 10-shot: the encoder's features are NaN")):
    fewshot_lib.run(rc)
  assert ((tmp_path / "out" / "results.csv").read_text().strip()
          == ",".join(report.CSV_COLUMNS))


def test_a_truncated_checkpoint_is_one_line_naming_the_model(workdirs, data_dir, tmp_path):
  import shutil

  from genemask_jax import fewshot_lib
  wd = tmp_path / "trunc"
  shutil.copytree(workdirs["good"], wd)
  data = max((wd / "checkpoints" / "7" / "state").rglob("ocdbt.process_0/d/*"),
             key=lambda p: p.stat().st_size)  # The file holding the arrays.
  data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])
  from genemask_jax import checkpoints
  with pytest.raises(checkpoints.CheckpointError) as e:
    fewshot_lib.run(_rc(tmp_path, data_dir, models=(("t", str(wd)),)))
  msg = str(e.value)
  assert "\n" not in msg and len(msg) < 400, msg
  assert msg.startswith(f"model t: {wd}/checkpoints/7/state: cannot restore params")
  assert "the checkpoint is damaged or incomplete" in msg
  assert not (tmp_path / "out").exists()


def test_a_relative_checkpoint_path_loads(workdirs, tmp_path, monkeypatch):
  # Orbax restores absolute paths only: a relative --checkpoint used to read as "no params".
  from genemask_jax import fewshot_lib
  monkeypatch.chdir(workdirs["good"].parent)
  rc = _rc(tmp_path, None, models=(("g", "good"),))
  ((name, _, enc, info),) = fewshot_lib.load_models(rc, 4101)
  assert name == "g" and info["step"] == 7 and "embeddings" in enc


def test_a_training_file_with_one_class_is_one_line_naming_the_file(data_dir, tmp_path):
  from genemask_jax.data import tasks
  task = tmp_path / "data" / "fewshot" / "Prom-core"
  (task / "10").mkdir(parents=True)
  shipped = (data_dir / "fewshot" / "Prom-core" / "10" / "train.tsv").read_text().splitlines()
  one_class = [shipped[0]] + [r for r in shipped[1:] if r.split("\t")[1].strip('"') == "0"]
  (task / "10" / "train.tsv").write_text("\n".join(one_class) + "\n")
  (task / "test.tsv").symlink_to(data_dir / "fewshot" / "Prom-core" / "test.tsv")
  with pytest.raises(tasks.FewShotDataError, match=(
      rf"{task}/10/train.tsv: a training set needs rows of each of the 2 classes \(labels "
      rf"0..1\); it has {len(one_class) - 1} of class 0 and none of class 1")):
    tasks.load_task("prom_core", 10, tmp_path / "data")
  proc = _fewshot_cmd("--init=random", "--tasks=prom_core", "--shots=10",
                      f"--data_dir={tmp_path / 'data'}", f"--output_dir={tmp_path / 'out'}")
  assert f"{task}/10/train.tsv: a training set needs" in _one_error_line(proc, "fewshot: error:")
  assert not (tmp_path / "out").exists()


def test_fewshot_output_dir_that_is_a_file_or_unwritable_fails_first(data_dir, tmp_path,
                                                                     monkeypatch):
  import tempfile

  from genemask_jax import fewshot_lib
  f = tmp_path / "file"
  f.write_text("x")
  for out, match in ((f, f"--output_dir={f} is a file, not a directory"),
                     (f / "sub", f"--output_dir={f}/sub: {f} is a file, not a directory")):
    # A bad task too: the output dir is checked first, before any data is read.
    with pytest.raises(fewshot_lib.FewShotError, match=match):
      fewshot_lib.run(_rc(tmp_path, data_dir, output_dir=str(out), tasks=("nope",)))

  def refuse(*args, **kwargs):
    raise PermissionError(13, "Permission denied")

  monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
  with pytest.raises(fewshot_lib.FewShotError, match=f"cannot write in {tmp_path}: Permission"):
    fewshot_lib.run(_rc(tmp_path, data_dir, output_dir=str(tmp_path / "new" / "out")))
  assert not (tmp_path / "new").exists()


@pytest.mark.skipif(ROOT, reason="permission bits do not stop root")
def test_fewshot_read_only_output_dir(data_dir, tmp_path):
  d = tmp_path / "ro"
  d.mkdir()
  d.chmod(0o500)
  try:
    proc = _fewshot_cmd("--init=random", "--tasks=prom_core", "--shots=10",
                        f"--data_dir={data_dir}", f"--output_dir={d / 'out'}")
    assert f"cannot write in {d}" in _one_error_line(proc, "fewshot: error:")
  finally:
    d.chmod(0o700)
