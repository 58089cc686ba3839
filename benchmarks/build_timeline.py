"""Per-task timeline of a corpus build: which process ran what, when, and where it waited.

  python benchmarks/build_timeline.py --workers=2 [--fasta=a.fa.gz,b.fa.gz] [--gap_ms=12]

Builds the corpus (default: the shared GRCh37 files, $GENEMASK_DATA_DIR/genome) in a fresh
process whose every process (the main one, the fork server, the workers) stamps each
first-pass task (`shards.scan_ranges`, `plan.scan_records`) and each unit write
(`shards.write_unit`) with its start and end. The stamping is installed from a
`sitecustomize` on PYTHONPATH, so the package runs unchanged: the functions are wrapped
under their own names, which is how the workers unpickle them. Prints per process its
busy time and each wait longer than --gap_ms between two tasks, and the size of a pickled
first-pass result (what goes back through the 64 KiB result pipe). This is how the waits
behind e18e22a were found (docs/scaling.md).
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

_SITECUSTOMIZE = r'''
import functools, json, os, time
_DIR = os.environ["GENEMASK_TIMELINE_DIR"]

def _stamp(mod, name):
  fn = getattr(mod, name)
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    t0 = time.time()
    try:
      out = fn(*args, **kwargs)
    finally:
      with open(os.path.join(_DIR, f"{os.getpid()}.jsonl"), "a") as f:
        f.write(json.dumps([name, t0, time.time()]) + "\n")
    if name == "scan_records":
      import pickle
      with open(os.path.join(_DIR, "sizes.jsonl"), "a") as f:
        f.write(json.dumps(len(pickle.dumps(out, pickle.HIGHEST_PROTOCOL))) + "\n")
    return out
  setattr(mod, name, wrapped)

from genemask_jax.data import plan, shards
_stamp(shards, "scan_ranges")
_stamp(shards, "write_unit")
_stamp(plan, "scan_records")
'''

_BUILD = r'''
import json, os, sys, time
from genemask_jax.data import genome_tfds
if __name__ == "__main__":
  t = time.time()
  b = genome_tfds.build(sys.argv[1], sys.argv[3].split(","), num_workers=int(sys.argv[2]))
  print("RESULT " + json.dumps({"start": t, "end": time.time(), "main": os.getpid(),
                                "seconds": genome_tfds.summary(b)["seconds"]}))
'''


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--fasta", default="", help="comma-separated FASTA files (default: the "
                 "shared GRCh37 files)")
  p.add_argument("--gap_ms", type=float, default=12.0)
  args = p.parse_args()
  data = os.environ.get("GENEMASK_DATA_DIR") or os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
  fasta = args.fasta or ",".join(os.path.join(data, "genome", f) for f in (
      "GRCh37_chrX_1-70M.fa.gz", "GRCh37_chr22_blocks.fa.gz"))
  with tempfile.TemporaryDirectory() as tmp:
    hook, stamps, tfds_dir = (os.path.join(tmp, d) for d in ("hook", "stamps", "tfds"))
    os.makedirs(hook)
    os.makedirs(stamps)
    with open(os.path.join(hook, "sitecustomize.py"), "w") as f:
      f.write(_SITECUSTOMIZE)
    env = dict(os.environ, GENEMASK_TIMELINE_DIR=stamps,
               PYTHONPATH=os.pathsep.join([hook, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _BUILD, tfds_dir, str(args.workers), fasta],
                          env=env, capture_output=True, text=True, cwd=tmp)
    if proc.returncode != 0:
      raise SystemExit(f"build failed: {proc.stderr[-2000:]}")
    res = json.loads(next(l for l in proc.stdout.splitlines()
                          if l.startswith("RESULT "))[len("RESULT "):])
    events = {}
    for path in glob.glob(os.path.join(stamps, "[0-9]*.jsonl")):
      pid = int(os.path.basename(path).split(".")[0])
      with open(path) as f:
        events[pid] = sorted((json.loads(l) for l in f), key=lambda e: e[1])
    sizes = []
    if os.path.exists(os.path.join(stamps, "sizes.jsonl")):
      with open(os.path.join(stamps, "sizes.jsonl")) as f:
        sizes = [json.loads(l) for l in f]
  t0 = res["start"]
  print(f"build of {fasta} on {args.workers} worker(s): {res['seconds']:.2f} s "
        f"(times below from the build call)")
  for pid, ev in sorted(events.items(), key=lambda kv: kv[0] != res["main"]):
    who = "main process" if pid == res["main"] else f"worker {pid}"
    busy = {}
    for name, a, b in ev:
      busy[name] = busy.get(name, 0.0) + b - a
    print(f"{who}: first task at {ev[0][1] - t0:.3f} s, last ends at {ev[-1][2] - t0:.3f} s; "
          + ", ".join(f"{n} {len([e for e in ev if e[0] == n])}x {s:.2f} s"
                      for n, s in busy.items()))
    end = ev[0][2]
    for name, a, b in ev[1:]:
      if a > end and (a - end) * 1e3 > args.gap_ms:
        print(f"    waits {(a - end) * 1e3:5.0f} ms before {name} at {a - t0:.3f} s"
              + (" (the main process reads between its tasks)" if pid == res["main"] else ""))
      end = max(end, b)
  if sizes:
    print(f"pickled scan_records results: {len(sizes)}, {min(sizes):,}-{max(sizes):,} bytes")


if __name__ == "__main__":
  main()
