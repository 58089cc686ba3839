"""Pretraining runs under bad input and faults (#20): each test keeps a row of
docs/reliability.md ("Pretraining runs, checkpoints and the workdir") true.

The runs are real: `main.py` as a subprocess on 300 chr22 blocks with the `:test` preset,
one short trained workdir shared by the module and copied before each test damages it.
"""
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_support  # tests/ is on sys.path (rootdir-relative test modules).

from genemask_jax import errors
from genemask_jax import hf
from genemask_jax import metrics_writer
from genemask_jax import model as model_lib
from genemask_jax import resume
from genemask_jax import train
from genemask_jax import workdir as workdir_lib
from genemask_jax.hf import cli as hf_cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from configs import pretrain as pretrain_config  # noqa: E402  pylint: disable=g-import-not-at-top

# 4 steps with saves at 2 and 4, async saves (the README's default, which failed with a
# relative workdir), every checkpoint kept.
_STEPS = ["--config.train.num_steps=4", "--config.train.checkpoint_every=2",
          "--config.eval.every=2", "--config.train.keep_checkpoints=5",
          "--config.train.async_checkpoint=True"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, data_dir):
  """A small real corpus (300 chr22 blocks), a shared TFDS dir and compilation cache."""
  base = tmp_path_factory.mktemp("reliability")
  corpus = base / "chr22_small.fa"
  test_support.write_small_corpus(data_dir, corpus)
  e = dict(os.environ)
  e.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
           XLA_FLAGS=("--xla_force_host_platform_device_count=1 "
                      "--xla_backend_optimization_level=0"),
           JAX_COMPILATION_CACHE_DIR=str(base / "jax_cache"),
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  flags = [f"--config.data.fasta={corpus}", f"--config.data.tfds_dir={base / 'tfds'}"]
  return {"env": e, "flags": flags, "base": base}


def _run(env, workdir, *extra, cwd=ROOT, timeout=300):
  cmd = [sys.executable, str(ROOT / "main.py"),
         f"--config={ROOT / 'configs' / 'pretrain.py'}:test", f"--workdir={workdir}",
         *env["flags"], *extra]
  return subprocess.run(cmd, cwd=cwd, env=env["env"], capture_output=True, text=True,
                        timeout=timeout)


def _steps(ckpt_dir):
  return sorted(int(p.name) for p in pathlib.Path(ckpt_dir).iterdir() if p.name.isdigit())


def _logged_steps(workdir):
  rows = metrics_writer.read_jsonl(os.path.join(workdir, "log.jsonl"))
  return [r["step"] for r in rows if "train/loss" in r]


@pytest.fixture(scope="module")
def trained(env):
  """A 4-step run started with a *relative* --workdir from another current directory."""
  cwd = env["base"] / "cwd"
  cwd.mkdir()
  r = _run(env, "rel/run", *_STEPS, cwd=cwd)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  workdir = cwd / "rel" / "run"
  assert _steps(workdir / "checkpoints") == [2, 4]
  assert not (workdir / workdir_lib.WorkdirLock.NAME).exists()  # Released at the end.
  return workdir


def test_relative_workdir_saves_async_and_resumes(env, trained, tmp_path):
  """The README's command with a relative --workdir (orbax needs absolute paths)."""
  cwd = tmp_path / "elsewhere"
  shutil.copytree(trained, cwd / "rel" / "run")
  r = _run(env, "rel/run", *_STEPS, "--config.train.num_steps=6", cwd=cwd)
  assert r.returncode == 0, r.stderr[-3000:]
  workdir = cwd / "rel" / "run"
  assert f"resumed from {workdir / 'checkpoints' / '4'} at step 4" in r.stdout
  assert _steps(workdir / "checkpoints") == [2, 4, 6]
  assert _logged_steps(workdir) == [1, 2, 3, 4, 5, 6]
  assert not list((workdir / "checkpoints").glob("*.orbax-checkpoint-tmp"))


def _truncate_biggest_data_file(step_dir):
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
  biggest = max(files, key=lambda p: p.stat().st_size)
  with open(biggest, "r+b") as f:
    f.truncate(biggest.stat().st_size // 2)


def _remove_metadata(step_dir):
  (step_dir / "state" / "_METADATA").unlink()


def _uncommitted(step_dir):
  """A save cut short: no commit_success.txt anywhere and no tree metadata yet."""
  for p in step_dir.rglob("commit_success.txt"):
    p.unlink()
  (step_dir / "state" / "_METADATA").unlink()


@pytest.mark.parametrize("damage,reason", [
    (_truncate_biggest_data_file, "Encountered error while reading"),
    (_remove_metadata, "_METADATA"),
    (_uncommitted, "uncommitted, no commit_success.txt"),
])
def test_damaged_latest_checkpoint_falls_back_and_keeps_it(env, trained, tmp_path, damage,
                                                          reason):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  ckpt = workdir / "checkpoints"
  damage(ckpt / "4")
  # An interrupted save too: orbax would delete it when saving step 6 again.
  shutil.copytree(ckpt / "2", ckpt / "6.orbax-checkpoint-tmp")
  files_before = sorted(p.relative_to(ckpt / "4") for p in (ckpt / "4").rglob("*"))

  r = _run(env, workdir, *_STEPS, "--config.train.num_steps=6")
  assert r.returncode == 0, r.stderr[-3000:]
  damaged_lines = [l for l in r.stderr.splitlines() if "damaged checkpoint (" in l]
  assert len(damaged_lines) == 1 and f"{ckpt / '4'}: damaged checkpoint" in damaged_lines[0]
  assert reason in damaged_lines[0]
  assert f"moved to {workdir / resume.DAMAGED_DIR}" in damaged_lines[0]
  assert "Traceback" not in r.stderr
  assert f"resumed from {ckpt / '2'} at step 2" in r.stdout
  # Nothing deleted: the damaged step and the unfinished save are moved aside whole.
  kept = sorted((workdir / resume.DAMAGED_DIR).iterdir())
  assert [p.name.split(".")[0] for p in kept] == ["4", "6"]
  assert sorted(p.relative_to(kept[0]) for p in kept[0].rglob("*")) == files_before
  assert _steps(ckpt) == [2, 4, 6]  # 4 and 6 written again by this run.
  # log.jsonl held steps 1..4; 3 and 4 ran again and are not repeated.
  assert _logged_steps(workdir) == [1, 2, 3, 4, 5, 6]


def test_no_intact_checkpoint_is_an_error_that_changes_nothing(env, trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  for step in (2, 4):
    _remove_metadata(workdir / "checkpoints" / str(step))
  ckpt = workdir / "checkpoints"
  before = {p: p.stat().st_mtime_ns for p in ckpt.rglob("*")}
  r = _run(env, workdir, *_STEPS, "--config.train.num_steps=6")
  assert r.returncode == 2, r.stderr[-3000:]
  assert "main.py: error:" in r.stderr and "no checkpoint restores" in r.stderr
  assert "Traceback" not in r.stderr
  assert {p: p.stat().st_mtime_ns for p in ckpt.rglob("*")} == before
  assert not (workdir / resume.DAMAGED_DIR).exists()
  assert not (workdir / workdir_lib.WorkdirLock.NAME).exists()


def test_hf_export_of_a_damaged_checkpoint_is_one_line(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  # Every array data file, whatever its size: how orbax spreads the arrays over its files
  # (and so which one holds the params that export reads) varies from run to run.
  data_files = [f for f in (workdir / "checkpoints" / "4" / "state").rglob("d/*")
                if f.is_file() and f.stat().st_size > 0]
  assert data_files
  for f in data_files:
    with open(f, "r+b") as fh:
      fh.truncate(f.stat().st_size // 2)
  with pytest.raises(hf.HFExportError, match="damaged checkpoint") as e:
    hf_cli.export_checkpoint(workdir, tmp_path / "hf_out")
  assert "\n" not in str(e.value) and len(str(e.value)) < 600
  _remove_metadata(workdir / "checkpoints" / "4")
  with pytest.raises(hf.HFExportError, match="_METADATA") as e:
    hf_cli.export_checkpoint(workdir, tmp_path / "hf_out2")
  assert "\n" not in str(e.value)


def test_live_lock_refuses_a_second_run_and_stale_lock_is_taken_over(env, trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  lock = workdir / workdir_lib.WorkdirLock.NAME
  lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "since": 0}))
  r = _run(env, workdir, *_STEPS)
  assert r.returncode == 2, r.stderr[-3000:]
  assert f"in use by pid {os.getpid()} on host {socket.gethostname()}" in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1, r.stderr

  dead = subprocess.Popen(["true"])
  dead.wait()
  lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": 0}))
  r = _run(env, workdir, *_STEPS)  # Already at step 4: finds the run complete.
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"stale lock of pid {dead.pid}" in r.stderr
  assert not lock.exists()


def test_lock_from_another_host_is_not_taken_over(tmp_path):
  lock = workdir_lib.WorkdirLock(tmp_path)
  (tmp_path / lock.NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": 0}))
  with pytest.raises(workdir_lib.CheckpointError, match="in use by pid 1 on host elsewhere"):
    lock.acquire()
  (tmp_path / lock.NAME).unlink()
  lock.acquire()
  assert json.loads((tmp_path / lock.NAME).read_text())["pid"] == os.getpid()
  lock.release()
  assert not (tmp_path / lock.NAME).exists()


# ----------------------------------------------------------------------------- bad config
def _config(**overrides):
  c = pretrain_config.get_config("test")
  for key, value in overrides.items():
    section, name = key.split(".")
    c[section][name] = value
  return c


@pytest.mark.parametrize("overrides,match", [
    ({"train.keep_checkpoints": 0}, r"config.train.keep_checkpoints must be >= 1.* got 0"),
    ({"train.keep_checkpoints": -1}, r"config.train.keep_checkpoints must be >= 1.* got -1"),
    ({"eval.every": 0}, r"config.eval.every must be >= 1, got 0"),
    ({"optim.warmup_steps": 10},
     r"config.optim.warmup_steps=10 must be in 0..config.train.num_steps=6"),
    ({"eval.batch_size": 12}, r"config.eval.batch_size=12: global batch size=12 is not "
                              r"divisible by 8"),
    ({"npmi.source": "/nonexistent/table.csv"}, r"^/nonexistent/table.csv: "),
    ({"npmi.source": ""}, r"config.npmi.source is empty"),
    ({"npmi.min_count": 0}, r"config.npmi.min_count must be >= 1"),
    ({"optim.b2": 1.0}, r"config.optim.b2 must be in \[0, 1\)"),
    ({"optim.clip_norm": 0.0}, r"config.optim.clip_norm must be > 0"),
    ({"masking.rank_source": "contents"}, r"config.masking.rank_source='contents'"),
    ({"data.validation_fraction": 0.0}, r"config.data.validation_fraction must be in"),
    ({"probe.every": 2, "probe.shots": "10,x"}, r"config.probe.shots='10,x'; expected"),
])
def test_bad_config_fails_before_anything_is_written(tmp_path, overrides, match):
  workdir = tmp_path / "w"
  with pytest.raises(errors.UserError, match=match):
    train.train_and_evaluate(_config(**overrides), os.fspath(workdir))
  assert not workdir.exists()


def test_workdir_that_is_a_file_or_under_a_file(tmp_path):
  f = tmp_path / "file"
  f.write_text("x")
  with pytest.raises(train.UserError, match=r"--workdir=.*/file: exists and is not a dir"):
    train.train_and_evaluate(_config(), os.fspath(f))
  with pytest.raises(train.UserError, match=r"cannot be created, .*/file is not a directory"):
    train.train_and_evaluate(_config(), os.fspath(f / "sub"))
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "checkpoints").write_text("x")
  with pytest.raises(train.UserError, match=r"checkpoints directory=.*: exists and is not"):
    train.train_and_evaluate(_config(), os.fspath(workdir))
  assert sorted(p.name for p in workdir.iterdir()) == ["checkpoints"]


def test_read_only_checkpoints_dir_fails_at_start(tmp_path, monkeypatch):
  workdir = tmp_path / "w"
  ckpt = workdir / "checkpoints"
  ckpt.mkdir(parents=True)
  ckpt.chmod(0o555)
  try:
    tempfile.mkstemp(dir=ckpt)
    writable_anyway = True  # Root ignores permission bits: make the probe see EACCES.
  except PermissionError:
    writable_anyway = False
  if writable_anyway:
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # pylint: disable=redefined-builtin
      if dir is not None and pathlib.Path(dir) == ckpt:
        raise PermissionError(13, "Permission denied")
      return real(*args, dir=dir, **kwargs)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
  try:
    with pytest.raises(train.UserError, match=r"checkpoints directory=.*: not writable"):
      train.train_and_evaluate(_config(), os.fspath(workdir))
  finally:
    ckpt.chmod(0o755)
  assert not (workdir / "config.json").exists()


def _tiny_hf_dir(path, **overrides):
  cfg = model_lib.model_config("tiny", **overrides)
  params = nn.unbox(model_lib.BertForMaskedLM(cfg).init(
      jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  return hf.export_params(jax.tree.map(np.asarray, params), cfg, path)


def test_init_from_hf_problems_fail_before_anything_is_written(tmp_path):
  workdir = tmp_path / "w"
  d = _tiny_hf_dir(tmp_path / "hf", num_layers=1)
  with pytest.raises(hf.HFImportError, match=r"num_layers: HF 1 vs ours 2"):
    train.train_and_evaluate(_config(), os.fspath(workdir), init_from_hf=os.fspath(d))
  assert not workdir.exists()

  cfg_path = d / "config.json"
  hf_cfg = json.loads(cfg_path.read_text())
  hf_cfg["hidden_size"] = 256.5
  cfg_path.write_text(json.dumps(hf_cfg))
  with pytest.raises(hf.HFImportError, match=r"expected positive integer sizes, got "
                                             r"hidden_size=256.5"):
    train.train_and_evaluate(_config(), os.fspath(workdir), init_from_hf=os.fspath(d))
  assert not workdir.exists()
  # An existing workdir is left as it was: no config.json, checkpoints/ or lock written.
  workdir.mkdir()
  with pytest.raises(errors.UserError, match=r"hidden_size=256.5"):
    train.train_and_evaluate(_config(), os.fspath(workdir), init_from_hf=os.fspath(d))
  assert not list(workdir.iterdir())


class _NotATensor:  # A pickled object that torch's weights_only loader refuses.
  pass


def test_pickle_bin_is_refused_without_suggesting_unsafe_loading(tmp_path):
  torch = pytest.importorskip("torch")
  d = _tiny_hf_dir(tmp_path / "hf")
  (d / "model.safetensors").unlink()
  torch.save({"x": torch.zeros(2), "payload": _NotATensor()}, d / "pytorch_model.bin")
  with pytest.raises(hf.HFImportError, match=r"pytorch_model.bin: not a plain tensor state "
                                             r"dict") as e:
    train.train_and_evaluate(_config(), os.fspath(tmp_path / "w"), init_from_hf=os.fspath(d))
  assert "weights_only" not in str(e.value) and "\n" not in str(e.value)
  assert not (tmp_path / "w").exists()


# ----------------------------------------------------------------------------- main.py lines
@pytest.mark.parametrize("args,match", [
    (["--config.train.keep_checkpoints=0"], "config.train.keep_checkpoints must be >= 1"),
    (["--config.optim.warmup_steps=7"],
     "config.optim.warmup_steps=7 must be in 0..config.train.num_steps=6"),
])
def test_main_prints_one_line_and_exits_2(env, tmp_path, args, match):
  r = _run(env, tmp_path / "w", *args, timeout=120)
  assert r.returncode == 2
  assert r.stderr.strip().splitlines() == [r.stderr.strip()] and match in r.stderr
  assert not (tmp_path / "w").exists()


def test_bad_preset_is_one_line(env, tmp_path):
  r = subprocess.run([sys.executable, str(ROOT / "main.py"),
                      f"--config={ROOT / 'configs' / 'pretrain.py'}:tset",
                      f"--workdir={tmp_path / 'w'}"], cwd=ROOT, env=env["env"],
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 2
  assert len(r.stderr.strip().splitlines()) == 1, r.stderr
  assert "unknown preset 'tset'; known: default, test" in r.stderr


# ----------------------------------------------------------------------------- log.jsonl
def test_truncate_jsonl_drops_rows_past_the_step_and_a_torn_line(tmp_path):
  path = tmp_path / "log.jsonl"
  rows = [{"step": s, "train/loss": 8.0} for s in (1, 2, 3, 4)]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "tra')
  assert metrics_writer.truncate_jsonl(os.fspath(path), 2) == 3
  assert [r["step"] for r in metrics_writer.read_jsonl(os.fspath(path))] == [1, 2]
  assert metrics_writer.truncate_jsonl(os.fspath(path), 2) == 0


def _events(path):
  """The Event protos of a TensorBoard event file (TFRecord framing, CRCs not checked)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  data = path.read_bytes()
  out, i = [], 0
  while i < len(data):
    n = int.from_bytes(data[i:i + 8], "little")
    out.append(event_pb2.Event.FromString(data[i + 12:i + 12 + n]))
    i += 12 + n + 4
  return out


def test_resumed_writer_drops_later_rows_and_purges_them_in_tensorboard(tmp_path):
  w = metrics_writer.MetricWriter(os.fspath(tmp_path))
  for step in (1, 2, 3, 4):
    w.write_scalars(step, {"loss": 8.0}, prefix="train/")
  w.close()
  w = metrics_writer.MetricWriter(os.fspath(tmp_path), resume_step=2)
  w.write_scalars(3, {"loss": 7.0}, prefix="train/")
  w.close()
  assert _logged_steps(tmp_path) == [1, 2, 3]
  newest = max((tmp_path / "tb").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns)
  starts = [e.step for e in _events(newest) if e.HasField("session_log")]
  assert starts == [3]  # TensorBoard drops the older files' points from step 3 on.


def test_abandoned_orbax_read_tasks_are_not_reported_on_stderr():
  """asyncio's "Task exception was never retrieved" for an orbax read of a damaged step
  (its traceback reached stderr in CI) goes to the debug log; any other task's still shows."""
  script = r"""
import asyncio, gc
from absl import logging
from genemask_jax import workdir
logging.use_absl_handler()
workdir.hide_orbax_read_noise()

async def _read_array_index_and_device_put():  # orbax's coroutine, by name
  raise Exception("Encountered error while reading array index: (slice(0, 8, 1),)")

async def someone_elses_task():
  raise ValueError("a failure of another library: still reported")

async def _save_something():  # An orbax *save* that failed: still reported.
  raise OSError("orbax save failed: disk full")

async def someone_elses_gather():
  raise KeyError("another gather: still reported")

async def _read_array_index_and_device_put_quietly():  # Its message names no read.
  async def _read_array_index_and_device_put():
    raise ValueError("tensorstore: OUT_OF_RANGE")
  return await _read_array_index_and_device_put()

async def main():
  tasks = [asyncio.ensure_future(_read_array_index_and_device_put()),
           asyncio.ensure_future(someone_elses_task()),
           asyncio.ensure_future(_save_something()),
           # A gather's future: "Future exception was never retrieved", no coroutine named.
           asyncio.gather(_read_array_index_and_device_put_quietly()),
           asyncio.gather(someone_elses_gather())]
  await asyncio.sleep(0.01)
  assert all(t.done() for t in tasks)
  del tasks

asyncio.run(main())
gc.collect()
print("done")
"""
  r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                     timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 0 and r.stdout.strip() == "done", r.stderr[-3000:]
  assert "Task exception was never retrieved" in r.stderr  # someone_elses_task's report...
  assert "a failure of another library: still reported" in r.stderr
  assert "Encountered error while reading" not in r.stderr  # ...but not the orbax read's.
  assert "_read_array_index_and_device_put" not in r.stderr
  assert "orbax save failed: disk full" in r.stderr
  assert "Future exception was never retrieved" in r.stderr  # The other gather's...
  assert "another gather: still reported" in r.stderr
  assert "OUT_OF_RANGE" not in r.stderr  # ...but not the one over an orbax read.
