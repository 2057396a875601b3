"""PRISM's built-in CPU embedding server: a sentence-transformers ONNX export behind HTTP.

    python -m node_agent.embedding_server --weights DIR [--host 127.0.0.1] [--port 8080]
        [--model-name NAME]          (PRISM_EMBED_THREADS: onnxruntime's intra-op threads)

Routes (every error, 4xx or 5xx, is JSON: {"error": {"code": ..., "message": ...}}):
  GET  /health         {"status": "ok", "model", "dimensions", "max_tokens", "normalize",
                        "pooling", "requests", "batches", "sentences"}
  POST /v1/embeddings  OpenAI: {"input": str | [str], "model"?, "encoding_format"?: float|base64}
  POST /embed          text-embeddings-inference: {"inputs": str | [str], "normalize"?,
                        "truncate"?} -> [[float, ...], ...]

It listens only once the model is loaded (and has run once), so the agent's health probe means
ready. A directory it cannot serve exits 2 with one line on stderr saying why. Requests that
arrive together share one batch: each request thread tokenizes its own texts, the engine's
worker thread (node_agent.embedding_model.Batcher) runs them through onnxruntime together.
"""

import argparse
import base64
import json
import re
import signal
import sys
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from node_agent.embedding_model import (
    Batcher,
    BatchFailed,
    EmbeddingModel,
    ModelLoadError,
    TokenizedText,
    l2_normalize,
    model_name,
    threads_from_env,
)

MAX_INPUTS = 2048  # texts in one request
MAX_BODY = 16 * 1024 * 1024
MAX_CONCURRENT_REQUESTS = 16  # beyond this, requests wait their turn (the batcher is one)
CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")  # ASCII digits only (not "²"), int() never refuses
MAX_DRAIN = 64 * 1024 * 1024  # a bigger body is refused unread, closing the connection
ERROR_CODES = {413: "payload_too_large", 500: "internal_error"}  # others: the status phrase


class RequestError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def error_body(status: int, message: str) -> dict:
    phrase = HTTPStatus(status).phrase.lower()
    code = ERROR_CODES.get(status) or phrase.replace(" ", "_").replace("-", "_")
    return {"error": {"code": code, "message": message}}


# -- requests ---------------------------------------------------------------------------------


def bad_request(message: str) -> RequestError:
    return RequestError(400, message)


def json_object(body: bytes) -> dict:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise bad_request("the body must be a JSON object")
    return value


def texts_field(request: dict, name: str) -> list[str]:
    """A non-empty string or a non-empty list of non-empty strings (no token ids)."""
    if name not in request:
        raise bad_request(f'"{name}" is required: a string or a list of strings')
    value = request[name]
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts:
        raise bad_request(f'"{name}" must be a non-empty string or a non-empty list of strings')
    if len(texts) > MAX_INPUTS:
        raise bad_request(f'"{name}" has {len(texts)} items; at most {MAX_INPUTS} per request')
    for index, text in enumerate(texts):
        if not isinstance(text, str) or not text:
            raise bad_request(f'"{name}" item {index} must be a non-empty string')
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise bad_request(f'"{name}" item {index} is not valid Unicode') from None
    return texts


class RawJSON(str):
    """A body already serialized (the vectors: most of the answer, built faster by hand)."""


def json_rows(rows: np.ndarray) -> list[str]:
    """Each row as a JSON array. "%.9g" round-trips float32 exactly, in a third less text and
    a third of the time of json's 17-digit floats; JSON has no NaN/inf, so those go to json."""
    if not np.isfinite(rows).all():
        return [json.dumps(row) for row in rows.tolist()]
    row_format = f"[{','.join(['%.9g'] * rows.shape[1])}]"
    return [row_format % tuple(row) for row in rows.tolist()]


def optional_field(request: dict, name: str, kind: type, default):
    value = request.get(name)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise bad_request(f'"{name}" must be a {kind.__name__}')
    return value


class EmbeddingService:
    def __init__(self, model: EmbeddingModel, name: str):
        self.model, self.name = model, name
        self.batcher = Batcher(model.embed)

    def health(self) -> dict:
        batcher = self.batcher  # counters: batches < requests means requests shared runs
        return {
            "status": "ok",
            "model": self.name,
            "dimensions": self.model.dimensions,
            "max_tokens": self.model.max_tokens,
            "normalize": self.model.normalize,
            "pooling": "+".join(self.model.config.pooling),
            "requests": batcher.requests,
            "batches": batcher.batches,
            "sentences": batcher.sentences,
        }

    def openai(self, body: bytes) -> RawJSON:
        with self.batcher.arrival() as submit:
            request = json_object(body)
            texts = texts_field(request, "input")
            model = optional_field(request, "model", str, self.name)
            encoding = optional_field(request, "encoding_format", str, "float")
            if encoding not in ("float", "base64"):
                raise bad_request('"encoding_format" must be "float" or "base64"')
            dimensions = optional_field(request, "dimensions", int, self.model.dimensions)
            if dimensions != self.model.dimensions:
                raise bad_request(
                    f"this model's embeddings have {self.model.dimensions} dimensions"
                )
            tokens = self._tokenize(texts, truncate=True)
            rows = submit(tokens)
        if self.model.normalize:
            rows = l2_normalize(rows)
        if encoding == "base64":  # little-endian float32, as OpenAI's
            vectors = [
                f'"{base64.b64encode(row.astype("<f4").tobytes()).decode()}"' for row in rows
            ]
        else:
            vectors = json_rows(rows)
        used = sum(len(t.ids) for t in tokens)
        items = ",".join(
            f'{{"object":"embedding","index":{i},"embedding":{v}}}' for i, v in enumerate(vectors)
        )
        usage = {"prompt_tokens": used, "total_tokens": used}
        return RawJSON(
            f'{{"object":"list","data":[{items}],"model":{json.dumps(model)},'
            f'"usage":{json.dumps(usage)}}}'
        )

    def _tokenize(self, texts: list[str], truncate: bool) -> list[TokenizedText]:
        tokens = self.model.tokenize(texts)
        for index, text in enumerate(tokens):
            if not text.ids:  # nothing to run: would only fail the batch it joined
                raise bad_request(f"input {index} has no tokens")
            if text.truncated and not truncate:
                raise bad_request(
                    f"input {index} is longer than the model's limit of "
                    f'{self.model.max_tokens} tokens; shorten it or send "truncate": true'
                )
        return tokens

    def tei(self, body: bytes) -> RawJSON:
        with self.batcher.arrival() as submit:
            request = json_object(body)
            texts = texts_field(request, "inputs")
            normalize = optional_field(request, "normalize", bool, self.model.normalize)
            truncate = optional_field(request, "truncate", bool, True)
            rows = submit(self._tokenize(texts, truncate))
        return RawJSON(f"[{','.join(json_rows(l2_normalize(rows) if normalize else rows))}]")


# -- HTTP -------------------------------------------------------------------------------------

ROUTES = {
    "/health": {"GET": "health"},
    "/v1/embeddings": {"POST": "openai"},
    "/embed": {"POST": "tei"},
}


class EmbeddingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    timeout = 300  # an idle keep-alive connection gives its thread back after this
    server: "EmbeddingHTTPServer"

    def _handle(self) -> None:
        try:
            body = self._read_body()  # even for a 404: the next request must start clean
            with self.server.working:  # a bounded number of requests parsed and embedded
                status, payload, headers = 200, self._route(body), {}
        except RequestError as exc:
            status, payload, headers = exc.status, error_body(exc.status, exc.message), exc.headers
        except Exception as exc:
            if not isinstance(exc, BatchFailed):
                traceback.print_exc(file=sys.stderr)
            status, payload, headers = 500, error_body(500, f"embedding failed: {exc}"), {}
        self._send_json(status, payload, headers)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _handle

    def _route(self, body: bytes):
        path = urlsplit(self.path).path
        methods = ROUTES.get(path)
        if methods is None:
            raise RequestError(404, f"no route {path}; try {', '.join(ROUTES)}")
        action = methods.get("GET" if self.command == "HEAD" else self.command)
        if action is None:
            allowed = ", ".join(methods)
            raise RequestError(405, f"{path} takes {allowed}", {"Allow": allowed})
        service = self.server.service
        return service.health() if action == "health" else getattr(service, action)(body)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise RequestError(411, "send the body with a Content-Length (not chunked)")
        declared = self.headers.get("Content-Length")
        if declared is None:
            return b""
        if not CONTENT_LENGTH.fullmatch(declared.strip()):
            self.close_connection = True
            raise RequestError(400, f"bad Content-Length {declared!r}")
        length = int(declared)
        if length > MAX_BODY:
            self._discard(length)
            raise RequestError(413, f"the body is {length} bytes; at most {MAX_BODY}")
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            raise RequestError(400, "the body ended before its Content-Length")
        return body

    def _discard(self, length: int) -> None:
        """Reads a refused body so the client, still sending it, gets to read our answer."""
        if length > MAX_DRAIN:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 20))
            if not chunk:
                self.close_connection = True
                return
            length -= len(chunk)

    def _send_json(self, status: int, payload, headers: dict[str, str] | None = None) -> None:
        text = (
            payload if isinstance(payload, RawJSON) else json.dumps(payload, separators=(",", ":"))
        )
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None):
        """The standard library's own refusals (bad request line, unknown method), as JSON."""
        self.close_connection = True  # whatever body the request had is unread
        self._send_json(code, error_body(code, message or HTTPStatus(code).phrase))

    def log_message(self, format: str, *args) -> None:
        pass  # no access log: the agent's proxy keeps the metrics


class EmbeddingHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # many clients connecting at once must not be refused

    def __init__(self, address: tuple[str, int], service: EmbeddingService):
        self.service = service
        # Requests parsed, tokenized and answered at once (~36 MB for a full 16 MiB one):
        # memory stays bounded however many clients send at the same time.
        self.working = threading.BoundedSemaphore(MAX_CONCURRENT_REQUESTS)
        super().__init__(address, EmbeddingHandler)

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up: fine
            super().handle_error(request, client_address)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node_agent.embedding_server")
    parser.add_argument("--weights", required=True, type=Path, help="the model's directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--model-name", help="the name /health and answers give (default: dir)")
    args = parser.parse_args(argv)
    try:
        model = EmbeddingModel.load(args.weights, threads_from_env())
    except ModelLoadError as exc:
        print(f"embedding server: {exc}", file=sys.stderr)
        return 2
    name = args.model_name or model_name(args.weights)
    try:
        server = EmbeddingHTTPServer((args.host, args.port), EmbeddingService(model, name))
    except OSError as exc:
        print(f"embedding server: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop cleanly when the agent asks
    print(
        f"embedding server: {name} ({model.dimensions} dimensions, {model.max_tokens} tokens) "
        f"on http://{args.host}:{args.port}",
        file=sys.stderr,
        flush=True,
    )
    with server:
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
