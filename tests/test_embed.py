"""Embeddings: pooling checked by hand against the model, long sequences through windows,
the binary end to end on a FASTA and a CSV, and bad input as one line before work."""
import gzip
import json
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genemask_jax import embed
from genemask_jax import model as model_lib
from genemask_jax import tokenizer
from genemask_jax import windows

# A micro model: 34 positions = windows of 32 k-mers, so a 120-base sequence has several.
SIGNATURE = {"size": "tiny", "vocab_size": 4101, "hidden_size": 32, "num_layers": 2,
             "num_heads": 4, "mlp_dim": 64, "max_len": 34}
CFG = model_lib.model_config("tiny", **{k: v for k, v in SIGNATURE.items() if k != "size"})
REPO = pathlib.Path(__file__).resolve().parents[1]


def _init_params():
  return nn.unbox(jax.jit(model_lib.BertForMaskedLM(CFG).init)(
      jax.random.key(5), jnp.zeros((1, 8), jnp.int32))["params"])


def _save_workdir(wd: pathlib.Path, params) -> None:
  """A pretraining workdir as main.py leaves it, for the micro model."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from genemask_jax import optim  # pylint: disable=g-import-not-at-top
  from genemask_jax import train_step  # pylint: disable=g-import-not-at-top
  state = train_step.init_train_state(params, optim.make_optimizer(1e-3))
  manager = ocp.CheckpointManager(wd / "checkpoints")
  manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          data=ocp.args.JsonSave({"position": 0})))
  manager.wait_until_finished()
  (wd / "config.json").write_text(json.dumps({
      "config": {"model": {"size": "tiny", "dtype": "float32"}},
      "model_signature": SIGNATURE}))


@pytest.fixture(scope="module")
def params():
  return _init_params()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, params):
  wd = tmp_path_factory.mktemp("embed_wd")
  _save_workdir(wd, params)
  return wd


def _random_bases(rng, n):
  return "".join(rng.choice(list("ACGT"), n))


def _hidden(params, bases, layer=2):
  """Hidden states (L, E) of one short sequence, straight from the model."""
  ids = tokenizer.pack([tokenizer.encode(bases)], len(bases) - 6 + 3)
  cfg = CFG
  if layer == 0:
    return np.asarray(model_lib.BertEmbeddings(cfg).apply(
        {"params": params["bert"]["embeddings"]}, ids, None, True))[0]
  if layer < cfg.num_layers:
    cfg_n, p = model_lib.first_layers(cfg, params["bert"], layer)
    return np.asarray(model_lib.BertModel(cfg_n).apply({"params": p}, ids))[0]
  return np.asarray(model_lib.BertForMaskedLM(cfg).apply(
      {"params": params}, ids, method=model_lib.BertForMaskedLM.encode))[0]


def test_pooling_over_kmer_positions_by_hand(params):
  rng = np.random.default_rng(0)
  bases = _random_bases(rng, 20)  # 15 k-mers: one window, [CLS] 15 k-mers [SEP]
  h = _hidden(params, bases)
  assert h.shape == (17, 32)
  got = {p: embed.embed(params, CFG, [bases], pooling=p)[0] for p in embed.POOLINGS}
  np.testing.assert_allclose(got["mean"], h[1:16].mean(0), atol=1e-5)  # specials excluded
  np.testing.assert_allclose(got["max"], h[1:16].max(0), atol=1e-5)
  np.testing.assert_allclose(got["cls"], h[0], atol=1e-5)
  assert not np.allclose(got["mean"], h.mean(0), atol=1e-3)  # [CLS]/[SEP] would change it


@pytest.mark.parametrize("layer, hidden_layer", [(0, 0), (1, 1), (-2, 1), (2, 2), (-1, 2)])
def test_layer_selects_that_layers_hidden_states(params, layer, hidden_layer):
  bases = _random_bases(np.random.default_rng(1), 25)
  h = _hidden(params, bases, hidden_layer)
  np.testing.assert_allclose(embed.embed(params, CFG, [bases], layer=layer)[0],
                             h[1:-1].mean(0), atol=1e-5)


def test_a_long_sequence_is_the_mean_of_its_windows_by_hand(params):
  rng = np.random.default_rng(2)
  bases = _random_bases(rng, 120)  # 115 k-mers, windows of 32 overlapping by 16
  plan = windows.plan_windows(115, 32)
  assert plan == [(0, 32), (16, 48), (32, 64), (48, 80), (64, 96), (80, 112), (83, 115)]
  # Each window on its own: k-mers [s, e) are bases [s, e + 5).
  per_window = [embed.embed(params, CFG, [bases[s:e + 5]])[0] for s, e in plan]
  vectors, counts = embed.embed_windows(params, CFG, [bases])
  assert counts.tolist() == [7]
  np.testing.assert_allclose(vectors[0], np.mean(per_window, 0), atol=1e-5)
  per_window_max = [embed.embed(params, CFG, [bases[s:e + 5]], pooling="max")[0]
                    for s, e in plan]
  np.testing.assert_allclose(embed.embed(params, CFG, [bases], pooling="max")[0],
                             np.max(per_window_max, 0), atol=1e-5)
  # --max_windows=3 keeps windows 0, 3 and 6 (evenly spaced).
  vectors, counts = embed.embed_windows(params, CFG, [bases], max_windows=3)
  assert counts.tolist() == [3]
  np.testing.assert_allclose(vectors[0], np.mean([per_window[i] for i in (0, 3, 6)], 0),
                             atol=1e-5)


def test_rows_do_not_depend_on_batching_or_neighbours(params):
  rng = np.random.default_rng(3)
  seqs = [_random_bases(rng, n) for n in (7, 40, 100, 30, 12)]
  together = embed.embed(params, CFG, seqs, batch_size=3)
  alone = np.stack([embed.embed(params, CFG, [s], batch_size=1)[0] for s in seqs])
  np.testing.assert_allclose(together, alone, atol=1e-5)
  assert together.dtype == np.float32 and together.shape == (5, 32)


def test_library_rejects_a_layer_the_model_does_not_have(params):
  with pytest.raises(embed.EmbedError, match=r"--layer=3: the model has 2 encoder layers; "
                     r"expected -3..2"):
    embed.embed(params, CFG, ["ACGTACGT"], layer=3)
  with pytest.raises(embed.EmbedError, match="--layer=-4"):
    embed.embed(params, CFG, ["ACGTACGT"], layer=-4)


def _run_embed(*args):
  return subprocess.run([sys.executable, "-m", "genemask_jax.embed", *args],
                        capture_output=True, text=True, cwd=REPO, timeout=300)


def test_binary_embeds_a_fasta_and_a_csv(tmp_path, workdir, params):
  rng = np.random.default_rng(4)
  seqs = {"short one": _random_bases(rng, 20), "long": _random_bases(rng, 120),
          "with_n": _random_bases(rng, 15) + "NNNN" + _random_bases(rng, 15).lower()}
  fa = tmp_path / "in.fa.gz"
  with gzip.open(fa, "wt") as f:
    for name, s in seqs.items():
      f.write(f">{name}\n{s[:50]}\n{s[50:]}\n")
  out = tmp_path / "out" / "emb.npy"
  proc = _run_embed(f"--checkpoint={workdir}", f"--input={fa}", f"--output={out}",
                    "--batch_size=4", "--noprogress")
  assert proc.returncode == 0, proc.stderr
  vectors = np.load(out)
  want = embed.embed(params, CFG, list(seqs.values()))
  np.testing.assert_allclose(vectors, want, atol=1e-5)
  index = (tmp_path / "out" / "emb.index.tsv").read_text().splitlines()
  assert index == ["row\tname\tlength\twindows", "0\tshort one\t20\t1", "1\tlong\t120\t7",
                   "2\twith_n\t34\t1"]

  csv_path = tmp_path / "in.csv"
  kmers = " ".join(seqs["short one"][i:i + 6] for i in range(15))  # DNABERT's k-mer text
  csv_path.write_text(f"sequence,label\n{seqs['long']},1\n{kmers},0\n")
  out = tmp_path / "csv.npy"
  proc = _run_embed(f"--checkpoint={workdir}/checkpoints/3", f"--input={csv_path}",
                    f"--output={out}", "--pooling=cls", "--layer=1", "--max_windows=2",
                    "--noprogress")
  assert proc.returncode == 0, proc.stderr
  want = embed.embed(params, CFG, [seqs["long"], seqs["short one"]], pooling="cls", layer=1,
                     max_windows=2)
  np.testing.assert_allclose(np.load(out), want, atol=1e-5)
  assert (tmp_path / "csv.index.tsv").read_text().splitlines()[1:] == [
      "0\tline2\t120\t2", "1\tline3\t20\t1"]


@pytest.mark.parametrize("case, match", [
    ("empty_fasta", "empty file"),
    ("csv_without_sequence", "no 'sequence' column (columns: seq, label)"),
    ("layer_out_of_range", "--layer=5: the model has 2 encoder layers"),
    ("not_a_checkpoint", "no checkpoint found"),
    ("short_sequence", "has 4 bases, fewer than the k=6"),
])
def test_bad_input_is_one_line_and_exit_2_before_work(tmp_path, workdir, case, match):
  fa = tmp_path / "ok.fa"
  fa.write_text(">a\nACGTACGTAC\n")
  args = {"checkpoint": str(workdir), "input": str(fa), "layer": "-1"}
  if case == "empty_fasta":
    (tmp_path / "empty.fa").write_text("")
    args["input"] = str(tmp_path / "empty.fa")
  elif case == "csv_without_sequence":
    (tmp_path / "x.csv").write_text("seq,label\nACGTACGT,1\n")
    args["input"] = str(tmp_path / "x.csv")
  elif case == "layer_out_of_range":
    args["layer"] = "5"
  elif case == "not_a_checkpoint":
    args["checkpoint"] = str(tmp_path)  # a directory holding a FASTA, not a workdir
  elif case == "short_sequence":
    fa.write_text(">a\nACGTACGTAC\n>tiny\nACGT\n")
  out = tmp_path / "emb.npy"
  proc = _run_embed(*(f"--{k}={v}" for k, v in args.items()), f"--output={out}")
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("embed: error: "), proc.stderr
  assert match in lines[0]
  assert not out.exists()
