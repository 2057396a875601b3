"""A real (tiny) model server: loads weights from $PRISM_WEIGHTS_DIR, listens on $PORT.

GET /health -> 200 once the weights are loaded; POST /predict {"inputs": [[x1..x4], ...]}.
Standard library only, so it runs on any node without installs or internet.
"""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

WEIGHTS_DIR = Path(os.environ.get("PRISM_WEIGHTS_DIR", Path(__file__).parent))
MODEL = json.loads((WEIGHTS_DIR / "model.json").read_text())


def predict(row: list[float]) -> float:
    if len(row) != len(MODEL["weights"]):
        raise ValueError(f"each input needs {len(MODEL['weights'])} numbers")
    return sum(w * float(x) for w, x in zip(MODEL["weights"], row, strict=True)) + MODEL["bias"]


class Handler(BaseHTTPRequestHandler):
    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        if self.path == "/health":
            self._reply(200, {"status": "ok", "model": MODEL["name"]})
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self):  # noqa: N802
        if self.path != "/predict":
            self._reply(404, {"error": "not found"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            inputs = json.loads(self.rfile.read(length))["inputs"]
            self._reply(200, {"outputs": [predict(row) for row in inputs]})
        except (ValueError, KeyError, TypeError) as exc:
            self._reply(400, {"error": f"expected {{'inputs': [[numbers]]}}: {exc}"})


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8000"))), Handler).serve_forever()
