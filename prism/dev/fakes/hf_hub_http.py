"""The fake Hugging Face Hub's HTTP face (hf_hub.py has the repos): the model info and tree
routes under /api/models, and /resolve with its file headers, ranges and the body faults
(stalls, dropped connections). Errors carry the Hub's X-Error-Code and X-Error-Message."""

import contextlib
import json
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from prism.dev.fakes.hf_repos import CHUNK, Blob, model_info, tree
from prism.dev.fakes.http_server import FakeHandler, FakeServer

if TYPE_CHECKING:
    from prism.dev.fakes.hf_hub import FakeHfHub

HUB_JSON_CONTENT_TYPE = "application/json; charset=utf-8"


class HubError(Exception):
    """An error answer: status, X-Error-Code, X-Error-Message, extra headers."""

    def __init__(self, status: int, code: str | None, message: str, **headers: str):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """`bytes=a-b`, `bytes=a-` or `bytes=-n` -> [start, end). None: serve the whole file."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None  # no range, or a multi-range we may ignore (RFC 9110 allows a plain 200)
    first, _, last = header[len("bytes=") :].strip().partition("-")
    try:
        if not first:
            start, end = max(size - int(last), 0), size
        else:
            start, end = int(first), min(int(last) + 1, size) if last else size
    except ValueError:
        return None
    if start >= size or start >= end:
        raise HubError(
            416, None, "Requested Range Not Satisfiable", **{"Content-Range": f"bytes */{size}"}
        )
    return start, end


class HubServer(FakeServer):
    request_queue_size = 128  # snapshot_download opens 8+ connections at once
    hub: "FakeHfHub"

    def __init__(self, *args: Any, **kwargs: Any):
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def track(self, sock: socket.socket, alive: bool) -> None:
        with self._open_lock:
            (self._open.add if alive else self._open.discard)(sock)

    def close_connections(self) -> None:
        with self._open_lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class HubHandler(FakeHandler):
    disable_nagle_algorithm = True
    server: HubServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        with contextlib.suppress(OSError):  # client gone
            super().finish()

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle("HEAD")

    # -- dispatch ----------------------------------------------------------------------------

    @property
    def hub(self) -> "FakeHfHub":
        return self.server.hub

    def _token(self) -> str | None:
        return self.bearer_token() or None  # "Bearer " with no token: anonymous

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        segs = [unquote(s) for s in url.path.split("/")[1:]]  # split first: revs may hold %2F
        is_resolve = "resolve" in segs[1:3]
        ranged = self.headers.get("Range") if is_resolve and method == "GET" else None
        self.hub.record_request(method, self.path, ranged)
        try:
            if self.hub.fail_status is not None:
                raise HubError(self.hub.fail_status, None, "Injected failure")
            if segs[:2] == ["api", "models"] and len(segs) > 2 and method == "GET":
                self._api(segs[2:], parse_qs(url.query))
            elif is_resolve:
                self._resolve_file(method, segs)
            else:
                raise HubError(404, None, "Not Found")
        except HubError as e:
            self._send_error(method, e)

    def _api(self, segs: list[str], query: dict[str, list[str]]) -> None:
        # /api/models/{repo}, {repo}/revision/{rev}, {repo}/tree/{rev}[/{path}]; repo has 1-2 parts
        n = 1 if len(segs) > 1 and segs[1] in ("revision", "tree") else 2
        repo_id, rest = "/".join(segs[:n]), segs[n:]
        if not rest:
            rest = ["revision", "main"]
        if len(rest) < 2 or rest[0] not in ("revision", "tree"):
            raise HubError(404, None, "Not Found")
        repo, sha = self.hub.resolve_revision(repo_id, rest[1], self._token(), gate=False)
        if rest[0] == "revision":
            blobs = _flag(query, "blobs")
            self._send_json(model_info(repo_id, repo, sha, blobs))
        else:
            prefix = "/".join(rest[2:])
            entries = tree(repo.commits[sha], sha, prefix, _flag(query, "recursive"))
            if prefix and not entries:
                raise HubError(404, "EntryNotFound", f"{prefix} does not exist on {rest[1]}")
            self._send_page(entries, query)

    def _resolve_file(self, method: str, segs: list[str]) -> None:
        n = 1 if segs[1] == "resolve" else 2
        if len(segs) < n + 3:
            raise HubError(404, None, "Not Found")
        repo_id, rev, filename = "/".join(segs[:n]), segs[n + 1], "/".join(segs[n + 2 :])
        repo, sha = self.hub.resolve_revision(repo_id, rev, self._token(), gate=True)
        blob = repo.commits[sha].get(filename)
        if blob is None:
            raise HubError(404, "EntryNotFound", "Entry not found", **{"X-Repo-Commit": sha})
        span = _parse_range(self.headers.get("Range"), blob.size) if method == "GET" else None
        start, end = span or (0, blob.size)
        self.send_response(206 if span else 200)
        self._file_headers(blob, sha)
        self.send_header("Content-Length", str(end - start))
        if span:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{blob.size}")
        self.end_headers()
        if method == "GET":
            self._send_body(blob, start, end)

    # -- answers -----------------------------------------------------------------------------

    def _file_headers(self, blob: Blob, sha: str) -> None:
        etag = blob.sha256 if blob.is_lfs else blob.oid
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("X-Repo-Commit", sha)
        self.send_header("ETag", f'"{etag}"')
        if blob.is_lfs:  # what the Hub puts on its LFS answers: the real file's id and size
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(blob.size))

    def _send_body(self, blob: Blob, start: int, end: int) -> None:
        cut = self.hub.take_drop(end - start)
        stop = end if cut is None else start + cut
        with contextlib.suppress(ConnectionError):  # the client may leave, e.g. during a stall
            self._stream(blob, start, stop)
            if stop == end:
                return
        self.close_connection = True  # fault or client gone: leave the body short

    def _stream(self, blob: Blob, start: int, stop: int) -> None:
        with blob.path.open("rb") if blob.path else contextlib.nullcontext() as f:
            pos, stalled = start, False
            while pos < stop:
                n = min(CHUNK, stop - pos)
                if f is not None:  # zero-copy from disk
                    n = os.sendfile(self.connection.fileno(), f.fileno(), pos, n)
                    if n == 0:
                        return
                else:
                    self.wfile.write(memoryview(blob.data)[pos : pos + n])
                pos += n
                self.hub.count_served(n)
                if not stalled and pos - start >= self.hub.stall_after_bytes:
                    stalled = True
                    time.sleep(self.hub.stall_seconds)

    def _send_page(self, entries: list[dict], query: dict[str, list[str]]) -> None:
        offset = int(query.get("cursor", ["0"])[0])
        page = entries[offset : offset + self.hub.page_size]
        headers = {}
        if offset + self.hub.page_size < len(entries):
            params = {k: v[0] for k, v in query.items()} | {"cursor": offset + self.hub.page_size}
            qs = "&".join(f"{k}={quote(str(v))}" for k, v in params.items())
            path = urlsplit(self.path).path
            headers["Link"] = f'<{self.hub.url}{path}?{qs}>; rel="next"'
        self._send_json(page, **headers)

    def _send_json(self, doc: Any, status: int = 200, **headers: str) -> None:
        self.send_body(status, json.dumps(doc).encode(), HUB_JSON_CONTENT_TYPE, headers)

    def _send_error(self, method: str, error: HubError) -> None:
        body = b"" if method == "HEAD" else json.dumps({"error": error.message}).encode()
        headers = {"X-Error-Code": error.code} if error.code else {}
        headers |= {"X-Error-Message": error.message} | error.headers
        self.send_body(error.status, body, HUB_JSON_CONTENT_TYPE, headers)


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["false"])[0].lower() in ("1", "true")
