"""A local stand-in for Kaggle's API, for driving the real kaggle 2.x client offline.

With `KAGGLE_API_ENVIRONMENT=LOCALHOST` the client (kagglesdk) sends its calls to http://localhost/api/v1/...;
`http_proxy` pointing at this server (bound to 127.0.0.1 only) delivers them here. The server answers the two calls
a dataset download makes (`security.OAuthService/IntrospectToken`, `datasets.DatasetApiService/DownloadDataset`,
which redirects to the archive like Kaggle's signed storage URL) and serves the archive with HTTP ranges, ETag and
Last-Modified, or one of the failures a test selects (`mode`). Every request is recorded.
"""
from __future__ import annotations

import base64
import email.utils
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

TOKEN = "tok-GOOD-1234567890"  # the access token the fake accepts
USERNAME, KEY = "tester", "key-LEGACY-0987654321"  # the legacy key it accepts
STORAGE = "/storage/chest-xray-pneumonia.zip"
MODES = ("ok", "truncated", "not-zip", "stall", "404")


class FakeKaggle:
    """The fake server: `mode` selects what the archive request gets, `plain_errors` sends 401/404 as text instead of
    Kaggle's JSON ({"code": 401, "message": "Unauthenticated"}), `introspect` is "inactive" or "401" to refuse a
    token, `validator` False drops ETag/Last-Modified/Accept-Ranges (the client then cannot resume)."""

    def __init__(self, archive: bytes) -> None:
        self.archive = archive
        self.mode = "ok"
        self.plain_errors = False
        self.introspect = "ok"
        self.validator = True
        self.etag = '"v1-archive"'
        self.requests: list[dict] = []
        self.half_sent = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.errors: list[str] = []  # exceptions in the handler (a client that hung up mid-body is expected)
        self.server = _Server(("127.0.0.1", 0), _handler(self))
        self.server.fake = self
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def record(self, entry: dict) -> None:
        with self._lock:
            self.requests.append(entry)

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # recorded, not printed
        import sys

        self.fake.errors.append(repr(sys.exc_info()[1]))


def _handler(fake: FakeKaggle):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: a closed connection ends the body

        def log_message(self, *args) -> None:  # quiet
            pass

        def _record(self) -> str:
            url = urlsplit(self.path)
            path = url.path
            fake.record({"method": self.command, "path": path, "host": self.headers.get("Host"),
                         "range": self.headers.get("Range"), "if_range": self.headers.get("If-Range"),
                         "authorization": self.headers.get("Authorization")})
            return path

        def _send(self, status: int, body: bytes, headers: dict | None = None, length: int | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, message: str) -> None:
            if fake.plain_errors:
                self._send(status, message.encode(), {"Content-Type": "text/plain"})
            else:
                self._send(status, json.dumps({"code": status, "message": message}).encode(),
                           {"Content-Type": "application/json"})

        def _authorized(self) -> bool:
            auth = self.headers.get("Authorization") or ""
            basic = "Basic " + base64.b64encode(f"{USERNAME}:{KEY}".encode()).decode()
            return auth in (f"Bearer {TOKEN}", basic)

        def do_POST(self) -> None:
            path = self._record()
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if path.endswith("/security.OAuthService/IntrospectToken"):
                token = json.loads(body or b"{}").get("token")
                if token == TOKEN:
                    self._send(200, json.dumps({"active": True, "username": USERNAME}).encode(),
                               {"Content-Type": "application/json"})
                elif fake.introspect == "401":
                    self._error(401, "Unauthenticated")
                else:
                    self._send(200, json.dumps({"active": False}).encode(), {"Content-Type": "application/json"})
            elif path.endswith("/datasets.DatasetApiService/DownloadDataset"):
                if not self._authorized():
                    self._error(401, "Unauthenticated")
                elif fake.mode == "404":
                    self._error(404, "Not found")
                else:
                    self._send(302, b"", {"Location": f"http://localhost{STORAGE}"})
            else:
                self._error(404, "Not found")

        def do_GET(self) -> None:
            path = self._record()
            if path != STORAGE:
                self._error(404, "Not found")
                return
            data = fake.archive
            headers = {"Content-Type": "application/zip"}
            if fake.validator:
                headers.update({"ETag": fake.etag, "Accept-Ranges": "bytes",
                                "Last-Modified": email.utils.formatdate(1_700_000_000, usegmt=True)})
            if fake.mode == "not-zip":
                self._send(200, b"<html><body>Kaggle is down for maintenance</body></html>",
                           {"Content-Type": "text/html"})
                return
            wanted = self.headers.get("Range")
            if wanted and fake.validator and self.headers.get("If-Range") in (None, fake.etag):
                start = int(wanted.split("=")[1].split("-")[0])
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                self._send(206, data[start:], headers)
                return
            if fake.mode in ("truncated", "stall"):  # announce everything, send half, then close
                self.send_response(200)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                fake.half_sent.set()
                if fake.mode == "stall":  # the test kills the client meanwhile
                    fake.release.wait(timeout=30)
                self.close_connection = True
                return
            self._send(200, data, headers)

    return Handler
