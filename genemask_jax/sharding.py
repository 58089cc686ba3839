"""Device meshes, logical-axis rules and sharded state creation for the BERT model.

The model names every parameter and key activation with logical axes (``batch``,
``length``, ``embed``, ``heads``, ``kv``, ``mlp``, ``vocab``). A rules table maps each
name to mesh axes (``data``, ``model``, optionally ``fsdp``), T5X/MaxText style; the
config chooses the table, the model code never does. Rules are (logical, mesh) pairs in
priority order; a mesh axis is used at most once per array (a later use leaves that
dimension replicated), so ``embed -> fsdp`` on parameters coexists with
``batch -> (data, fsdp)`` on activations.

Typical use (the pretraining binary):

  mesh = make_mesh({"data": -1, "model": 1})          # -1 = the rest of the devices
  rules = rules_from_config(config.rules)             # or DEFAULT_RULES / FSDP_RULES
  validate(model_cfg, mesh, rules, global_batch_size=B)   # clear errors, nothing compiled
  state, state_shardings = train_step.create_train_state(model, tx, rng, mesh, rules)
  step = train_step.jit_train_step(train_step.make_mlm_train_step(...), mesh, rules,
                                   state_shardings)
  batch = global_batch_from_local({"input_ids": local_rows}, mesh, rules)
  state, metrics = step(state, batch, key)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import contextlib
import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from genemask_jax import errors
from genemask_jax import model as model_lib

LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]

#: Data parallel over ``data`` plus Megatron-style tensor parallel over ``model``
#: (heads, MLP hidden units and vocabulary rows split; embeddings dim replicated).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", "data"),
    ("length", None),
    ("embed", None),
    ("heads", "model"),
    ("kv", None),
    ("mlp", "model"),
    ("vocab", "model"),
)

#: As DEFAULT_RULES, plus a ``fsdp`` mesh axis that splits the batch and, ZeRO-3 style,
#: the ``embed`` dimension of every parameter (and so of the optimizer state).
FSDP_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "model"),
    ("kv", None),
    ("mlp", "model"),
    ("vocab", "model"),
)

LOGICAL_AXES = ("batch", "length", "embed", "heads", "kv", "mlp", "vocab")


class ShardingConfigError(errors.UserError):
  """A mesh, a rules table or a model size that cannot work together."""


def rules_from_config(rules: Any) -> tuple[tuple[str, Any], ...]:
  """Normalises rules given as a list of pairs or a {logical: mesh axes} mapping.

  Mesh axes may be None, a name, or a list/tuple of names (lists from a ConfigDict become
  tuples).

  Raises:
    ShardingConfigError: a malformed entry or an unknown logical axis name.
  """
  items = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
  out = []
  for i, item in enumerate(items):
    if not isinstance(item, (tuple, list)) or len(item) != 2:
      raise ShardingConfigError(
          f"logical_axis_rules[{i}] = {item!r}; expected a (logical_axis, mesh_axes) pair")
    logical, mesh_axes = item
    if logical not in LOGICAL_AXES:
      raise ShardingConfigError(
          f"logical_axis_rules[{i}] names logical axis {logical!r}; expected one of "
          f"{LOGICAL_AXES}")
    if isinstance(mesh_axes, (list, tuple)):
      mesh_axes = tuple(mesh_axes)
      if not all(isinstance(a, str) for a in mesh_axes):
        raise ShardingConfigError(
            f"logical_axis_rules[{i}] ({logical!r}) mesh axes {mesh_axes!r} must be names")
    elif mesh_axes is not None and not isinstance(mesh_axes, str):
      raise ShardingConfigError(
          f"logical_axis_rules[{i}] ({logical!r}) mesh axes {mesh_axes!r}; expected None, "
          "a mesh axis name or a tuple of names")
    out.append((logical, mesh_axes))
  return tuple(out)


def _mesh_axes_of(entry: Any) -> tuple[str, ...]:
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def resolve_mesh_shape(shape: Mapping[str, int] | Sequence[int],
                       axis_names: Sequence[str] | None = None,
                       num_devices: int | None = None) -> tuple[tuple[int, ...], tuple[str, ...]]:
  """Fills in one -1 ("the rest") and checks that the mesh uses all devices.

  Args:
    shape: {axis name: size} (insertion order = mesh order) or a tuple of sizes.
    axis_names: names for a tuple ``shape`` (default ("data", "model")[:len]).
    num_devices: devices to fill (default ``jax.device_count()``).

  Returns:
    (sizes, names).

  Raises:
    ShardingConfigError: more than one -1, a size < 1, or a product that does not equal
      the device count.
  """
  if isinstance(shape, Mapping):
    names, sizes = tuple(shape.keys()), [int(v) for v in shape.values()]
  else:
    sizes = [int(v) for v in shape]
    if axis_names is None:
      if len(sizes) > 3:
        raise ShardingConfigError(f"mesh shape {tuple(sizes)} needs axis_names")
      axis_names = ("data", "model") if len(sizes) <= 2 else ("data", "fsdp", "model")
      axis_names = axis_names[:len(sizes)]
    names = tuple(axis_names)
  if len(names) != len(sizes) or len(set(names)) != len(names):
    raise ShardingConfigError(f"mesh axis names {names} do not fit shape {tuple(sizes)}")
  n = jax.device_count() if num_devices is None else num_devices
  if sizes.count(-1) > 1:
    raise ShardingConfigError(f"mesh {dict(zip(names, sizes))}: at most one size may be -1")
  if any(s < 1 and s != -1 for s in sizes):
    raise ShardingConfigError(f"mesh {dict(zip(names, sizes))}: sizes must be >= 1 or -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n % known:
      raise ShardingConfigError(
          f"mesh {dict(zip(names, sizes))}: the fixed axes ({known} devices) do not divide "
          f"the {n} devices")
    sizes[sizes.index(-1)] = n // known
  if math.prod(sizes) != n:
    raise ShardingConfigError(
        f"mesh {dict(zip(names, sizes))} has {math.prod(sizes)} devices but there are {n}; "
        "the product of the mesh sizes must equal the device count (use -1 for 'the rest')")
  return tuple(sizes), names


def make_mesh(shape: Mapping[str, int] | Sequence[int],
              axis_names: Sequence[str] | None = None,
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A mesh over all (or the given) devices with Auto axis types (flax constraints need them).

  Args:
    shape: e.g. {"data": -1, "model": 2} or (4, 2); -1 means "the rest".
    axis_names: names when ``shape`` is a tuple (default ("data", "model")).
    devices: devices to use (default all).
  """
  sizes, names = resolve_mesh_shape(
      shape, axis_names, None if devices is None else len(devices))
  kwargs = {} if devices is None else {"devices": devices}
  return jax.make_mesh(sizes, names, axis_types=(jax.sharding.AxisType.Auto,) * len(sizes),
                       **kwargs)


def validate(cfg: model_lib.ModelConfig, mesh: jax.sharding.Mesh, rules: LogicalRules,
             *, global_batch_size: int | None = None) -> None:
  """Checks that the rules fit the mesh and the model, before anything is compiled.

  Raises:
    ShardingConfigError: a rule naming a mesh axis the mesh lacks, a mesh axis used twice in
      one rule, or a model dimension (heads, mlp, vocab, embed, kv, batch) not divisible by
      the mesh axes its logical axis is sharded over.
  """
  rules = rules_from_config(rules)
  for logical, entry in rules:
    axes = _mesh_axes_of(entry)
    for a in axes:
      if a not in mesh.shape:
        raise ShardingConfigError(
            f"logical_axis_rules: {logical!r} -> {entry!r} names mesh axis {a!r}, but the "
            f"mesh has axes {tuple(mesh.axis_names)}")
    if len(set(axes)) != len(axes):
      raise ShardingConfigError(f"logical_axis_rules: {logical!r} -> {entry!r} repeats an axis")
  dims = {
      "heads": ("num_heads", cfg.num_heads),
      "kv": ("head_dim", cfg.head_dim),
      "mlp": ("mlp_dim", cfg.mlp_dim),
      "embed": ("hidden_size", cfg.hidden_size),
      "vocab": ("padded_vocab_size", cfg.padded_vocab_size),
  }
  if global_batch_size is not None:
    dims["batch"] = ("global batch size", global_batch_size)
  seen = set()
  for logical, entry in rules:
    if logical in seen or logical not in dims:
      continue  # Only the first rule for a name can apply to a dimension of that name.
    seen.add(logical)
    n = math.prod(mesh.shape[a] for a in _mesh_axes_of(entry))
    what, size = dims[logical]
    if size % n:
      hint = (" (set ModelConfig.vocab_pad_multiple to a multiple of it)"
              if logical == "vocab" else "")
      raise ShardingConfigError(
          f"{what}={size} is not divisible by {n}, the size of mesh axes {entry!r} that "
          f"logical axis {logical!r} is sharded over{hint}")


def axis_rules(mesh: jax.sharding.Mesh, rules: LogicalRules) -> contextlib.AbstractContextManager:
  """Context in which the model's logical constraints bind to ``mesh`` (use while tracing)."""
  stack = contextlib.ExitStack()
  stack.enter_context(jax.set_mesh(mesh))
  stack.enter_context(nn.logical_axis_rules(rules_from_config(rules)))
  return stack


def logical_to_sharding(logical_specs: Any, mesh: jax.sharding.Mesh,
                        rules: LogicalRules) -> Any:
  """Pytree of logical PartitionSpecs -> pytree of NamedShardings on ``mesh``."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules_from_config(rules))


def param_shardings(abstract_boxed_params: Any, mesh: jax.sharding.Mesh,
                    rules: LogicalRules) -> Any:
  """NamedShardings for the params from the (possibly abstract) boxed ``init`` output."""
  return logical_to_sharding(nn.get_partition_spec(abstract_boxed_params), mesh, rules)


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def batch_sharding(mesh: jax.sharding.Mesh, rules: LogicalRules,
                   ndim: int = 1) -> jax.sharding.NamedSharding:
  """Sharding of a (batch, ...) input array: leading dim on the ``batch`` rule, the rest
  replicated (with the default ndim=1 the spec fits arrays of any rank)."""
  spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules_from_config(rules))
  return jax.sharding.NamedSharding(mesh, spec)


def global_batch_from_local(local_batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh,
                            rules: LogicalRules) -> dict[str, jax.Array]:
  """Assembles each process's rows into global arrays sharded on the ``batch`` rule.

  Args:
    local_batch: {name: (local_B, ...) numpy array}; every process passes its own rows,
      the global batch is their concatenation in process order.
    mesh, rules: where the batch goes.

  Returns:
    {name: global jax.Array of shape (local_B * process_count, ...)}.
  """
  out = {}
  for name, x in local_batch.items():
    x = np.asarray(x)
    sharding = batch_sharding(mesh, rules, x.ndim)
    global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
    try:
      out[name] = jax.make_array_from_process_local_data(sharding, x, global_shape)
    except ValueError as e:
      raise ShardingConfigError(
          f"batch[{name!r}] of local shape {x.shape} cannot be sharded as {sharding.spec} "
          f"over mesh {dict(mesh.shape)}: {e}") from e
  return out


def create_sharded_state(init_fn: Callable[[jax.Array], Any], rng: jax.Array,
                         mesh: jax.sharding.Mesh, rules: LogicalRules,
                         make_state: Callable[[Any], Any], *,
                         compiler_options: dict[str, Any] | None = None) -> tuple[Any, Any]:
  """Creates the train state directly sharded (never materialised on one device).

  Args:
    init_fn: rng -> boxed variables (``model.init`` output, params carrying
      ``nn.Partitioned`` logical names).
    rng: PRNG key for the init.
    mesh, rules: the layout.
    make_state: unboxed params -> state pytree whose ``params`` field holds them and whose
      other leaves are derived from them (e.g. ``train_step.init_train_state(tx)``). Its
      optimizer moments get their params' sharding; scalars are replicated.
    compiler_options: XLA options for the init compile (``jax.jit(compiler_options=)``).

  Returns:
    (state, state_shardings) with matching structure.
  """
  make = _make_state_fn(init_fn, make_state)
  _, shardings = abstract_sharded_state(init_fn, rng, mesh, rules, make_state)
  with axis_rules(mesh, rules):
    state = jax.jit(make, out_shardings=shardings, compiler_options=compiler_options)(rng)
  return state, shardings


def _make_state_fn(init_fn: Callable[[jax.Array], Any],
                   make_state: Callable[[Any], Any]) -> Callable[[jax.Array], Any]:
  def make(key):
    return make_state(nn.unbox(init_fn(key)["params"]))
  return make


def abstract_sharded_state(init_fn: Callable[[jax.Array], Any], rng: jax.Array,
                           mesh: jax.sharding.Mesh, rules: LogicalRules,
                           make_state: Callable[[Any], Any]) -> tuple[Any, Any]:
  """The state ``create_sharded_state`` would make, as shapes only: nothing runs.

  Works on a mesh of devices this process cannot run on (an ahead-of-time compile against
  a TPU topology, ``genemask_jax.aot``).

  Returns:
    (abstract_state, state_shardings): ``jax.ShapeDtypeStruct`` leaves carrying their
    ``NamedSharding``, and the shardings alone.
  """
  with axis_rules(mesh, rules):
    abstract_boxed = jax.eval_shape(lambda k: init_fn(k)["params"], rng)
    p_shard = param_shardings(abstract_boxed, mesh, rules)
    abstract_params = jax.tree.map(
        lambda x: x.value if isinstance(x, nn.Partitioned) else x, abstract_boxed,
        is_leaf=lambda x: isinstance(x, nn.Partitioned))
    abstract_state = jax.eval_shape(_make_state_fn(init_fn, make_state), rng)
    shardings = state_shardings_like(abstract_state, abstract_params, p_shard, mesh)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings)
  return abstract_state, shardings


def state_shardings_like(abstract_state: Any, abstract_params: Any, params_shardings: Any,
                         mesh: jax.sharding.Mesh) -> Any:
  """Maps each leaf of a state to its param's sharding when it is shaped like a param.

  Any subtree of ``abstract_state`` with the params' tree structure (the params
  themselves, Adam's mu and nu, ...) gets ``params_shardings``; every other leaf
  (step counters, scalars) is replicated.
  """
  p_struct = jax.tree.structure(abstract_params)
  repl = replicated(mesh)

  def is_param_tree(x):
    return jax.tree.structure(x) == p_struct

  def assign(x):
    if is_param_tree(x):
      return params_shardings
    return jax.tree.map(lambda _: repl, x)

  return jax.tree.map(assign, abstract_state, is_leaf=is_param_tree)


def sharding_table(shardings: Any) -> dict[str, tuple[Any, ...]]:
  """{"bert/encoder/layer_0/...": PartitionSpec entries} for printing and tests."""
  flat = jax.tree_util.tree_flatten_with_path(
      shardings, is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))[0]
  return {"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path):
          tuple(s.spec) for path, s in flat}

