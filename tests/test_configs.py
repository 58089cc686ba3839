"""Every shipped config and preset loads, validates and builds its model abstractly."""
import importlib.util
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from genemask_jax import model as model_lib
from genemask_jax import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
PRESETS = ["default", "test", "logo", "dnabert_base", "paper", "large", "paper,dnabert",
           "test,bert", "test,position", "test,authors_npmi"]


def _load(arg):
  spec = importlib.util.spec_from_file_location("pretrain_cfg", ROOT / "configs" / "pretrain.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def test_every_config_file_is_covered():
  assert sorted(p.name for p in (ROOT / "configs").glob("*.py")) == ["pretrain.py"]


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_loads_and_builds_model_abstractly(preset):
  config = _load(preset)
  train.validate_config(config)
  cfg = train.model_config_of(config)
  model = model_lib.BertForMaskedLM(cfg)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, config.data.max_len), jnp.int32))
  n = sum(x.size for x in jax.tree.leaves(shapes))
  assert n == model_lib.param_count_formula(cfg)


@pytest.mark.parametrize("preset", ["default", "dnabert_base", "paper", "large"])
def test_dtype_auto_by_default_and_a_bad_dtype_names_the_key(preset, monkeypatch):
  config = _load(preset)
  assert config.model.dtype == "auto"  # bfloat16 on GPU/TPU without a flag.
  assert train.model_config_of(config).dtype == "float32"  # The tests run on CPU.
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert train.model_config_of(config).dtype == "bfloat16"
  config.model.dtype = "float32"
  assert train.model_config_of(config).dtype == "float32"
  config.model.dtype = "fp8"
  with pytest.raises(train.UserError, match="config.model.dtype='fp8'; expected 'auto'"):
    train.model_config_of(config)


def test_paper_preset_is_script_a():
  c = _load("paper")
  assert (c.model.size, c.train.batch_size, c.train.num_steps) == ("dnabert_base", 250, 10_000)
  assert (c.optim.peak_lr, c.optim.warmup_steps, c.optim.b2, c.optim.eps) == (8e-4, 500, 0.98, 1e-6)
  assert (c.optim.weight_decay, c.optim.clip_norm, c.data.max_len) == (0.01, 1.0, 512)
  assert c.masking.strategy == "genemask" and c.masking.p is None  # 0.0176 by default.


def test_unknown_preset_names_the_known_ones():
  with pytest.raises(ValueError, match="unknown preset 'tiyn'.*known: default, test"):
    _load("tiyn")


def test_every_preset_overrides_existing_keys_only():
  spec = importlib.util.spec_from_file_location("pretrain_cfg", ROOT / "configs" / "pretrain.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  base = mod.get_config("default")
  for name, overrides in mod.PRESETS.items():
    c = mod.get_config(name)
    for key, value in overrides.items():
      section, field = key.split(".")
      assert field in base[section], f"preset {name!r}: {key} is not a config key"
      assert c[section][field] == value, (name, key)
  assert mod.get_config("paper,dnabert").masking.strategy == "dnabert"  # Later ones win.
  assert mod.get_config("dnabert,paper").masking.strategy == "dnabert"  # paper keeps it.
  assert mod.get_config("").preset == "default"


def test_misspelt_override_fails_naming_closest_key(tmp_path):
  r = subprocess.run(
      [sys.executable, str(ROOT / "main.py"), "--config=configs/pretrain.py:test",
       f"--workdir={tmp_path / 'w'}", "--config.train.batchsize=4"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2
  assert 'Did you mean "batch_size"' in r.stderr
  assert "Traceback" not in r.stderr
  assert not (tmp_path / "w").exists()
