"""The pretraining binary end to end: outputs, exact resumption after SIGTERM, bad input."""
import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest
import test_support  # tests/ is on sys.path (rootdir-relative test modules).

from genemask_jax import metrics_writer

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory, data_dir):
  """A small real corpus (300 chr22 blocks), a shared TFDS dir and compilation cache."""
  base = tmp_path_factory.mktemp("train")
  corpus = base / "chr22_small.fa"
  test_support.write_small_corpus(data_dir, corpus)
  e = dict(os.environ)
  e.update(JAX_PLATFORMS="cpu", XLA_FLAGS=_xla_flags(1),
           JAX_COMPILATION_CACHE_DIR=str(base / "jax_cache"),
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", PYTHONUNBUFFERED="1")
  flags = [f"--config.data.fasta={corpus}", f"--config.data.tfds_dir={base / 'tfds'}"]
  return {"env": e, "flags": flags, "base": base, "corpus": corpus, "data_dir": data_dir}


def _xla_flags(devices):
  # Unoptimised CPU code compiles about twice as fast; these runs are a few steps long.
  return (f"--xla_force_host_platform_device_count={devices} "
          "--xla_backend_optimization_level=0")


def _cmd(env, workdir, *extra, preset="test"):
  return [sys.executable, str(ROOT / "main.py"), f"--config=configs/pretrain.py:{preset}",
          f"--workdir={workdir}", *env["flags"], *extra]


def _run(env, workdir, *extra, preset="test", devices=1, timeout=300):
  e = dict(env["env"], XLA_FLAGS=_xla_flags(devices))
  return subprocess.run(_cmd(env, workdir, *extra, preset=preset), cwd=ROOT, env=e,
                        capture_output=True, text=True, timeout=timeout)


def _losses(workdir):
  rows = metrics_writer.read_jsonl(os.path.join(workdir, "log.jsonl"))
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


_STEPS = ["--config.train.num_steps=8", "--config.train.checkpoint_every=4",
          "--config.eval.every=4"]


@pytest.fixture(scope="module")
def straight(env):
  """An uninterrupted 8-step run on 2 simulated devices: the reference for the others.

  It also runs the in-training few-shot probe, which reads params only, so its losses
  stay comparable with the runs without it.
  """
  workdir = env["base"] / "straight"
  r = _run(env, workdir, *_STEPS, "--config.probe.every=4", "--config.probe.shots=10",
           "--config.probe.max_test_examples=64",
           f"--config.probe.data_dir={env['data_dir']}", devices=2)
  assert r.returncode == 0, r.stderr[-3000:]
  return workdir, r


def test_run_writes_checkpoint_events_and_jsonl(straight):
  workdir, r = straight
  assert "over 2 cpu device(s)" in r.stdout
  assert "step 8/8" in r.stdout and "eval step 8" in r.stdout
  assert "TFLOP/s/device" in r.stdout and "MFU" not in r.stdout  # No known peak for a CPU.
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [4, 8]
  assert list((workdir / "tb").glob("events.out.tfevents.*"))
  rows = metrics_writer.read_jsonl(str(workdir / "log.jsonl"))
  losses = _losses(workdir)
  assert sorted(losses) == list(range(1, 9))
  assert all(7.0 < v < 9.0 for v in losses.values())  # ln(4101) = 8.32 at the start.
  assert any("eval/perplexity" in r for r in rows)
  assert all(row["train/tflops_per_device"] > 0 and row["train/tokens_per_sec"] > 0
             for row in rows if "train/loss" in row)
  probe_rows = [r for r in rows if "fewshot/prom_core_10shot/accuracy" in r]
  assert [r["step"] for r in probe_rows] == [4, 8]
  assert all(0.0 <= r["fewshot/prom_core_10shot/accuracy"] <= 1.0 for r in probe_rows)
  assert "probe step 8: prom_core_10shot/accuracy" in r.stdout
  cfg = json.loads((workdir / "config.json").read_text())
  assert cfg["model_signature"]["hidden_size"] == 256
  assert cfg["config"]["masking"]["strategy"] == "genemask"
  assert (workdir / "npmi" / "table.csv").exists()


def test_sigterm_then_resume_matches_uninterrupted_run(env, straight):
  expected = _losses(straight[0])
  interrupted = env["base"] / "interrupted"
  e = dict(env["env"], XLA_FLAGS=_xla_flags(2))
  p = subprocess.Popen(_cmd(env, interrupted, *_STEPS), cwd=ROOT, env=e,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  out = []
  for line in p.stdout:
    out.append(line)
    if line.startswith("step 2/8"):
      p.send_signal(signal.SIGTERM)
  p.wait(timeout=120)
  text = "".join(out)
  assert p.returncode == 143, text[-3000:]  # Not 0: `main.py && next` must not go on.
  assert "preempted: checkpoint saved at step" in text
  stopped = int(text.split("preempted: checkpoint saved at step ")[1].split(";")[0])
  assert 2 <= stopped < 8

  r = _run(env, interrupted, *_STEPS, devices=2)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resumed from" in r.stdout and f"at step {stopped}" in r.stdout
  resumed = _losses(interrupted)
  assert sorted(resumed) == list(range(1, 9))
  for step in range(1, 9):  # Same data order, masks and dropout after resumption.
    assert resumed[step] == pytest.approx(expected[step], rel=1e-6), step


def test_two_processes_match_one_and_restore_on_one(env, straight):
  """launch/local_multihost.sh: 2 processes x 1 CPU device train like 1 process x 2."""
  multi = env["base"] / "multi"
  e = dict(env["env"], PYTHON=sys.executable)
  r = subprocess.run(
      ["bash", str(ROOT / "launch" / "local_multihost.sh"), "--timeout=400", "2",
       "--config=configs/pretrain.py:test", f"--workdir={multi}", *env["flags"], *_STEPS],
      cwd=ROOT, env=e, capture_output=True, text=True, timeout=450)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  assert "[p0] process 0/2: 1 local / 2 global devices" in r.stdout
  assert "[p1] process 1/2: 1 local / 2 global devices" in r.stdout
  expected, got = _losses(straight[0]), _losses(multi)
  assert sorted(got) == list(range(1, 9))
  for step in got:
    assert got[step] == pytest.approx(expected[step], rel=1e-5), step
  assert len(list((multi / "tb").glob("events.out.tfevents.*"))) == 1  # Process 0 only.
  # The 2-process checkpoint restores in a 1-process run with one device.
  r = _run(env, multi, "--config.train.num_steps=9", "--config.eval.every=100", devices=1)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "at step 8" in r.stdout and "step 9/9" in r.stdout


def test_workdir_of_another_model_size_is_refused_untouched(env, straight):
  workdir = straight[0]  # A tiny model's run.
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
  r = _run(env, workdir, "--config.model.size=logo")
  assert r.returncode == 2
  assert "holds a checkpoint of another model" in r.stderr
  assert "mlp_dim: checkpoint 1024 vs config 3072" in r.stderr
  assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before


@pytest.mark.parametrize("content,match", [
    (None, "no such file"),
    (b"", "empty file"),
    (b">r\nNNNNNNNN\n", "yields no training chunk"),
])
def test_bad_corpus_fails_before_work(env, tmp_path, content, match):
  corpus = tmp_path / "corpus.fa"
  if content is not None:
    corpus.write_bytes(content)
  workdir = tmp_path / "w"
  r = _run(env, workdir, f"--config.data.fasta={corpus}", timeout=120)
  assert r.returncode == 2, r.stderr[-2000:]
  assert "main.py: error:" in r.stderr
  assert "Traceback" not in r.stderr
  assert re_search(match, r.stderr)
  assert not (workdir / "checkpoints").exists()


def re_search(pattern, text):
  import re  # pylint: disable=g-import-not-at-top
  return re.search(pattern, text) is not None


def test_non_finite_loss_stops_naming_the_step_and_keeps_last_checkpoint(env, tmp_path):
  workdir = tmp_path / "nan"
  r = _run(env, workdir, "--config.optim.peak_lr=1e30", "--config.optim.clip_norm=1e30",
           "--config.train.num_steps=8", "--config.train.checkpoint_every=1", devices=2)
  assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
  assert "loss is nan at step" in r.stderr or "loss is inf at step" in r.stderr
  bad = int(r.stderr.split(" at step ")[1].split(";")[0])
  kept = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert kept and kept[-1] < bad

