"""Tests of benchmarks/study.py: resumability, the spread screen, and the report.

No model is trained here: `_run` is replaced by a recorder, and the few-shot outputs and
training logs the real binaries write are laid out by hand in their real formats.
"""

import csv
import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import study  # pylint: disable=g-import-not-at-top,wrong-import-position


def _args(tmp_path, data_dir, *extra):
  return study.parse_args([f"--workdir={tmp_path / 'work'}", f"--data_dir={data_dir}",
                           f"--docs_dir={tmp_path / 'docs'}", "--steps=10", *extra])


def _write_results(path: pathlib.Path, model: str, values: dict) -> None:
  """values: {(task, shot): [mcc per seed]}; accuracy = (1 + mcc) / 2."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["model", "task", "shot", "seed", "metric", "value", "mode", "n_train", "n_test",
                "n_test_full", "removed_overlaps", "test_set", "resampled"])
    for (task, shot), mccs in values.items():
      for seed, v in enumerate(mccs):
        for metric, val in (("mcc", v), ("accuracy", (1 + v) / 2)):
          w.writerow([model, task, shot, seed, metric, val, "linear_probe", 20, 64, 5920, 0,
                      "proxy" if task == "prom_300" else "authors", True])


def test_eval_plan_uses_only_shipped_shots(tmp_path, data_dir):
  a = _args(tmp_path, data_dir)
  plan = dict(study.eval_plan(a))
  assert plan[1000] == ["prom_core", "prom_300"]  # Cohn-enh, Splice-40 ship no 1000-shot.
  assert set(plan[10]) == set(study.TASKS)
  assert [s for s, _ in study.eval_plan(a)] == sorted(plan)


def test_compare_flags_only_differences_beyond_twice_pooled_std():
  summary = study.summarize(
      [{"model": m, "task": "t", "shot": s, "metric": "mcc", "value": v}
       for m, s, vals in [("a", 10, [0.50, 0.52, 0.48]), ("b", 10, [0.30, 0.32, 0.28]),
                          ("a", 50, [0.50, 0.60, 0.40]), ("b", 50, [0.45, 0.55, 0.35])]
       for v in vals])
  rows = {r["shot"]: r for r in study.compare(summary, "a", "b", "mcc")}
  assert rows[10]["exceeds"] and rows[10]["diff"] == pytest.approx(0.2)
  assert rows[10]["pooled"] == pytest.approx(0.02)  # Sample std (ddof=1).
  assert not rows[50]["exceeds"]  # 0.05 < 2 * 0.1.


def test_first_step_reaching():
  assert study.first_step_reaching([(100, 0.1), (200, 0.3), (300, 0.2)], 0.25) == 200
  assert study.first_step_reaching([(100, 0.1)], 0.25) is None


def test_run_skips_finished_work_and_report_is_written(tmp_path, data_dir, monkeypatch):
  a = _args(tmp_path, data_dir, "--tasks=prom_core,prom_300", "--shots=10",
            "--finetune_timing=0")
  work = pathlib.Path(a.workdir)
  (work / "npmi").mkdir(parents=True)
  (work / "npmi" / "table.csv").write_text("x")
  # (a) already pretrained (final checkpoint present) and evaluated; the rest not.
  (work / "genemask" / "checkpoints" / "10").mkdir(parents=True)
  rng_vals = {("prom_core", 10): [0.5, 0.52, 0.48], ("prom_300", 10): [0.2, 0.25, 0.15]}
  _write_results(work / "fewshot" / "genemask" / "shot10" / "results.csv", "genemask", rng_vals)
  log = [{"step": s, "time": 0.0, "eval/loss": 8.0 - s / 100,
          "fewshot/prom_core_10shot/mcc": s / 1000} for s in (5, 10)]
  (work / "genemask" / "log.jsonl").write_text("\n".join(json.dumps(r) for r in log) + "\n")

  calls = []

  def fake_run(cmd, log_path, env):
    del log_path, env
    calls.append(cmd)
    out = next((c.split("=", 1)[1] for c in cmd if c.startswith("--output_dir=")), None)
    if out:  # What the few-shot binary would leave behind.
      model = "random" if "--init=random" in cmd else cmd[-1].split("=")[1]
      _write_results(pathlib.Path(out) / "results.csv", model,
                     {("prom_core", 10): [0.1, 0.12, 0.08], ("prom_300", 10): [0.2, 0.3, 0.1]})
    return 1.0

  monkeypatch.setattr(study, "_run", fake_run)
  study.run_study(a)
  pretrained = [c for c in calls if "main.py" in c]
  assert sorted(c[3].split("/")[-1] for c in pretrained) == ["bert", "dnabert",
                                                              "genemask_position"]
  evaluated = [c for c in calls if "genemask_jax.fewshot" in c]
  assert len(evaluated) == 4  # Everything but (a), whose results.csv existed.
  assert all(f"--data_dir={data_dir}" in c for c in evaluated)
  probe_flags = [c for c in pretrained if any(x.startswith("--config.probe.every=") for x in c)]
  assert [c[3].split("/")[-1] for c in probe_flags] == ["dnabert"]  # (a) was already done.

  # A second run finds everything and runs nothing.
  calls.clear()
  for name in ("genemask_position", "dnabert", "bert"):
    (work / name / "checkpoints" / "10").mkdir(parents=True)
  study.run_study(a)
  assert calls == []

  out = study.write_report(a, {}, "python benchmarks/study.py --steps=10")
  text = out.read_text()
  assert "GUE proxy" in text
  assert "0.500 ± 0.020" in text  # (a) prom_core 10-shot MCC, sample std.
  # (a) vs (e) on prom_core: 0.4 apart with stds 0.02 -> beyond the spread; prom_300 not.
  assert "prom_core@10 (+0.400)" in text
  assert "| (a) GeneMask, content rank (ours) vs (e) no pretraining | 2 | 1 | 0 | 1 |" in text
  assert (tmp_path / "docs" / "figures" / "fewshot_mcc.png").stat().st_size > 0
  assert (tmp_path / "docs" / "figures" / "probe_vs_step.png").stat().st_size > 0


def test_needs_data_dir(monkeypatch, tmp_path):
  monkeypatch.delenv("GENEMASK_DATA_DIR", raising=False)
  with pytest.raises(SystemExit):
    study.parse_args([f"--workdir={tmp_path}", "--data_dir="])
