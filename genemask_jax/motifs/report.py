"""Outputs of the motif analysis: CSV tables, ``report.md``, ``summary.json`` and PNG figures.

Files written into the output directory by `write_all`:

* ``kmer_matches.csv``: every 6-mer by NPMI rank with its best JASPAR match (ID, TF name,
  Tomtom p and q, strand, offset, overlap) and whether it is in the top-K;
* ``top_matches.csv``: the same rows for the top-K only;
* ``assembled_motifs.csv``: the motifs assembled from overlapping top-K 6-mers, matched;
* ``background.csv``: per GC-matched draw, the matched share and the number of 6-mers that
  assemble into longer motifs;
* ``enrichment_<task>_<pos>v<neg>.csv``: per 6-mer, sequences containing it per class,
  log-odds and Fisher p;
* ``correlations.csv``: per comparison, Spearman's rho of NPMI vs log-odds with its p-values;
* ``summary.json``: the headline figures; ``report.md``: all of it for people;
* ``logos.png`` (best-matched JASPAR motifs beside the 6-mers, aligned as Tomtom aligned
  them), ``background.png`` (the background's distribution and the top-K's share),
  ``npmi_vs_enrichment.png`` (one scatter per comparison).
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any, Sequence

import numpy as np

from genemask_jax.motifs import database
from genemask_jax.motifs import enrichment
from genemask_jax.motifs import table as table_lib

_LETTERS = "ACGT"


def _g(x: float) -> str:
  return f"{x:.3g}"


def _perm_p(p: float, n: int) -> str:
  """A permutation p-value; at its floor 1/(n + 1) it says that no shuffle reached it."""
  return f"{p:.3g}" + (" (floor)" if p <= 1.0 / (n + 1) * (1 + 1e-9) else "")


def _strand(s: int) -> str:
  return "-" if s else "+"


def _match_row(m: database.Matches, i: int) -> dict[str, Any]:
  motif = m.motifs[int(m.target[i])]
  return {"jaspar_id": motif.matrix_id, "tf_name": motif.name, "p_value": float(m.p[i]),
          "q_value": float(m.q[i]), "strand": _strand(int(m.strand[i])),
          "offset": int(m.offset[i]), "overlap": int(m.overlap[i])}


def kmer_rows(table: table_lib.KmerTable, db: database.DatabaseResult) -> list[dict[str, Any]]:
  """One row per scored k-mer, best NPMI first."""
  in_top = np.zeros(len(table.kmers), bool)
  in_top[db.top] = True
  gc = table_lib.gc_count(table.kmers)
  matched = db.kmers.matched(db.q_threshold)
  scored = np.flatnonzero(table.scored)
  rows = []
  for i in scored[np.argsort(table.rank[scored], kind="stable")]:
    rows.append({"kmer": table.kmers[i], "npmi_rank": int(table.rank[i]),
                 "npmi": float(table.score[i]), "gc": int(gc[i]), "in_top": bool(in_top[i]),
                 **_match_row(db.kmers, i), "matched": bool(matched[i])})
  return rows


def contig_rows(table: table_lib.KmerTable, db: database.DatabaseResult
                ) -> list[dict[str, Any]]:
  """One row per assembled motif."""
  rank = dict(zip(table.kmers.tolist(), table.rank.tolist()))
  rows = []
  for i, path in enumerate(db.contigs):
    rows.append({"motif": database.path_sequence(path), "length": len(path) + len(path[0]) - 1,
                 "kmers": " ".join(path), "npmi_ranks": " ".join(str(rank[x]) for x in path),
                 **_match_row(db.contig_matches, i),
                 "matched": bool(db.contig_matches.q[i] <= db.q_threshold)})
  return rows


def write_csv(rows: Sequence[dict[str, Any]], path: str, columns: Sequence[str] | None = None
              ) -> None:
  """Writes dict rows (floats in full precision) with a header."""
  if columns is None:
    columns = list(rows[0]) if rows else []
  with open(path, "w", newline="", encoding="ascii") as f:
    w = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)


def enrichment_rows(table: table_lib.KmerTable, c: enrichment.Comparison
                    ) -> list[dict[str, Any]]:
  scored = np.flatnonzero(table.scored)
  return [{"kmer": table.kmers[i], "npmi_rank": int(table.rank[i]),
           "npmi": float(table.score[i]), f"pos_{c.positive}_count": int(c.pos_count[i]),
           f"neg_{c.negative}_count": int(c.neg_count[i]), "log_odds": float(c.log_odds[i]),
           "fisher_p": float(c.fisher_p[i])}
          for i in scored[np.argsort(table.rank[scored], kind="stable")]]


def correlation_row(table: table_lib.KmerTable, db_top: np.ndarray, c: enrichment.Comparison
                    ) -> dict[str, Any]:
  in_top = np.zeros(len(table.kmers), bool)
  in_top[db_top] = True
  rest = table.scored & ~in_top
  r = c.correlation
  return {"task": c.task, "positive": c.positive, "negative": c.negative, "n_pos": c.n_pos,
          "n_neg": c.n_neg, "kmers": r.n, "spearman_rho": r.rho, "p_asymptotic": r.p_asymptotic,
          "p_permutation": r.p_permutation, "p_permutation_gc": r.p_permutation_gc,
          "rho_within_gc": r.rho_within_gc,
          "permutations": r.permutations,
          "top_mean_log_odds": float(c.log_odds[db_top].mean()),
          "rest_mean_log_odds": float(c.log_odds[rest].mean()),
          "top_enriched_p05": int(np.sum((c.fisher_p[db_top] <= 0.05) & (c.log_odds[db_top] > 0))),
          "top_depleted_p05": int(np.sum((c.fisher_p[db_top] <= 0.05) & (c.log_odds[db_top] < 0)))}


def summary(table: table_lib.KmerTable, db: database.DatabaseResult,
            comparisons: list[enrichment.Comparison], args: dict[str, Any]) -> dict[str, Any]:
  """The headline figures as a JSON-ready dict."""
  t = db.test
  bg = t.background_shares
  return {
      "args": args, "table": table.source, "database": db.selection,
      "top": int(t.n_top), "q_threshold": db.q_threshold,
      "top_matched": t.n_top_matched, "top_share": t.top_share,
      "rest_matched": t.n_rest_matched, "rest": t.n_rest, "rest_share": t.rest_share,
      "background_draws": int(bg.shape[0]), "background_mean": float(bg.mean()),
      "background_2.5%": float(np.quantile(bg, 0.025)),
      "background_97.5%": float(np.quantile(bg, 0.975)),
      "permutation_p": t.permutation_p, "fisher_odds_ratio": t.fisher_odds_ratio,
      "fisher_p": t.fisher_p,
      "assembled_motifs": len(db.contigs),
      "assembled_matched": int(sum(db.contig_matches.q <= db.q_threshold)
                               if db.contig_matches else 0),
      "top_assembled_kmers": db.top_assembled,
      "background_assembled_mean": float(db.background_assembled.mean())
                                   if db.background_assembled.size else None,
      "assembled_permutation_p": float(
          (1 + np.sum(db.background_assembled >= db.top_assembled))
          / (1 + db.background_assembled.size)),
      "correlations": [correlation_row(table, db.top, c) for c in comparisons],
  }


def markdown(table: table_lib.KmerTable, db: database.DatabaseResult,
             comparisons: list[enrichment.Comparison], s: dict[str, Any],
             best: int = 25) -> str:
  """report.md: inputs, the database test, the best matches, assembled motifs, enrichment."""
  t = db.test
  k = table.k
  lines = [
      "# Motif analysis of top-NPMI 6-mers", "",
      f"- NPMI table: `{table.source}`",
      f"- top K = {t.n_top} {k}-mers by NPMI; database: {db.selection}",
      f"- Tomtom (memelite), both strands; a {k}-mer matches when its best JASPAR matrix has "
      f"q <= {db.q_threshold} (Benjamini-Hochberg over that {k}-mer's p-values against every "
      "matrix)",
      f"- background: {t.background_shares.shape[0]} draws of {t.n_top} {k}-mers from the rest "
      f"of the table with the top-K's GC-count distribution (seed {s['args'].get('seed')})", "",
      "## Do top-NPMI 6-mers match JASPAR motifs more often than GC-matched 6-mers?", "",
      "| set | matched | share |", "|---|---|---|",
      f"| top {t.n_top} by NPMI | {t.n_top_matched} / {t.n_top} | {t.top_share:.3f} |",
      f"| GC-matched background (mean of {t.background_shares.shape[0]} draws) | | "
      f"{s['background_mean']:.3f} (95% of draws in {s['background_2.5%']:.3f}"
      f"..{s['background_97.5%']:.3f}) |",
      f"| rest of the table | {t.n_rest_matched} / {t.n_rest} | {t.rest_share:.3f} |", "",
      "Permutation p-value (top share >= background share): "
      f"**{_perm_p(t.permutation_p, t.background_shares.shape[0])}**; "
      f"Fisher's exact test, top vs rest (one-sided): odds ratio {t.fisher_odds_ratio:.2f}, "
      f"p = **{_g(t.fisher_p)}**.", "",
      f"## Best matches among the top {t.n_top}", "",
      f"The {best} smallest q-values (all rows: `top_matches.csv`; every {k}-mer: "
      "`kmer_matches.csv`).", "",
      f"| {k}-mer | NPMI rank | JASPAR ID | TF | q-value | p-value | strand |",
      "|---|---|---|---|---|---|---|"]
  top_rows = [r for r in kmer_rows(table, db) if r["in_top"]]
  for r in sorted(top_rows, key=lambda r: (r["q_value"], r["npmi_rank"]))[:best]:
    lines.append(f"| {r['kmer']} | {r['npmi_rank']} | {r['jaspar_id']} | {r['tf_name']} | "
                 f"{_g(r['q_value'])} | {_g(r['p_value'])} | {r['strand']} |")
  lines += ["", "![logos](logos.png)", "",
            f"## Longer motifs assembled from overlapping top-{t.n_top} 6-mers", "",
            f"{s['top_assembled_kmers']} of the top {t.n_top} {k}-mers chain into "
            f"{len(db.contigs)} longer motifs (unitigs of their de Bruijn graph, one of each "
            f"reverse-complement pair); GC-matched draws chain "
            f"{s['background_assembled_mean']:.1f} on average (permutation p = "
            f"{_g(s['assembled_permutation_p'])}). {s['assembled_matched']} of the "
            f"{len(db.contigs)} match a JASPAR matrix at q <= {db.q_threshold}.", ""]
  if db.contigs:
    lines += ["| motif | bp | NPMI ranks | JASPAR ID | TF | q-value | strand |",
              "|---|---|---|---|---|---|---|"]
    for r in contig_rows(table, db)[:best]:
      lines.append(f"| {r['motif']} | {r['length']} | {r['npmi_ranks']} | {r['jaspar_id']} | "
                   f"{r['tf_name']} | {_g(r['q_value'])} | {r['strand']} |")
    lines.append("")
  lines += ["![background](background.png)", ""]
  if comparisons:
    lines += ["## Sequence side: NPMI vs enrichment in the few-shot training sets", "",
              "Per 6-mer: sequences of each class that contain it (forward strand), log-odds "
              "with pseudo-count 0.5, Fisher's exact p. Spearman's rho of NPMI vs log-odds over "
              "the scored 6-mers; permutation p-values shuffle NPMI over all 6-mers, or only "
              "within 6-mers of equal GC count (beyond GC content).", "",
              "| task | classes | sequences (pos / neg) | rho | p (asympt.) | p (perm.) | "
              "rho within GC | p (perm. within GC) | mean log-odds top / rest | top enriched / "
              "depleted (Fisher p <= 0.05) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in s["correlations"]:
      lines.append(
          f"| {r['task']} | {r['positive']} vs {r['negative']} | {r['n_pos']} / {r['n_neg']} | "
          f"{r['spearman_rho']:+.3f} | {_g(r['p_asymptotic'])} | "
          f"{_perm_p(r['p_permutation'], r['permutations'])} | {r['rho_within_gc']:+.3f} | "
          f"{_perm_p(r['p_permutation_gc'], r['permutations'])} | {r['top_mean_log_odds']:+.3f} / "
          f"{r['rest_mean_log_odds']:+.3f} | {r['top_enriched_p05']} / "
          f"{r['top_depleted_p05']} |")
    lines += ["", "Training files: " + "; ".join(
        f"{c.task}: {len(c.files)} files" + (f", {c.dropped} with two labels dropped"
                                             if c.dropped else "")
        for c in comparisons if c.positive == 1), "",
              "![NPMI vs enrichment](npmi_vs_enrichment.png)", ""]
  return "\n".join(lines)


# ------------------------------------------------------------------------------ figures


def _figure(width: float, height: float):
  # Heavy: figures only.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top  (heavy: figures only)
  fig = Figure(figsize=(width, height))
  FigureCanvasAgg(fig)
  return fig


def _logo(ax, probs: np.ndarray, start: int) -> None:
  import logomaker  # pylint: disable=g-import-not-at-top  (the motifs extra: logos only)
  import pandas as pd  # pylint: disable=g-import-not-at-top  (heavy: logos only)
  df = pd.DataFrame(probs.T, columns=list(_LETTERS), index=np.arange(probs.shape[1]) + start)
  info = logomaker.transform_matrix(df, from_type="probability", to_type="information")
  logomaker.Logo(info, ax=ax, show_spines=False)
  ax.set_ylim(0, 2)
  ax.set_yticks([0, 2])


def plot_logos(table: table_lib.KmerTable, db: database.DatabaseResult, path: str,
               n: int = 6) -> int:
  """PNG: the n best-matched top-K 6-mers (distinct TFs) above their JASPAR logos.

  Returns:
    The number of pairs drawn.
  """
  m = db.kmers
  order = sorted(db.top.tolist(), key=lambda i: (m.q[i], table.rank[i]))
  picked, names = [], set()
  for i in order:
    if m.q[i] > db.q_threshold or len(picked) >= n:
      break
    name = m.motifs[int(m.target[i])].name
    if name not in names:
      names.add(name)
      picked.append(i)
  fig = _figure(7, 1.9 * max(len(picked), 1))
  if not picked:
    ax = fig.add_subplot(1, 1, 1)
    ax.axis("off")
    ax.text(0.5, 0.5, f"no top-{len(db.top)} 6-mer matches at q <= {db.q_threshold}",
            ha="center", va="center")
  grid = fig.add_gridspec(2 * max(len(picked), 1), 1, hspace=0.9)
  for j, i in enumerate(picked):
    motif = m.motifs[int(m.target[i])]
    probs = motif.probabilities
    if m.strand[i]:
      probs = probs[::-1, ::-1]  # Reverse complement: rows A C G T reversed are T G C A.
    off = int(m.offset[i])
    lo, hi = min(0, off), max(probs.shape[1], off + table.k)
    ax1 = fig.add_subplot(grid[2 * j, 0])
    _logo(ax1, database.one_hot(table.kmers[i]), off)
    ax1.set_xlim(lo - 0.5, hi - 0.5)
    ax1.set_xticks([])
    ax1.set_title(f"{table.kmers[i]} (NPMI rank {table.rank[i]})  vs  {motif.matrix_id} "
                  f"{motif.name}{' (rev. comp.)' if m.strand[i] else ''}, q = {_g(m.q[i])}",
                  fontsize=8, loc="left")
    ax2 = fig.add_subplot(grid[2 * j + 1, 0])
    _logo(ax2, probs, 0)
    ax2.set_xlim(lo - 0.5, hi - 0.5)
    ax2.set_xticks([])
  fig.savefig(path, dpi=100)
  return len(picked)


def plot_background(db: database.DatabaseResult, path: str) -> None:
  """PNG: histograms of the background's matched shares and assembled counts, top-K marked."""
  fig = _figure(9, 3.2)
  t = db.test
  ax = fig.add_subplot(1, 2, 1)
  ax.hist(t.background_shares, bins=30, color="0.6")
  ax.axvline(t.top_share, color="C3", lw=2, label=f"top {t.n_top}: {t.top_share:.2f}")
  ax.set_xlabel(f"share with a JASPAR match (q <= {db.q_threshold})")
  ax.set_ylabel("GC-matched draws")
  ax.set_title(f"permutation p = {_perm_p(t.permutation_p, t.background_shares.shape[0])}",
               fontsize=9)
  ax.legend(fontsize=8)
  ax = fig.add_subplot(1, 2, 2)
  if db.background_assembled.size:
    ax.hist(db.background_assembled, bins=30, color="0.6")
  ax.axvline(db.top_assembled, color="C3", lw=2, label=f"top {t.n_top}: {db.top_assembled}")
  ax.set_xlabel("6-mers that chain into longer motifs")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def plot_enrichment(table: table_lib.KmerTable, top: np.ndarray,
                    comparisons: list[enrichment.Comparison], path: str) -> None:
  """PNG: NPMI vs log-odds, one panel per comparison, the top-K in colour."""
  n = len(comparisons)
  cols = min(n, 3)
  rows = -(-n // cols)
  fig = _figure(4.2 * cols, 3.6 * rows)
  scored = table.scored.copy()
  in_top = np.zeros(len(table.kmers), bool)
  in_top[top] = True
  for j, c in enumerate(comparisons):
    ax = fig.add_subplot(rows, cols, j + 1)
    rest = scored & ~in_top
    ax.scatter(table.score[rest], c.log_odds[rest], s=3, color="0.6", alpha=0.5,
               label="other 6-mers")
    ax.scatter(table.score[top], c.log_odds[top], s=8, color="C3", label=f"top {len(top)}")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("NPMI")
    ax.set_ylabel(f"log-odds, label {c.positive} vs {c.negative}")
    r = c.correlation
    ax.set_title(f"{c.task}: rho = {r.rho:+.3f}, perm. p = {_g(r.p_permutation)}\n"
                 f"within GC rho = {r.rho_within_gc:+.3f}, p = {_g(r.p_permutation_gc)} "
                 f"({c.n_pos}/{c.n_neg} seqs)",
                 fontsize=8)
    if j == 0:
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def write_all(out_dir: str, table: table_lib.KmerTable, db: database.DatabaseResult,
              comparisons: list[enrichment.Comparison], args: dict[str, Any]) -> list[str]:
  """Writes every output file into out_dir; returns their names."""
  os.makedirs(out_dir, exist_ok=True)
  j = lambda name: os.path.join(out_dir, name)
  written = []
  rows = kmer_rows(table, db)
  write_csv(rows, j("kmer_matches.csv"))
  write_csv([r for r in rows if r["in_top"]], j("top_matches.csv"), list(rows[0]))
  written += ["kmer_matches.csv", "top_matches.csv"]
  crow = contig_rows(table, db)
  write_csv(crow, j("assembled_motifs.csv"),
            list(crow[0]) if crow else ["motif", "length", "kmers", "npmi_ranks", "jaspar_id",
                                        "tf_name", "p_value", "q_value", "strand", "offset",
                                        "overlap", "matched"])
  bg = db.test.background_shares
  asm = db.background_assembled
  write_csv([{"draw": d, "matched_share": float(bg[d]),
              "assembled_kmers": int(asm[d]) if d < asm.size else ""}
             for d in range(bg.shape[0])], j("background.csv"),
            ["draw", "matched_share", "assembled_kmers"])
  written += ["assembled_motifs.csv", "background.csv"]
  for c in comparisons:
    name = f"enrichment_{c.task}_{c.positive}v{c.negative}.csv"
    write_csv(enrichment_rows(table, c), j(name))
    written.append(name)
  s = summary(table, db, comparisons, args)
  if comparisons:
    write_csv(s["correlations"], j("correlations.csv"))
    written.append("correlations.csv")
  with open(j("summary.json"), "w", encoding="ascii") as f:
    json.dump(s, f, indent=2)
  plot_logos(table, db, j("logos.png"))
  plot_background(db, j("background.png"))
  written += ["summary.json", "logos.png", "background.png"]
  if comparisons:
    plot_enrichment(table, db.top, comparisons, j("npmi_vs_enrichment.png"))
    written.append("npmi_vs_enrichment.png")
  with open(j("report.md"), "w", encoding="utf-8") as f:
    f.write(markdown(table, db, comparisons, s))
  written.append("report.md")
  return written
