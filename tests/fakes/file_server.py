"""A real HTTP file server for download tests, with fault injection.

Serves bytes (from memory) or files (from disk, with os.sendfile) over HTTP/1.1 on 127.0.0.1,
answering GET and HEAD with Content-Length, Accept-Ranges, a strong ETag and Last-Modified,
single-range requests (206 / 416) and If-Range. Faults per path make it misbehave the way real
servers and networks do:

    with FileServer() as server:
        url = server.add("/model.bin", data, Faults(drop_after=1 << 20, drop_times=2))
        ...
        assert server.requests[1] == ("GET", "/model.bin", {"Range": "bytes=1048576-", ...})

Offsets in Faults (drop_after, stall_after) count body bytes of one response, so a client that
resumes with Range meets the fault again `drop_times` / `stall_times` times in all.
"""

import contextlib
import dataclasses
import email.utils
import functools
import hashlib
import os
import pathlib
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# Request headers kept in FileServer.requests: what a downloader's resume logic is judged by.
_RECORDED = ("Range", "If-Range", "If-None-Match", "If-Modified-Since", "Authorization")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


@dataclass
class Faults:
    drop_after: int | None = None  # close the connection after sending this many body bytes...
    drop_times: int = 1  # ...for this many GET requests (then serve normally)
    stall_after: int | None = None  # after this many body bytes, send nothing for stall_seconds
    stall_seconds: float = 0.0
    stall_times: int = 1
    declared_length: int | None = None  # claim this length for the file (always)
    corrupt: bool = False  # flip the byte in the middle of the file
    ignore_range: bool = False  # answer 200 with the full body even when Range is asked
    head_status: int | None = None  # HEAD answers this status, e.g. 405
    status: int | None = None  # every request (GET and HEAD) for this path answers this status
    status_times: int | None = None  # ...only for the first N requests (None = always)
    etag: bool = True  # send a strong ETag...
    last_modified: bool = True  # ...and Last-Modified


@dataclass
class _Entry:
    content: bytes | pathlib.Path
    faults: Faults
    mtime: float  # Last-Modified of in-memory content: when add() stored it
    digest: str  # ETag of in-memory content: a hash of it, computed once
    # Fault budgets left, consumed as the faults happen.
    drops: int = 0
    stalls: int = 0
    statuses: int | None = None


@dataclass
class _Plan:
    """What one GET sends: body bytes [start, stop) of the file, and the faults on the way."""

    start: int
    stop: int
    drop_at: int | None = None
    stall_at: int | None = None
    corrupt_at: int | None = None


class FileServer:
    def __init__(self) -> None:
        self.bytes_served = 0  # body bytes handed to the socket, counted just before
        self.requests: list[tuple[str, str, dict]] = []
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # wakes stalled handlers at stop()
        self._connections: set[socket.socket] = set()
        self._last_mtime = 0.0
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        serve = functools.partial(self._server.serve_forever, poll_interval=0.01)
        self._thread = threading.Thread(target=serve, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "FileServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        # Keep-alive connections would otherwise linger in their handler threads.
        with self._lock:
            for conn in list(self._connections):
                _shutdown(conn)

    def __enter__(self) -> "FileServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def add(self, path: str, content: bytes | pathlib.Path, faults: Faults | None = None) -> str:
        """Serve `content` at `path` (replacing what was there); returns the full URL."""
        with self._lock:
            # Last-Modified has one-second resolution: each add() gets a later second, so that
            # replaced content never matches an old If-Range date.
            self._last_mtime = max(float(int(time.time())), self._last_mtime + 1)
            digest = "" if isinstance(content, pathlib.Path) else _digest(content)
            self._entries[path] = _Entry(content, Faults(), self._last_mtime, digest)
        self.set_faults(path, faults or Faults())
        return self.url + path

    def set_faults(self, path: str, faults: Faults) -> None:
        """Replace the faults of `path` and reset their counters."""
        with self._lock:
            entry = self._entries[path]
            entry.faults = dataclasses.replace(faults)
            entry.drops, entry.stalls = faults.drop_times, faults.stall_times
            entry.statuses = faults.status_times

    # Used by the handler

    def _live(self, raw_path: str) -> _Entry | None:
        """The entry for a request path (with or without its query string); hold the lock."""
        return self._entries.get(raw_path) or self._entries.get(urlsplit(raw_path).path)

    def _lookup(self, raw_path: str) -> _Entry | None:
        with self._lock:
            entry = self._live(raw_path)
            return dataclasses.replace(entry) if entry else None  # a snapshot for this request

    def _take_status(self, path: str, entry: _Entry) -> int | None:
        """The injected status for this request, if any; consumes one from status_times."""
        if entry.faults.status is None:
            return None
        with self._lock:
            live = self._live(path)
            if live is None or live.statuses is None:
                return entry.faults.status
            if live.statuses <= 0:
                return None
            live.statuses -= 1
            return entry.faults.status

    def _take_fault(self, path: str, budget: str) -> bool:
        """Consume one drop or stall from the entry's budget; False once it is spent."""
        with self._lock:
            live = self._live(path)
            if live is None or getattr(live, budget) <= 0:
                return False
            setattr(live, budget, getattr(live, budget) - 1)
            return True

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_served += n

    def _record(self, method: str, path: str, headers: dict) -> None:
        with self._lock:
            self.requests.append((method, path, headers))

    def _track(self, conn: socket.socket, alive: bool) -> None:
        with self._lock:
            (self._connections.add if alive else self._connections.discard)(conn)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # keep-alive connections must not block shutdown
    owner: FileServer

    def handle_error(self, request, client_address) -> None:
        pass  # clients hanging up mid-body are expected here, not worth a traceback


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, True)

    def finish(self) -> None:
        self.server.owner._track(self.connection, False)
        super().finish()

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        owner = self.server.owner
        recorded = {name: self.headers[name] for name in _RECORDED if name in self.headers}
        owner._record(self.command, self.path, recorded)
        entry = owner._lookup(self.path)
        if entry is None:
            return self._status_only(404)
        injected = owner._take_status(self.path, entry)
        if injected is not None:
            return self._status_only(injected)
        if not body and entry.faults.head_status is not None:
            return self._status_only(entry.faults.head_status, {"Allow": "GET"})
        self._serve_entry(entry, body)

    def _serve_entry(self, entry: _Entry, body: bool) -> None:
        faults = entry.faults
        size = _size(entry.content)
        claimed = size if faults.declared_length is None else faults.declared_length
        validators = _validators(entry)
        span = None if faults.ignore_range else self._requested_range(claimed, validators)
        if span == "unsatisfiable":
            return self._status_only(416, {"Content-Range": f"bytes */{claimed}"})
        start, end = span or (0, claimed)  # end is exclusive
        self.send_response(206 if span else 200)
        self.send_header("Content-Length", str(end - start))
        if span:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{claimed}")
        if not faults.ignore_range:
            self.send_header("Accept-Ranges", "bytes")
        for name, value in validators.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if body:
            self._send_body(entry, self._plan(entry, start, min(end, size), size))
            if min(end, size) < end:  # declared more than there is: end it short
                self.close_connection = True

    def _requested_range(self, size: int, validators: dict) -> tuple[int, int] | str | None:
        """(start, end) of a satisfiable single Range, "unsatisfiable", or None for the whole."""
        match = _RANGE.fullmatch(self.headers.get("Range", "").strip())
        if_range = self.headers.get("If-Range")
        # If-Range matches only the current ETag or the exact Last-Modified date.
        if not match or (if_range is not None and if_range not in validators.values()):
            return None  # no (usable) Range, or the file changed: the whole body, as HTTP says
        first, last = match.groups()
        if not first:  # bytes=-N: the last N bytes
            if not last:
                return None
            return (max(size - int(last), 0), size) if int(last) and size else "unsatisfiable"
        start, end = int(first), min(int(last) + 1, size) if last else size
        if last and int(last) < start:
            return None  # syntactically invalid: ignored, as HTTP says
        return (start, end) if start < size else "unsatisfiable"

    def _plan(self, entry: _Entry, start: int, stop: int, size: int) -> _Plan:
        faults = entry.faults
        return _Plan(
            start,
            stop,
            drop_at=self._fault_at(faults.drop_after, start, stop, "drops"),
            stall_at=self._fault_at(faults.stall_after, start, stop, "stalls"),
            corrupt_at=size // 2 if faults.corrupt and size else None,
        )

    def _fault_at(self, after: int | None, start: int, stop: int, budget: str) -> int | None:
        """The file offset where a drop or stall happens in this response, if it does. A fault
        only counts (and uses up its budget) when the response reaches it."""
        if after is None or start + after >= stop:
            return None
        return start + after if self.server.owner._take_fault(self.path, budget) else None

    def _send_body(self, entry: _Entry, plan: _Plan) -> None:
        cuts = {plan.stop, plan.drop_at, plan.stall_at, plan.corrupt_at}
        if plan.corrupt_at is not None:
            cuts.add(plan.corrupt_at + 1)
        bounds = sorted(c for c in cuts if c is not None and plan.start < c <= plan.stop)
        pos = plan.start
        try:
            with _Source(entry.content) as source:
                for cut in bounds:
                    if pos == plan.stall_at:
                        self.server.owner._stopping.wait(entry.faults.stall_seconds)
                    if pos == plan.drop_at:
                        return self._drop()
                    # Counted before sending, so a client that has the bytes sees them counted.
                    self._count_sent(cut - pos)
                    if pos == plan.corrupt_at:
                        self.wfile.write(bytes([source.byte(pos) ^ 0xFF]))
                    else:
                        sent = source.send(self.connection, self.wfile, pos, cut)
                        self._count_sent(sent - (cut - pos))  # the file shrank: not all went
                    pos = cut
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away; nothing to tell it

    def _count_sent(self, n: int) -> None:
        self.server.owner._count(n)

    def _drop(self) -> None:
        self.close_connection = True
        _shutdown(self.connection)

    def _status_only(self, status: int, headers: dict | None = None) -> None:
        body = b"" if self.command == "HEAD" or status == 416 else f"{status}\n".encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)


class _Source:
    """Body bytes of one entry: a memoryview of bytes, or an open file served by sendfile."""

    def __init__(self, content: bytes | pathlib.Path) -> None:
        self._content = content
        self._fd: int | None = None

    def __enter__(self) -> "_Source":
        if isinstance(self._content, pathlib.Path):
            self._fd = os.open(self._content, os.O_RDONLY)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is not None:
            os.close(self._fd)

    def byte(self, offset: int) -> int:
        if self._fd is None:
            return self._content[offset]
        return os.pread(self._fd, 1, offset)[0]

    def send(self, sock: socket.socket, wfile, start: int, stop: int) -> int:
        """Send bytes [start, stop); returns how many went out."""
        if self._fd is None:
            wfile.write(memoryview(self._content)[start:stop])
            return stop - start
        offset = start
        while offset < stop:
            sent = os.sendfile(sock.fileno(), self._fd, offset, stop - offset)
            if sent == 0:  # the file shrank under us
                break
            offset += sent
        return offset - start


def _size(content: bytes | pathlib.Path) -> int:
    return content.stat().st_size if isinstance(content, pathlib.Path) else len(content)


def _validators(entry: _Entry) -> dict[str, str]:
    """ETag and Last-Modified, as the faults allow. For bytes the ETag is a hash of the content;
    for files it hashes inode, size and mtime (as real servers do) so 1 GiB files are not read."""
    headers = {}
    if isinstance(entry.content, pathlib.Path):
        st = entry.content.stat()
        digest = _digest(f"{st.st_ino}-{st.st_size}-{st.st_mtime_ns}".encode())
        mtime = st.st_mtime
    else:
        digest, mtime = entry.digest, entry.mtime
    if entry.faults.etag:
        headers["ETag"] = f'"{digest}"'
    if entry.faults.last_modified:
        headers["Last-Modified"] = email.utils.formatdate(mtime, usegmt=True)
    return headers


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        conn.shutdown(socket.SHUT_RDWR)
