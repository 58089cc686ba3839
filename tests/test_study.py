"""Tests of benchmarks/study.py and benchmarks/study_stats.py (issue #15).

The masking statistics are checked against the plain-Python oracle on real corpus rows, the
paired test against scipy on the example of scipy's documentation, the run plan with the
binaries replaced by a recorder, and the whole study end to end at a toy size.
"""

import csv
import gzip
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from genemask_jax import npmi
from genemask_jax import tokenizer
import masking_oracle as oracle  # tests/ is on sys.path (rootdir-relative test modules).

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import study  # pylint: disable=g-import-not-at-top,wrong-import-position
import study_stats as st  # pylint: disable=g-import-not-at-top,wrong-import-position

AUTHORS_NPMI = "npmi/genemask_grch38_chr1-3_6mer_npmi.csv"


@pytest.fixture(scope="module")
def real_rows(data_dir):
  """48 real block-512 rows (24 from each genome file) and the authors' rank lookup."""
  files = sorted(str(p) for p in (data_dir / "genome").glob("*.fa*"))
  rows = st.corpus_rows(files, 512, 24)
  return rows, npmi.load_lookup(data_dir / AUTHORS_NPMI).rank


@pytest.mark.parametrize("arm", list(study.ARMS))
def test_masking_stats_match_the_oracle(real_rows, arm):
  rows, rank = real_rows
  _, _, strategy, opts = study.ARMS[arm]
  got = st.masking_stats(rows, rank, strategy, opts, seed=3)
  # The oracle on the same centres: same uniforms, same 16-bit threshold.
  u = np.random.default_rng(3).integers(0, st.U16, rows.shape)
  table = rank.copy()
  if opts.get("specials_rank_zero"):
    table[:tokenizer.NUM_SPECIAL] = 0  # The authors' defaultdict(int).
  counts, centres = [], []
  for ids, uu in zip(rows.tolist(), u):
    elig = oracle.eligible(ids, len(rank))
    c = [e and x < round(got.p * st.U16) for e, x in zip(elig, uu)]
    masked = oracle.spans_from_centres(ids, table.tolist(), c, strategy,
                                       **({"rank_source": opts["rank_source"]}
                                          if "rank_source" in opts else {}))
    counts.append(sum(masked))
    centres.append(sum(c))
  counts, centres = np.array(counts), np.array(centres)
  elig_total = sum(sum(oracle.eligible(r, len(rank))) for r in rows.tolist())
  assert got.masked_fraction == pytest.approx(counts.sum() / elig_total)
  assert got.max_masked == counts.max()
  p = got.max_predictions
  assert p % 8 == 0 and np.mean(counts > p) <= 0.01 and (p == 8 or np.mean(counts > p - 8) > 0.01)
  assert got.overflow_share == pytest.approx(np.mean(counts > p))
  if strategy == "genemask":
    assert got.engaged_share == pytest.approx(np.mean(centres > 8))
    assert 0.2 < got.engaged_share < 0.9  # Block 512: the rule engages in many rows.
  else:
    assert got.engaged_share is None


def test_overflow_and_engagement_against_block_128(real_rows):
  """At block 128 the NPMI rule almost never engages (the issue's finding), at 512 often."""
  rows, rank = real_rows
  short = rows[:, :128].copy()
  short[:, 127] = np.where(short[:, 127] == tokenizer.PAD_ID, tokenizer.PAD_ID, tokenizer.SEP_ID)
  s128 = st.masking_stats(short, rank, "genemask", {}, seed=0)
  s512 = st.masking_stats(rows, rank, "genemask", {}, seed=0)
  assert s128.engaged_share < 0.1 < s512.engaged_share
  fixed = st.masking_stats(rows, rank, "genemask", {}, max_predictions=32, seed=0)
  assert fixed.max_predictions == 32 and fixed.overflow_share > 0.5
  assert 0 < fixed.lost_target_share < 1


def test_solve_p_equalises_the_rate(real_rows):
  rows, rank = real_rows
  for strategy in ("dnabert", "bert", "genemask"):
    p = st.solve_p(rows, rank, strategy, {}, 0.15, seed=5)
    got = st.masking_stats(rows, rank, strategy, {}, p=p, seed=5)
    assert got.masked_fraction == pytest.approx(0.15, abs=0.01), strategy
  with pytest.raises(ValueError, match="target"):
    st.solve_p(rows, rank, "bert", {}, 1.5)


def test_paired_test_against_scipy():
  # scipy.stats.wilcoxon's documented example: statistic 24, two-sided p = 0.041259765625.
  d = [6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75]
  y = np.linspace(0.1, 0.5, len(d))
  t = st.paired_test(y + np.array(d), y)
  assert t["wilcoxon_p"] == pytest.approx(0.041259765625)
  assert t["n"] == 15 and t["wins"] == 13 and t["losses"] == 2
  assert t["mean_diff"] == pytest.approx(np.mean(d))
  assert t["boot_ci"][0] < np.mean(d) < t["boot_ci"][1] and t["boot_ci"][0] > 0
  assert t["boot_p"] < 0.05
  same = st.paired_test([0.2, 0.3], [0.2, 0.3])
  assert same["wilcoxon_p"] == 1.0 and same["boot_p"] == 1.0
  with pytest.raises(ValueError):
    st.paired_test([], [])


def test_holm_adjustment():
  # Sorted 0.01, 0.03, 0.04: x3 = 0.03, x2 = 0.06, x1 = 0.04 -> raised to 0.06 (monotone).
  assert st.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
  assert st.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_pair_up_matches_cells_and_replicates():
  rows = [{"arm": arm, "mode": "finetune", "task": "t", "shot": 10, "replicate": r,
           "metric": "mcc", "value": v}
          for arm, r, v in [("a", 0, 0.5), ("a", 1, 0.6), ("b", 1, 0.1), ("b", 2, 0.2)]]
  xs, ys, keys = st.pair_up(rows, "a", "b", "mcc")
  assert xs == [0.6] and ys == [0.1] and keys == [("finetune", "t", 10, 1)]


def test_constant_predictors_are_flagged():
  def run(task, mcc, recall, rep=0):
    return [{"arm": "x", "replicate": rep, "mode": "finetune", "task": task, "shot": 10,
             "metric": m, "value": v} for m, v in (("mcc", mcc), ("recall", recall))]
  rows = (run("prom_core", 0.0, 0.5) + run("prom_core", 0.0, 0.52, rep=1)
          + run("splice_40", 0.0, 1 / 3) + run("cohn_enh", 0.2, 0.5))
  assert st.constant_runs(rows) == [("x", 0, "finetune", "prom_core", 10),
                                    ("x", 0, "finetune", "splice_40", 10)]


def _write_results(path: pathlib.Path, arms, mode: str, replicate: int, mcc: dict) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["model", "task", "shot", "seed", "metric", "value", "mode", "n_train",
                "n_test", "n_test_full", "removed_overlaps", "test_set", "resampled"])
    for arm in arms:
      for shot in (10, 50):
        v = mcc[arm] + 0.01 * shot / 10 + 0.001 * replicate
        for metric, val in (("mcc", v), ("recall", (1 + v) / 2)):
          w.writerow([arm, "prom_core", shot, replicate, metric, val, mode, 20, 64, 5920, 0,
                      "shipped", False])


def test_run_plan_resumes_and_report(tmp_path, data_dir, monkeypatch):
  a = study.parse_args([f"--workdir={tmp_path / 'work'}", f"--data_dir={data_dir}",
                        f"--docs_dir={tmp_path / 'docs'}", "--budget=cpu", "--shots=10,50",
                        f"--npmi={data_dir / AUTHORS_NPMI}"])
  work = pathlib.Path(a.workdir)
  work.mkdir(parents=True)
  arms = {arm: {"p": 0.1, "rows": 4, "masked_fraction": 0.15, "mean_masked": 70.0,
                "p99_masked": 120.0, "max_masked": 130, "max_predictions": 96 + 8 * i,
                "engaged_share": 0.5 if ARM.startswith("genemask") else None,
                "overflow_share": 0.004, "lost_target_share": 0.001,
                "check_overflow_share": 0.006}
          for i, (arm, ARM) in enumerate((x, x) for x in study.ARMS)}
  (work / "masking.json").write_text(json.dumps(
      {"max_len": 512, "equalise_rate": 0.0, "rows": 4, "arms": arms}))
  # genemask seed 0 already pretrained.
  (work / "pretrain" / "genemask_s0" / "checkpoints" / "120").mkdir(parents=True)
  calls = []
  base = {"genemask": 0.30, "genemask_position": 0.28, "dnabert": 0.25, "bert": 0.35,
          "random": 0.05}

  def fake_run(cmd, log_path, env, timeout=None):
    del log_path, env, timeout
    calls.append(cmd)
    out = next((c.split("=", 1)[1] for c in cmd if c.startswith("--output_dir=")), None)
    if out:
      mode = next(c.split("=")[1] for c in cmd if c.startswith("--mode="))
      rep = int(next(c.split("=")[1] for c in cmd if c.startswith("--seed_offset=")))
      _write_results(pathlib.Path(out) / "results.csv", base, mode, rep, base)
    return 1.0

  monkeypatch.setattr(study, "_run", fake_run)
  study.run_study(a)
  pre = [c for c in calls if "main.py" in c]
  assert len(pre) == 7  # 4 arms x 2 seeds, one already done.
  flags = lambda c: dict(x.split("=", 1) for x in c if x.startswith("--") and "=" in x)
  by_dir = {pathlib.Path(flags(c)["--workdir"]).name: flags(c) for c in pre}
  assert by_dir["bert_s1"]["--config.seed"] == "1"
  assert by_dir["bert_s1"]["--config.masking.max_predictions"] == "120"  # From the plan.
  assert by_dir["dnabert_s0"]["--config.data.max_len"] == "512"
  assert "--config.masking.p" not in by_dir["dnabert_s0"]  # Not equalised.
  assert by_dir["genemask_position_s0"]["--config"].endswith("genemask,position")
  ev = [flags(c) for c in calls if "genemask_jax.fewshot" in c]
  assert sorted((f["--mode"], f["--seed_offset"]) for f in ev) == [
      ("finetune", "0"), ("finetune", "1"), ("linear_probe", "0"), ("linear_probe", "1")]
  ft = next(f for f in ev if f["--mode"] == "finetune" and f["--seed_offset"] == "1")
  assert ft["--tasks"] == "prom_core" and ft["--max_test_examples"] == "256"
  assert ft["--checkpoint"].endswith("random=random") and "bert_s1" in ft["--checkpoint"]

  done = sorted(p.parent.name for p in (work / "fewshot").glob(f"*/{study.DONE}"))
  assert done == ["finetune_s0_prom_core", "finetune_s1_prom_core", "linear_probe_s0",
                  "linear_probe_s1"]
  calls.clear()
  for arm in study.ARMS:
    for s in (0, 1):
      (work / "pretrain" / f"{arm}_s{s}" / "checkpoints" / "120").mkdir(parents=True,
                                                                        exist_ok=True)
  study.run_study(a)
  assert calls == []  # Everything done: nothing runs again.
  # A few-shot process stopped midway leaves a partial results.csv but no marker: rerun.
  (work / "fewshot" / "linear_probe_s1" / study.DONE).unlink()
  study.run_study(a)
  assert [c for c in calls if "--mode=linear_probe" in c and "--seed_offset=1" in c]
  calls.clear()

  text = study.write_report(a, {}, "python benchmarks/study.py --budget=cpu").read_text()
  assert "| (d) BERT tokens | 0.10000 | 15.00% | 70.0 (120) | 120 | 0.40% (0.60%)" in text
  # genemask beats dnabert by 0.05 in all 4 finetune pairs (2 shots x 2 replicates).
  assert ("| finetune | (a) GeneMask, content rank vs (c) DNABERT 6-token spans | 4 | "
          "+0.0500 | 4 / 0 | 0.125 |") in text
  assert "Constant predictors (all test predictions one class): 0 of 40 runs" in text
  assert (tmp_path / "docs" / "figures" / "mcc_finetune.png").stat().st_size > 0
  assert (tmp_path / "docs" / "figures" / "mlm_loss.png").stat().st_size > 0
  data = json.loads((tmp_path / "docs" / "study_data.json").read_text())
  # 8 pairs x 2 modes; rows: 5 arms x 2 shots x 2 metrics x 2 modes x 2 replicates.
  assert len(data["paired_tests"]) == 16 and len(data["rows"]) == 80


def test_gpu_plan_splits_finetuning_per_task_longest_first(data_dir):
  a = study.parse_args([f"--data_dir={data_dir}", "--budget=gpu"])
  units = study.eval_units(a)
  assert units[0] == ("finetune", 0, ["splice_40"]) and units[1] == ("finetune", 1, ["splice_40"])
  assert [u for u in units if u[0] == "finetune"][-1] == ("finetune", 1, ["prom_core"])
  assert units[-2:] == [("linear_probe", 0, study.TASKS), ("linear_probe", 1, study.TASKS)]
  names = {study.fewshot_dir(a, *u).name for u in units}
  assert len(names) == len(units) == 10  # Each process its own results.csv.
  assert a.model_size == "logo" and a.max_test_examples == 0 and a.jobs == 4


def test_pack_copies_what_a_run_reads(tmp_path, data_dir):
  a = study.parse_args([f"--data_dir={data_dir}", "--budget=gpu", f"--pack={tmp_path / 'p'}",
                        f"--npmi={data_dir / AUTHORS_NPMI}", "--shots=10"])
  dest = study.pack(a)
  assert sorted(p.name for p in (dest / "genome").iterdir()) == sorted(
      p.name for p in (data_dir / "genome").glob("*.fa*"))
  assert (dest / "fewshot" / "Splice-40" / "10" / "train_splice40_10.tsv").exists()
  assert (dest / "fewshot" / "Cohn-enh" / "test.csv").exists()
  assert not (dest / "fewshot" / "Prom-core" / "50").exists()  # Only the shots asked for.
  assert (dest / "npmi" / "table.csv").exists()


def test_children_get_the_callers_jax_platforms(data_dir, monkeypatch):
  """The study's own process keeps JAX on the CPU (no GPU memory held); the binaries it
  starts run where the caller asked."""
  a = study.parse_args([f"--data_dir={data_dir}"])
  assert os.environ["JAX_PLATFORMS"] == "cpu"
  monkeypatch.setattr(study, "_CALLER_JAX_PLATFORMS", None)
  assert "JAX_PLATFORMS" not in study._child_env(a)
  monkeypatch.setattr(study, "_CALLER_JAX_PLATFORMS", "cuda")
  env = study._child_env(a)
  assert env["JAX_PLATFORMS"] == "cuda" and env["PYTHONPATH"].startswith(str(REPO))


def test_bad_arguments(data_dir):
  with pytest.raises(SystemExit):
    study.parse_args([f"--data_dir={data_dir}", "--arms=genemask,nope"])
  with pytest.raises(SystemExit):
    study.parse_args([f"--data_dir={data_dir}", "--budget=cpu", "--pretrain_seeds=1"])
  with pytest.raises(SystemExit):
    study.parse_args(["--data_dir="])


def test_study_end_to_end_toy(tmp_path, data_dir):
  """Pretrain (a) on a small real FASTA, probe it and a random encoder, write the report."""
  data = tmp_path / "data"
  (data / "genome").mkdir(parents=True)
  (data / "fewshot").symlink_to(data_dir / "fewshot")
  with gzip.open(data_dir / "genome" / "GRCh37_chr22_blocks.fa.gz", "rt") as f, \
      open(data / "genome" / "toy.fa", "w", encoding="utf-8") as out:
    records = 0
    for line in f:
      records += line.startswith(">")
      if records > 40:
        break
      out.write(line)
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
  env["PYTHONPATH"] = str(REPO)
  cmd = [sys.executable, str(REPO / "benchmarks" / "study.py"), "--budget=toy",
         f"--data_dir={data}", f"--workdir={tmp_path / 'work'}", f"--docs_dir={tmp_path / 'docs'}",
         f"--npmi={data_dir / AUTHORS_NPMI}", "--arms=genemask,random", "--pretrain_seeds=1",
         "--modes=linear_probe", "--shots=10,50"]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  text = (tmp_path / "docs" / "results.md").read_text()
  assert "| (a) GeneMask, content rank | 0.01760 |" in text
  assert "### linear_probe: prom_core" in text
  assert "| linear_probe | (a) GeneMask, content rank vs (e) no pretraining | 2 |" in text
  assert "Not reached" not in text
  assert (tmp_path / "docs" / "figures" / "mlm_loss.png").stat().st_size > 0
  log = (tmp_path / "work" / "pretrain" / "genemask_s0" / "log.jsonl").read_text()
  assert "eval/loss" in log
