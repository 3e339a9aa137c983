"""The download code against a real HTTP server on 127.0.0.1 serving a small zip that the test builds."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from malaria_pipeline.cells.download import DownloadError, download_archive
from tests.helpers import zip_folder


class ArchiveServer:
    """Serves one file at /cell_images.zip, honouring Range requests (unless ``honour_range`` is False:
    then every answer is 200 with the whole file, as some servers and proxies do).

    ``cut_after``: the first ``cuts`` responses close the connection after that many bytes of body.
    """

    def __init__(
        self, payload: bytes, cut_after: int | None = None, cuts: int = 0, honour_range: bool = True
    ):
        self.payload, self.cut_after, self.cuts, self.honour_range = payload, cut_after, cuts, honour_range
        self.requests: list[str | None] = []  # the Range header of each request
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append(self.headers.get("Range"))
                header = self.headers.get("Range") if server.honour_range else None
                start = int(header.removeprefix("bytes=").rstrip("-")) if header else 0
                body = server.payload[start:]
                self.send_response(206 if header else 200)
                if header:
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}"
                    )
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cuts > 0 and server.cut_after is not None:
                    server.cuts -= 1
                    self.wfile.write(body[: server.cut_after])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/cell_images.zip"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def payload(cell_folder: Path, tmp_path: Path) -> bytes:
    return zip_folder(cell_folder, tmp_path / "served.zip").read_bytes()


def _expected(payload: bytes) -> dict:
    return {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}


def test_full_download_is_verified_and_not_repeated(payload, tmp_path):
    with ArchiveServer(payload) as server:
        path = download_archive(server.url, tmp_path / "raw", **_expected(payload))
        assert path == tmp_path / "raw" / "cell_images.zip"
        assert path.read_bytes() == payload
        assert not path.with_name("cell_images.zip.part").exists()
        again = download_archive(server.url, tmp_path / "raw", **_expected(payload))
    assert again == path
    assert server.requests == [None]  # the verified copy was reused: one request in all


def test_a_cut_download_resumes_with_a_range_request(payload, tmp_path):
    cut = len(payload) // 3
    with ArchiveServer(payload, cut_after=cut, cuts=1) as server:
        path = download_archive(server.url, tmp_path / "raw", **_expected(payload))
    assert path.read_bytes() == payload
    assert server.requests == [None, f"bytes={cut}-"]


def test_an_interrupted_run_keeps_the_part_file_and_the_next_run_resumes(payload, tmp_path):
    cut = len(payload) // 2
    with ArchiveServer(payload, cut_after=cut, cuts=1) as server:
        with pytest.raises(DownloadError, match="run again to resume"):
            download_archive(server.url, tmp_path / "raw", attempts=1, **_expected(payload))
        part = tmp_path / "raw" / "cell_images.zip.part"
        assert part.stat().st_size == cut
        path = download_archive(server.url, tmp_path / "raw", **_expected(payload))
    assert path.read_bytes() == payload
    assert server.requests == [None, f"bytes={cut}-"]


def test_a_server_that_ignores_range_sends_the_whole_file_again_and_it_replaces_the_part(payload, tmp_path):
    cut = len(payload) // 3
    with ArchiveServer(payload, cut_after=cut, cuts=1, honour_range=False) as server:
        path = download_archive(server.url, tmp_path / "raw", **_expected(payload))
    assert server.requests == [None, f"bytes={cut}-"]  # it asked for the rest and got everything
    assert path.read_bytes() == payload


@pytest.mark.parametrize("served", ["shorter", "longer"])
def test_a_file_of_another_size_than_expected_is_deleted_and_named(payload, tmp_path, served):
    body = payload[:-10] if served == "shorter" else payload + b"0123456789"
    with ArchiveServer(body) as server:
        expected = rf"sent {len(body):,} bytes of .*, {len(payload):,} were expected; deleted"
        with pytest.raises(DownloadError, match=expected):
            download_archive(server.url, tmp_path / "raw", size=len(payload))  # no SHA-256: the size alone
    assert list((tmp_path / "raw").iterdir()) == []


def test_a_part_file_longer_than_the_archive_is_dropped_and_the_download_starts_over(payload, tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "cell_images.zip.part").write_bytes(payload + b"left over")
    with ArchiveServer(payload) as server:
        path = download_archive(server.url, tmp_path / "raw", **_expected(payload))
    assert server.requests == [None]
    assert path.read_bytes() == payload


def test_a_wrong_checksum_deletes_the_file_and_says_so(payload, tmp_path):
    with ArchiveServer(payload) as server:
        with pytest.raises(DownloadError, match="SHA-256 .* expected 0{64}; deleted the corrupt file"):
            download_archive(server.url, tmp_path / "raw", size=len(payload), sha256="0" * 64)
    assert list((tmp_path / "raw").iterdir()) == []


def test_a_corrupt_existing_copy_is_downloaded_again(payload, tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "cell_images.zip").write_bytes(b"not the archive")
    with ArchiveServer(payload) as server:
        path = download_archive(server.url, tmp_path / "raw", **_expected(payload))
    assert path.read_bytes() == payload


def test_offline_fails_within_seconds_and_shows_how_to_use_a_local_copy(tmp_path):
    with socket.socket() as probe:  # a port on which nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(
        DownloadError, match=r'offline.*--params "ingestion\.source=/abs/path/cell_images\.zip"'
    ):
        download_archive(f"http://127.0.0.1:{port}/cell_images.zip", tmp_path / "raw", timeout=5)
    assert time.monotonic() - started < 5
