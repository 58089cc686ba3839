"""The download command against a local HTTP server (loopback only) serving the data dir."""
import functools
import gzip
import hashlib
import http.server
import shutil
import subprocess
import sys
import threading

import pytest

from genemask_jax.data import download


class _Handler(http.server.SimpleHTTPRequestHandler):
  """Serves a directory; /broken/... promises 1000 bytes and sends 10."""

  def do_GET(self):  # noqa: N802
    if self.path.startswith("/broken/"):
      self.send_response(200)
      self.send_header("Content-Length", "1000")
      self.end_headers()
      self.wfile.write(b"0123456789")
      self.wfile.flush()
      self.close_connection = True
      return
    super().do_GET()

  def log_message(self, *args):
    pass


@pytest.fixture()
def server(data_dir):
  handler = functools.partial(_Handler, directory=str(data_dir))
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}"
  httpd.shutdown()
  httpd.server_close()


def test_url_table_covers_the_shared_layout(data_dir):
  shared = {p.relative_to(data_dir).as_posix() for p in (data_dir / "fewshot").rglob("*")
            if p.is_file() and p.suffix in (".tsv", ".csv")}
  assert shared <= set(download.GROUPS["fewshot"])
  assert all(u is None or u.startswith("https://") for u in download.URLS.values())
  assert download.URLS["genome/hg38.fa.gz"].endswith("/hg38/bigZips/hg38.fa.gz")


def test_download_reproduces_files_and_skips_present_ones(server, data_dir, tmp_path):
  out = tmp_path / "data"
  done = download.download(out, ["fewshot", "npmi"], base_url=server, log=lambda _: None)
  assert done["skipped"] == [] and len(done["downloaded"]) == len(
      download.GROUPS["fewshot"]) + len(download.GROUPS["npmi"])
  for rel in done["downloaded"]:
    assert (out / rel).read_bytes() == (data_dir / rel).read_bytes(), rel
  assert not list(out.rglob("*.part"))
  again = download.download(out, ["fewshot", "npmi"], base_url=server, log=lambda _: None)
  assert again["downloaded"] == [] and sorted(again["skipped"]) == sorted(done["downloaded"])


def test_http_404_names_the_url_and_leaves_nothing(server, tmp_path):
  out = tmp_path / "data"
  with pytest.raises(download.DownloadError, match=r"genome/hg38/chr21\.fa\.gz: HTTP 404"):
    download.download(out, ["chr21"], base_url=server, log=lambda _: None)
  assert not (out / "genome/hg38/chr21.fa.gz").exists()
  assert not list(out.rglob("*.part"))


def test_short_transfer_leaves_no_file(server, tmp_path):
  dest = tmp_path / "x.fa.gz"
  with pytest.raises(download.DownloadError, match="broken/x"):
    download.fetch(server + "/broken/x", dest, timeout=10)
  assert not dest.exists() and not list(tmp_path.iterdir())


def test_unknown_names_and_unlisted_urls_fail_before_any_transfer(tmp_path):
  with pytest.raises(ValueError, match="unknown download 'chr99'"):
    download.download(tmp_path, ["fewshot", "chr99"])
  with pytest.raises(ValueError, match="Cohn-enh/test.csv: no public URL"):
    download.resolve(["fewshot"])
  assert not list(tmp_path.iterdir())


def test_command_line(server, tmp_path):
  out = tmp_path / "d"
  res = subprocess.run(
      [sys.executable, "-m", "genemask_jax.data.download", f"--data_dir={out}",
       "--what=npmi", f"--base_url={server}"], capture_output=True, text=True, timeout=60)
  assert res.returncode == 0, res.stderr
  assert "1 file(s) downloaded" in res.stdout
  res = subprocess.run(
      [sys.executable, "-m", "genemask_jax.data.download", f"--data_dir={out}",
       "--what=chr1", f"--base_url={server}"], capture_output=True, text=True, timeout=60)
  assert res.returncode == 2 and "HTTP 404" in res.stderr and "chr1.fa.gz" in res.stderr
  (line,) = res.stderr.strip().splitlines()
  assert line.startswith("genemask-download: error: ")


# ----------------------------------------------------------------- verification (#20 item 9)

HTML = (b"<!DOCTYPE html>\n<html><head><title>Rate limited</title></head>"
        b"<body>Try later</body></html>\n")
FASTA = b">chr21\n" + b"ACGTNNNNacgt" * 500 + b"\n"


@pytest.fixture()
def mirror(tmp_path):
  """A mirror dir served on loopback: tests write good or bad files into it."""
  root = tmp_path / "mirror"
  root.mkdir()
  handler = functools.partial(_Handler, directory=str(root))
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
  httpd.shutdown()
  httpd.server_close()


def _put(root, rel, data):
  path = root / rel
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)
  return path


def _quiet(_):
  pass


def test_an_html_page_served_with_200_is_rejected(mirror, tmp_path):
  root, url = mirror
  _put(root, "npmi/genemask_grch38_chr1-3_6mer_npmi.csv", HTML)
  out = tmp_path / "d"
  with pytest.raises(download.DownloadError, match=(
      r"npmi/genemask_grch38_chr1-3_6mer_npmi\.csv: expected the header ngram, naive\.pmi, .*"
      r"got '<!DOCTYPE html>' \(an HTML page")):
    download.download(out, ["npmi"], base_url=url, log=_quiet)
  assert not list(out.rglob("*.csv")) and not list(out.rglob("*.part"))


def test_a_table_with_the_wrong_header_is_rejected(mirror, data_dir, tmp_path):
  root, url = mirror
  for rel in download.GROUPS["fewshot"]:
    if (data_dir / rel).is_file():
      shutil.copy(data_dir / rel, _put(root, rel, b""))
  _put(root, "fewshot/Prom-core/test.tsv", b"seq\tlabel\nAAAAAA\t0\n")
  with pytest.raises(download.DownloadError, match=(
      r"Prom-core/test\.tsv: expected the header sequence, label \(separated by tab\), got "
      r"'seq\\tlabel'")):
    download.download(tmp_path / "d", ["fewshot"], base_url=url, log=_quiet)


def test_a_truncated_gzip_with_a_correct_length_is_rejected(mirror, tmp_path):
  root, url = mirror
  whole = gzip.compress(FASTA * 20)
  _put(root, "genome/hg38/chr21.fa.gz", whole[:len(whole) // 2])  # Served with its own length.
  out = tmp_path / "d"
  with pytest.raises(download.DownloadError, match=r"chr21\.fa\.gz: not a complete gzip file"):
    download.download(out, ["chr21"], base_url=url, log=_quiet)
  assert not (out / "genome/hg38/chr21.fa.gz").exists() and not list(out.rglob("*.part"))
  # A gzip of something that is not FASTA (an HTML page, compressed) is rejected too.
  _put(root, "genome/hg38/chr21.fa.gz", gzip.compress(HTML))
  with pytest.raises(download.DownloadError, match=r"expected FASTA .*got '<!DOCTYPE html>'"):
    download.download(out, ["chr21"], base_url=url, log=_quiet)


def test_md5_from_the_published_list_is_verified(mirror, tmp_path):
  root, url = mirror
  data = gzip.compress(FASTA)
  _put(root, "genome/hg38/chr21.fa.gz", data)
  good = hashlib.md5(data).hexdigest()
  out, logs = tmp_path / "d", []
  # No list published: size, gzip and header only, and the log says so.
  download.download(out, ["chr21"], base_url=url, log=logs.append)
  assert "no checksum list at" in logs[-1]
  (out / "genome/hg38/chr21.fa.gz").unlink()
  # A list with another md5 (UCSC's format: "<md5>  <name>"): refused, nothing kept.
  _put(root, "genome/hg38/md5sum.txt", f"{'0' * 32}  chr21.fa.gz\n{good}  chr22.fa.gz\n".encode())
  with pytest.raises(download.DownloadError, match=f"md5 {good} differs from the published 0+"):
    download.download(out, ["chr21"], base_url=url, log=_quiet)
  assert not list(out.rglob("chr21*"))
  _put(root, "genome/hg38/md5sum.txt", f"{good}  chr21.fa.gz\n".encode())
  download.download(out, ["chr21"], base_url=url, log=logs.append)
  assert logs[-1].endswith("(md5 verified)")
  assert (out / "genome/hg38/chr21.fa.gz").read_bytes() == data
  assert download.checksum_list("genome/hg38.fa.gz") == "genome/md5sum.txt"
  assert download.CHECKSUM_LISTS["genome/hg38/md5sum.txt"].endswith(
      "/goldenPath/hg38/chromosomes/md5sum.txt")


def test_a_present_file_is_reverified_not_trusted(mirror, data_dir, tmp_path):
  root, url = mirror
  rel = "npmi/genemask_grch38_chr1-3_6mer_npmi.csv"
  shutil.copy(data_dir / rel, _put(root, rel, b""))
  out, logs = tmp_path / "d", []
  _put(out, rel, HTML)  # Left by an earlier, unverified download.
  done = download.download(out, ["npmi"], base_url=url, log=logs.append)
  assert done == {"downloaded": [rel], "skipped": []}
  assert "present but fails its check" in logs[0]
  assert (out / rel).read_bytes() == (data_dir / rel).read_bytes()
  assert download.download(out, ["npmi"], base_url=url, log=_quiet) == {
      "downloaded": [], "skipped": [rel]}
  # A damaged genome file already present is fetched again, its md5 checked.
  data = gzip.compress(FASTA)
  _put(root, "genome/hg38/chr21.fa.gz", data)
  _put(root, "genome/hg38/md5sum.txt", f"{hashlib.md5(data).hexdigest()}  chr21.fa.gz\n".encode())
  _put(out, "genome/hg38/chr21.fa.gz", data[:-9])
  assert download.download(out, ["chr21"], base_url=url, log=_quiet)["downloaded"] == [
      "genome/hg38/chr21.fa.gz"]
  assert (out / "genome/hg38/chr21.fa.gz").read_bytes() == data


def test_command_line_html_page_is_one_line_exit_2(mirror, tmp_path):
  root, url = mirror
  _put(root, "npmi/genemask_grch38_chr1-3_6mer_npmi.csv", HTML)
  res = subprocess.run(
      [sys.executable, "-m", "genemask_jax.data.download", f"--data_dir={tmp_path / 'd'}",
       "--what=npmi", f"--base_url={url}"], capture_output=True, text=True, timeout=60)
  assert res.returncode == 2
  (line,) = res.stderr.strip().splitlines()
  assert line.startswith("genemask-download: error: http://127.0.0.1:") and "HTML page" in line


# ------------------------------------------------------------------------ GUE (#18 item 5)

def _gue_files(drop=(), header="sequence,label"):
  """{archive member: bytes} of a small synthetic GUE: every task, two rows a split."""
  files = {}
  for task in download.GUE_TASKS:
    for split in download.GUE_SPLITS:
      if f"{task}/{split}" not in drop:
        files[f"GUE/{task}/{split}"] = f"{header}\nACGTACGTAC,0\nTTGCAAGCTA,1\n".encode()
  files["__MACOSX/GUE/._EMP"] = b"\x00\x05"  # ignored, as in the real GUE.zip
  return files


def _gue_zip(path, files):
  import zipfile  # pylint: disable=g-import-not-at-top
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
    for name, data in files.items():
      zf.writestr(name, data)
  return path


def _gue_tar(path, files):
  import io  # pylint: disable=g-import-not-at-top
  import tarfile  # pylint: disable=g-import-not-at-top
  with tarfile.open(path, "w:gz") as tf:
    for name, data in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tf.addfile(info, io.BytesIO(data))
  return path


def test_gue_archive_from_a_file_unpacks_gues_layout(tmp_path):
  archive = _gue_zip(tmp_path / "GUE.zip", _gue_files())
  out = tmp_path / "data"
  assert download.download_gue(out, file=archive, log=_quiet) == "downloaded"
  assert len(download.GUE_TASKS) == 28
  test = out / "GUE/prom/prom_300_all/test.csv"
  assert test.read_text().startswith("sequence,label\nACGTACGTAC,0\n")
  assert sorted(p.relative_to(out / "GUE").as_posix() for p in (out / "GUE").rglob("*.csv")) \
      == sorted(f"{t}/{s}" for t in download.GUE_TASKS for s in download.GUE_SPLITS)
  assert sorted(p.name for p in out.iterdir()) == ["GUE"]  # no .part or __MACOSX left
  assert download.download_gue(out, file=archive, log=_quiet) == "skipped"


def test_gue_archive_from_a_url_as_tar_gz(mirror, tmp_path):
  root, url = mirror
  _gue_tar(root / "GUE.tar.gz", _gue_files())
  out = tmp_path / "data"
  assert download.download_gue(out, url=url + "/GUE.tar.gz", log=_quiet) == "downloaded"
  assert (out / "GUE/virus/covid/dev.csv").is_file()
  assert sorted(p.name for p in out.iterdir()) == ["GUE"]


@pytest.mark.parametrize("case, match", [
    ("missing_task", r"1 of the 84 GUE split files are missing, e\.g\. tf/3/dev\.csv"),
    ("bad_header", r"GUE\.zip/EMP/H3/train\.csv: expected the header sequence, label"),
    ("damaged", r"fails its CRC check|damaged or truncated"),
    ("not_an_archive", "neither a zip nor a tar archive"),
    ("escapes", r"member '\.\./evil\.csv' points outside"),
])
def test_bad_gue_archives_are_rejected_and_leave_nothing(tmp_path, case, match):
  files = _gue_files(drop=("tf/3/dev.csv",) if case == "missing_task" else ())
  if case == "bad_header":
    files["GUE/EMP/H3/train.csv"] = b"<html>not a csv</html>\n"
  if case == "escapes":
    files["../evil.csv"] = b"x"
  archive = _gue_zip(tmp_path / "GUE.zip", files)
  if case == "damaged":  # flip bytes inside the compressed data of a member
    data = bytearray(archive.read_bytes())
    name = b"GUE/prom/prom_core_all/test.csv"
    at = data.index(name) + len(name)  # the local header's name, then the deflated data
    data[at + 2:at + 6] = bytes(255 - b for b in data[at + 2:at + 6])
    archive.write_bytes(bytes(data))
  if case == "not_an_archive":
    archive.write_bytes(b"<!DOCTYPE html><html>Google Drive: virus scan warning</html>")
  out = tmp_path / "data"
  with pytest.raises(download.DownloadError, match=match):
    download.download_gue(out, file=archive, log=_quiet)
  assert not (out / "GUE").exists() and not list(out.iterdir())
  assert not (tmp_path / "evil.csv").exists()


def test_a_broken_gue_folder_is_replaced_by_a_verified_one(tmp_path):
  out = tmp_path / "data"
  (out / "GUE/EMP/H3").mkdir(parents=True)
  (out / "GUE/EMP/H3/train.csv").write_text("half a file")
  archive = _gue_zip(tmp_path / "GUE.zip", _gue_files())
  assert download.download_gue(out, file=archive, log=_quiet) == "downloaded"
  download.check_gue_dir(out / "GUE")
  assert sorted(p.name for p in out.iterdir()) == ["GUE"]


def test_gue_command_line(tmp_path):
  archive = _gue_zip(tmp_path / "GUE.zip", _gue_files())
  cmd = [sys.executable, "-m", "genemask_jax.data.download", f"--data_dir={tmp_path / 'd'}"]
  res = subprocess.run(cmd + ["--what=gue", f"--file={archive}"], capture_output=True,
                       text=True, timeout=60)
  assert res.returncode == 0, res.stderr
  assert "1 file(s) downloaded" in res.stdout
  assert (tmp_path / "d/GUE/splice/reconstructed/train.csv").is_file()
  for args, match in [(["--what=gue"], "needs exactly one of --url=URL"),
                      (["--what=npmi", f"--file={archive}"], "add --what=gue"),
                      (["--what=gue", f"--file={tmp_path / 'nope.zip'}"], "no such file")]:
    res = subprocess.run(cmd + args, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("genemask-download: error: ") and match in line, line


def test_downloaded_gue_is_read_by_the_finetune_command(tmp_path):
  """genemask-download --what=gue then finetune --gue_dir: the two agree on the layout."""
  import csv  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  import random  # pylint: disable=g-import-not-at-top
  rng = random.Random(0)
  files = _gue_files()
  for split, n in (("train", 32), ("dev", 8), ("test", 8)):  # prom_300_all: enough rows
    rows = ["sequence,label"]
    for i in range(n):
      bases = "".join(rng.choice("ACGT") for _ in range(40))
      rows.append(f"{bases},{i % 2}")
    files[f"GUE/prom/prom_300_all/{split}.csv"] = ("\n".join(rows) + "\n").encode()
  archive = _gue_zip(tmp_path / "GUE.zip", files)
  repo = pathlib.Path(__file__).resolve().parents[1]
  env = dict(os.environ, PYTHONPATH=str(repo), JAX_PLATFORMS="cpu")
  d = tmp_path / "data"
  res = subprocess.run([sys.executable, "-m", "genemask_jax.data.download", f"--data_dir={d}",
                        "--what=gue", f"--file={archive}"], capture_output=True, text=True,
                       env=env, cwd=repo, timeout=120)
  assert res.returncode == 0, res.stderr[-2000:]
  out = tmp_path / "out"
  res = subprocess.run([sys.executable, "-m", "genemask_jax.finetune", f"--gue_dir={d}/GUE",
                        "--task=prom/prom_300_all", "--checkpoint=random", "--model_size=tiny",
                        "--seeds=1", "--epochs=1", "--batch_size=16", f"--output_dir={out}",
                        "--noprogress"], capture_output=True, text=True, env=env, cwd=repo,
                       timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  with open(out / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert {r["task"] for r in rows} == {"prom/prom_300_all"}
  assert {(r["n_train"], r["n_dev"], r["n_test"]) for r in rows} == {("32", "8", "8")}
  assert {r["split"] for r in rows} == {"dev", "test"}
