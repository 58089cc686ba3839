"""Helpers the test modules share: a small real corpus, a tiny pretraining workdir, and
a walk over a jaxpr's equations.

Imported as `import test_support` (tests/ is on sys.path, as for masking_oracle); it holds
no tests itself.
"""
import gzip
import json
import pathlib


def write_small_corpus(data_dir: pathlib.Path, path: pathlib.Path, records: int = 300) -> None:
  """The first `records` chr22 blocks of the shared genome as a plain FASTA file."""
  with gzip.open(data_dir / "genome" / "GRCh37_chr22_blocks.fa.gz", "rt") as f, \
      open(path, "w") as out:
    seen = 0
    for line in f:
      if line.startswith(">"):
        seen += 1
        if seen > records:
          break
      out.write(line)


def save_tiny_workdir(wd: pathlib.Path, scale: float = 1.0, step: int = 7):
  """A pretraining workdir as main.py writes it (tiny model at `step`), weights x scale.

  Returns the saved params.
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  from genemask_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  from genemask_jax import optim  # pylint: disable=g-import-not-at-top
  from genemask_jax import train_step  # pylint: disable=g-import-not-at-top
  cfg = model_lib.model_config("tiny")
  params = nn.unbox(jax.jit(model_lib.BertForMaskedLM(cfg).init)(
      jax.random.key(3), jnp.zeros((1, 8), jnp.int32))["params"])
  params = jax.tree.map(lambda x: x * scale, params)
  state = train_step.init_train_state(params, optim.make_optimizer(1e-3))
  manager = ocp.CheckpointManager(wd / "checkpoints")
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             data=ocp.args.JsonSave({"position": 0})))
  manager.wait_until_finished()
  (wd / "config.json").write_text(json.dumps({
      "config": {"model": {"size": "tiny", "dtype": "float32"}},
      "model_signature": {"size": "tiny", "vocab_size": 4101, "hidden_size": 256,
                          "num_layers": 2, "num_heads": 8, "mlp_dim": 1024}}))
  return params


def iter_eqns(jaxpr):
  """Every equation of a jaxpr and of the jaxprs nested in its equations (jit, scan,
  shard_map, custom_vjp, checkpoint), depth first."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      sub = getattr(value, "jaxpr", value)  # A ClosedJaxpr holds its Jaxpr as .jaxpr.
      if hasattr(sub, "eqns"):
        yield from iter_eqns(sub)
