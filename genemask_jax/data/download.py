"""Downloads hg38 and the four few-shot benchmarks into a data dir.

The data dir gets the same layout as the project's shared data (``fewshot/<task>/...``,
``npmi/...``, ``genome/...``), so ``GENEMASK_DATA_DIR`` can point at it::

  python -m genemask_jax.data.download --data_dir=~/genemask_data \
      --what=fewshot,npmi,chr1,chr2,chr3      # or --what=fewshot,npmi,hg38 (938 MB)

Every URL is in `URLS` below, keyed by the relative path the file gets; ``--base_url``
replaces every source by ``BASE_URL/<relative path>`` (a mirror of a data dir, or a local
server in tests). Each file streams into ``<name>.part`` and is renamed only when
complete, so an interrupted or failed download never leaves a file that looks finished;
files already present are skipped.
"""

from __future__ import annotations

import http.client
import os
import pathlib
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Iterable, Sequence

from genemask_jax import errors

_UCSC = "https://hgdownload.soe.ucsc.edu/goldenPath/hg38/"
_GENEMASK = "https://raw.githubusercontent.com/roysoumya/GeneMask/HEAD/"
_FEWSHOT = _GENEMASK + "Data-B_fewshot-task-datasets/"
_GUE = "https://huggingface.co/datasets/leannmlindsey/GUE/resolve/main/GUE/"
HG38_CHROMOSOMES = tuple(f"chr{c}" for c in [*range(1, 23), "X", "Y"])

_SHOTS = {"Prom-core": (10, 50, 100, 500, 1000), "Prom-300": (10, 50, 100, 500, 1000),
          "Cohn-enh": (10, 50, 100, 500)}

# Relative path in the data dir -> public URL. None: no direct public URL of that exact
# file is known; fetch it from a mirror with --base_url or place it by hand.
URLS: dict[str, str | None] = {
    # UCSC hg38, soft-masked, whole genome or one file per chromosome.
    "genome/hg38.fa.gz": _UCSC + "bigZips/hg38.fa.gz",
    **{f"genome/hg38/{c}.fa.gz": _UCSC + f"chromosomes/{c}.fa.gz" for c in HG38_CHROMOSOMES},
    # The GeneMask authors' repository (GPL-3.0): few-shot train files and two test sets.
    **{f"fewshot/{task}/{n}/train.tsv": _FEWSHOT + f"{task}/{n}/train.tsv"
       for task, shots in _SHOTS.items() for n in shots},
    "fewshot/Prom-core/test.tsv": _FEWSHOT + "Prom-core/test.tsv",
    **{f"fewshot/Splice-40/{n}/train_splice40_{n}.tsv":
       _FEWSHOT + f"Splice-40/{n}/train_splice40_{n}.tsv" for n in (10, 50, 100, 500)},
    "fewshot/Splice-40/test.tsv": _FEWSHOT + "Splice-40/full-dataset/test.tsv",
    "fewshot/Splice-40/full-dataset/test.tsv": _FEWSHOT + "Splice-40/full-dataset/test.tsv",
    "fewshot/Splice-40/full-dataset/dev.tsv": _FEWSHOT + "Splice-40/full-dataset/dev.tsv",
    # GUE prom_300_all test split (Apache-2.0), the Prom-300 proxy test set.
    "fewshot/Prom-300/gue_prom_300_all_test.csv": _GUE + "prom_300_all/test.csv",
    # genomic-benchmarks human_enhancers_cohn test split (Apache-2.0) as a CSV with raw
    # bases: the project ships coordinates only (datasets/human_enhancers_cohn/test/
    # *.csv.gz, to be cut from hg38), so no direct URL of this file is known.
    "fewshot/Cohn-enh/test.csv": None,
    # The authors' published 6-mer NPMI ranking (their Data-A).
    "npmi/genemask_grch38_chr1-3_6mer_npmi.csv": _GENEMASK + "Data-A_norm-pmi-score-ranking.csv",
}

# --what names -> relative paths.
GROUPS: dict[str, tuple[str, ...]] = {
    "fewshot": tuple(p for p in URLS if p.startswith("fewshot/")),
    "npmi": tuple(p for p in URLS if p.startswith("npmi/")),
    "hg38": ("genome/hg38.fa.gz",),
    **{c: (f"genome/hg38/{c}.fa.gz",) for c in HG38_CHROMOSOMES},
}
DEFAULT_WHAT = ("fewshot", "npmi", "hg38")


class DownloadError(errors.UserError):
  """A file could not be fetched; the message names the URL and why."""


def resolve(what: Iterable[str], base_url: str | None = None) -> dict[str, str]:
  """Relative path -> URL for the named groups (see GROUPS), with the base-URL override.

  Raises:
    ValueError: an unknown group name, or a file with no public URL and no base_url.
  """
  paths: list[str] = []
  for name in what:
    if name not in GROUPS:
      raise ValueError(f"unknown download {name!r}; expected some of {sorted(GROUPS)}")
    paths.extend(p for p in GROUPS[name] if p not in paths)
  out = {}
  for rel in paths:
    if base_url:
      out[rel] = base_url.rstrip("/") + "/" + urllib.parse.quote(rel)
    elif URLS[rel] is None:
      raise ValueError(f"{rel}: no public URL of this file is known (see download.URLS); "
                       "pass --base_url of a mirror or copy the file into the data dir")
    else:
      out[rel] = URLS[rel]
  return out


def fetch(url: str, dest: str | os.PathLike, timeout: float = 60.0,
          chunk_bytes: int = 1 << 20) -> int:
  """Streams url to dest via dest + '.part' and an atomic rename; returns the byte count.

  Raises:
    DownloadError: HTTP error, unreachable host or a short transfer; nothing is left at
      dest or dest.part.
  """
  dest = pathlib.Path(dest)
  dest.parent.mkdir(parents=True, exist_ok=True)
  part = dest.with_name(dest.name + ".part")
  try:
    req = urllib.request.Request(url, headers={"User-Agent": "genemask-jax-download"})
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(part, "wb") as f:
      expected = resp.headers.get("Content-Length")
      shutil.copyfileobj(resp, f, chunk_bytes)
      size = f.tell()
    if expected is not None and size != int(expected):
      raise DownloadError(f"{url}: transfer ended after {size} of {expected} bytes")
  except urllib.error.HTTPError as e:
    part.unlink(missing_ok=True)
    raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
  except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
    part.unlink(missing_ok=True)
    raise DownloadError(f"{url}: {getattr(e, 'reason', None) or e!r}") from e
  except BaseException:
    part.unlink(missing_ok=True)
    raise
  os.replace(part, dest)
  return size


def download(data_dir: str | os.PathLike, what: Sequence[str] = DEFAULT_WHAT,
             base_url: str | None = None, timeout: float = 60.0,
             log: Callable[[str], None] = print) -> dict[str, list[str]]:
  """Fetches the named groups into data_dir, skipping files already there.

  Args:
    data_dir: destination; created if missing.
    what: group names from GROUPS ("fewshot", "npmi", "hg38", "chr1", ...).
    base_url: replaces every source by base_url/<relative path>.
    timeout: seconds per connection attempt.
    log: progress messages.

  Returns:
    {"downloaded": [relative paths], "skipped": [relative paths]}.
  """
  urls = resolve(what, base_url)  # Unknown names fail before any transfer.
  data_dir = pathlib.Path(data_dir)
  done: dict[str, list[str]] = {"downloaded": [], "skipped": []}
  for rel, url in urls.items():
    dest = data_dir / rel
    if dest.is_file():
      done["skipped"].append(rel)
      continue
    size = fetch(url, dest, timeout)
    log(f"{rel}: {size:,} bytes from {url}")
    done["downloaded"].append(rel)
  return done


def main(argv: Sequence[str]) -> None:
  """absl entry point; flags are defined in `run`."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  try:
    done = download(os.path.expanduser(f.data_dir), f.what, f.base_url or None, f.timeout)
  except (DownloadError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(1) from e
  print(f"{len(done['downloaded'])} file(s) downloaded, {len(done['skipped'])} already "
        f"present, in {f.data_dir}")


def _define_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("data_dir", None, "destination data dir", required=True)
  flags.DEFINE_list("what", list(DEFAULT_WHAT),
                    "what to fetch: fewshot, npmi, hg38 (whole genome) or chr1..chr22, chrX, "
                    "chrY")
  flags.DEFINE_string("base_url", "", "mirror: fetch BASE_URL/<relative path> instead")
  flags.DEFINE_float("timeout", 60.0, "seconds per connection attempt")


def run() -> None:
  """Console-script entry point."""
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
