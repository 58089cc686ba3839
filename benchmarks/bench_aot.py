r"""Compiled per-chip memory of the pretraining step on TPU slices (docs/scaling.md's table).

Compiles the real train step ahead of time (genemask_jax.aot) for each preset x slice, on
this machine's CPU, and keeps one JSON line per compile in --out, so an interrupted run
resumes where it stopped; then prints the markdown table from that file.

    python benchmarks/bench_aot.py                       # compile what is missing, print
    python benchmarks/bench_aot.py --table_only          # print the table from --out
    python benchmarks/bench_aot.py --presets=paper --topologies=v5e-16 \
        --override=model.remat=full                      # one more row
    python benchmarks/bench_aot.py --presets=paper --topologies=v5e-8 \
        --override=model.scan_layers=True                # scan beside the unrolled row

After the table it prints each config compiled both with unrolled and with scanned layers
(``model.scan_layers``) side by side: compile CPU and wall seconds and memory per chip.

Heavy: about 6 CPU-minutes per :paper compile (3.3 with scanned layers) on the 2-core\ndevelopment machine.
"""

import datetime
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

flags.DEFINE_list("presets", ["paper", "large"], "configs/pretrain.py presets.")
flags.DEFINE_list("topologies", ["v4-8", "v4-32", "v5e-8", "v5e-16", "v5p-8", "v6e-8"],
                  "Slices (accelerator types or topologies).")
flags.DEFINE_multi_string("override", [], "KEY=VALUE config overrides for every row, e.g. "
                          "model.remat=full (the row records them).")
flags.DEFINE_integer("batch_size", 256, "Global batch (the paper's 250 rounded to a power "
                     "of two so that it splits over 4, 8 and 16 chips).")
flags.DEFINE_string("out", str(REPO / "docs" / "aot_compiles.jsonl"), "JSON lines record.")
flags.DEFINE_bool("table_only", False, "Only print the table from --out.")

# :paper compiled in bfloat16, the accelerator precision policy of issue #14 (float32 on
# TPU would be a choice nobody should make); :large is bfloat16 in its preset.
_PRESET_OVERRIDES = {"paper": {"model.dtype": "bfloat16"}}


def _config(preset: str, overrides: dict[str, str]):
  from configs import pretrain  # pylint: disable=g-import-not-at-top
  config = pretrain.get_config(preset)
  for key, value in overrides.items():
    node, *path = key.split(".")
    target = config[node]
    for p in path[:-1]:
      target = target[p]
    old = target[path[-1]]
    if isinstance(old, bool):  # bool("False") is True.
      value = {"true": True, "false": False}[value.lower()]
    target[path[-1]] = type(old)(value) if old is not None else value
  return config


def _load(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _key(row: dict) -> tuple:
  return (row["preset"], row["topology"], json.dumps(row["overrides"], sort_keys=True))


def compile_row(preset: str, topology: str, overrides: dict[str, str]) -> dict:
  from genemask_jax import aot  # pylint: disable=g-import-not-at-top
  config = _config(preset, overrides)
  target = aot.parse_target(topology)
  cpu0 = resource.getrusage(resource.RUSAGE_SELF)
  t0 = time.time()
  r = aot.compile_train_step(config, target)
  cpu1 = resource.getrusage(resource.RUSAGE_SELF)
  gib = 2**30
  return {
      "preset": preset, "topology": topology, "overrides": overrides,
      "libtpu_topology": target.topology, "device_kind": r.device_kind,
      "chips": r.num_devices, "hbm_gib": target.hbm_bytes / gib, "mesh": r.mesh,
      "rules": [[k, v] for k, v in r.rules], "model": r.model_size, "dtype": r.dtype,
      "remat": r.remat, "attention": r.attention_impl, "scan_layers": r.scan_layers, "global_batch": r.global_batch,
      "batch_per_chip": r.batch_per_device, "seq_len": r.seq_len,
      "grad_accum_steps": r.grad_accum_steps,
      "argument_gib": r.argument_bytes / gib, "output_gib": r.output_bytes / gib,
      "alias_gib": r.alias_bytes / gib, "temp_gib": r.temp_bytes / gib,
      "code_gib": r.code_bytes / gib, "total_gib": r.total_bytes / gib, "fits": r.fits,
      "verdict": r.verdict(), "compile_error": r.compile_error,
      "model_tflops_per_step": r.model_flops / 1e12,
      "xla_tflops_per_chip": (r.xla_flops or 0) / 1e12,
      "compile_wall_s": round(time.time() - t0, 1),
      "compile_cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime,
                             1),
      "load_avg_1min": round(os.getloadavg()[0], 2),
      "machine": f"{platform.node()} {os.cpu_count()} CPUs",
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "commit": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                               capture_output=True, text=True).stdout.strip(),
  }


def table(rows: list[dict]) -> str:
  lines = ["| preset | slice | chips x HBM | mesh | batch per chip | dtype, remat, attention "
           "| args + temps (GiB per chip) | total (GiB) | verdict | compile (wall / CPU s) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    extra = "".join(f", {k}={v}" for k, v in r["overrides"].items()
                    if k not in ("train.batch_size", "model.dtype"))  # Columns of their own.
    mesh = "x".join(f"{v}" for v in r["mesh"].values()) + " (" + ",".join(r["mesh"]) + ")"
    lines.append(
        f"| {r['preset']}{extra} | {r['topology']} ({r['libtpu_topology']}) | {r['chips']} x "
        f"{r['hbm_gib']:.0f} GiB | {mesh} | {r['batch_per_chip']:g} of {r['global_batch']} "
        f"| {r['dtype']}, {r['remat']}, {r['attention']} | {r['argument_gib']:.2f} + "
        f"{r['temp_gib']:.2f} | {r['total_gib']:.2f} | {r['verdict']} | "
        f"{r['compile_wall_s']:.0f} / {r['compile_cpu_s']:.0f} |")
  return "\n".join(lines)


def scan_table(rows: list[dict]) -> str:
  """Each config compiled both unrolled and with ``model.scan_layers=True``, side by side."""
  def base(r):
    rest = {k: v for k, v in r["overrides"].items() if k != "model.scan_layers"}
    return (r["preset"], r["topology"], json.dumps(rest, sort_keys=True))

  unrolled = {base(r): r for r in rows
              if r["overrides"].get("model.scan_layers", "False") == "False"}
  lines = ["| preset | slice | remat | compile CPU s: unrolled / scan | wall s: unrolled / "
           "scan | total GiB per chip: unrolled / scan |", "|---|---|---|---|---|---|"]
  for r in rows:
    u = unrolled.get(base(r))
    if r["overrides"].get("model.scan_layers") != "True" or u is None:
      continue
    lines.append(
        f"| {r['preset']} | {r['topology']} | {r['remat']} | {u['compile_cpu_s']:.0f} / "
        f"{r['compile_cpu_s']:.0f} | {u['compile_wall_s']:.0f} / {r['compile_wall_s']:.0f} | "
        f"{u['total_gib']:.2f} / {r['total_gib']:.2f} |")
  return "\n".join(lines)


def main(argv):
  del argv
  fl = flags.FLAGS
  rows = _load(fl.out)
  if not fl.table_only:
    extra = dict(kv.split("=", 1) for kv in fl.override)
    for preset in fl.presets:
      for topology in fl.topologies:
        overrides = {**_PRESET_OVERRIDES.get(preset, {}), "train.batch_size":
                     str(fl.batch_size), **extra}
        want = (preset, topology, json.dumps(overrides, sort_keys=True))
        if any(_key(r) == want for r in rows):
          continue
        print(f"compiling {preset} for {topology} {overrides} ...", flush=True)
        row = compile_row(preset, topology, overrides)
        print(f"  {row['total_gib']:.2f} GiB per chip: {row['verdict']} "
              f"({row['compile_wall_s']} s wall, {row['compile_cpu_s']} s CPU)", flush=True)
        rows.append(row)
        with open(fl.out, "a") as f:
          f.write(json.dumps(row) + "\n")
  print(table(rows))
  print("\nScanned against unrolled layers (same config otherwise):\n")
  print(scan_table(rows))


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # Compile on the CPU; the TPU is described.
  app.run(main)
