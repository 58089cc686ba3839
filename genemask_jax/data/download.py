"""Downloads hg38 and the four few-shot benchmarks into a data dir.

The data dir gets the same layout as the project's shared data (``fewshot/<task>/...``,
``npmi/...``, ``genome/...``), so ``GENEMASK_DATA_DIR`` can point at it::

  python -m genemask_jax.data.download --data_dir=~/genemask_data \
      --what=fewshot,npmi,chr1,chr2,chr3      # or --what=fewshot,npmi,hg38 (938 MB)

Every URL is in `URLS` below, keyed by the relative path the file gets; ``--base_url``
replaces every source by ``BASE_URL/<relative path>`` (a mirror of a data dir, or a local
server in tests). Each file streams into ``<name>.part`` and is renamed only when it is
complete and verified, so an interrupted or failed download never leaves a file that looks
finished. Verified: the byte count against Content-Length; for ``.gz`` files the whole gzip
stream (CRC and length); the first line (the expected header of each CSV/TSV, ``>`` for
FASTA), so an HTML error page served with status 200 is rejected; and the md5 where the
source publishes a checksum list (UCSC's ``md5sum.txt`` for hg38 and its chromosomes). A file
already present is verified the same way (without the network, but for the checksum list)
and downloaded again if it fails. Errors are one line, exit code 2.

GUE (DNABERT-2's benchmark, 28 tasks) is published as one archive with no stable direct URL
(a Google Drive file), so ``--what=gue`` needs ``--url=URL`` of a copy or ``--file=GUE.zip``
already on disk (zip or tar, optionally gzip/bzip2/xz compressed)::

  python -m genemask_jax.data.download --data_dir=~/genemask_data --what=gue --file=GUE.zip

It lands as ``DATA_DIR/GUE/<category>/<task>/{train,dev,test}.csv`` (GUE's own layout, e.g.
``GUE/prom/prom_300_all/test.csv``; see `GUE_TASKS`), unpacked into ``DATA_DIR/.GUE.part``
and renamed into place only once verified: every member's CRC (zip) or the whole
compressed stream (tar) reads back intact, every one of the 28 task folders holds the three
splits, each starting with the ``sequence,label`` header, and no member points outside the
archive's folder. A ``GUE`` folder already there that passes the same folder checks is kept.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import lzma
import os
import pathlib
import shutil
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from typing import Callable, Iterable, Sequence

from absl import app
from absl import flags

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

# GUE (Zhou et al. 2023, DNABERT-2): <category>/<task> folders, each with these splits.
GUE = "gue"  # --what name
GUE_DIR = "GUE"  # its folder in the data dir
GUE_SPLITS = ("train.csv", "dev.csv", "test.csv")
GUE_TASKS: tuple[str, ...] = (
    *(f"EMP/{m}" for m in ("H3", "H3K14ac", "H3K36me3", "H3K4me1", "H3K4me2", "H3K4me3",
                           "H3K79me3", "H3K9ac", "H4", "H4ac")),
    *(f"mouse/{i}" for i in range(5)),
    *(f"prom/prom_{w}_{s}" for w in ("300", "core") for s in ("all", "notata", "tata")),
    "splice/reconstructed",
    *(f"tf/{i}" for i in range(5)),
    "virus/covid",
)


# The checksum lists UCSC publishes next to the genome files ("<md5>  <file name>" lines),
# by the relative path they get in a mirror of the data dir.
CHECKSUM_LISTS: dict[str, str] = {
    "genome/md5sum.txt": _UCSC + "bigZips/md5sum.txt",
    "genome/hg38/md5sum.txt": _UCSC + "chromosomes/md5sum.txt",
}

# The header every table must start with (columns, quotes stripped), by file name pattern.
_NPMI_COLUMNS = ("ngram", "naive.pmi", "true.pmi", "dp.true.pmi", "norm_dp_true_pmi",
                 "ngram_size", "naive.pmi.rank", "dp.true.pmi.rank", "norm_dp_true_pmi_rank",
                 "adv_pmi_rank_drop", "norm_adv_pmi_rank_drop", "norm_pmi_rank_rel")


class DownloadError(errors.UserError):
  """A file could not be fetched or is not what it should be; the message names it and why."""


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


def checksum_list(rel: str) -> str | None:
  """The relative path of the checksum list that covers ``rel`` (None: none published)."""
  if rel.startswith("genome/hg38/"):
    return "genome/hg38/md5sum.txt"
  if rel == "genome/hg38.fa.gz":
    return "genome/md5sum.txt"
  return None


def expected_header(rel: str) -> tuple[str, tuple[str, ...]] | None:
  """(delimiter, columns) a table ``rel`` must start with; None for FASTA files."""
  name = rel.rsplit("/", 1)[-1]
  if rel.startswith("npmi/"):
    return ",", _NPMI_COLUMNS
  if name == "test.csv" and "/Cohn-enh/" in "/" + rel:
    return ",", ("sequence", "target", "numeric_label")
  if name.endswith(".csv"):
    return ",", ("sequence", "label")
  if name.endswith(".tsv"):
    return "\t", ("sequence", "label")
  return None


def _check_first_line(first: bytes, rel: str, where: str, content_type: str = "") -> None:
  """Raises DownloadError unless the file's first line is what ``rel`` needs."""
  line = first.split(b"\n", 1)[0].rstrip(b"\r")
  if line.startswith(b"\xef\xbb\xbf"):
    line = line[3:]
  shown = line[:80].decode("ascii", "replace")
  html = (b"<html" in first[:1024].lower() or b"<!doctype" in first[:1024].lower()
          or "html" in content_type)
  why = " (an HTML page: an error or login page served as the file)" if html else ""
  header = expected_header(rel)
  if header is None:
    if not line.startswith(b">"):
      raise DownloadError(f"{where}: expected FASTA (a first line starting with '>'), got "
                          f"{shown!r}{why}")
    return
  delimiter, columns = header
  got = tuple(c.strip().strip('"') for c in line.decode("ascii", "replace").split(delimiter))
  if got != columns:
    sep = "tab" if delimiter == "\t" else repr(delimiter)
    raise DownloadError(f"{where}: expected the header {', '.join(columns)} (separated by "
                        f"{sep}), got {shown!r}{why}")


def verify_file(path: str | os.PathLike, rel: str, md5: str | None = None,
                content_type: str = "") -> str:
  """Checks a downloaded (or present) file; returns its md5 hex digest.

  Checks: a ``.gz`` file decompresses completely (its CRC and length trailer match), the
  first line is the expected header (tables) or a FASTA header line, and the md5 equals
  ``md5`` if given.

  Raises:
    DownloadError: naming ``path`` and what is wrong.
  """
  path = pathlib.Path(path)
  digest = hashlib.md5()
  first = b""
  try:
    with open(path, "rb") as raw:
      if rel.endswith(".gz"):
        hashing = _HashingReader(raw, digest)
        with gzip.GzipFile(fileobj=hashing) as gz:
          while True:
            block = gz.read(1 << 20)
            if not block:
              break
            if len(first) < 4096:
              first += block[:4096]
      else:
        while True:
          block = raw.read(1 << 20)
          if not block:
            break
          digest.update(block)
          if len(first) < 4096:
            first += block[:4096]
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise DownloadError(f"{path}: not a complete gzip file ({e}); the download was cut short "
                        "or the server sent something else") from e
  except OSError as e:
    raise DownloadError(f"{path}: cannot read: {e.strerror or e}") from e
  _check_first_line(first, rel, str(path), content_type)
  hexdigest = digest.hexdigest()
  if md5 is not None and hexdigest != md5.lower():
    raise DownloadError(f"{path}: md5 {hexdigest} differs from the published {md5}")
  return hexdigest


class _HashingReader(io.RawIOBase):
  """A read-only stream that feeds every byte read through ``digest``."""

  def __init__(self, raw, digest):
    super().__init__()
    self._raw, self._digest = raw, digest

  def readable(self) -> bool:
    return True

  def readinto(self, buffer) -> int:
    n = self._raw.readinto(buffer)
    if n:
      self._digest.update(memoryview(buffer)[:n])
    return n or 0


def read_checksums(url: str, timeout: float = 60.0) -> dict[str, str] | None:
  """{file name: md5} from a published md5sum.txt; None if it cannot be fetched.

  Raises:
    DownloadError: the list was fetched but is not in md5sum's format.
  """
  try:
    req = urllib.request.Request(url, headers={"User-Agent": "genemask-jax-download"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
      text = resp.read(1 << 22).decode("ascii", "replace")
  except (urllib.error.URLError, OSError, http.client.HTTPException):
    return None
  out = {}
  for lineno, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    parts = line.split()
    if len(parts) != 2 or len(parts[0]) != 32 or parts[0].strip("0123456789abcdefABCDEF"):
      raise DownloadError(f"{url}:{lineno}: expected '<md5> <file name>', got {line[:80]!r}")
    out[parts[1].lstrip("*")] = parts[0].lower()
  return out


def fetch(url: str, dest: str | os.PathLike, timeout: float = 60.0,
          chunk_bytes: int = 1 << 20, *, rel: str | None = None,
          md5: str | None = None) -> int:
  """Streams url to dest through a temporary file, verifies it, renames it; returns its size.

  Verified before the rename: the byte count against Content-Length, and with ``rel`` (the
  file's relative path in the data dir, which says what it must be) the gzip stream, the
  first line (`verify_file`) and the md5 if given. Nothing is left at dest or next to it
  when any check fails.

  Raises:
    DownloadError: HTTP error, unreachable host, a short transfer or a failed check.
  """
  dest = pathlib.Path(dest)
  try:
    dest.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise DownloadError(f"{dest.parent}: cannot create it: {e.strerror or e}") from e
  part = dest.with_name(dest.name + ".part")
  try:
    req = urllib.request.Request(url, headers={"User-Agent": "genemask-jax-download"})
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(part, "wb") as f:
      expected = resp.headers.get("Content-Length")
      content_type = (resp.headers.get("Content-Type") or "").lower()
      shutil.copyfileobj(resp, f, chunk_bytes)
      size = f.tell()
      f.flush()
      os.fsync(f.fileno())
    if expected is not None and size != int(expected):
      raise DownloadError(f"{url}: transfer ended after {size} of {expected} bytes")
    if rel is not None:
      try:
        verify_file(part, rel, md5, content_type)
      except DownloadError as e:
        raise DownloadError(f"{url}: {str(e).split(': ', 1)[1]}") from e
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
  """Fetches the named groups into data_dir; files already there are verified, not trusted.

  Every file is checked (`fetch`, `verify_file`): size, gzip integrity, first line, and
  the md5 where the source publishes a checksum list (UCSC's md5sum.txt for hg38; with
  ``base_url``, the mirror's ``genome/md5sum.txt`` / ``genome/hg38/md5sum.txt`` if it has
  them). A file already present that passes the same checks is skipped; one that fails is
  downloaded again (the old one is replaced only by a verified new one).

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
  lists: dict[str, dict[str, str] | None] = {}
  for rel, url in urls.items():
    dest = data_dir / rel
    md5, note = None, ""
    list_rel = checksum_list(rel)
    if list_rel is not None:
      list_url = (base_url.rstrip("/") + "/" + urllib.parse.quote(list_rel) if base_url
                  else CHECKSUM_LISTS[list_rel])
      if list_rel not in lists:
        lists[list_rel] = read_checksums(list_url, timeout)
      sums = lists[list_rel]
      md5 = sums.get(rel.rsplit("/", 1)[-1]) if sums is not None else None
      note = ("md5 verified" if md5 else
              f"no md5 for it in {list_url}" if sums is not None else
              f"no checksum list at {list_url}: size, gzip and header checked only")
    if dest.is_file():
      try:
        verify_file(dest, rel, md5)
      except DownloadError as e:
        log(f"{rel}: present but fails its check ({e}); downloading it again")
      else:
        done["skipped"].append(rel)
        continue
    size = fetch(url, dest, timeout, rel=rel, md5=md5)
    log(f"{rel}: {size:,} bytes from {url}" + (f" ({note})" if note else ""))
    done["downloaded"].append(rel)
  return done


# ------------------------------------------------------------------------------ GUE
_GUE_SOURCE = ("--what=gue needs exactly one of --url=URL (of GUE's archive) or --file=GUE.zip;"
               " GUE has no stable direct URL (DNABERT-2 publishes GUE.zip on Google Drive)")


def _gue_member(name: str) -> str | None:
  """``<category>/<task>/<split>`` of an archive member that is a GUE split, else None.

  Any leading folders (``GUE/``, ``data/GUE/``) are dropped; macOS metadata is ignored.
  """
  parts = [p for p in name.replace("\\", "/").split("/") if p and p != "."]
  if len(parts) < 3 or "__MACOSX" in parts or parts[-1] not in GUE_SPLITS:
    return None
  rel = "/".join(parts[-3:])
  return rel if rel.rsplit("/", 1)[0] in GUE_TASKS else None


def _unsafe(name: str) -> bool:
  parts = name.replace("\\", "/").split("/")
  return name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":")


def check_gue_dir(root: str | os.PathLike, where: str | None = None) -> None:
  """Raises `DownloadError` unless ``root`` holds every GUE task's three splits, each a
  ``sequence,label`` CSV."""
  root = pathlib.Path(root)
  where = where or str(root)
  missing = [f"{t}/{s}" for t in GUE_TASKS for s in GUE_SPLITS if not (root / t / s).is_file()]
  if missing:
    raise DownloadError(f"{where}: {len(missing)} of the {len(GUE_TASKS) * 3} GUE split files "
                        f"are missing, e.g. {', '.join(missing[:3])}; expected GUE's layout "
                        "<category>/<task>/{train,dev,test}.csv (as in DNABERT-2's GUE.zip)")
  for task in GUE_TASKS:
    for split in GUE_SPLITS:
      with open(root / task / split, "rb") as f:
        first = f.read(4096)
      _check_first_line(first, f"{GUE_DIR}/{task}/{split}", f"{where}/{task}/{split}")


def _extract_gue(archive: pathlib.Path, dest: pathlib.Path, where: str) -> int:
  """Unpacks the GUE splits of a zip or tar archive into ``dest``; returns the file count.

  Raises:
    DownloadError: not a zip/tar, a corrupt member or stream, or a path outside the archive.
  """
  count = 0
  try:
    if zipfile.is_zipfile(archive):
      with zipfile.ZipFile(archive) as zf:
        bad = zf.testzip()  # Reads every member: CRC-32 and decompression.
        if bad is not None:
          raise DownloadError(f"{where}: member {bad} fails its CRC check; the archive is "
                              "damaged (download it again)")
        for info in zf.infolist():
          if _unsafe(info.filename):
            raise DownloadError(f"{where}: member {info.filename!r} points outside the "
                                "archive's folder; refusing to unpack it")
          rel = _gue_member(info.filename)
          if rel is None or info.is_dir():
            continue
          (dest / rel).parent.mkdir(parents=True, exist_ok=True)
          with zf.open(info) as src, open(dest / rel, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
          count += 1
      return count
    if tarfile.is_tarfile(archive):
      with tarfile.open(archive, "r:*") as tf:
        for member in tf:  # Streams the whole archive: a cut-short stream fails here.
          if _unsafe(member.name):
            raise DownloadError(f"{where}: member {member.name!r} points outside the "
                                "archive's folder; refusing to unpack it")
          rel = _gue_member(member.name)
          if rel is None:
            continue
          if not member.isfile():
            raise DownloadError(f"{where}: member {member.name!r} is a link or device, not "
                                "a file")
          src = tf.extractfile(member)
          (dest / rel).parent.mkdir(parents=True, exist_ok=True)
          with src, open(dest / rel, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
          count += 1
      return count
  except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile,
          lzma.LZMAError) as e:
    raise DownloadError(f"{where}: damaged or truncated archive ({type(e).__name__}: {e})") from e
  except OSError as e:
    raise DownloadError(f"{where}: cannot unpack: {e.strerror or e}") from e
  raise DownloadError(f"{where}: neither a zip nor a tar archive; expected GUE's archive "
                      "(GUE.zip from DNABERT-2)")


def download_gue(data_dir: str | os.PathLike, *, url: str | None = None,
                 file: str | os.PathLike | None = None, timeout: float = 60.0,
                 log: Callable[[str], None] = print) -> str:
  """Unpacks GUE's archive (from ``url`` or a local ``file``) into ``DATA_DIR/GUE``.

  Verified before it is moved into place (see the module docstring); a ``GUE`` folder
  already present that passes the folder checks is kept as it is.

  Returns:
    "downloaded" or "skipped".

  Raises:
    DownloadError: no source or two, an unreachable URL, a damaged archive, missing tasks
      or splits, a CSV without the ``sequence,label`` header. Nothing is left behind.
  """
  if (url is None) == (file is None):
    raise DownloadError(_GUE_SOURCE)
  if file is not None and not pathlib.Path(file).is_file():
    raise DownloadError(f"--file={file}: no such file; expected GUE's archive (GUE.zip)")
  data_dir = pathlib.Path(data_dir)
  final = data_dir / GUE_DIR
  if final.is_dir():
    try:
      check_gue_dir(final)
    except DownloadError as e:
      log(f"{GUE_DIR}: present but fails its check ({e}); unpacking it again")
    else:
      log(f"{GUE_DIR}: present and complete ({len(GUE_TASKS)} tasks); kept")
      return "skipped"
  part = data_dir / f".{GUE_DIR}.part"
  try:
    data_dir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise DownloadError(f"{data_dir}: cannot create it: {e.strerror or e}") from e
  shutil.rmtree(part, ignore_errors=True)
  try:
    part.mkdir()
    if url is not None:
      archive = part / "archive"
      fetch(url, archive, timeout)
      where = url
    else:
      archive = pathlib.Path(file)
      where = str(file)
    unpacked = part / GUE_DIR
    unpacked.mkdir()
    n = _extract_gue(archive, unpacked, where)
    try:
      check_gue_dir(unpacked, where=where)
    except DownloadError as e:
      raise DownloadError(str(e).replace(str(unpacked), where)) from e
    old = data_dir / f".{GUE_DIR}.old"
    if final.exists():
      shutil.rmtree(old, ignore_errors=True)
      os.replace(final, old)
    os.replace(unpacked, final)
    shutil.rmtree(old, ignore_errors=True)
  finally:
    shutil.rmtree(part, ignore_errors=True)
  log(f"{GUE_DIR}: {n} files of {len(GUE_TASKS)} tasks from {where}")
  return "downloaded"


def main(argv: Sequence[str]) -> None:
  """absl entry point; flags are defined in `run`."""
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  what = [w for w in f.what if w != GUE]
  try:
    if GUE not in f.what and (f.url or f.file):
      raise DownloadError("--url and --file give GUE's archive; add --what=gue")
    if GUE in f.what and bool(f.url) == bool(f.file):
      raise DownloadError(_GUE_SOURCE)
    if GUE in f.what and f.file and not os.path.isfile(os.path.expanduser(f.file)):
      raise DownloadError(f"--file={f.file}: no such file; expected GUE's archive (GUE.zip)")
    resolve(what, f.base_url or None)  # Unknown names fail before any transfer.
    done = download(os.path.expanduser(f.data_dir), what, f.base_url or None, f.timeout)
    if GUE in f.what:
      gue = download_gue(os.path.expanduser(f.data_dir), url=f.url or None,
                         file=os.path.expanduser(f.file) if f.file else None,
                         timeout=f.timeout)
      done["downloaded" if gue == "downloaded" else "skipped"].append(GUE_DIR + "/")
  except (DownloadError, ValueError) as e:
    print(f"genemask-download: error: {e}", file=sys.stderr)
    raise SystemExit(2) from e
  print(f"{len(done['downloaded'])} file(s) downloaded, {len(done['skipped'])} already "
        f"present, in {f.data_dir}")


def _define_flags() -> None:
  flags.DEFINE_string("data_dir", None, "destination data dir", required=True)
  flags.DEFINE_list("what", list(DEFAULT_WHAT),
                    "what to fetch: fewshot, npmi, hg38 (whole genome) or chr1..chr22, chrX, "
                    "chrY; gue (with --url or --file)")
  flags.DEFINE_string("url", "", "--what=gue: URL of GUE's archive (zip or tar)")
  flags.DEFINE_string("file", "", "--what=gue: GUE's archive on disk (GUE.zip)")
  flags.DEFINE_string("base_url", "", "mirror: fetch BASE_URL/<relative path> instead")
  flags.DEFINE_float("timeout", 60.0, "seconds per connection attempt")


def run() -> None:
  """Console-script entry point."""
  _define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
