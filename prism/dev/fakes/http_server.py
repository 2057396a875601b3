"""What the fake servers (runpod.py, lambda_cloud.py, hf_hub.py) share: a threaded HTTP server
that stops promptly and keeps quiet about clients that hang up, a keep-alive request handler
that answers with a body of known length, and serving in the background."""

import contextlib
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

JSON_CONTENT_TYPE = "application/json"


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True  # keep-alive handler threads must not block shutdown

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client gone from keep-alive
            super().handle_error(request, client_address)


class FakeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse their connection

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet

    def bearer_token(self) -> str | None:
        """The token of `Authorization: Bearer <token>` (maybe empty), else None."""
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None

    def send_body(
        self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        with contextlib.suppress(OSError):  # the client gave up (timeout tests)
            self.wfile.write(data)

    def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.send_body(*json_answer(status, body), headers)


def json_answer(status: int, body: Any) -> tuple[int, bytes, str]:
    """(status, body bytes, content type) of a JSON answer."""
    return status, json.dumps(body).encode(), JSON_CONTENT_TYPE


def serve_in_background(server: ThreadingHTTPServer, poll_interval: float) -> threading.Thread:
    """Serve on a daemon thread; a short poll interval keeps shutdown() fast."""
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": poll_interval}, daemon=True
    )
    thread.start()
    return thread
