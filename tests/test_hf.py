"""HuggingFace interop: logits agree with transformers both ways; bad directories fail clearly.

Tests marked ``needs_torch`` build random ``transformers`` BERTs locally (DNABERT-6's
vocabulary, small widths) and skip, saying why, without the ``hf`` extra
(``pip install '.[hf]'``). The safetensors reader/writer, the error messages and the
checkpoint round trip need only the core install.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from genemask_jax import hf
from genemask_jax import state as state_lib
from genemask_jax import model as model_lib
from genemask_jax import optim
from genemask_jax import sharding
from genemask_jax import tokenizer
from genemask_jax.hf import cli as hf_cli
from genemask_jax import train_step

def _installed(name: str) -> bool:
  try:
    return importlib.util.find_spec(name) is not None
  except (ImportError, ValueError):
    return False


_HAVE_HF = _installed("torch") and _installed("transformers")
needs_torch = pytest.mark.skipif(
    not _HAVE_HF, reason="torch/transformers not installed: pip install '.[hf]' to run the "
    "HuggingFace equality tests")

# DNABERT-6's vocabulary and positions with small widths (fast on 2 CPU cores).
SMALL = dict(vocab_size=4101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=128, max_position_embeddings=512)
OUR_SMALL = model_lib.ModelConfig(vocab_size=4101, hidden_size=64, num_layers=2, num_heads=4,
                                  mlp_dim=128, max_len=512)
TOL = 1e-4
REPO = pathlib.Path(__file__).resolve().parents[1]


def _ids(rows: int = 4, length: int = 48, seed: int = 0) -> np.ndarray:
  """[CLS] 6-mers [SEP] [PAD]... rows of different lengths, as the few-shot data looks."""
  rng = np.random.default_rng(seed)
  seqs = [rng.integers(tokenizer.NUM_SPECIAL, 4101, n) for n in
          np.linspace(length // 3, length - 2, rows).astype(int)]
  return tokenizer.pack(seqs, length)


def _randomize_torch(model, seed: int) -> None:
  """Every parameter random (LayerNorm scales around 1), so no tensor is a trivial 0 or 1."""
  import torch  # pylint: disable=g-import-not-at-top
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g) * 0.2
      p.copy_(1.0 + noise if "LayerNorm.weight" in name else noise)


def _our_params(module, seed: int):
  """Random params of every leaf (LayerNorm scales around 1), shaped by ``module.init``.

  Built in numpy from ``jax.eval_shape``: compiling ``init`` costs seconds on 2 cores.
  """
  shapes = jax.eval_shape(module.init, jax.random.key(0), np.zeros((1, 8), np.int32))
  rng = np.random.default_rng(seed)

  def fill(path, x):
    noise = rng.normal(0, 0.2, x.shape).astype(np.float32)
    return 1.0 + noise if jax.tree_util.keystr(path).endswith("['scale']") else noise

  return jax.tree_util.tree_map_with_path(fill, nn.meta.unbox(shapes["params"]))


def _apply(module, params, ids, method=None) -> np.ndarray:
  """Our forward pass, jitted (op-by-op dispatch is several times slower on CPU)."""
  fn = jax.jit(lambda p, x: module.apply({"params": p}, x, method=method))
  return np.asarray(fn(params, ids))


def _torch_logits(model, ids: np.ndarray) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  model.eval()
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(ids != tokenizer.PAD_ID, dtype=torch.long))
  return (out.logits if hasattr(out, "logits") else out.last_hidden_state).numpy()


def _save_hf(model, path: pathlib.Path, *, vocab: bool = True) -> pathlib.Path:
  model.save_pretrained(path)
  if vocab:
    tokenizer.write_vocab(path / "vocab.txt", 6)
  return path


def _hf_mlm(seed: int = 0, **overrides):
  import transformers  # pylint: disable=g-import-not-at-top
  m = transformers.BertForMaskedLM(transformers.BertConfig(**{**SMALL, **overrides}))
  _randomize_torch(m, seed)
  return m


# ----------------------------------------------------------------------------- safetensors
def test_safetensors_hand_parser_matches_the_reference_library(tmp_path):
  st = pytest.importorskip("safetensors.numpy", reason="safetensors (hf extra) not installed")
  rng = np.random.default_rng(0)
  tensors = {"a.weight": rng.normal(size=(3, 5)).astype(np.float32),
             "b": rng.normal(size=(7,)).astype(np.float16),
             "c": np.arange(6, dtype=np.int64).reshape(2, 3),
             "empty": np.zeros((0, 4), np.float32)}
  st.save_file(tensors, tmp_path / "ref.safetensors", metadata={"format": "pt"})
  got = hf.read_safetensors(tmp_path / "ref.safetensors")
  assert sorted(got) == sorted(tensors)
  for k, v in tensors.items():
    assert got[k].dtype == v.dtype and np.array_equal(got[k], v), k
  # Our writer's files read back in the reference library.
  hf.write_safetensors(tmp_path / "ours.safetensors", tensors)
  back = st.load_file(tmp_path / "ours.safetensors")
  for k, v in tensors.items():
    assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k


def test_safetensors_bfloat16_is_widened_exactly(tmp_path):
  import ml_dtypes  # pylint: disable=g-import-not-at-top  (ships with jax)
  values = np.array([1.0, -2.5, 3.140625, 1e-3], np.float32).astype(ml_dtypes.bfloat16)
  raw = values.view(np.uint16)
  header = json.dumps({"x": {"dtype": "BF16", "shape": [2, 2],
                             "data_offsets": [0, raw.nbytes]}}).encode()
  (tmp_path / "bf.safetensors").write_bytes(
      len(header).to_bytes(8, "little") + header + raw.tobytes())
  got = hf.read_safetensors(tmp_path / "bf.safetensors")["x"]
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, values.astype(np.float32).reshape(2, 2))


def test_truncated_safetensors_names_file_and_tensor(tmp_path):
  hf.write_safetensors(tmp_path / "m.safetensors", {"w": np.ones((4, 4), np.float32)})
  data = (tmp_path / "m.safetensors").read_bytes()
  (tmp_path / "m.safetensors").write_bytes(data[:-8])
  with pytest.raises(hf.HFImportError, match=r"m\.safetensors.*'w'.*do not fit"):
    hf.read_safetensors(tmp_path / "m.safetensors")


# ----------------------------------------------------------------------------- import
@needs_torch
def test_import_mlm_logits_equal_transformers(tmp_path):
  m = _hf_mlm(seed=1)
  d = _save_hf(m, tmp_path / "mlm")
  assert not (d / "pytorch_model.bin").exists()  # The safetensors path, parsed by hand.
  ckpt = hf.load_hf_checkpoint(d)
  assert ckpt.config == OUR_SMALL
  assert ckpt.has_mlm_head and not ckpt.has_pooler and ckpt.num_labels is None
  ids = _ids()
  ours = _apply(model_lib.BertForMaskedLM(ckpt.config), hf.mlm_params(ckpt), ids)
  ref = _torch_logits(m, ids)
  assert ours.shape == ref.shape == (4, 48, 4101)
  np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)


@needs_torch
def test_import_bin_with_tied_decoder_and_position_ids(tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  m = _hf_mlm(seed=2)
  state = dict(m.state_dict())  # Holds cls.predictions.decoder.{weight,bias}, tied.
  assert "cls.predictions.decoder.weight" in state
  state["bert.embeddings.position_ids"] = torch.arange(512)[None]  # Old checkpoints' buffer.
  d = tmp_path / "bin"
  d.mkdir()
  torch.save(state, d / "pytorch_model.bin")
  m.config.to_json_file(d / "config.json")
  tokenizer.write_vocab(d / "vocab.txt")
  cfg, params = hf.load_hf_encoder(d)
  ids = _ids(seed=3)
  ours = _apply(model_lib.BertForMaskedLM(cfg), params, ids)
  np.testing.assert_allclose(ours, _torch_logits(m, ids), atol=TOL, rtol=0)


@needs_torch
def test_import_bert_model_without_prefix_gets_a_fresh_mlm_head(tmp_path):
  import transformers  # pylint: disable=g-import-not-at-top
  m = transformers.BertModel(transformers.BertConfig(**SMALL))
  _randomize_torch(m, 4)
  d = _save_hf(m, tmp_path / "base")
  ckpt = hf.load_hf_checkpoint(d)
  assert ckpt.has_pooler and not ckpt.has_mlm_head
  ids = _ids(seed=5)
  params = hf.mlm_params(ckpt)
  assert set(params) == {"bert", "cls"} and "pooler" not in params["bert"]
  hidden = _apply(model_lib.BertForMaskedLM(ckpt.config), params, ids,
                  method=model_lib.BertForMaskedLM.encode)
  np.testing.assert_allclose(hidden, _torch_logits(m, ids), atol=TOL, rtol=0)


@needs_torch
def test_classification_head_both_directions(tmp_path):
  import transformers  # pylint: disable=g-import-not-at-top
  hf_cls = transformers.BertForSequenceClassification(
      transformers.BertConfig(**SMALL, num_labels=3))
  _randomize_torch(hf_cls, 6)
  d = _save_hf(hf_cls, tmp_path / "cls_in")
  ckpt = hf.load_hf_checkpoint(d)
  assert ckpt.num_labels == 3 and ckpt.has_pooler
  ids = _ids(seed=7)
  ours_model = model_lib.BertForSequenceClassification(ckpt.config, num_labels=3)
  ours = _apply(ours_model, hf.classification_params(ckpt), ids)
  np.testing.assert_allclose(ours, _torch_logits(hf_cls, ids), atol=TOL, rtol=0)

  # Ours -> HF: a random classifier of ours loads as BertForSequenceClassification.
  params = _our_params(ours_model, seed=8)
  out = hf.export_params(params, OUR_SMALL, tmp_path / "cls_out")
  loaded, info = transformers.BertForSequenceClassification.from_pretrained(
      out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert loaded.config.num_labels == 3
  np.testing.assert_allclose(_torch_logits(loaded, ids),
                             _apply(ours_model, params, ids),
                             atol=TOL, rtol=0)


# ----------------------------------------------------------------------------- export
@needs_torch
def test_export_mlm_loads_in_transformers_with_equal_logits(tmp_path):
  import transformers  # pylint: disable=g-import-not-at-top
  # Padded vocabulary rows (as on accelerators) are sliced off on export.
  cfg = dataclasses.replace(OUR_SMALL, vocab_pad_multiple=128, type_vocab_size=0)
  model = model_lib.BertForMaskedLM(cfg)
  params = _our_params(model, seed=9)
  assert params["bert"]["embeddings"]["word_embeddings"]["embedding"].shape[0] == 4224
  out = hf.export_params(params, cfg, tmp_path / "export", model_card="# card\n")
  assert (out / "vocab.txt").read_text().splitlines() == tokenizer.vocab(6)
  assert (out / "README.md").read_text() == "# card\n"
  loaded, info = transformers.BertForMaskedLM.from_pretrained(out, output_loading_info=True)
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  ids = _ids(seed=10)
  np.testing.assert_allclose(_torch_logits(loaded, ids),
                             _apply(model, params, ids),
                             atol=TOL, rtol=0)
  tok = transformers.BertTokenizer.from_pretrained(out)
  assert tok.convert_tokens_to_ids(["[CLS]", "AAAAAA", "GGGGGG"]) == [2, 5, 4100]


def test_export_then_import_restores_every_tensor(tmp_path):
  for module in (model_lib.BertForMaskedLM(OUR_SMALL),
                 model_lib.BertForSequenceClassification(OUR_SMALL, num_labels=3)):
    params = _our_params(module, seed=11)
    out = hf.export_params(params, OUR_SMALL, tmp_path / type(module).__name__)
    ckpt = hf.load_hf_checkpoint(out)
    assert ckpt.config == OUR_SMALL
    back = (hf.mlm_params(ckpt) if "cls" in params else hf.classification_params(ckpt))
    jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))


# ----------------------------------------------------------------------------- bad input
def _write_hf_dir(path: pathlib.Path, state: dict, cfg: model_lib.ModelConfig) -> pathlib.Path:
  path.mkdir()
  (path / "config.json").write_text(json.dumps(hf.hf_config_from_model_config(cfg)))
  hf.write_safetensors(path / "model.safetensors", state)
  tokenizer.write_vocab(path / "vocab.txt", 6)
  return path


def test_bad_checkpoint_lists_vocab_size_missing_and_unexpected_weights_at_once(tmp_path):
  cfg = dataclasses.replace(OUR_SMALL, vocab_size=4097)
  state = hf.params_to_state_dict(_our_params(model_lib.BertForMaskedLM(cfg), 0), cfg)
  del state["bert.encoder.layer.1.attention.self.key.weight"]
  del state["cls.predictions.transform.LayerNorm.bias"]
  state["bert.encoder.layer.0.adapter.weight"] = np.zeros((2, 2), np.float32)
  d = _write_hf_dir(tmp_path / "bad", state, cfg)
  with pytest.raises(hf.HFImportError) as e:
    hf.load_hf_checkpoint(d)
  msg = str(e.value)
  assert str(d) in msg
  assert "vocab_size=4097" in msg and "4101" in msg
  assert ("missing weights (2): bert.encoder.layer.1.attention.self.key.weight, "
          "cls.predictions.transform.LayerNorm.bias") in msg
  assert "unexpected weights (1): bert.encoder.layer.0.adapter.weight" in msg


def test_vocab_txt_differences_name_lines_and_counts(tmp_path):
  state = hf.params_to_state_dict(_our_params(model_lib.BertForMaskedLM(OUR_SMALL), 0),
                                  OUR_SMALL)
  d = _write_hf_dir(tmp_path / "vocab", state, OUR_SMALL)
  lines = tokenizer.vocab(6)
  lines[5], lines[6] = lines[6], lines[5]  # Swap AAAAAA and AAAAAT.
  (d / "vocab.txt").write_text("\n".join(lines + ["EXTRA"]) + "\n")
  with pytest.raises(hf.HFImportError) as e:
    hf.load_hf_checkpoint(d)
  msg = str(e.value)
  assert "4102 tokens; the 6-mer tokenizer has 4101" in msg
  assert "line 6 (id 5): 'AAAAAT', tokenizer has 'AAAAAA'" in msg
  assert "line 7 (id 6): 'AAAAAA', tokenizer has 'AAAAAT'" in msg
  assert hf.load_hf_checkpoint(d, check_vocab=False).config == OUR_SMALL


def test_unsupported_config_and_missing_weights_file(tmp_path):
  d = tmp_path / "x"
  d.mkdir()
  cfg = hf.hf_config_from_model_config(OUR_SMALL)
  (d / "config.json").write_text(json.dumps({**cfg, "hidden_act": "relu",
                                             "position_embedding_type": "relative_key"}))
  with pytest.raises(hf.HFImportError, match=r"hidden_act='relu'.*\n.*relative_key"):
    hf.load_hf_checkpoint(d)
  (d / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(hf.HFImportError, match="no model.safetensors"):
    hf.load_hf_checkpoint(d)


def test_bin_without_torch_says_which_extra(tmp_path, monkeypatch):
  d = tmp_path / "bin"
  d.mkdir()
  (d / "config.json").write_text(json.dumps(hf.hf_config_from_model_config(OUR_SMALL)))
  (d / "pytorch_model.bin").write_bytes(b"not read")
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError.
  with pytest.raises(hf.HFImportError, match=r"needs PyTorch.*genemask-jax\[hf\]"):
    hf.load_hf_checkpoint(d)


# ----------------------------------------------------------------------------- training state
def test_init_state_from_hf_keeps_shardings_and_checks_the_shape(tmp_path):
  cfg = dataclasses.replace(OUR_SMALL, vocab_pad_multiple=8)
  src = _our_params(model_lib.BertForMaskedLM(OUR_SMALL), seed=12)
  d = hf.export_params(src, OUR_SMALL, tmp_path / "hf")
  mesh = sharding.make_mesh((4, 2), devices=jax.devices()[:8])
  tx = optim.make_optimizer(1e-3)
  state, shardings = train_step.create_train_state(
      model_lib.BertForMaskedLM(cfg), tx, jax.random.key(0), mesh, sharding.DEFAULT_RULES)
  new = state_lib.init_state_from_hf(state, d, cfg)
  jax.tree.map(lambda x, s: (x.sharding == s) or pytest.fail(f"{x.sharding} != {s}"),
               new.params, shardings.params)
  word = np.asarray(new.params["bert"]["embeddings"]["word_embeddings"]["embedding"])
  want = src["bert"]["embeddings"]["word_embeddings"]["embedding"]
  assert word.shape == (4104, 64)
  np.testing.assert_array_equal(word[:4101], want)
  np.testing.assert_array_equal(word[4101:], 0)
  np.testing.assert_array_equal(np.asarray(new.params["cls"]["bias"])[:4101], src["cls"]["bias"])
  assert int(new.step) == 0

  other = dataclasses.replace(cfg, num_layers=3, mlp_dim=256)
  with pytest.raises(ValueError, match=r"num_layers: HF 2 vs ours 3, mlp_dim: HF 128 vs ours "
                                       r"256"):
    state_lib.init_state_from_hf(state, d, other)


# ----------------------------------------------------------------------------- commands
def test_import_and_export_commands_round_trip(tmp_path):
  from genemask_jax import checkpoints  # pylint: disable=g-import-not-at-top
  tiny = model_lib.model_config("tiny")
  src_params = _our_params(model_lib.BertForMaskedLM(tiny), seed=13)
  src = hf.export_params(src_params, tiny, tmp_path / "hf_in")
  results = tmp_path / "fewshot.csv"
  results.write_text("task,shots,mcc\nprom_core,10,0.41\n")
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  ckpt, out = tmp_path / "ckpt", tmp_path / "hf_out"
  for argv in (["import", f"--hf_dir={src}", f"--output={ckpt}"],
               ["export", f"--checkpoint={ckpt}", f"--output={out}",
                f"--fewshot_results={results}"]):
    r = subprocess.run([sys.executable, "-m", "genemask_jax.hf", *argv], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
  # The import wrote the pretraining layout, which the few-shot loader accepts.
  run_config = json.loads((ckpt / "config.json").read_text())
  assert run_config["model_signature"]["size"] == "tiny"
  assert (ckpt / "checkpoints" / "0" / "state").is_dir()
  cfg, encoder, info = checkpoints.load_encoder(str(ckpt), model_size="tiny", vocab_size=4101)
  assert cfg == tiny and info["step"] == 0
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, encoder),
               src_params["bert"])
  # The export reproduced every tensor, and the card carries the results.
  a = hf.read_safetensors(src / "model.safetensors")
  b = hf.read_safetensors(out / "model.safetensors")
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  card = (out / "README.md").read_text()
  assert "| prom_core | 10 | 0.41 |" in card and "Optimizer steps: 0" in card

  # Errors are one line on stderr, exit code 1.
  r = subprocess.run([sys.executable, "-m", "genemask_jax.hf", "export",
                      f"--checkpoint={tmp_path / 'nope'}", f"--output={tmp_path / 'x'}"],
                     cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                     check=False)
  assert r.returncode == 2 and "nope' does not exist" in r.stderr, r.stderr[-2000:]


def test_model_card_states_masking_steps_data_and_results(tmp_path):
  results = tmp_path / "results.md"
  results.write_text("| task | mcc |\n|---|---|\n| splice | 0.30 |\n")
  run_config = {"config": {"masking": {"strategy": "genemask", "p": 0.0176},
                           "data": {"fasta": "hg38_chr1.fa.gz", "k": 6, "max_len": 512},
                           "train": {"num_steps": 1200, "batch_size": 16}},
                "model_signature": {"size": "tiny"}}
  card = hf_cli.model_card(model_lib.model_config("tiny"), run_config, 600,
                       fewshot_results=results)
  assert "Masking strategy: GeneMask" in card and "p=0.0176" in card
  assert "Optimizer steps: 600 of 1200 planned, global batch 16" in card
  assert "hg38_chr1.fa.gz" in card and "| splice | 0.30 |" in card


def test_export_of_a_small_custom_model_restores_from_model_config(tmp_path):
  src_params = _our_params(model_lib.BertForMaskedLM(OUR_SMALL), seed=14)
  src = hf.export_params(src_params, OUR_SMALL, tmp_path / "hf_in")
  ckpt = hf_cli.import_to_checkpoint(src, tmp_path / "ckpt")
  assert json.loads((ckpt / "config.json").read_text())["model_signature"]["size"] == "custom"
  cfg, params, info = hf_cli.restore_params(ckpt / "checkpoints" / "0")
  assert cfg == OUR_SMALL and info["step"] == 0
  jax.tree.map(np.testing.assert_array_equal, params, src_params)
  with pytest.raises(hf.HFExportError, match=r"no step 7; saved steps are \[0\]"):
    hf_cli.restore_params(ckpt, step=7)


@needs_torch
def test_fewshot_binary_evaluates_an_hf_directory(tmp_path, data_dir):
  """--init_from_hf: DNABERT-style weights go straight into the few-shot binary."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  hf_dir = _save_hf(_hf_mlm(seed=3), tmp_path / "hf")
  out = tmp_path / "out"
  r = subprocess.run(
      [sys.executable, "-m", "genemask_jax.fewshot", f"--init_from_hf={hf_dir}",
       "--tasks=splice_40", "--shots=10", "--seeds=1", "--epochs=1",
       "--max_test_examples=32", f"--data_dir={data_dir}", f"--output_dir={out}",
       "--noprogress"],
      capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  csv_text = (out / "results.csv").read_text()
  assert "\nhf,splice_40,10,0," in csv_text


# ------------------------------------------------------------------- numpy reference BERT
# HF's BERT written out in float64 numpy from a state dict in torch's layout (a Linear's
# weight is (out, in): y = x W^T + b). It needs neither torch nor our model code, so the
# import and export conventions (e.g. whether the Q/K/V kernels are transposed, which a
# round trip cannot see) are checked on every install, not only with the `hf` extra.


def _np_linear(sd, name, x):
  return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def _np_layer_norm(sd, name, x, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * sd[name + ".weight"] + sd[name + ".bias"]


def _np_gelu(x):
  from scipy import special  # pylint: disable=g-import-not-at-top
  return 0.5 * x * (1.0 + special.erf(x / np.sqrt(2.0)))


def _numpy_bert(state: dict, config: dict, ids: np.ndarray) -> np.ndarray:
  """Logits of HF ``BertForMaskedLM`` (or, with a ``classifier``, of
  ``BertForSequenceClassification``) for ids (B, L), attention mask ids != [PAD]."""
  sd = {k: np.asarray(v, np.float64) for k, v in state.items()}
  e, n = config["hidden_size"], config["num_attention_heads"]
  d, eps = e // n, config["layer_norm_eps"]
  b, length = ids.shape
  x = (sd["bert.embeddings.word_embeddings.weight"][ids]
       + sd["bert.embeddings.position_embeddings.weight"][:length]
       + sd["bert.embeddings.token_type_embeddings.weight"][0])
  x = _np_layer_norm(sd, "bert.embeddings.LayerNorm", x, eps)
  key_bias = np.where(ids != tokenizer.PAD_ID, 0.0, -1e30)[:, None, None, :]  # (B, 1, 1, L)

  def heads(t):  # (B, L, E) -> (B, N, L, D)
    return t.reshape(b, length, n, d).transpose(0, 2, 1, 3)

  for i in range(config["num_hidden_layers"]):
    p = f"bert.encoder.layer.{i}."
    q, k, v = (heads(_np_linear(sd, p + "attention.self." + w, x))
               for w in ("query", "key", "value"))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + key_bias
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, length, e)
    x = _np_layer_norm(sd, p + "attention.output.LayerNorm",
                       _np_linear(sd, p + "attention.output.dense", ctx) + x, eps)
    h = _np_gelu(_np_linear(sd, p + "intermediate.dense", x))
    x = _np_layer_norm(sd, p + "output.LayerNorm", _np_linear(sd, p + "output.dense", h) + x,
                       eps)
  if "classifier.weight" in sd:
    pooled = np.tanh(_np_linear(sd, "bert.pooler.dense", x[:, 0]))
    return _np_linear(sd, "classifier", pooled)
  h = _np_gelu(_np_linear(sd, "cls.predictions.transform.dense", x))
  h = _np_layer_norm(sd, "cls.predictions.transform.LayerNorm", h, eps)
  return h @ sd["bert.embeddings.word_embeddings.weight"].T + sd["cls.predictions.bias"]


@pytest.mark.parametrize("num_labels", [None, 3])
def test_import_logits_equal_a_numpy_bert(tmp_path, num_labels):
  # An HF directory of fresh random tensors (only the names and shapes come from our
  # exporter), read by the importer, must give the numpy model's logits.
  module = (model_lib.BertForMaskedLM(OUR_SMALL) if num_labels is None else
            model_lib.BertForSequenceClassification(OUR_SMALL, num_labels=num_labels))
  template = hf.params_to_state_dict(_our_params(module, seed=0), OUR_SMALL)
  rng = np.random.default_rng(20)
  state = {k: ((1.0 if "LayerNorm.weight" in k else 0.0)
               + rng.normal(0, 0.2, v.shape)).astype(np.float32) for k, v in template.items()}
  d = _write_hf_dir(tmp_path / "hf", state, OUR_SMALL)
  config = json.loads((d / "config.json").read_text())
  ckpt = hf.load_hf_checkpoint(d)
  params = hf.mlm_params(ckpt) if num_labels is None else hf.classification_params(ckpt)
  ids = _ids(seed=21)
  ours = _apply(module, params, ids)
  np.testing.assert_allclose(ours, _numpy_bert(state, config, ids), atol=TOL, rtol=1e-5)


@pytest.mark.parametrize("num_labels", [None, 3])
def test_export_logits_equal_a_numpy_bert(tmp_path, num_labels):
  # A LayerNorm epsilon far from flax's default (1e-6): every LayerNorm must use the
  # config's, and the exported config.json must carry it.
  cfg = dataclasses.replace(OUR_SMALL, layer_norm_eps=0.1)
  module = (model_lib.BertForMaskedLM(cfg) if num_labels is None else
            model_lib.BertForSequenceClassification(cfg, num_labels=num_labels))
  params = _our_params(module, seed=22)
  out = hf.export_params(params, cfg, tmp_path / "export")
  state = hf.read_safetensors(out / hf.SAFETENSORS_NAME)
  config = json.loads((out / "config.json").read_text())
  ids = _ids(seed=23)
  np.testing.assert_allclose(_numpy_bert(state, config, ids), _apply(module, params, ids),
                             atol=TOL, rtol=1e-5)


# ------------------------------------------------------- fine-tuned model export (#18)
@pytest.fixture(scope="module")
def saved_classifier(tmp_path_factory):
  """A fine-tuned-model dir (as --save_model writes it) with random 3-class params, and
  its export by the command."""
  from genemask_jax.finetune import saved  # pylint: disable=g-import-not-at-top
  tmp = tmp_path_factory.mktemp("saved")
  params = _our_params(model_lib.BertForSequenceClassification(OUR_SMALL, num_labels=3),
                       seed=21)
  model_dir = saved.save_model(tmp / "model", OUR_SMALL, params, task_type="classification",
                               label_values=["neg", "weak", "strong"], max_len=64, k=6)
  out = tmp / "hf"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  r = subprocess.run([sys.executable, "-m", "genemask_jax.hf", "export",
                      f"--checkpoint={model_dir}", f"--output={out}"], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=300, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "BertForSequenceClassification" in r.stdout
  # A second export into the now non-empty directory is refused, in one line.
  r = subprocess.run([sys.executable, "-m", "genemask_jax.hf", "export",
                      f"--checkpoint={model_dir}", f"--output={out}", "--step=3"], cwd=REPO,
                     env=env, capture_output=True, text=True, timeout=300, check=False)
  assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr[-2000:]
  assert "--step and --fewshot_results apply to pretraining checkpoints only" in r.stderr
  return model_dir, out, params


def test_export_command_writes_a_saved_classifier_as_hf_files(saved_classifier):
  """No torch needed: config.json and the tensors, checked against the saved params."""
  _, out, params = saved_classifier
  config = json.loads((out / "config.json").read_text())
  assert config["architectures"] == ["BertForSequenceClassification"]
  assert config["num_labels"] == 3 and config["problem_type"] == "single_label_classification"
  assert config["id2label"] == {"0": "neg", "1": "weak", "2": "strong"}
  assert config["label2id"] == {"neg": 0, "weak": 1, "strong": 2}
  tensors = hf.read_safetensors(out / "model.safetensors")
  np.testing.assert_array_equal(tensors["classifier.weight"],
                                np.asarray(params["classifier"]["kernel"]).T)
  np.testing.assert_array_equal(tensors["bert.pooler.dense.bias"],
                                np.asarray(params["bert"]["pooler"]["dense"]["bias"]))
  assert not any(k.startswith("cls.") for k in tensors)  # No MLM head in a classifier.
  assert (out / "vocab.txt").read_text().count("\n") == 4101


@needs_torch
def test_exported_classifier_gives_the_saved_models_probabilities(saved_classifier):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from genemask_jax.finetune import saved  # pylint: disable=g-import-not-at-top
  model_dir, out, _ = saved_classifier
  hf_model = transformers.BertForSequenceClassification.from_pretrained(out).eval()
  model = saved.load_saved_model(model_dir)
  ids = _ids(rows=4, length=64, seed=3)
  with torch.no_grad():
    logits = hf_model(input_ids=torch.tensor(ids, dtype=torch.long),
                      attention_mask=torch.tensor(ids != 0, dtype=torch.long)).logits
  np.testing.assert_allclose(torch.softmax(logits, -1).numpy(), saved.predict_ids(model, ids),
                             atol=TOL)
