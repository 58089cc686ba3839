r"""Ahead-of-time compilation of the real train step for a TPU slice, on any machine.

Does a config fit the chips it is about to be launched on? This compiles the exact step a
run executes (masking, model, loss, AdamW, the config's mesh and logical-axis rules, the
donated state) against a TPU topology description from libtpu, with abstract inputs only,
as MaxText's ``train_compile.py`` does: no TPU, no data and no parameters are needed. It
reports XLA's per-chip memory (arguments, outputs, temporaries) against the chip's HBM,
the model FLOPs per step and XLA's cost analysis.

    python -m genemask_jax.aot --topology=v5e:4x4 --config=configs/pretrain.py:paper \
        --config.train.batch_size=256 [--config.model.remat=full] [--dump_hlo=/tmp/hlo] \
        [--config.model.scan_layers=True]

``--config.model.scan_layers=True`` compiles the encoder as one ``lax.scan`` (one layer
body instead of ``num_layers`` copies): about half the CPU time of the unrolled compile for
``:paper``; see docs/scaling.md for what it does to memory.

``--topology`` takes a libtpu topology (``v5e:4x4``, ``v4:2x2x4``, ``v5p:2x2x1``,
``v6e:2x4``), a Cloud TPU accelerator type (``v4-32``, ``v5litepod-16``, ``v5p-8``,
``v6e-8``), or ``cpu`` for this machine's CPU devices (no HBM verdict). Exit status: 0 it
fits, 1 it does not fit, 2 bad input (one line on stderr). Needs libtpu for TPU targets:
``pip install '.[aot]'``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import time
from typing import Any

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from genemask_jax import attention
from genemask_jax import errors
from genemask_jax import flops as flops_lib
from genemask_jax import model as model_lib
from genemask_jax import sharding as sharding_lib
from genemask_jax import train as train_lib
from genemask_jax import train_step as step_lib

GIB = 2**30


class AotError(errors.UserError):
  """A topology name, config or environment that cannot be compiled for."""


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation: HBM per chip as JAX sees a device, and how libtpu names it."""
  hbm_gib: float
  cores_per_chip: int  # Cloud accelerator types count cores (v4, v5p) or chips (v5e, v6e).
  chip_config: str  # "megacore": one JAX device per chip (both TensorCores).
  three_d: bool


#: HBM per chip (GiB) of the generations the launch script knows.
CHIPS = {
    "v4": Chip(hbm_gib=32, cores_per_chip=2, chip_config="megacore", three_d=True),
    "v5e": Chip(hbm_gib=16, cores_per_chip=1, chip_config="default", three_d=False),
    "v5p": Chip(hbm_gib=95, cores_per_chip=2, chip_config="megacore", three_d=True),
    "v6e": Chip(hbm_gib=32, cores_per_chip=1, chip_config="default", three_d=False),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6litepod": "v6e"}
# Standard slice shapes by chip count (Cloud TPU documentation's topologies).
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
              256: "16x16"}
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
              256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}


# libtpu, loaded only to describe a topology: no lock file (several compiles may run at
# once, e.g. tests beside a benchmark), and no warnings about the TPU VM metadata
# (worker hostnames) that a machine without a TPU cannot have.
_LIBTPU_ENV = {"ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "TPU_WORKER_HOSTNAMES": "localhost",
               "TPU_STDERR_LOG_LEVEL": "3", "TPU_MIN_LOG_LEVEL": "3"}


@dataclasses.dataclass(frozen=True)
class Target:
  """What to compile for.

  Attributes:
    name: as the user wrote it.
    chip: a key of ``CHIPS``, or "cpu".
    topology: libtpu topology name ("v5e:4x4"), or "" for the CPU.
    num_chips: devices the mesh spans.
    hbm_bytes: per device (None on the CPU: no verdict).
  """
  name: str
  chip: str
  topology: str
  num_chips: int
  hbm_bytes: int | None


def _chip_of(name: str, generation: str, expected: str) -> str:
  """The CHIPS key of a topology's generation prefix (aliases resolved), or one AotError."""
  chip = _ALIASES.get(generation, generation)
  if chip not in CHIPS:
    raise AotError(f"--topology={name}: unknown TPU generation {generation!r}; expected "
                   f"{expected}")
  return chip


def parse_target(name: str) -> Target:
  """``v5e:4x4`` / ``v4-32`` / ``v5litepod-16`` / ``cpu`` -> Target.

  Raises:
    AotError: an unknown generation, a malformed shape, or a chip count with no
      standard slice shape.
  """
  known = ("a topology such as v5e:4x4, v4:2x2x4, v5p:2x2x1, v6e:2x4; an accelerator type "
           "such as v4-32, v5litepod-16, v5p-8, v6e-8; or cpu")
  raw = name.strip().lower()
  if raw == "cpu":
    return Target(name, "cpu", "", jax.device_count("cpu"), None)
  m = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)+)", raw)
  if m:
    chip = _chip_of(name, m.group(1), f"one of {', '.join(CHIPS)}")
    dims = [int(d) for d in m.group(2).split("x")]
    if len(dims) != (3 if CHIPS[chip].three_d else 2) or min(dims) < 1:
      want = "AxBxC" if CHIPS[chip].three_d else "AxB"
      raise AotError(f"--topology={name}: a {chip} topology is {want} chips, e.g. "
                     f"{chip}:{(_SHAPES_3D if CHIPS[chip].three_d else _SHAPES_2D)[16]}")
    return _target(name, chip, "x".join(map(str, dims)), math.prod(dims))
  m = re.fullmatch(r"([a-z0-9]+)-(\d+)", raw)
  if m:
    chip = _chip_of(name, m.group(1), known)
    spec = CHIPS[chip]
    count = int(m.group(2))
    chips = count // spec.cores_per_chip
    shapes = _SHAPES_3D if spec.three_d else _SHAPES_2D
    if count % spec.cores_per_chip or chips not in shapes:
      unit = "TensorCores" if spec.cores_per_chip > 1 else "chips"
      sizes = ", ".join(f"{m.group(1)}-{n * spec.cores_per_chip}" for n in shapes)
      raise AotError(f"--topology={name}: no standard {chip} slice has {count} {unit}; "
                     f"known: {sizes} (or give the shape, e.g. {chip}:{shapes[16]})")
    return _target(name, chip, shapes[chips], chips)
  raise AotError(f"--topology={name!r}: expected {known}")


def _target(name: str, chip: str, shape: str, num_chips: int) -> Target:
  return Target(name, chip, f"{chip}:{shape}", num_chips, int(CHIPS[chip].hbm_gib * GIB))


def target_devices(target: Target) -> list[Any]:
  """The devices of ``target``: libtpu's topology description, or the local CPUs.

  Raises:
    AotError: libtpu is not installed, or rejects the topology.
  """
  if target.chip == "cpu":
    return jax.devices("cpu")
  for k, v in _LIBTPU_ENV.items():
    os.environ.setdefault(k, v)
  try:
    # In the try: a jax without TPU support fails here.
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    kwargs = {}
    dims = [int(d) for d in target.topology.split(":")[1].split("x")]
    if target.num_chips < 4:  # Smaller than libtpu's default host (2x2x1): one host.
      kwargs["chips_per_host_bounds"] = (dims + [1, 1])[:3]
    topo = topologies.get_topology_desc(
        platform="tpu", topology_name=target.topology,
        chip_config_name=CHIPS[target.chip].chip_config, **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "libtpu" in msg.lower() or "unknown backend" in msg.lower() or "plugin" in msg.lower():
      raise AotError(f"--topology={target.name}: no TPU compiler here ({msg}); install it "
                     "with: pip install '.[aot]'") from e
    raise AotError(f"--topology={target.name}: libtpu rejects topology "
                   f"{target.topology!r}: {msg}") from e
  return list(topo.devices)


@dataclasses.dataclass
class Report:
  """Per-device figures of one compiled train step (bytes, FLOPs, seconds)."""
  target: Target
  device_kind: str
  num_devices: int
  mesh: dict[str, int]
  rules: tuple[tuple[str, Any], ...]
  model_size: str
  dtype: str
  remat: str
  attention_impl: str
  scan_layers: bool
  global_batch: int
  seq_len: int
  grad_accum_steps: int
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  code_bytes: int
  model_flops: float
  xla_flops: float | None
  xla_bytes_accessed: float | None
  lower_seconds: float
  compile_seconds: float
  compile_error: str | None = None  # XLA's out-of-memory refusal, when it refused.

  @property
  def batch_per_device(self) -> float:
    return self.global_batch / self.mesh_batch_ways

  @property
  def mesh_batch_ways(self) -> int:
    axes = dict(self.rules).get("batch")
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(self.mesh.get(a, 1) for a in axes)

  @property
  def total_bytes(self) -> int:
    """Peak HBM the executable needs per device: inputs, outputs not aliased to inputs
    (the donated state is updated in place), temporaries and the code."""
    return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes +
            self.code_bytes)

  @property
  def fits(self) -> bool | None:
    if self.compile_error:
      return False
    hbm = self.target.hbm_bytes
    return None if hbm is None else self.total_bytes <= hbm

  def verdict(self) -> str:
    hbm = self.target.hbm_bytes
    if hbm is None:
      return "no HBM limit known for this target"
    if self.fits:
      return f"fits ({(hbm - self.total_bytes) / GIB:.2f} GiB free)"
    return f"does not fit, by {(self.total_bytes - hbm) / GIB:.2f} GiB"


def resolved_model_config(config: ml_collections.ConfigDict,
                          platform: str) -> model_lib.ModelConfig:
  """The model config a run of ``config`` would build on ``platform`` ("tpu", "cpu").

  "auto" choices (attention implementation, activation dtype) are made for the target,
  not for the machine that compiles.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  with config.unlocked():
    impl = config.model.get("attention_impl", "auto")
    if impl == "auto":
      config.model.attention_impl = attention.resolve_implementation(impl, platform=platform)
    if config.model.get("dtype") == "auto":  # The accelerator precision policy.
      config.model.dtype = "float32" if platform == "cpu" else "bfloat16"
  try:
    train_lib.validate_config(config)
    return train_lib.model_config_of(config)
  except ValueError as e:  # ModelConfig's own checks (e.g. config.model.remat).
    raise AotError(f"config.model: {e}") from e


def compile_train_step(config: ml_collections.ConfigDict, target: Target, *,
                       dump_hlo: str | None = None) -> Report:
  """Lowers and compiles the train step of ``config`` for ``target``; returns the figures.

  Args:
    config: a pretraining config (``configs/pretrain.py``); its mesh, rules, batch, model
      and optimizer are used as a run would use them.
    target: from ``parse_target``.
    dump_hlo: a directory for the StableHLO as lowered and the optimised HLO as compiled.

  Raises:
    AotError / other ``errors.UserError``: the config does not fit the topology's devices
      (mesh, rules, batch divisibility), before anything is compiled.
  """
  devices = target_devices(target)
  platform = "cpu" if target.chip == "cpu" else "tpu"
  cfg = resolved_model_config(config, platform)
  mesh = sharding_lib.make_mesh(tuple(config.mesh.shape), tuple(config.mesh.axes),
                                devices=devices)
  rules = sharding_lib.rules_from_config(config.mesh.rules)
  sharding_lib.validate(cfg, mesh, rules, global_batch_size=config.train.batch_size)

  model = model_lib.BertForMaskedLM(cfg)
  schedule, tx = train_lib.optimizer_of(config)
  abstract_state, state_shardings = step_lib.abstract_train_state(
      model, tx, jax.random.key(config.seed), mesh, rules, seq_len=config.data.max_len)
  # The masking closes over the NPMI rank lookup (a (vocab,) constant); its values do not
  # change what is compiled, so a valid stand-in avoids reading the corpus.
  rank = np.arange(1, cfg.vocab_size + 1, dtype=np.int32)
  step = step_lib.jit_train_step(train_lib.train_step_of(config, model, tx, schedule, rank),
                                 mesh, rules, state_shardings)
  batch = {"input_ids": jax.ShapeDtypeStruct(
      (config.train.batch_size, config.data.max_len), jnp.int32,
      sharding=sharding_lib.batch_sharding(mesh, rules))}
  key = jax.eval_shape(lambda: jax.random.key(0))
  key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=sharding_lib.replicated(mesh))

  t0 = time.perf_counter()
  with sharding_lib.axis_rules(mesh, rules):
    lowered = step.jitted.lower(abstract_state, batch, key)
  t1 = time.perf_counter()
  if dump_hlo:
    os.makedirs(dump_hlo, exist_ok=True)
    with open(os.path.join(dump_hlo, "train_step.stablehlo.mlir"), "w") as f:
      f.write(lowered.as_text())
  oom = None
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    # The TPU compiler refuses a program whose buffers exceed HBM: that is the verdict.
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    compiled, oom = None, str(e).strip().splitlines()[0]
  t2 = time.perf_counter()
  if dump_hlo and compiled is not None:
    with open(os.path.join(dump_hlo, "train_step.compiled.hlo.txt"), "w") as f:
      f.write(compiled.as_text())

  if compiled is not None:
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # Older JAX: one dict per executable.
      cost = cost[0] if cost else None
    cost = cost or {}
    sizes = (mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.alias_size_in_bytes,
             mem.temp_size_in_bytes, mem.generated_code_size_in_bytes)
  else:  # Arguments from the shardings; the temporaries XLA asked for, from its message.
    cost = {}
    args = _per_device_bytes((abstract_state, batch))
    state = _per_device_bytes(abstract_state)
    sizes = (args, state, state, _oom_temp_bytes(oom), 0)
  return Report(
      target=target, device_kind=devices[0].device_kind, num_devices=len(devices),
      mesh=dict(mesh.shape), rules=rules, model_size=config.model.size, dtype=cfg.dtype,
      remat=cfg.remat, attention_impl=cfg.attention_impl, scan_layers=cfg.scan_layers,
      global_batch=config.train.batch_size, seq_len=config.data.max_len,
      grad_accum_steps=config.train.grad_accum_steps,
      argument_bytes=sizes[0], output_bytes=sizes[1], alias_bytes=sizes[2],
      temp_bytes=sizes[3], code_bytes=sizes[4], compile_error=oom,
      model_flops=flops_lib.model_flops_per_step(
          cfg, config.train.batch_size, config.data.max_len, config.masking.max_predictions),
      xla_flops=cost.get("flops"), xla_bytes_accessed=cost.get("bytes accessed"),
      lower_seconds=t1 - t0, compile_seconds=t2 - t1)


def _per_device_bytes(tree: Any) -> int:
  """Bytes of one device's shard of every ``jax.ShapeDtypeStruct`` leaf (with sharding)."""
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape)
    total += math.prod(shape) * np.dtype(x.dtype).itemsize
  return total


def _oom_temp_bytes(message: str) -> int:
  """The temporaries XLA's RESOURCE_EXHAUSTED message asks for ("... temporaries
  (70.65G) ...", binary units), 0 if it names none."""
  m = re.search(r"temporaries \((\d+(?:\.\d+)?)([KMGT]?)\)", message)
  if not m:
    return 0
  return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " "))


def _rules_text(rules) -> str:
  return ", ".join(f"{k}->{v}" for k, v in rules if v is not None)


def format_report(r: Report) -> str:
  """The human-readable report ``main`` prints."""
  hbm = r.target.hbm_bytes
  lines = [
      f"target {r.target.name}: {r.num_devices} x {r.device_kind}"
      + (f" ({r.target.topology}), {hbm / GIB:.0f} GiB HBM each" if hbm else ""),
      f"model {r.model_size}: {r.dtype} activations, remat {r.remat}, attention "
      f"{r.attention_impl}, layers {'scanned' if r.scan_layers else 'unrolled'}; batch "
      f"{r.global_batch} x {r.seq_len} "
      f"({r.batch_per_device:g} per device, grad_accum_steps {r.grad_accum_steps})",
      f"mesh {r.mesh}; rules {_rules_text(r.rules)}",
      f"compile: lowered in {r.lower_seconds:.1f} s, compiled in {r.compile_seconds:.1f} s"
      + (f"; XLA refused it: {r.compile_error}" if r.compile_error else ""),
      f"memory per device: arguments {r.argument_bytes / GIB:.2f} GiB, outputs "
      f"{r.output_bytes / GIB:.2f} GiB ({r.alias_bytes / GIB:.2f} GiB aliased to donated "
      f"inputs), temporaries {r.temp_bytes / GIB:.2f} GiB, code {r.code_bytes / GIB:.3f} GiB",
      f"total {r.total_bytes / GIB:.2f} GiB"
      + (f" of {hbm / GIB:.0f} GiB: " if hbm else ": ") + r.verdict(),
      f"model FLOPs per step {r.model_flops:.3e} ({r.model_flops / r.num_devices:.3e} per "
      "device)",
  ]
  if r.xla_flops is not None:
    line = f"XLA cost analysis per device: {r.xla_flops:.3e} FLOPs"
    if r.xla_bytes_accessed is not None:
      line += f", {r.xla_bytes_accessed:.3e} bytes accessed"
    lines.append(line)
  peak = flops_lib.peak_flops(r.device_kind)
  if peak:
    t = r.model_flops / r.num_devices / peak
    lines.append(f"at 100% of the {peak / 1e12:.0f} TFLOP/s bf16 peak a step would take "
                 f"{t * 1e3:.1f} ms; at 40% MFU {t / 0.4 * 1e3:.1f} ms")
  return "\n".join(lines)


def exit_code(r: Report) -> int:
  """0 fits (or no limit known), 1 does not fit."""
  return 1 if r.fits is False else 0


# ----------------------------------------------------------------------------- binary
def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments: {argv[1:]}")
  fl = flags.FLAGS
  try:
    target = parse_target(fl.topology)
    report = compile_train_step(fl.config, target, dump_hlo=fl.dump_hlo)
  except errors.UserError as e:
    _fail(str(e))
  print(format_report(report), flush=True)
  sys.exit(exit_code(report))


def _fail(msg: str) -> None:
  sys.stderr.write(f"genemask_jax.aot: error: {msg}\n")
  sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(str(e))
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    _fail(f"bad --config override: {str(e).strip(chr(39) + chr(34))}")
  return []


def run() -> None:
  """Entry point: defines the flags and runs ``main``."""
  # Compile on the host CPU; the TPU is only described. Without this JAX would also try to
  # open a local TPU (and, on a TPU VM, hold it while a training job needs it).
  if not os.environ.get("JAX_PLATFORMS"):
    jax.config.update("jax_platforms", "cpu")
  config_flags.DEFINE_config_file(
      "config", "configs/pretrain.py:paper",
      "Pretraining config, e.g. configs/pretrain.py:paper.", lock_config=True)
  flags.DEFINE_string("topology", None,
                      "v5e:4x4, v4:2x2x4, v5p:2x2x1, v6e:2x4, an accelerator type such as "
                      "v4-32 or v5litepod-16, or cpu.")
  flags.DEFINE_string("dump_hlo", None,
                      "Directory for the lowered StableHLO and the compiled HLO text.")
  flags.mark_flag_as_required("topology")
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
