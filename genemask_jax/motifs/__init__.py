"""Motif analysis: do top-NPMI 6-mers match conserved DNA motifs (the paper's third claim)?

Library modules (the command line is `genemask_jax.motifs.__main__`):

* `table`: the 6-mer NPMI table (ours or the authors' CSV) as k-mer strings, scores, ranks;
  `MotifsError`, the user-error class of the whole package;
* `database`: JASPAR releases shipped by pyjaspar, Tomtom matching (memelite), the
  GC-matched background and its tests, motifs assembled from overlapping 6-mers;
* `enrichment`: per few-shot task, each 6-mer's enrichment in the positive vs the negative
  class of the training sets, and its Spearman correlation with NPMI;
* `report`: CSV files, ``report.md``, ``summary.json`` and PNG figures.

Needs the ``motifs`` extra: ``pip install '.[motifs]'`` (pyjaspar, memelite, logomaker,
scipy).
"""
