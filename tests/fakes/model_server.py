"""A real model server for tests: listens on $PORT, reads $PRISM_WEIGHTS_DIR.

GET /health -> 200, or 500 while the file $PRISM_WEIGHTS_DIR/unhealthy exists.
GET /       -> {"pid": ..., "weights": [...], "cuda": ..., "headers": {...}}.
POST /crash -> exits with code 3.
"""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

WEIGHTS = Path(os.environ["PRISM_WEIGHTS_DIR"])


class Handler(BaseHTTPRequestHandler):
    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        if self.path == "/health":
            sick = (WEIGHTS / "unhealthy").exists()
            self._reply(500 if sick else 200, {"ok": not sick})
        else:
            self._reply(
                200,
                {
                    "pid": os.getpid(),
                    "weights": sorted(os.listdir(WEIGHTS)),
                    "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                    "headers": dict(self.headers),  # what reached it through the proxy
                },
            )

    def do_POST(self):  # noqa: N802
        if self.path == "/crash":
            print("model: crashing on request", flush=True)
            os._exit(3)
        self._reply(404, {})

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    print(f"model: serving on {os.environ['PORT']}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
