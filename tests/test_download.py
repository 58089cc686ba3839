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
