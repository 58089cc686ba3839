"""Few-shot evaluation: learning a motif, checkpoint loading, clear early errors, the binary.

The checkpoint here is written exactly as the pretraining binary writes one: a tiny
`BertForMaskedLM`, `TrainState` saved with an orbax `CheckpointManager` as
``Composite(state=StandardSave, data=JsonSave)`` under WORKDIR/checkpoints/STEP, and
WORKDIR/config.json with the model signature.
"""

import csv
import json
import pathlib
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl import flags
import test_support  # tests/ is on sys.path (rootdir-relative test modules).

from genemask_jax import checkpoints
from genemask_jax import fewshot
from genemask_jax import fewshot_lib
from genemask_jax import finetune
from genemask_jax import model as model_lib
from genemask_jax import report
from genemask_jax import tokenizer
from genemask_jax.data import tasks
from genemask_jax.finetune import hparam_flags

REPO = pathlib.Path(__file__).resolve().parents[1]
# A small model for the learning tests (tiny's shape, narrower), so they stay fast on CPU.
MICRO = dict(num_layers=1, hidden_size=64, num_heads=4, mlp_dim=128)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A real pretraining workdir with a tiny checkpoint at step 7."""
  wd = tmp_path_factory.mktemp("pretrain")
  return wd, test_support.save_tiny_workdir(wd)


def _motif_data(n, rng, motif="GATTACA", length=40):
  """Label 1 iff ``motif`` occurs in a random sequence (half the rows)."""
  seqs, labels = [], []
  while len(seqs) < n:
    s = "".join(rng.choice(list("ACGT"), length))
    if motif in s:
      continue
    y = len(seqs) % 2
    if y:
      p = int(rng.integers(0, length - len(motif) + 1))
      s = s[:p] + motif + s[p + len(motif):]
    seqs.append(s)
    labels.append(y)
  return tokenizer.pack([tokenizer.encode(s) for s in seqs], length - 3), np.array(labels,
                                                                                 np.int32)


def test_finetune_learns_a_motif_for_every_seed():
  rng = np.random.default_rng(0)
  train, test = _motif_data(200, rng), _motif_data(200, rng)
  cfg = model_lib.model_config("tiny", **MICRO)
  hp = finetune.Hparams(batch_size=20, learning_rate=2e-3, epochs=12, max_len=37, dropout=0.0)
  res = finetune.finetune(cfg, None, train, test, 2, hp, [0, 1], progress=False)
  assert res.probs.shape == (2, 200, 2)
  for m in res.metrics:
    assert m["accuracy"] >= 0.9, res.metrics
  # The reported metrics are those of the returned probabilities.
  assert res.metrics[1] == finetune.classification_metrics(test[1], res.probs[1])


def test_vmapped_seeds_equal_seeds_one_at_a_time():
  rng = np.random.default_rng(1)
  train, test = _motif_data(24, rng), _motif_data(16, rng)
  cfg = model_lib.model_config("tiny", **MICRO)
  hp = finetune.Hparams(batch_size=5, learning_rate=1e-3, epochs=1, max_len=37)
  together = finetune.finetune(cfg, None, train, test, 2, hp, [0, 1], seeds_in_parallel=2,
                               progress=False)
  alone = finetune.finetune(cfg, None, train, test, 2, hp, [0, 1], seeds_in_parallel=1,
                            progress=False)
  np.testing.assert_allclose(together.probs, alone.probs, rtol=1e-4, atol=1e-5)
  assert together.steps == 5  # ceil(24 / 5): the partial last batch is a step.


def test_script_b_defaults_and_overrides():
  assert finetune.resolve_hparams(10, 67) == finetune.Hparams(5, 1e-4, 20, max_len=67)
  assert finetune.resolve_hparams(100, 67).batch_size == 5
  hp = finetune.resolve_hparams(500, 37, epochs=2, learning_rate=None)
  assert (hp.batch_size, hp.learning_rate, hp.epochs, hp.max_len) == (15, 5e-5, 2, 37)
  assert (hp.warmup_frac, hp.weight_decay, hp.dropout, hp.clip_norm) == (0.1, 0.01, 0.1, 1.0)
  assert finetune.num_train_steps(1000, hp) == (2 * 67, 13)


def test_override_flags_are_unset_by_default_and_read_back_by_name():
  fv = flags.FlagValues()
  defaults = {n: f"d-{n}" for n in hparam_flags.NAMES}
  hparam_flags.define(defaults, flag_values=fv)
  fv(["prog", "--epochs=3", "--learning_rate=0.5", "--max_len=40"])
  assert hparam_flags.overrides(fv) == {
      "batch_size": None, "learning_rate": 0.5, "epochs": 3, "warmup_frac": None,
      "weight_decay": None, "dropout": None, "max_len": 40}
  # Every name is a hyper-parameter that resolve_hparams takes.
  hp = finetune.resolve_hparams(10, 37, **hparam_flags.overrides(fv))
  assert (hp.epochs, hp.learning_rate, hp.max_len) == (3, 0.5, 40)
  assert "(default d-warmup_frac)" in fv["warmup_frac"].help
  with pytest.raises(ValueError, match=r"missing \['max_len'\], unknown \['max_length'\]"):
    hparam_flags.define({**{n: "x" for n in hparam_flags.NAMES[:-1]}, "max_length": "x"},
                        flag_values=flags.FlagValues())


def test_load_pretrained_restores_the_saved_params(workdir):
  wd, params = workdir
  for path in (wd, wd / "checkpoints", wd / "checkpoints" / "7", wd / "7"):
    assert checkpoints.resolve_checkpoint(path) == (wd, wd / "checkpoints" / "7")
  cfg, enc, info = checkpoints.load_encoder(str(wd / "7"), model_size="tiny", vocab_size=4101)
  assert info["step"] == 7 and cfg.hidden_size == 256
  assert set(enc) == {"embeddings", "encoder"}
  jax.tree.map(np.testing.assert_array_equal, enc, params["bert"])
  # The classifier built on it starts from exactly these encoder weights.
  clf = model_lib.BertForSequenceClassification(cfg, num_labels=3)
  p = finetune.init_classifier_params(clf, jax.random.key(0), enc, 37)
  np.testing.assert_array_equal(p["bert"]["encoder"]["layer_1"]["output_dense"]["kernel"],
                                params["bert"]["encoder"]["layer_1"]["output_dense"]["kernel"])
  assert p["classifier"]["kernel"].shape == (256, 3) and "pooler" in p["bert"]


def test_checkpoint_errors_are_clear(workdir, tmp_path):
  wd, _ = workdir
  with pytest.raises(checkpoints.CheckpointError, match="does not exist"):
    checkpoints.load_encoder(str(tmp_path / "nope"))
  with pytest.raises(checkpoints.CheckpointError, match="no checkpoint found"):
    checkpoints.load_encoder(str(tmp_path))
  with pytest.raises(checkpoints.CheckpointError, match="step 9.*steps found: \\[7\\]"):
    checkpoints.resolve_checkpoint(wd / "checkpoints" / "9")
  with pytest.raises(checkpoints.CheckpointError, match="step 9.*steps found: \\[7\\]"):
    checkpoints.resolve_checkpoint(wd / "9")
  with pytest.raises(checkpoints.CheckpointError, match="--model_size=logo"):
    checkpoints.load_encoder(str(wd), model_size="logo")
  # A checkpoint whose config says another vocabulary (k = 5) than the tasks need.
  other = tmp_path / "k5"
  shutil.copytree(wd, other)
  sig = json.loads((wd / "config.json").read_text())
  sig["model_signature"]["vocab_size"] = 1029
  (other / "config.json").write_text(json.dumps(sig))
  with pytest.raises(checkpoints.CheckpointError, match="vocabulary of 1029.*need 4101"):
    checkpoints.load_encoder(str(other), vocab_size=4101)
  # config.json and stored arrays that disagree (another size's config next to it).
  sig["model_signature"].update(vocab_size=4101, hidden_size=128, num_heads=4)
  (other / "config.json").write_text(json.dumps(sig))
  with pytest.raises(checkpoints.CheckpointError, match="stored shapes differ"):
    checkpoints.load_encoder(str(other))
  (other / "config.json").write_text("{not json")
  with pytest.raises(checkpoints.CheckpointError, match="config.json: not valid JSON"):
    checkpoints.load_encoder(str(other))
  (other / "config.json").unlink()
  with pytest.raises(checkpoints.CheckpointError, match="config.json: missing"):
    checkpoints.load_encoder(str(other))


def _rc(tmp_path, data_dir, **kw):
  base = dict(models=(("random", "random"),), model_size="tiny", tasks=("prom_core",),
              shots=(10,), seeds=(0,), resample=False, data_dir=str(data_dir), mode="finetune",
              output_dir=str(tmp_path / "out"), overrides={}, max_test_examples=8,
              progress=False)
  base.update(kw)
  return fewshot_lib.RunConfig(**base)


def test_bad_requests_fail_before_training(tmp_path, data_dir, workdir):
  wd, _ = workdir
  out = tmp_path / "out"
  with pytest.raises(tasks.FewShotDataError, match="cohn_enh has no 1000-shot set; shots: "
                     "10, 50, 100, 500"):
    fewshot_lib.run(_rc(tmp_path, data_dir, tasks=("prom_core", "cohn_enh"), shots=(10, 1000)))
  with pytest.raises(tasks.FewShotDataError, match="unknown few-shot task 'prom_500'"):
    fewshot_lib.run(_rc(tmp_path, data_dir, tasks=("prom_500",)))
  with pytest.raises(checkpoints.CheckpointError, match="does not exist"):
    fewshot_lib.run(_rc(tmp_path, data_dir, models=(("a", str(tmp_path / "missing")),)))
  with pytest.raises(checkpoints.CheckpointError, match="--model_size=dnabert_base"):
    fewshot_lib.run(_rc(tmp_path, data_dir, models=(("a", str(wd)),), model_size="dnabert_base"))
  with pytest.raises(fewshot.FewShotError, match="learning_rate must be > 0"):
    fewshot_lib.run(_rc(tmp_path, data_dir, overrides={"learning_rate": -1.0}))
  assert not out.exists()  # Nothing was trained or written.
  with pytest.raises(fewshot.FewShotError, match="NAME=PATH"):
    fewshot.parse_models(["a=", "b=x"], "pretrained")
  assert fewshot.parse_models(["g=/w/a", "b=random"], "pretrained") == (
      ("g", "/w/a"), ("b", "random"))
  assert fewshot.parse_models(["/w/run1/checkpoints/200"], "pretrained") == (
      ("run1@200", "/w/run1/checkpoints/200"),)


def test_test_set_is_deduplicated_against_the_train_set(tmp_path, data_dir):
  rc = _rc(tmp_path, data_dir, tasks=("splice_40",), shots=(500,), max_test_examples=None)
  (job,) = fewshot_lib.prepare_jobs(rc)
  assert job.removed_overlaps == 8  # The data README's count for Splice-40 500-shot.
  train_rows = {r.tobytes() for r in job.train[0][0]}
  assert not any(r.tobytes() in train_rows for r in job.test[0])
  assert len(job.test[0]) == job.n_test_full == 3000 - 8
  # --resample: a new draw per seed, same size per class, test disjoint from every draw.
  rc = _rc(tmp_path, data_dir, tasks=("splice_40",), shots=(10,), seeds=(0, 1),
           resample=True, max_test_examples=None)
  (job,) = fewshot_lib.prepare_jobs(rc)
  (a_ids, a_y), (b_ids, b_y) = job.train
  assert np.bincount(a_y).tolist() == np.bincount(b_y).tolist() == [100, 100, 100]
  assert {r.tobytes() for r in a_ids} != {r.tobytes() for r in b_ids}
  drawn = {r.tobytes() for r in np.concatenate([a_ids, b_ids])}
  assert not any(r.tobytes() in drawn for r in job.test[0])


def test_binary_end_to_end_on_a_checkpoint(tmp_path, data_dir, workdir):
  wd, _ = workdir
  out = tmp_path / "out"
  argv = ["fewshot", f"--checkpoint=genemask={wd}", "--tasks=prom_core,splice_40",
          "--shots=10", "--seeds=1", "--epochs=1", "--max_test_examples=16",
          f"--data_dir={data_dir}", f"--output_dir={out}", "--noprogress"]
  fewshot.flags.FLAGS(argv)
  try:
    fewshot.main(["fewshot"])
  finally:
    fewshot.flags.FLAGS.unparse_flags()
  with open(out / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert {(r["model"], r["task"], r["shot"], r["seed"]) for r in rows} == {
      ("genemask", "prom_core", "10", "0"), ("genemask", "splice_40", "10", "0")}
  assert {r["metric"] for r in rows} == set(finetune.METRICS)
  for r in rows:
    assert r["n_test"] == "16", r
    low = -1.0 if r["metric"] == "mcc" else 0.0  # MCC lies in [-1, 1], the others in [0, 1].
    assert low <= float(r["value"]) <= 1.0, r
  assert {r["n_train"] for r in rows if r["task"] == "splice_40"} == {"300"}
  md = (out / "results.md").read_text()
  assert "| genemask | Prom-core | 10 |" in md and "| genemask | Splice-40 | 10 |" in md
  assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  run = json.loads((out / "run.json").read_text())
  assert run["jobs"][0]["hparams"]["epochs"] == 1 and run["jobs"][0]["hparams"]["batch_size"] == 5


def test_cli_reports_a_bad_task_in_one_line(tmp_path, data_dir):
  proc = subprocess.run(
      [sys.executable, "-m", "genemask_jax.fewshot", "--init=random", "--tasks=enhancers",
       f"--data_dir={data_dir}", f"--output_dir={tmp_path / 'o'}"],
      capture_output=True, text=True, cwd=REPO, timeout=120)
  assert proc.returncode == 2
  assert "fewshot: error: unknown few-shot task 'enhancers'; known tasks: prom_core" in (
      proc.stderr)
  assert "Traceback" not in proc.stderr


def test_linear_probe_separates_a_motif_and_runs_as_an_in_training_probe():
  rng = np.random.default_rng(2)
  train, test = _motif_data(100, rng), _motif_data(100, rng)
  cfg = model_lib.model_config("tiny", **MICRO)
  params = nn.unbox(model_lib.BertForMaskedLM(cfg).init(
      jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  probe = finetune.make_in_training_probe(
      cfg, [finetune.ProbeTask("motif", train, test, 2)], metrics=("accuracy", "mcc"))
  out = probe(params)
  assert set(out) == {"fewshot/motif/accuracy", "fewshot/motif/mcc"}
  # Features of a random encoder already carry the motif's k-mers: well above chance.
  assert out["fewshot/motif/accuracy"] >= 0.7


def test_partial_batch_loss_and_update_equal_the_unpadded_batch():
  # finetune() pads the last batch of an epoch with copies of row 0 at weight 0: the loss
  # and the gradient must be those of the real rows alone.
  cfg = finetune.classifier_config(model_lib.model_config("tiny", **MICRO), 0.0)
  model = model_lib.BertForSequenceClassification(cfg, num_labels=2)
  params = finetune.init_classifier_params(model, jax.random.key(0), None, 37)
  # An "optimizer" whose state after one update is exactly the gradient it was given.
  record = optax.GradientTransformation(
      init=lambda p: jax.tree.map(jnp.zeros_like, p),
      update=lambda g, state, p=None: (jax.tree.map(jnp.zeros_like, g), g))
  step = finetune.make_train_step(model, record)
  ids, labels = _motif_data(3, np.random.default_rng(4))
  keys = jnp.stack([jax.random.key(1)])

  def run(ids, labels, weights):
    p = finetune.stack_trees([params])
    _, grads, loss = step(p, jax.vmap(record.init)(p), ids[None], labels[None],
                          weights[None], keys, np.int32(0))
    return float(loss[0]), grads

  padded = (np.concatenate([ids, ids[[0, 0]]]), np.concatenate([labels, labels[[0, 0]]]),
            np.array([1, 1, 1, 0, 0], np.float32))
  loss_padded, grads_padded = run(*padded)
  loss_real, grads_real = run(ids, labels, np.ones(3, np.float32))
  np.testing.assert_allclose(loss_padded, loss_real, rtol=1e-5)
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads_real))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * scale),
               grads_padded, grads_real)


def test_report_summaries_are_mean_and_sample_std():
  """fewshot and benchmarks/study.py share report.summarize: ddof=1, 0 for one seed."""
  rows = [{"model": "m", "task": "t", "shot": 10, "metric": "mcc", "value": v}
          for v in (0.1, 0.3, 0.8)]
  ((mean, std, n),) = report.summarize(rows).values()
  assert (mean, n) == (pytest.approx(0.4), 3)
  assert std == pytest.approx(np.std([0.1, 0.3, 0.8], ddof=1))
  by_cell = report.summarize([dict(rows[0], arm="a", mode="finetune")],
                             keys=("arm", "mode", "task", "shot", "metric"))
  assert by_cell == {("a", "finetune", "t", 10, "mcc"): (0.1, 0.0, 1)}
