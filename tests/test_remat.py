"""config.model.remat: recomputing encoder layers changes memory, never the numbers."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genemask_jax import model as model_lib
from genemask_jax import train_step as ts

CFG = model_lib.ModelConfig(num_layers=2, hidden_size=32, num_heads=2, mlp_dim=64,
                            max_len=32, attention_impl="blockwise")


def _batch(rows=2, length=32):
  rng = np.random.default_rng(0)
  ids = rng.integers(5, 4101, (rows, length)).astype(np.int32)
  ids[:, 0], ids[:, -1] = 2, 3
  ids[1, 20:] = 0  # Padding in one row.
  positions = np.stack([rng.choice(np.arange(1, 19), 6, replace=False) for _ in range(rows)])
  # (Row 1 is padded from 20 on; the predicted positions stay among its real tokens.)
  labels = np.take_along_axis(ids, positions, 1)
  ids = ids.copy()
  np.put_along_axis(ids, positions, 4, 1)  # [MASK]
  return jnp.asarray(ids), jnp.asarray(positions, jnp.int32), jnp.asarray(labels)


def _loss_and_grads(remat):
  model = model_lib.BertForMaskedLM(model_lib.ModelConfig(**{**CFG.__dict__, "remat": remat}))
  ids, positions, labels = _batch()
  params = nn.unbox(model.init(jax.random.key(0), ids)["params"])

  def loss(p):
    logits = model.apply({"params": p}, ids, masked_positions=positions,
                         deterministic=False, rngs={"dropout": jax.random.key(1)})
    s, w, _ = ts.mlm_loss_terms(logits, labels, jnp.ones(labels.shape))
    return s / w

  return params, jax.jit(jax.value_and_grad(loss))(params)


@pytest.fixture(scope="module")
def no_remat():
  return _loss_and_grads("none")


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_gives_the_same_loss_and_gradients_with_dropout(remat, no_remat):
  params0, (loss0, grads0) = no_remat
  params, (loss, grads) = _loss_and_grads(remat)
  # The parameter tree is unchanged, so a checkpoint loads under any policy.
  assert jax.tree.structure(params) == jax.tree.structure(params0)
  np.testing.assert_allclose(loss, loss0, rtol=1e-6)
  for g, g0 in zip(jax.tree.leaves(grads), jax.tree.leaves(grads0)):
    np.testing.assert_allclose(g, g0, rtol=1e-5, atol=1e-7)


def test_unknown_remat_policy_is_an_error():
  with pytest.raises(ValueError, match="ModelConfig.remat='some'.*'none', 'full', 'dots'"):
    model_lib.ModelConfig(remat="some")


@pytest.mark.parametrize("scan_layers", [False, True])
def test_each_policy_keeps_less_for_the_backward_pass(scan_layers):
  """What remat is for: the residuals a backward pass keeps shrink from "none" to "dots"
  (matmul outputs kept) to "full" (layer inputs only). Unrolled, each recomputed layer is
  fenced by an optimization barrier so XLA cannot merge it back into the forward pass
  (jax.checkpoint's prevent_cse); under lax.scan the loop does that, so there is none."""
  ids, _, _ = _batch()
  kept, barriers = {}, {}
  for remat in ("none", "dots", "full"):
    cfg = model_lib.ModelConfig(**{**CFG.__dict__, "remat": remat, "scan_layers": scan_layers,
                                   "dropout_rate": 0.0, "attention_dropout_rate": 0.0})
    model = model_lib.BertForMaskedLM(cfg)
    params = nn.unbox(model.init(jax.random.key(0), ids)["params"])

    def f(p):
      return model.apply({"params": p}, ids).sum()

    _, backward = jax.vjp(f, params)
    kept[remat] = sum(x.size for x in jax.tree.leaves(backward))  # Its residuals.
    barriers[remat] = jax.jit(jax.grad(f)).lower(params).as_text().count(
        "optimization_barrier")
  assert kept["full"] < kept["dots"] < kept["none"], kept
  want = 0 if scan_layers else CFG.num_layers
  assert barriers == {"none": 0, "dots": want, "full": want}
