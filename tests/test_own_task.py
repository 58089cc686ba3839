"""Own-task fine-tuning (GUE layout), saved models, predictions and their bad inputs.

The commands run end to end at toy size: a tiny random model, 40 bp sequences, a few
steps.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from genemask_jax import model as model_lib
from genemask_jax import predict as predict_lib
from genemask_jax import tokenizer
from genemask_jax.data import labelled
from genemask_jax.finetune import classifier
from genemask_jax.finetune import metrics
from genemask_jax.finetune import own_task
from genemask_jax.finetune import saved

REPO = pathlib.Path(__file__).resolve().parents[1]
MICRO = dict(num_layers=1, hidden_size=64, num_heads=4, mlp_dim=128)
MOTIFS = {1: "GATTACA", 2: "CCCGGG"}


def _rows(n: int, rng: np.random.Generator, classes=(0, 1, 2), regression=False):
  """Random 40 bp rows; class c > 0 carries MOTIFS[c]; regression: target = GC share."""
  out = []
  for i in range(n):
    s = "".join(rng.choice(list("ACGT"), 40))
    if regression:
      out.append((s, f"{(s.count('G') + s.count('C')) / 40:.4f}"))
      continue
    y = classes[i % len(classes)]
    if y in MOTIFS:
      s = s[:10] + MOTIFS[y] + s[10 + len(MOTIFS[y]):]
    out.append((s, str(y)))
  return out


def write_gue(root: pathlib.Path, task: str = "prom/toy", sizes=(96, 30, 30), **kwargs
              ) -> pathlib.Path:
  """A synthetic GUE-layout task folder root/task with train/dev/test.csv."""
  rng = np.random.default_rng(0)
  d = root / task
  d.mkdir(parents=True)
  for split, n in zip(labelled.SPLITS, sizes):
    with open(d / f"{split}.csv", "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["sequence", "label"])
      w.writerows(_rows(n, rng, **kwargs))
  return d


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        env=env, cwd=REPO, timeout=900, check=False)


# ------------------------------------------------------------------------------ reading
def test_gue_layout_is_read_with_classes_in_numeric_order(tmp_path):
  d = write_gue(tmp_path, classes=(10, 2, 0))
  ds = labelled.load_dataset(labelled.gue_task_dir(tmp_path, "prom/toy"), name="prom/toy")
  assert ds.label_values == ("0", "2", "10")  # Numeric, not text, order.
  assert ds.num_labels == 3 and ds.name == "prom/toy"
  with open(d / "train.csv") as f:
    first = next(iter(csv.DictReader(f)))
  assert ds.train.sequences[0] == first["sequence"]
  assert ds.label_values[ds.train.labels[0]] == first["label"]
  assert (len(ds.train), len(ds.dev), len(ds.test)) == (96, 30, 30)
  words = tmp_path / "words"
  words.mkdir()
  for split in labelled.SPLITS:
    (words / f"{split}.csv").write_text("id,label,sequence\n1,yes,ACGTACGT\n2,no,TTTTACGT\n")
  ds = labelled.load_dataset(words)
  assert ds.label_values == ("no", "yes") and list(ds.train.labels) == [1, 0]


def test_shipped_gue_prom_300_test_file_reads_as_a_gue_task(tmp_path, data_dir):
  """The shipped GUE prom_300_all test split, cut into train/dev/test, reads as GUE."""
  src = data_dir / "fewshot" / "Prom-300" / "gue_prom_300_all_test.csv"
  lines = src.read_text().splitlines()
  d = tmp_path / "prom" / "prom_300_all"
  d.mkdir(parents=True)
  for split, part in zip(labelled.SPLITS, (lines[1:201], lines[201:301], lines[301:401])):
    (d / f"{split}.csv").write_text("\n".join([lines[0]] + part) + "\n")
  ds = labelled.load_dataset(labelled.gue_task_dir(tmp_path, "prom/prom_300_all"))
  assert ds.label_values == ("0", "1")
  assert {len(s) for s in ds.test.sequences} == {300}
  data = own_task.encode_dataset(ds, model_max_len=512)
  assert data.max_len == 297 and data.windowed == 0  # 295 6-mers + [CLS] + [SEP].
  assert data.train.ids.shape == (200, 297)
  short = own_task.encode_dataset(ds, model_max_len=100)
  # 295 k-mers in windows of 98, 49 apart: 6 windows (the last moved back to the end).
  assert short.max_len == 100 and short.windowed == 400
  assert short.train.ids.shape == (1200, 100)


def test_regression_labels_are_floats(tmp_path):
  write_gue(tmp_path, regression=True)
  ds = labelled.load_dataset(tmp_path / "prom" / "toy", "regression")
  assert ds.label_values == () and ds.num_labels == 1
  assert ds.train.labels.dtype == np.float32
  s = ds.train.sequences[0]
  assert ds.train.labels[0] == pytest.approx((s.count("G") + s.count("C")) / 40, abs=1e-4)


@pytest.mark.parametrize("files, task_type, match", [
    ({"train.csv": "sequence,target\nACGTAC,1\n"}, "classification",
     r"train.csv:1: header .* has no label column; expected a CSV header holding "
     "sequence,label"),
    ({"train.csv": ""}, "classification", r"train.csv: empty file"),
    ({"dev.csv": "sequence,label\nACGTAC,high\n"}, "regression",
     r"dev.csv:2: label 'high' is not a finite number; --task_type=regression"),
    ({"test.csv": "sequence,label\nACGTAC,7\n"}, "classification",
     r"test.csv:2: label '7' does not occur in train.csv \(classes: 0, 1\)"),
    ({"train.csv": "sequence,label\nACGTAC,1\nACGTTT,1\n"}, "classification",
     r"every row has label '1'; a classifier needs at least two classes"),
    ({"dev.csv": None}, "classification", r"no dev.csv; expected train.csv, dev.csv"),
    ({"train.csv": "sequence,label\nACG-TAC,1\n"}, "classification",
     r"train.csv:2: sequence holds '-'; expected bases"),
])
def test_bad_datasets_are_one_clear_error(tmp_path, files, task_type, match):
  base = "sequence,label\nACGTACGT,0\nTTGACCAA,1\n"
  for split in labelled.SPLITS:
    (tmp_path / f"{split}.csv").write_text(base)
  for name, text in files.items():
    if text is None:
      (tmp_path / name).unlink()
    else:
      (tmp_path / name).write_text(text)
  with pytest.raises(labelled.DatasetError, match=match):
    labelled.load_dataset(tmp_path, task_type)


def test_prediction_inputs_fasta_gzip_and_csv(tmp_path):
  """The one reader of embed, predict and finetune: FASTA, CSV, gzip, spaced k-mers."""
  fa = tmp_path / "x.fa.gz"
  with gzip.open(fa, "wt") as f:
    f.write(">seq1 some description\nACGTAC\nGTAA\n>seq2\nttttgggccc\n")
  assert labelled.read_sequences(fa) == (["seq1 some description", "seq2"],
                                         ["ACGTACGTAA", "TTTTGGGCCC"])
  c = tmp_path / "x.csv"
  c.write_text("id,sequence\nr1,ACGTACGT\nr2,GGGGCCCC\n")
  assert labelled.read_sequences(c) == (["r1", "r2"], ["ACGTACGT", "GGGGCCCC"])
  gz = tmp_path / "k.csv.gz"
  with gzip.open(gz, "wt") as f:
    f.write("sequence,label\nACGTAC CGTACG GTACGG,1\n\nttgcaa,0\n")
  assert labelled.read_sequences(gz) == (["line2", "line4"], ["ACGTACGG", "TTGCAA"])
  noext = tmp_path / "records"
  noext.write_text("\n>a\nACGT\n")
  assert labelled.read_sequences(noext) == (["a"], ["ACGT"])


@pytest.mark.parametrize("name, text, match", [
    ("empty.fa", "", r"empty.fa: empty file"),
    ("empty.csv", "", r"empty.csv: empty file"),
    ("noseq.csv", "name,seq\nx,ACGT\n", r"noseq.csv:1: no 'sequence' column \(columns: "
     r"name, seq\)"),
    ("cell.csv", "name,sequence\nx,\n", r"cell.csv:2: empty 'sequence' cell"),
    ("gap.csv", "sequence\nAC-GT\n", r"gap.csv:2: sequence holds '-'; expected bases"),
    ("kmers.csv", "sequence\nACGTAC TTTTTT\n", r"kmers.csv:2: k-mers 1 \(ACGTAC\) and 2"),
    ("header.csv", "sequence,label\n", r"header.csv: no sequences"),
    ("bad.fa", ">a\nACGT\nnot fasta >\n", r"bad.fa"),
])
def test_bad_sequence_files_are_one_clear_error(tmp_path, name, text, match):
  (tmp_path / name).write_text(text)
  with pytest.raises(labelled.DatasetError, match=match):
    labelled.read_sequences(tmp_path / name)


# ------------------------------------------------------------------------------ metrics
def test_regression_metrics_equal_scipy_and_sklearn():
  from sklearn.metrics import mean_squared_error  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  y = rng.normal(size=200)
  pred = 0.6 * y + rng.normal(size=200)
  pred[:20] = np.round(pred[:20])  # Ties for Spearman's average ranks.
  y[20:40] = 1.0
  m = metrics.regression_metrics(y, pred[:, None])
  assert m["pearson"] == pytest.approx(stats.pearsonr(y, pred)[0], abs=1e-12)
  assert m["spearman"] == pytest.approx(stats.spearmanr(y, pred)[0], abs=1e-12)
  assert m["mse"] == pytest.approx(mean_squared_error(y, pred), abs=1e-12)
  const = metrics.regression_metrics(y, np.ones_like(y))
  assert np.isnan(const["pearson"]) and np.isnan(const["spearman"])


# --------------------------------------------------------------------------- selection
def test_dev_selection_keeps_the_best_epoch_and_scores_test_with_it(tmp_path):
  write_gue(tmp_path, classes=(0, 1))
  ds = labelled.load_dataset(tmp_path / "prom" / "toy")
  cfg = classifier.classifier_config(model_lib.model_config("tiny", **MICRO), 0.0)
  data = own_task.encode_dataset(ds, cfg.max_len)
  hp = own_task.resolve_hparams({"epochs": 6, "learning_rate": 2e-3, "batch_size": 16},
                                data.max_len)
  res = own_task.train_seed(cfg, None, data, hp, seed=0, patience=2, progress=False)
  curve = res.dev_curve
  assert len(curve) == res.epochs_run
  assert res.best_epoch == 1 + int(np.argmax(curve))  # First best epoch wins ties.
  # Early stopping: all epochs ran, or it stopped `patience` epochs after the best one.
  assert res.epochs_run == 6 or res.epochs_run - res.best_epoch == 2
  assert curve[res.best_epoch - 1] == pytest.approx(res.dev_metrics["mcc"])
  model = saved.SavedModel(cfg, res.params, "classification", ds.label_values, data.max_len,
                           6, {})
  probs = saved.predict(model, ds.test.sequences)
  np.testing.assert_allclose(probs, res.test_outputs, atol=1e-5)
  assert res.test_metrics == metrics.classification_metrics(ds.test.labels, probs)


def test_long_sequences_train_as_windows_and_score_as_their_windows_mean(tmp_path):
  """At input length 22 (20 k-mers) a 40 bp row (35 k-mers) is 3 windows: k-mers 0-19,
  10-29 and 15-34 (the last moved back to the end), i.e. bases 0-24, 10-34, 15-39."""
  write_gue(tmp_path, classes=(0, 1))
  ds = labelled.load_dataset(tmp_path / "prom" / "toy")
  cfg = classifier.classifier_config(model_lib.model_config("tiny", **MICRO), 0.0)
  data = own_task.encode_dataset(ds, cfg.max_len, max_len=22)
  assert data.max_len == 22 and data.windowed == 96 + 30 + 30
  cuts = ((0, 25), (10, 35), (15, 40))

  def by_hand(seqs):
    return tokenizer.pack([tokenizer.encode(s[a:b], 6) for s in seqs for a, b in cuts], 22)

  # Training rows: every window, with its sequence's label.
  np.testing.assert_array_equal(data.train.ids, by_hand(ds.train.sequences))
  np.testing.assert_array_equal(data.train.window_labels, np.repeat(ds.train.labels, 3))
  hp = own_task.resolve_hparams({"epochs": 1, "learning_rate": 1e-3, "batch_size": 32}, 22)
  res = own_task.train_seed(cfg, None, data, hp, seed=0, patience=0, progress=False)
  # Test scores: the mean of each sequence's three windows' probabilities.
  model = saved.SavedModel(cfg, res.params, "classification", ds.label_values, 22, 6, {})
  per_window = saved.predict_ids(model, by_hand(ds.test.sequences)).reshape(30, 3, 2)
  np.testing.assert_allclose(res.test_outputs, per_window.mean(1), atol=1e-5)
  assert res.test_metrics == metrics.classification_metrics(ds.test.labels, res.test_outputs)
  np.testing.assert_allclose(saved.predict(model, ds.test.sequences), res.test_outputs,
                             atol=1e-5)
  # --max_windows=2 keeps the first and the last window.
  two = own_task.encode_dataset(ds, cfg.max_len, max_len=22, max_windows=2)
  np.testing.assert_array_equal(two.test.ids[:2], by_hand(ds.test.sequences[:1])[[0, 2]])
  np.testing.assert_allclose(saved.predict(model, ds.test.sequences[:3], max_windows=2),
                             per_window[:3, [0, 2]].mean(1), atol=1e-5)


# ------------------------------------------------------------------------------ commands
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """The finetune command run once on a 3-class GUE-layout task, model saved + exported."""
  tmp = tmp_path_factory.mktemp("own")
  write_gue(tmp / "gue")
  out, model, hf_dir = tmp / "out", tmp / "model", tmp / "hf"
  proc = _run("genemask_jax.finetune", f"--gue_dir={tmp / 'gue'}", "--task=prom/toy",
              "--checkpoint=random", "--model_size=tiny", "--seeds=2", "--epochs=2",
              "--batch_size=16", "--learning_rate=1e-3", f"--output_dir={out}",
              f"--save_model={model}", f"--export_hf={hf_dir}", "--noprogress")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return tmp, out, model, hf_dir


def test_finetune_command_reports_every_seed_and_the_mean(trained):
  _, out, model, _ = trained
  with open(out / "results.csv") as f:
    rows = list(csv.DictReader(f))
  test = [r for r in rows if r["split"] == "test"]
  assert {r["seed"] for r in test} == {"0", "1"}
  assert {r["metric"] for r in test} == set(metrics.METRICS)
  assert {r["task"] for r in rows} == {"prom/toy"}
  md = (out / "results.md").read_text()
  assert "| mean ± std |" in md and "best dev MCC" in md
  meta = json.loads((model / saved.MODEL_FILE).read_text())
  assert meta["kind"] == saved.KIND and meta["num_labels"] == 3
  assert meta["label_values"] == ["0", "1", "2"] and meta["task_type"] == "classification"
  assert meta["max_len"] == 37 and meta["k"] == 6
  # The saved model is the seed with the best dev MCC.
  dev = {r["seed"]: float(r["value"]) for r in rows
         if r["split"] == "dev" and r["metric"] == "mcc"}
  assert dev[str(meta["seed"])] == max(dev.values())
  # The override flags reached the fine-tune; the unset ones kept their defaults.
  hp = json.loads((out / "run.json").read_text())["settings"]["hparams"]
  assert (hp["epochs"], hp["batch_size"], hp["learning_rate"]) == (2, 16, 1e-3)
  assert (hp["warmup_frac"], hp["weight_decay"], hp["max_len"]) == (0.1, 0.01, 37)


def test_predict_command_writes_probabilities_and_labels(trained):
  tmp, _, model_dir, _ = trained
  fa = tmp / "new.fa.gz"
  rng = np.random.default_rng(5)
  long = "".join(rng.choice(list("ACGT"), 800))  # 795 k-mers; the model takes 35.
  rows = _rows(5, rng) + [(long, "0")]
  with gzip.open(fa, "wt") as f:
    for i, (s, _) in enumerate(rows):
      f.write(f">s{i} x\n{s}\n")
  pred = tmp / "pred.csv"
  proc = _run("genemask_jax.predict", f"--model={model_dir}", f"--input={fa}",
              f"--output={pred}", "--batch_size=4", "--max_windows=3")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "1 of 6 sequence(s) have more than 35 k-mers" in proc.stderr
  with open(pred) as f:
    got = list(csv.DictReader(f))
  assert [r["name"] for r in got] == [f"s{i} x" for i in range(6)]
  assert [r["windows"] for r in got] == ["1"] * 5 + ["3"]
  model = saved.load_saved_model(model_dir)
  short = saved.predict(model, [s for s, _ in rows[:5]])
  # The long one, by hand: 44 windows of 35 k-mers, 18 apart (half-window overlap, the
  # last ending at k-mer 795); --max_windows=3 keeps numbers 0, 22 and 43, which start at
  # k-mers 0, 396 and 760, i.e. bases [0, 40), [396, 436), [760, 800).
  windows = saved.predict(model, [long[a:a + 40] for a in (0, 396, 760)])
  want = np.concatenate([short, windows.mean(0, keepdims=True)])
  probs = np.array([[float(r[f"prob_{c}"]) for c in "012"] for r in got])
  np.testing.assert_allclose(probs, want, atol=2e-6)
  assert [r["predicted_label"] for r in got] == [str(i) for i in want.argmax(1)]
  # Without --max_windows, every window counts (the library call the command makes).
  every = saved.predict(model, [long[18 * i:18 * i + 40] for i in range(43)] + [long[760:]])
  np.testing.assert_allclose(saved.predict(model, [long]), every.mean(0, keepdims=True),
                             atol=1e-6)


def test_hf_export_is_a_transformers_sequence_classifier(trained):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  _, _, model_dir, hf_dir = trained
  hf_model = transformers.BertForSequenceClassification.from_pretrained(hf_dir).eval()
  assert hf_model.config.num_labels == 3
  assert hf_model.config.problem_type == "single_label_classification"
  model = saved.load_saved_model(model_dir)
  seqs = [s for s, _ in _rows(4, np.random.default_rng(9))]
  ids, _ = saved.encode(seqs, model.max_len, model.k)
  with torch.no_grad():
    logits = hf_model(input_ids=torch.tensor(ids, dtype=torch.long),
                      attention_mask=torch.tensor(ids != 0, dtype=torch.long)).logits
  np.testing.assert_allclose(torch.softmax(logits, -1).numpy(), saved.predict(model, seqs),
                             atol=1e-4)


def test_bad_command_inputs_are_one_line_before_work(trained, tmp_path):
  tmp, _, model_dir, _ = trained
  bad = tmp_path / "bad"
  bad.mkdir()
  for split in labelled.SPLITS:
    (bad / f"{split}.csv").write_text("sequence,value\nACGTACGT,1.5\n")
  proc = _run("genemask_jax.finetune", f"--data_dir={bad}", "--checkpoint=random",
              f"--output_dir={tmp_path / 'o'}")
  assert proc.returncode == 2
  assert proc.stderr.strip().count("\n") == 0, proc.stderr
  assert "has no label column" in proc.stderr and not (tmp_path / "o").exists()
  # A pretraining workdir is not a fine-tuned model.
  wd = tmp_path / "wd"
  (wd / "checkpoints").mkdir(parents=True)
  (wd / "config.json").write_text("{}")
  fa = tmp_path / "x.fa"
  fa.write_text(">a\nACGTACGTAC\n")
  proc = _run("genemask_jax.predict", f"--model={wd}", f"--input={fa}",
              f"--output={tmp_path / 'p.csv'}")
  assert proc.returncode == 2 and "a pretraining workdir (no model.json)" in proc.stderr
  assert proc.stderr.strip().count("\n") == 0, proc.stderr
  with pytest.raises(saved.SavedModelError, match="kind 'other'"):
    other = tmp_path / "other"
    other.mkdir()
    (other / saved.MODEL_FILE).write_text('{"kind": "other"}')
    saved.load_saved_model(other)
  empty = tmp_path / "empty.fa"
  empty.write_text("")
  proc = _run("genemask_jax.predict", f"--model={model_dir}", f"--input={empty}",
              f"--output={tmp_path / 'p.csv'}")
  assert proc.returncode == 2 and "empty.fa: empty file" in proc.stderr
  with pytest.raises(saved.SavedModelError, match="exists and is not an empty directory"):
    saved.check_new_dir(model_dir, "--save_model")


def test_regression_fine_tune_scores_pearson_spearman_mse(tmp_path):
  write_gue(tmp_path, regression=True)
  ds = labelled.load_dataset(tmp_path / "prom" / "toy", "regression")
  cfg = classifier.classifier_config(model_lib.model_config("tiny", **MICRO), 0.0)
  data = own_task.encode_dataset(ds, cfg.max_len)
  hp = own_task.resolve_hparams({"epochs": 2, "learning_rate": 1e-3, "batch_size": 16},
                                data.max_len)
  res = own_task.train_seed(cfg, None, data, hp, seed=0, patience=0, progress=False)
  assert res.test_outputs.shape == (30,) and res.epochs_run == 2
  assert res.test_metrics == metrics.regression_metrics(ds.test.labels, res.test_outputs)
  assert res.dev_curve[res.best_epoch - 1] == pytest.approx(-res.dev_metrics["mse"])
  model = saved.SavedModel(cfg, res.params, "regression", (), data.max_len, 6, {})
  values = saved.predict(model, ds.test.sequences)
  np.testing.assert_allclose(values, res.test_outputs, atol=1e-5)
  predict_lib.write_predictions(tmp_path / "p.csv", ["a", "b"], values[:2], model)
  assert (tmp_path / "p.csv").read_text().splitlines() == [
      "name,value", f"a,{values[0]:.6g}", f"b,{values[1]:.6g}"]
