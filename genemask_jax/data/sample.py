"""The small real genome slice the package ships, and the command that regenerates it.

`genome.default_genome_paths` returns it (``data/resources/genome_sample.fa.gz``): 4 Mbp of
N-free GRCh37 chrX and the first 600 GRCh37 chr22 blocks, soft-masking kept, written
reproducibly (gzip mtime 0, a fixed level) from the project's shared genome files::

  python -m genemask_jax.data.sample --make_sample --genome_dir=DATA/genome \
      --out=genemask_jax/data/resources/genome_sample.fa.gz
"""

from __future__ import annotations

import argparse
import gzip
import os
import pathlib
from typing import Sequence

from genemask_jax.data import fasta

_NON_ACGT = bytes(b for b in range(256) if b not in b"ACGT")
SAMPLE_CHRX_FILE = "GRCh37_chrX_1-70M.fa.gz"
SAMPLE_CHR22_FILE = "GRCh37_chr22_blocks.fa.gz"
SAMPLE_CHRX_START = 30_000_000  # 0-based; an N-free stretch of GRCh37 chrX.
SAMPLE_CHRX_BP = 4_000_000
SAMPLE_CHR22_BLOCKS = 600  # The first blocks of the chr22 file, soft-masking kept.


def make_sample(genome_dir: str | os.PathLike, out: str | os.PathLike,
                chrx_start: int = SAMPLE_CHRX_START, chrx_bp: int = SAMPLE_CHRX_BP,
                chr22_blocks: int = SAMPLE_CHR22_BLOCKS, line_width: int = 60) -> dict:
  """Writes the embedded genome slice (gzip FASTA) from the shared GRCh37 files.

  Args:
    genome_dir: directory holding GRCh37_chrX_1-70M.fa.gz and GRCh37_chr22_blocks.fa.gz.
    out: output path (.fa.gz).
    chrx_start: 0-based start of the chrX slice.
    chrx_bp: its length; it must hold no N.
    chr22_blocks: how many chr22 records (from the first) to copy.
    line_width: FASTA line width.

  Returns:
    summary dict: chrx range, chr22 records and bases, output bytes.
  """
  genome_dir = pathlib.Path(genome_dir)
  chrx_path = genome_dir / SAMPLE_CHRX_FILE
  chr22_path = genome_dir / SAMPLE_CHR22_FILE
  fasta.check_files([chrx_path, chr22_path])
  pos, parts = 0, []
  for _, block in fasta.iter_blocks(chrx_path):
    lo, hi = max(chrx_start - pos, 0), min(chrx_start + chrx_bp - pos, len(block))
    if lo < hi:
      parts.append(block[lo:hi])
    pos += len(block)
    if pos >= chrx_start + chrx_bp:
      break
  chrx = b"".join(parts).upper()
  if len(chrx) != chrx_bp or chrx.translate(None, _NON_ACGT) != chrx:
    raise ValueError(f"{chrx_path}: [{chrx_start}, {chrx_start + chrx_bp}) is not an N-free "
                     "stretch inside the record")
  records = [(f"chrX:{chrx_start}-{chrx_start + chrx_bp} GRCh37 chrX (NC_000023.10), 0-based "
              f"half-open, from {SAMPLE_CHRX_FILE}", chrx)]
  n22 = 0
  for record, seq in fasta.iter_records(chr22_path):
    if record.index >= chr22_blocks:
      break
    records.append((record.name, seq))
    n22 += len(seq)
  out = pathlib.Path(out)
  tmp = out.with_name(out.name + ".tmp")
  # mtime=0 and a fixed level make the bytes reproducible.
  with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb",
                                             compresslevel=9, mtime=0) as f:
    for name, seq in records:
      f.write(b">" + name.encode("ascii") + b"\n")
      for i in range(0, len(seq), line_width):
        f.write(seq[i:i + line_width] + b"\n")
  os.replace(tmp, out)
  return {"chrx": (chrx_start, chrx_start + chrx_bp), "chr22_records": len(records) - 1,
          "chr22_bp": n22, "bytes": out.stat().st_size}


def _main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--make_sample", action="store_true", help="write the embedded slice")
  parser.add_argument("--genome_dir", required=True, help="directory with the GRCh37 files")
  parser.add_argument("--out", required=True, help="output .fa.gz")
  args = parser.parse_args(argv)
  if not args.make_sample:
    parser.error("nothing to do; pass --make_sample")
  print(make_sample(args.genome_dir, args.out))


if __name__ == "__main__":
  _main()
