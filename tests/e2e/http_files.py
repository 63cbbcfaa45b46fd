"""A real HTTP file server on 127.0.0.1 for firmware downloads and diagnostics/log uploads."""

from __future__ import annotations

import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FileServer:
    """GET serves `files` (404 otherwise); PUT/POST store the body in `uploads` (or fail
    with `upload_status` when set). Every request is recorded as (method, path)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.uploads: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.upload_status: int | None = None
        self.allow_put = True
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _record(self) -> None:
                with server._lock:
                    server.requests.append((self.command, self.path))

            def do_GET(self) -> None:
                self._record()
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _store(self) -> None:
                self._record()
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.command == "PUT" and not server.allow_put:
                    self.send_error(405)
                    return
                if server.upload_status is not None:
                    self.send_error(server.upload_status)
                    return
                with server._lock:
                    server.uploads[self.path] = body
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_PUT = _store
            do_POST = _store

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="file-server", daemon=True)

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"

    def count(self, method: str, path: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r == (method, path))


def firmware_tar_gz(files: dict[str, bytes] | None = None) -> bytes:
    """A small valid gzip'd tar: what the default installer accepts."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in (files or {"chargepoint/__init__.py": b"VERSION = '9.9.9'\n"}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
