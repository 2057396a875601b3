"""A fake Hugging Face Hub: a real HTTP server speaking the protocol huggingface_hub downloads with.

It keeps model repos (commits, branches, tags) in memory and answers the four routes that
`snapshot_download` / `hf_hub_download` / `HfApi.repo_info` use, with the headers and error codes
of the real Hub, so code under test drives the real library over real HTTP:

    with FakeHfHub() as hub:
        sha = hub.add_commit("org/model", {"config.json": b"{}", "model.bin": Path("big.bin")})
        snapshot_download("org/model", local_dir=tmp, endpoint=hub.url)

Routes (models only; revisions are a branch, a tag or a full 40-hex commit):
    GET  /api/models/{repo}[/revision/{rev}]     -> model info JSON (`sha`, `siblings`, ...)
    GET  /api/models/{repo}/tree/{rev}[/{path}]  -> tree entries, paged by `Link: <...>; rel="next"`
    HEAD /{repo}/resolve/{rev}/{file}             -> X-Repo-Commit, ETag, X-Linked-Etag/-Size
    GET  /{repo}/resolve/{rev}/{file}             -> bytes; `Range: bytes=a-b` answered with 206

Files above 1 MiB are LFS files (ETag = sha256, tree entry carries `lfs`), smaller ones are git
blobs (ETag = git blob sha1). No xet headers are ever sent, so the library uses plain HTTP.

Errors, as the Hub answers them (`X-Error-Code` is what huggingface_hub maps to exceptions):
    missing or private repo, no token     401 RepoNotFound
    missing or private repo, other token  404 RepoNotFound   (a valid token without access)
    gated repo on /resolve, no token      401 GatedRepo      (info and tree stay public)
    gated repo on /resolve, other token   403 GatedRepo
    unknown revision                      404 RevisionNotFound
    unknown file                          404 EntryNotFound  (with X-Repo-Commit)

Test hooks: `requests`, `range_requests`, `bytes_served`, and the faults `stall_seconds` (after
`stall_after_bytes`, by default after the first chunk),
`drop_after_bytes` / `drop_times` and `fail_status`.
"""

import contextlib
import hashlib
import itertools
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_THRESHOLD = 1024 * 1024  # files strictly above this size are served as LFS files
CHUNK = 1024 * 1024  # body write size: big writes keep loopback throughput high
_HEX40 = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class _Blob:
    """One file's content (in memory or on disk) and the ids the Hub derives from it."""

    size: int
    sha256: str
    oid: str  # git blob sha1: of the content, or of the LFS pointer for LFS files
    data: bytes | None = None
    path: Path | None = None

    @property
    def is_lfs(self) -> bool:
        return self.size > LFS_THRESHOLD

    @property
    def pointer_size(self) -> int:
        return len(_lfs_pointer(self.sha256, self.size))


@dataclass
class _Repo:
    token: str | None
    gated: bool
    created_at: str
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, _Blob]] = field(default_factory=dict)
    dates: dict[str, str] = field(default_factory=dict)

    @property
    def private(self) -> bool:
        return self.token is not None and not self.gated


class _HubError(Exception):
    """An error answer: status, X-Error-Code, X-Error-Message, extra headers."""

    def __init__(self, status: int, code: str | None, message: str, **headers: str):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def _blob_from_bytes(data: bytes) -> _Blob:
    sha256 = hashlib.sha256(data).hexdigest()
    lfs = len(data) > LFS_THRESHOLD
    oid = _git_sha1(_lfs_pointer(sha256, len(data)) if lfs else data)
    return _Blob(len(data), sha256, oid, data=bytes(data))


def _blob_from_path(path: Path) -> _Blob:
    """Hash a file by streaming it once: files may be far bigger than memory should hold."""
    size = path.stat().st_size
    small = size <= LFS_THRESHOLD
    h256, h1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h256.update(chunk)
            if small:
                h1.update(chunk)
    sha256 = h256.hexdigest()
    oid = h1.hexdigest() if small else _git_sha1(_lfs_pointer(sha256, size))
    return _Blob(size, sha256, oid, path=path)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


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
        raise _HubError(
            416, None, "Requested Range Not Satisfiable", **{"Content-Range": f"bytes */{size}"}
        )
    return start, end


class FakeHfHub:
    """In-memory Hub on 127.0.0.1; see the module docstring for what it answers."""

    def __init__(self, *, page_size: int = 50, port: int = 0):
        self.page_size = page_size
        self._port = port
        self.url: str | None = None
        self.requests: list[tuple[str, str]] = []  # (method, raw path with query), in order
        self.range_requests: list[tuple[str, str]] = []  # (path, Range header) of resolve GETs
        self.bytes_served = 0
        self.stall_seconds = 0.0
        self.stall_after_bytes = 0  # a body stalls once this many of its bytes went out
        self.drop_after_bytes: int | None = None
        self.drop_times = 1
        self.fail_status: int | None = None
        self._drops_done = 0
        self._repos: dict[str, _Repo] = {}
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "FakeHfHub":
        self._server = _Server(("127.0.0.1", self._port), _Handler)
        self._server.hub = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # A short poll keeps stop() fast; serving is not affected.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.close_connections()  # keep-alive handlers would otherwise linger
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> "FakeHfHub":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- content -----------------------------------------------------------------------------

    def add_commit(
        self,
        repo_id: str,
        files: dict[str, bytes | Path],
        *,
        branch: str = "main",
        tags: tuple[str, ...] = (),
        gated: bool = False,
        token: str | None = None,
    ) -> str:
        """Commit `files` (the whole tree at that commit) on `branch`; move branch and tags to it.

        `token`: the only token that may see the repo (private), or, with `gated=True`, the only
        one that may download from it. A repo's token/gated are fixed by its first commit.
        """
        blobs = {
            name: _blob_from_path(Path(v)) if isinstance(v, Path) else _blob_from_bytes(v)
            for name, v in files.items()
        }
        with self._lock:
            repo = self._repos.setdefault(
                repo_id, _Repo(token=token, gated=gated, created_at=_now())
            )
            if (repo.token, repo.gated) != (token, gated):
                raise ValueError(f"{repo_id}: token/gated differ from the repo's first commit")
            parent = repo.branches.get(branch, "")
            seed = f"{repo_id}\0{branch}\0{parent}\0{next(self._counter)}\0"
            seed += "".join(f"{name}\0{b.oid}\0" for name, b in sorted(blobs.items()))
            sha = hashlib.sha1(seed.encode()).hexdigest()
            repo.commits[sha], repo.dates[sha] = blobs, _now()
            repo.branches[branch] = sha
            repo.tags.update(dict.fromkeys(tags, sha))
        return sha

    # -- lookups, raising the Hub's errors ---------------------------------------------------

    def _visible_repo(self, repo_id: str, token: str | None) -> _Repo:
        repo = self._repos.get(repo_id)
        if repo is None or (repo.private and token != repo.token):
            # The Hub hides private repos behind "not found"; anonymous callers get a 401.
            raise _HubError(401 if token is None else 404, "RepoNotFound", "Repository not found")
        return repo

    def _check_gate(self, repo_id: str, repo: _Repo, token: str | None) -> None:
        if not repo.gated or token == repo.token:
            return
        if token is None:
            raise _HubError(
                401,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in.",
            )
        raise _HubError(
            403,
            "GatedRepo",
            f"Access to model {repo_id} is restricted and you are not in the authorized list.",
        )

    @staticmethod
    def _commit(repo: _Repo, rev: str) -> str:
        sha = repo.branches.get(rev) or repo.tags.get(rev)
        if sha is None and len(rev) == 40 and set(rev) <= _HEX40 and rev in repo.commits:
            sha = rev
        if sha is None:
            raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return sha

    def _resolve(self, repo_id: str, rev: str, token: str | None, gate: bool) -> tuple[_Repo, str]:
        with self._lock:
            repo = self._visible_repo(repo_id, token)
            if gate:
                self._check_gate(repo_id, repo, token)
            return repo, self._commit(repo, rev)

    # -- accounting, called by the handler ---------------------------------------------------

    def _record(self, method: str, path: str, range_header: str | None) -> None:
        with self._lock:
            self.requests.append((method, path))
            if range_header is not None:
                self.range_requests.append((path, range_header))

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_served += n

    def _take_drop(self, body_len: int) -> int | None:
        """Byte count after which this body is cut, for the first `drop_times` cuttable bodies."""
        with self._lock:
            limit = self.drop_after_bytes
            if limit is None or body_len <= limit or self._drops_done >= self.drop_times:
                return None
            self._drops_done += 1
            return limit


# -- JSON documents ------------------------------------------------------------------------------


def _model_info(repo_id: str, repo: _Repo, sha: str, blobs: bool) -> dict[str, Any]:
    files = repo.commits[sha]
    return {
        "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
        "id": repo_id,
        "modelId": repo_id,
        "author": repo_id.split("/")[0] if "/" in repo_id else None,
        "sha": sha,
        "lastModified": repo.dates[sha],
        "createdAt": repo.created_at,
        "private": repo.private,
        "gated": "auto" if repo.gated else False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": [_sibling(name, b, blobs) for name, b in sorted(files.items())],
        "usedStorage": sum(b.size for b in files.values()),
    }


def _sibling(name: str, blob: _Blob, blobs: bool) -> dict[str, Any]:
    if not blobs:
        return {"rfilename": name}
    entry: dict[str, Any] = {"rfilename": name, "size": blob.size, "blobId": blob.oid}
    if blob.is_lfs:
        entry["lfs"] = {"sha256": blob.sha256, "size": blob.size, "pointerSize": blob.pointer_size}
    return entry


def _tree(files: dict[str, _Blob], sha: str, prefix: str, recursive: bool) -> list[dict]:
    """Tree entries under `prefix`, directories included, sorted by path as the Hub does."""
    base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    entries: dict[str, dict] = {}
    for name, blob in files.items():
        if not name.startswith(base):
            continue
        parts = name[len(base) :].split("/")
        depth = len(parts) if recursive else 1
        for i in range(1, min(depth, len(parts) - 1) + 1):
            folder = base + "/".join(parts[:i])
            oid = hashlib.sha1(f"tree\0{sha}\0{folder}".encode()).hexdigest()
            entries[folder] = {"type": "directory", "oid": oid, "size": 0, "path": folder}
        if recursive or len(parts) == 1:
            entries[name] = _tree_file(name, blob)
    return [entries[p] for p in sorted(entries)]


def _tree_file(name: str, blob: _Blob) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "file", "oid": blob.oid, "size": blob.size, "path": name}
    if blob.is_lfs:
        entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": blob.pointer_size}
    return entry


# -- HTTP ----------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # snapshot_download opens 8+ connections at once
    hub: FakeHfHub

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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, every answer carries Content-Length
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        with contextlib.suppress(OSError):  # client gone
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle("HEAD")

    # -- dispatch ----------------------------------------------------------------------------

    @property
    def hub(self) -> FakeHfHub:
        return self.server.hub

    def _token(self) -> str | None:
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        return (token.strip() or None) if scheme.lower() == "bearer" else None

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        segs = [unquote(s) for s in url.path.split("/")[1:]]  # split first: revs may hold %2F
        is_resolve = "resolve" in segs[1:3]
        ranged = self.headers.get("Range") if is_resolve and method == "GET" else None
        self.hub._record(method, self.path, ranged)
        try:
            if self.hub.fail_status is not None:
                raise _HubError(self.hub.fail_status, None, "Injected failure")
            if segs[:2] == ["api", "models"] and len(segs) > 2 and method == "GET":
                self._api(segs[2:], parse_qs(url.query))
            elif is_resolve:
                self._resolve_file(method, segs)
            else:
                raise _HubError(404, None, "Not Found")
        except _HubError as e:
            self._send_error(method, e)

    def _api(self, segs: list[str], query: dict[str, list[str]]) -> None:
        # /api/models/{repo}, {repo}/revision/{rev}, {repo}/tree/{rev}[/{path}]; repo has 1-2 parts
        n = 1 if len(segs) > 1 and segs[1] in ("revision", "tree") else 2
        repo_id, rest = "/".join(segs[:n]), segs[n:]
        if not rest:
            rest = ["revision", "main"]
        if len(rest) < 2 or rest[0] not in ("revision", "tree"):
            raise _HubError(404, None, "Not Found")
        repo, sha = self.hub._resolve(repo_id, rest[1], self._token(), gate=False)
        if rest[0] == "revision":
            blobs = _flag(query, "blobs")
            self._send_json(_model_info(repo_id, repo, sha, blobs))
        else:
            prefix = "/".join(rest[2:])
            entries = _tree(repo.commits[sha], sha, prefix, _flag(query, "recursive"))
            if prefix and not entries:
                raise _HubError(404, "EntryNotFound", f"{prefix} does not exist on {rest[1]}")
            self._send_page(entries, query)

    def _resolve_file(self, method: str, segs: list[str]) -> None:
        n = 1 if segs[1] == "resolve" else 2
        if len(segs) < n + 3:
            raise _HubError(404, None, "Not Found")
        repo_id, rev, filename = "/".join(segs[:n]), segs[n + 1], "/".join(segs[n + 2 :])
        repo, sha = self.hub._resolve(repo_id, rev, self._token(), gate=True)
        blob = repo.commits[sha].get(filename)
        if blob is None:
            raise _HubError(404, "EntryNotFound", "Entry not found", **{"X-Repo-Commit": sha})
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

    def _file_headers(self, blob: _Blob, sha: str) -> None:
        etag = blob.sha256 if blob.is_lfs else blob.oid
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("X-Repo-Commit", sha)
        self.send_header("ETag", f'"{etag}"')
        if blob.is_lfs:  # what the Hub puts on its LFS answers: the real file's id and size
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(blob.size))

    def _send_body(self, blob: _Blob, start: int, end: int) -> None:
        cut = self.hub._take_drop(end - start)
        stop = end if cut is None else start + cut
        with contextlib.suppress(ConnectionError):  # the client may leave, e.g. during a stall
            self._stream(blob, start, stop)
            if stop == end:
                return
        self.close_connection = True  # fault or client gone: leave the body short

    def _stream(self, blob: _Blob, start: int, stop: int) -> None:
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
                self.hub._count(n)
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
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, method: str, error: _HubError) -> None:
        body = b"" if method == "HEAD" else json.dumps({"error": error.message}).encode()
        self.send_response(error.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if error.code:
            self.send_header("X-Error-Code", error.code)
        self.send_header("X-Error-Message", error.message)
        for name, value in error.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["false"])[0].lower() in ("1", "true")
