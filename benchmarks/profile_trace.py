r"""Ranks the device kernels of a JAX profiler trace by total time: what a step spends on.

    python benchmarks/profile_trace.py /tmp/prof                  # newest trace under it
    python benchmarks/profile_trace.py /tmp/prof --top=40 --steps=3

Reads the Perfetto (Chrome trace event) JSON that
``jax.profiler.trace(dir, create_perfetto_trace=True)`` writes as
``dir/plugins/profile/<run>/perfetto_trace.json.gz`` (``bench_train_step.py --profile=DIR``
makes one of the train step). Which events count as device work:

* on a GPU or TPU, the complete events ("ph": "X") of the ``/device:...`` processes: on a
  GPU those of its "Stream #N" threads (CUDA kernels and memcpys), on a TPU its op
  threads, leaving out the module, step and per-op summary lines that would count the
  same time twice;
* on a CPU, which has no device process, the events that carry an ``hlo_op`` argument (the
  XLA thunks the CPU runtime executes).

Events are grouped by name (the kernel name, or the HLO op on CPU); the table gives calls,
total and per-step milliseconds, the share of all device time and the HLO op when the
trace names one.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gzip
import json
import pathlib
from typing import Any, Iterable

# Device threads whose events summarise others (whole modules, steps): counting them would
# count the same time twice.
_SUMMARY_THREADS = ("xla modules", "steps", "framework", "source code", "host offload",
                    "launch stats")


@dataclasses.dataclass
class KernelStat:
  """Total time of one kernel (or CPU HLO op) over the trace."""
  name: str
  calls: int = 0
  total_us: float = 0.0
  hlo_op: str = ""


def find_trace(path: str | pathlib.Path) -> pathlib.Path:
  """The newest ``perfetto_trace.json.gz`` under ``path`` (or ``path`` itself if a file)."""
  path = pathlib.Path(path)
  if path.is_file():
    return path
  found = sorted(path.glob("**/perfetto_trace.json*"), key=lambda p: p.stat().st_mtime)
  if not found:
    raise FileNotFoundError(
        f"{path}: no perfetto_trace.json(.gz) under it; write one with "
        "jax.profiler.trace(dir, create_perfetto_trace=True)")
  return found[-1]


def load_events(path: str | pathlib.Path) -> list[dict[str, Any]]:
  """The trace's event list (plain or gzipped JSON, object or bare-list form)."""
  path = find_trace(path)
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rt", encoding="utf-8") as f:
    data = json.load(f)
  return data["traceEvents"] if isinstance(data, dict) else data


def device_events(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
  """The complete events that are device work (see the module docstring)."""
  events = list(events)
  proc_names, thread_names = {}, {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == "process_name":
      proc_names[e.get("pid")] = str(e.get("args", {}).get("name", ""))
    elif e.get("ph") == "M" and e.get("name") == "thread_name":
      thread_names[(e.get("pid"), e.get("tid"))] = str(e.get("args", {}).get("name", ""))
  # Only device processes with work in them: a process that merely loaded another
  # backend's plugin (libtpu after an ahead-of-time TPU compile) lists an empty /device:
  # process, which must not hide the CPU's op events.
  busy = {e.get("pid") for e in events if e.get("ph") == "X" and "dur" in e}
  device_pids = {pid for pid, name in proc_names.items()
                 if name.startswith("/device:") and pid in busy}
  # A GPU's kernels are on its "Stream #N" threads; derived per-op lines repeat them.
  stream_pids = {pid for (pid, _), name in thread_names.items()
                 if pid in device_pids and "stream" in name.lower()}
  out = []
  for e in events:
    if e.get("ph") != "X" or "dur" not in e:
      continue
    if device_pids:
      if e.get("pid") not in device_pids:
        continue
      thread = thread_names.get((e.get("pid"), e.get("tid")), "").lower()
      if e.get("pid") in stream_pids and "stream" not in thread:
        continue
      if any(s in thread for s in _SUMMARY_THREADS):
        continue
      out.append(e)
    elif "hlo_op" in e.get("args", {}) and not str(e.get("name", "")).startswith("end: "):
      out.append(e)
  return out


def rank_kernels(events: Iterable[dict[str, Any]]) -> list[KernelStat]:
  """Device events grouped by name, largest total time first."""
  stats: dict[str, KernelStat] = collections.OrderedDict()
  for e in device_events(events):
    name = str(e.get("name", "?"))
    s = stats.setdefault(name, KernelStat(name))
    s.calls += 1
    s.total_us += float(e["dur"])
    if not s.hlo_op:
      s.hlo_op = str(e.get("args", {}).get("hlo_op", ""))
  return sorted(stats.values(), key=lambda s: -s.total_us)


def format_ranking(stats: list[KernelStat], *, top: int = 25, steps: int = 1) -> str:
  """A text table of the ``top`` kernels (times per step when ``steps`` > 1)."""
  total = sum(s.total_us for s in stats) or 1.0
  steps = max(1, steps)
  lines = [f"device time {total / 1e3:.2f} ms in {sum(s.calls for s in stats)} kernel calls "
           f"({len(stats)} distinct) over {steps} step(s): {total / 1e3 / steps:.2f} ms/step",
           f"{'rank':>4} {'ms/step':>9} {'share':>7} {'calls/step':>10}  kernel [hlo op]"]
  for i, s in enumerate(stats[:top], 1):
    name = s.name if len(s.name) <= 90 else s.name[:87] + "..."
    op = f"  [{s.hlo_op}]" if s.hlo_op and s.hlo_op != s.name else ""
    lines.append(f"{i:>4} {s.total_us / 1e3 / steps:>9.3f} {100 * s.total_us / total:>6.1f}% "
                 f"{s.calls / steps:>10.1f}  {name}{op}")
  rest = stats[top:]
  if rest:
    lines.append(f"     {sum(s.total_us for s in rest) / 1e3 / steps:>9.3f} "
                 f"{100 * sum(s.total_us for s in rest) / total:>6.1f}%"
                 f" {'':>10}  ({len(rest)} other kernels)")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("trace", help="a trace file, or a directory holding one (newest wins)")
  parser.add_argument("--top", type=int, default=25)
  parser.add_argument("--steps", type=int, default=1, help="steps traced (for per-step times)")
  args = parser.parse_args()
  path = find_trace(args.trace)
  print(f"trace: {path}")
  print(format_ranking(rank_kernels(load_events(path)), top=args.top, steps=args.steps))


if __name__ == "__main__":
  main()
