"""The download command against a local HTTP server (loopback only) serving the data dir."""
import functools
import http.server
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
  assert res.returncode == 1 and "HTTP 404" in res.stderr and "chr1.fa.gz" in res.stderr
