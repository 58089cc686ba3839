"""Tests of the motif analysis (genemask_jax.motifs): JASPAR + Tomtom, background, enrichment.

The first Tomtom call in a fresh environment compiles memelite's numba kernels (95 s on the
idle 2-core machine, longer under load); numba caches them, so later runs take seconds.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("memelite")
pytest.importorskip("pyjaspar")
stats = pytest.importorskip("scipy.stats")

from genemask_jax import npmi  # noqa: E402
from genemask_jax import tokenizer  # noqa: E402
from genemask_jax.motifs import database  # noqa: E402
from genemask_jax.motifs import enrichment  # noqa: E402
from genemask_jax.motifs import table as table_lib  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
REST = "TCAGCACCATGGACAGCGCC"  # Consensus of JASPAR2024 MA0138.3 (REST), 20 bp.


def planted_table(motif: str, seed: int = 0) -> table_lib.KmerTable:
  """A random 6-mer table whose best-ranked 6-mers are the motif's, in order."""
  rng = np.random.default_rng(seed)
  kmers = npmi.kmer_strings(6).astype(str)
  score = rng.uniform(-1.0, 1.0, len(kmers))
  index = {k: i for i, k in enumerate(kmers)}
  planted = [motif[i:i + 6] for i in range(len(motif) - 5)]
  for j, k in enumerate(planted):
    score[index[k]] = 5.0 - 0.01 * j
  return table_lib.KmerTable(kmers=kmers, score=score,
                             rank=npmi.rank_desc(score, 4**6 + 5), source="planted")


def write_npz(tab: table_lib.KmerTable, path: pathlib.Path) -> pathlib.Path:
  n = len(tab.kmers)
  rank = np.full(n + tokenizer.NUM_SPECIAL, n + tokenizer.NUM_SPECIAL, np.int32)
  score = np.full(n + tokenizer.NUM_SPECIAL, -np.inf, np.float32)
  rank[tokenizer.NUM_SPECIAL:] = tab.rank
  score[tokenizer.NUM_SPECIAL:] = tab.score
  np.savez(path, rank=rank, score=score)
  return path


@pytest.fixture(scope="module")
def jaspar():
  return database.load_jaspar("JASPAR2024", "CORE", "vertebrates")


# ------------------------------------------------------------------------------ database


def test_jaspar_matrices_equal_pyjaspar(jaspar):
  from pyjaspar import jaspardb
  ours = {m.matrix_id: m for m in jaspar}
  assert "MA0138.3" in ours and ours["MA0138.3"].name == "REST"
  ref = jaspardb(release="JASPAR2024").fetch_motif_by_id("MA0138.3")
  np.testing.assert_array_equal(ours["MA0138.3"].counts,
                                np.array([ref.counts[b] for b in "ACGT"]))
  assert ours["MA0138.3"].consensus == REST
  # Only the latest version of each matrix: no two share a base ID.
  bases = [m.matrix_id.split(".")[0] for m in jaspar]
  assert len(bases) == len(set(bases))


def test_planted_motif_found_by_tomtom(jaspar):
  tab = planted_table(REST)
  top = tab.top(len(REST) - 5)
  assert [tab.kmers[i] for i in top] == [REST[i:i + 6] for i in range(len(REST) - 5)]
  contigs = database.assembled_motifs(list(tab.kmers[top]))
  assert [database.path_sequence(p) for p in contigs] == [REST]
  m = database.match([REST, table_lib.reverse_complement(REST)], jaspar)
  for i in range(2):
    best = m.motifs[m.target[i]]
    assert best.name == "REST", best
    assert m.q[i] < 1e-3
  assert m.strand.tolist() == [0, 1]
  assert m.offset[0] == 0 and m.overlap[0] == len(REST)


def test_bh_qvalues_equal_scipy():
  rng = np.random.default_rng(1)
  p = rng.uniform(0, 1, (3, 50)) ** 3
  q = database.bh_qvalues(p)
  for row, qrow in zip(p, q):
    np.testing.assert_allclose(qrow, stats.false_discovery_control(row), rtol=1e-12)


def test_background_keeps_gc_distribution():
  tab = planted_table(REST)
  top = tab.top(40)
  draws = database.gc_matched_draws(tab, top, 200, np.random.default_rng(0))
  assert draws.shape == (200, 40)
  gc = table_lib.gc_count(tab.kmers)
  want = np.bincount(gc[top], minlength=7)
  for row in draws:
    np.testing.assert_array_equal(np.bincount(gc[row], minlength=7), want)
    assert len(set(row.tolist())) == 40
  assert not np.isin(draws, top).any()
  assert len({tuple(sorted(r)) for r in draws.tolist()}) > 190  # Draws differ.


def test_background_test_counts():
  matched = np.zeros(20, bool)
  matched[[0, 1, 2, 10]] = True
  scored = np.ones(20, bool)
  scored[19] = False
  top = np.array([0, 1, 2, 3])
  draws = np.array([[4, 5, 6, 7], [10, 11, 12, 13], [0, 1, 2, 10]])
  t = database.background_test(matched, scored, top, draws)
  assert (t.n_top_matched, t.n_top, t.n_rest_matched, t.n_rest) == (3, 4, 1, 15)
  np.testing.assert_allclose(t.background_shares, [0, 0.25, 1.0])
  assert t.permutation_p == pytest.approx(2 / 4)
  ref = stats.fisher_exact([[3, 1], [1, 14]], alternative="greater")
  assert t.fisher_p == pytest.approx(ref.pvalue)


def test_assemble_paths_and_cycles():
  seq = "ACGTTGCAT"
  kmers = [seq[i:i + 6] for i in range(4)] + ["ATATAT", "TATATA", "AAAAAA", "GGGGGC"]
  paths = database.assemble(kmers)
  assert sorted(len(p) for p in paths) == [1, 1, 2, 4]
  assert seq in [database.path_sequence(p) for p in paths]
  assert sorted(sum(paths, [])) == sorted(kmers)
  assert database.assembled_count(kmers) == 6
  # Branching (two successors) stops a path.
  branch = database.assemble(["ACGTTG", "CGTTGA", "CGTTGC"])
  assert sorted(len(p) for p in branch) == [1, 1, 1]


# ------------------------------------------------------------------------------ sequences


def test_enrichment_statistics_equal_scipy():
  pos = ["ACGTACGTAA", "ACGTACGTAC", "TTTTTTTTTT", "ACGNACGTAC"]
  neg = ["TTTTTTAAAA", "GGGGGGCCCC", "ACGTACGGGG"]
  a, b = enrichment.presence_counts(pos), enrichment.presence_counts(neg)
  kmers = npmi.kmer_strings(6).astype(str)
  for counts, seqs in ((a, pos), (b, neg)):
    naive = {k: sum(k in s for s in seqs) for k in kmers}
    assert counts.tolist() == [naive[k] for k in kmers]
  lo = enrichment.log_odds(a, 4, b, 3, 0.5)
  i = list(kmers).index("ACGTAC")
  assert (a[i], b[i]) == (3, 1)
  assert lo[i] == pytest.approx(np.log(3.5 / 1.5) - np.log(1.5 / 2.5))
  p = enrichment.fisher_p(a, 4, b, 3)
  for j in np.flatnonzero((a > 0) | (b > 0)):
    ref = stats.fisher_exact([[a[j], 4 - a[j]], [b[j], 3 - b[j]]]).pvalue
    assert p[j] == pytest.approx(ref, rel=1e-9)
  # Many tables at realistic sizes (Cohn-enh: ~650 sequences per class).
  rng = np.random.default_rng(2)
  a2, b2 = rng.integers(0, 300, 400), rng.integers(0, 300, 400)
  a2[:50] = b2[:50] + rng.integers(-3, 4, 50).clip(-b2[:50])  # Near the mode.
  p2 = enrichment.fisher_p(a2, 650, b2, 640)
  ref2 = [stats.fisher_exact([[x, 650 - x], [y, 640 - y]]).pvalue for x, y in zip(a2, b2)]
  np.testing.assert_allclose(p2, ref2, rtol=1e-9, atol=1e-300)

  rng = np.random.default_rng(0)
  x = rng.normal(size=300)
  y = x + rng.normal(size=300) * 2
  c = enrichment.spearman_permutation(x, y, permutations=200, seed=0)
  ref = stats.spearmanr(x, y)
  assert c.rho == pytest.approx(ref.statistic)
  assert c.p_asymptotic == pytest.approx(ref.pvalue)
  assert c.p_permutation == pytest.approx(1 / 201)  # rho ~0.45: no shuffle reaches it.
  noise = enrichment.spearman_permutation(x, rng.normal(size=300), permutations=200, seed=0)
  assert noise.p_permutation > 0.05


def test_gc_stratified_permutation_removes_gc_confound():
  """NPMI that only tracks GC content is significant overall but not within GC strata."""
  rng = np.random.default_rng(3)
  gc = rng.integers(0, 7, 2000)
  x = gc + rng.normal(size=2000) * 0.1
  y = gc + rng.normal(size=2000) * 0.1
  c = enrichment.spearman_permutation(x, y, gc=gc, permutations=200, seed=0)
  assert c.p_permutation < 0.01
  assert c.p_permutation_gc > 0.05
  assert c.rho > 0.9 and abs(c.rho_within_gc) < 0.1


def test_task_comparisons_on_real_training_sets(data_dir):
  tab = planted_table(REST)
  spec = enrichment.parse_tasks("Splice-40")[0]
  ts = enrichment.load_training(spec, data_dir, shots=[10])
  assert len(ts.sequences) == 300 and sorted(set(ts.labels.tolist())) == [0, 1, 2]
  comps = enrichment.task_comparisons(ts, tab, permutations=20)
  assert [c.name for c in comps] == ["splice_40 1 vs 0", "splice_40 2 vs 0"]
  for c in comps:
    assert (c.n_pos, c.n_neg) == (100, 100)
    assert c.pos_count.max() <= 100 and c.pos_count.sum() > 0


# ------------------------------------------------------------------------------ command


def _run(args, tmp_path, timeout=900):
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "genemask_jax.motifs", *args],
                        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=timeout)


@pytest.fixture(scope="module")
def planted_npz(tmp_path_factory):
  return write_npz(planted_table(REST), tmp_path_factory.mktemp("tab") / "planted.npz")


def test_command_writes_report(planted_npz, tmp_path, data_dir):
  out = tmp_path / "out"
  r = _run([f"--npmi={planted_npz}", "--top=15", "--draws=50", "--permutations=20",
            "--tasks=prom_core", f"--data_dir={data_dir}", f"--output_dir={out}"], tmp_path)
  assert r.returncode == 0, r.stderr
  for name in ("kmer_matches.csv", "top_matches.csv", "assembled_motifs.csv", "background.csv",
               "enrichment_prom_core_1v0.csv", "correlations.csv", "summary.json", "report.md",
               "logos.png", "background.png", "npmi_vs_enrichment.png"):
    assert (out / name).stat().st_size > 0, name
  s = json.loads((out / "summary.json").read_text())
  assert s["top"] == 15 and s["background_draws"] == 50
  assert s["assembled_motifs"] == 1 and s["assembled_matched"] == 1
  assert s["correlations"][0]["task"] == "prom_core"
  assert (out / "assembled_motifs.csv").read_text().splitlines()[1].startswith(REST)
  assert "REST" in (out / "report.md").read_text()
  assert len((out / "top_matches.csv").read_text().splitlines()) == 16


@pytest.fixture(scope="module")
def five_mer_npz(tmp_path_factory):
  n = 4**5 + tokenizer.NUM_SPECIAL
  path = tmp_path_factory.mktemp("tab") / "five.npz"
  np.savez(path, rank=np.arange(1, n + 1, dtype=np.int32),
           score=np.linspace(1, 0, n).astype(np.float32))
  return path


@pytest.mark.parametrize("args, expected", [
    (["--jaspar=JASPAR2099"], "--jaspar='JASPAR2099': unknown JASPAR release"),
    (["--collection=NOPE"], "--collection='NOPE': JASPAR2024 has no such collection"),
    (["--tax_group=mammals"], "--tax_group='mammals'"),
    (["--tasks=prom_core,prom_9000"], "unknown few-shot task 'prom_9000'"),
    (["--top=5000"], "--top=5000: expected an integer in 1..4096"),
    (["--top=0"], "--top=0: expected an integer in 1..4096"),
    (["--top=3000"], "no GC-matched background exists"),
    (["FIVE"], "holds a table of 5-mers"),
    (["--npmi=missing.csv"], "missing.csv: no such file"),
    (["--output_dir=AFILE"], "exists and is not a directory"),
    (["--draws=0"], "--draws=0: expected at least 1"),
])
def test_bad_input_one_line_before_work(args, expected, planted_npz, five_mer_npz, tmp_path,
                                        data_dir):
  out = tmp_path / "out"
  npmi_arg = [f"--npmi={five_mer_npz}"] if args == ["FIVE"] else [f"--npmi={planted_npz}"]
  args = [a for a in args if a != "FIVE"]
  if "--output_dir=AFILE" in args:
    (tmp_path / "afile").write_text("not a directory")
    args = [f"--output_dir={tmp_path / 'afile'}"]
  r = _run(npmi_arg + [f"--data_dir={data_dir}", f"--output_dir={out}"] + args, tmp_path,
           timeout=120)
  assert r.returncode == 2, r.stderr
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("motifs: error: "), r.stderr
  assert expected in lines[0]
  assert not out.exists()  # Nothing was written: the check came before the work.
