"""How fast multi-process start-up failures end, in wall seconds (figures, not tests).

    python benchmarks/bench_launch.py [--repeats=3]

Two figures that tests used to assert as wall-clock limits (#21), now printed here:

* main.py with an unreachable coordinator (``--coordinator=127.0.0.1:9
  --coordinator_timeout=3``, process 1 of 2): seconds until it exits with status 2
  (tests/test_distributed.py checks the status and the message).
* launch/local_multihost.sh with 2 processes where process 1 exits with status 3 and
  process 0 would sleep 120 s: seconds until the script has stopped both and exited
  (tests/test_launch.py checks the status and that process 0 was killed).

Each figure is the median of ``--repeats`` runs; the load average is printed beside it.
"""
import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]

_FAKE_MAIN = """
import os, sys, time
args = sys.argv[1:]
pid = next(a.split("=", 1)[1] for a in args if a.startswith("--process_id="))
if "--fail_process=" + pid in args:
  sys.exit(3)
time.sleep(120)
"""


def _time(cmd: list[str], env: dict[str, str], want: int) -> float:
  t0 = time.perf_counter()
  r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  elapsed = time.perf_counter() - t0
  if r.returncode != want:
    raise SystemExit(f"{cmd[0]} exited {r.returncode}, expected {want}:\n{r.stderr[-2000:]}")
  return elapsed


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  print(f"{os.cpu_count()} CPU cores, 1-min load average {os.getloadavg()[0]:.2f}")
  with tempfile.TemporaryDirectory() as tmp:
    times = [_time([sys.executable, "main.py", "--config=configs/pretrain.py:test",
                    f"--workdir={tmp}/w{i}", "--coordinator=127.0.0.1:9",
                    "--num_processes=2", "--process_id=1", "--coordinator_timeout=3"],
                   dict(os.environ), 2) for i in range(args.repeats)]
    print(f"main.py, unreachable coordinator, --coordinator_timeout=3: exits (status 2) after "
          f"{statistics.median(times):.1f} s (median of {args.repeats}; "
          f"{min(times):.1f}-{max(times):.1f} s)")
    fake = pathlib.Path(tmp) / "fake_main.py"
    fake.write_text(f"#!{sys.executable}\n" + _FAKE_MAIN)
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=sys.executable, MAIN=str(fake))
    times = [_time([str(REPO / "launch" / "local_multihost.sh"), "2", "--fail_process=1"],
                   env, 3) for _ in range(args.repeats)]
    print(f"local_multihost.sh, 2 processes, process 1 fails: all stopped after "
          f"{statistics.median(times):.1f} s (median of {args.repeats}; "
          f"{min(times):.1f}-{max(times):.1f} s; the survivor would have slept 120 s)")
  print(f"1-min load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  main()
