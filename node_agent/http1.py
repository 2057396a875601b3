"""HTTP/1.1 framing for the endpoint proxy (RFC 9112): where a head ends, what it says, and where
the body after it ends, so that the bytes pass unchanged while each request is checked and
counted. Strict with what clients send: anything two parsers could read differently (the model's
parser and this one: request smuggling) is refused. The model's answers are read as sent.
"""

import json
import re
from dataclasses import dataclass
from http import HTTPStatus

MAX_LINE_BYTES = 64 * 1024  # a request line, a chunk size line
MAX_HEAD_BYTES = 256 * 1024  # all of a head's lines together
MAX_LENGTH_DIGITS = 18  # a Content-Length of up to an exabyte
HEAD_END = b"\r\n\r\n"
CRLF = b"\r\n"
# The Connection options this proxy acts on; any other the client names is a header meant for
# the proxy alone (RFC 9110 7.6.1) and is dropped with the headers that are hop-by-hop always.
CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive", b"upgrade"})
HOP_BY_HOP_NAMES = ("keep-alive", "proxy-connection", "proxy-authorization", "te")
# Headers a hop-by-hop list may not remove: the framing both sides must agree on.
FRAMING = frozenset({b"connection", b"content-length", b"transfer-encoding", b"upgrade", b"host"})

TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# A whole request head in one pass: a method, a path (origin-form: the only target a model
# gets), HTTP/1.x, then `name: value` lines: names are tokens (no space before the colon, no
# folded lines), values have no control characters but tab (no CR or LF outside a CRLF).
REQUEST_HEAD = re.compile(
    rb"(" + TOKEN + rb") /[^\x00-\x20\x7f]* HTTP/1\.([01])"
    rb"(?:\r\n" + TOKEN + rb":[^\x00-\x08\x0a-\x1f\x7f]*)*"
)
STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [^\r\n]*)?(?=\r\n|\Z)")
CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(;[^\r\n]*)?")


def _fields(*names: str) -> re.Pattern:
    """The lines of the named header fields: (name, value); a value's trailing space is kept."""
    alternatives = "|".join(re.escape(name) for name in names).encode()
    return re.compile(rb"\r\n(" + alternatives + rb"):[ \t]*([^\r]*)", re.I)


def _dropped(*names: str) -> re.Pattern:
    alternatives = "|".join(re.escape(name) for name in names).encode()
    return re.compile(rb"\r\n(?:" + alternatives + rb"):[^\r]*", re.I)


REQUEST_FIELD = _fields(
    "content-length", "transfer-encoding", "connection", "authorization", *HOP_BY_HOP_NAMES
)
RESPONSE_FIELD = _fields("content-length", "transfer-encoding", "connection")
DROPPED_FIELD = _dropped("authorization", *HOP_BY_HOP_NAMES)
# A public endpoint passes Authorization on: its model may check a key of its own.
DROPPED_FIELD_BUT_AUTHORIZATION = _dropped(*HOP_BY_HOP_NAMES)
FRAMING_FIELDS = frozenset({b"content-length", b"transfer-encoding", b"connection"})
NO_OPTIONS = frozenset()
NO_AUTHORIZATION = (None,)


class BadMessage(Exception):
    """A message this proxy will not pass on; `status` is the answer a client gets."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Length:
    """A body of a known length."""

    __slots__ = ("left", "done")

    def __init__(self, length: int):
        self.left = length
        self.done = not length

    def feed(self, data: bytes, start: int) -> int:
        """Where this body's bytes end in data[start:] (all of it while more is to come)."""
        end = start + self.left
        if end <= len(data):
            self.left, self.done = 0, True
            return end
        self.left -= len(data) - start
        return len(data)


class UntilClose:
    """A response body that ends when the model closes its connection."""

    done = False

    def feed(self, data: bytes, start: int) -> int:
        return len(data)


class Chunked:
    """A chunked body, passed as it is: each chunk's size line is read to find the last one,
    the chunk data only counted."""

    __slots__ = ("done", "_state", "_left", "_line")

    SIZE, DATA, DATA_END, TRAILER = range(4)

    def __init__(self):
        self.done = False
        self._state = self.SIZE
        self._left = 0
        self._line = bytearray()

    def feed(self, data: bytes, start: int) -> int:
        position, end = start, len(data)
        while position < end and not self.done:
            if self._state == self.DATA:
                taken = min(self._left, end - position)
                position += taken
                self._left -= taken
                if not self._left:
                    self._state = self.DATA_END
                continue
            newline = data.find(b"\n", position)
            if newline == -1:
                self._line += data[position:]
                if len(self._line) > MAX_LINE_BYTES:
                    raise BadMessage(400, "a chunk size line is too long")
                return end
            self._line += data[position : newline + 1]
            position = newline + 1
            self._line_read(bytes(self._line))
            self._line.clear()
        return position

    def _line_read(self, line: bytes) -> None:
        if not line.endswith(CRLF):
            raise BadMessage(400, "chunked body lines end with CRLF")
        line = line[:-2]
        if self._state == self.SIZE:
            size = CHUNK_SIZE.fullmatch(line)
            if size is None:
                raise BadMessage(400, "malformed chunk size")
            self._left = int(size.group(1), 16)
            self._state = self.DATA if self._left else self.TRAILER
        elif self._state == self.DATA_END:
            if line:
                raise BadMessage(400, "a chunk is longer than its size")
            self._state = self.SIZE
        elif not line:  # the empty line after the trailer fields
            self.done = True


class HeadReader:
    """Collects a head that may arrive in pieces."""

    __slots__ = ("_pending",)

    def __init__(self):
        self._pending = bytearray()

    @property
    def partial(self) -> bool:
        return bool(self._pending)

    def take(self, data: bytes, start: int) -> tuple[bytes | None, int]:
        """(the head without its final CRLFCRLF, where it ended in data), or (None, len(data))
        while it is not all here."""
        if not self._pending:
            while data.startswith(CRLF, start):  # empty lines before a message are ignored
                start += 2
            end = data.find(HEAD_END, start)
            if end != -1:
                _check_size(end - start)
                return data[start:end], end + 4
            self._pending += data[start:]
        else:
            seen = len(self._pending)
            self._pending += data[start:]
            end = self._pending.find(HEAD_END, max(0, seen - 3))
            if end != -1:
                _check_size(end)
                head = bytes(self._pending[:end])
                self._pending.clear()
                return head, start + end + 4 - seen
        _check_size(len(self._pending))
        return None, len(data)


def _check_size(length: int) -> None:
    if length > MAX_HEAD_BYTES:
        raise BadMessage(431, f"a message head is over {MAX_HEAD_BYTES} bytes")


@dataclass(slots=True)
class RequestHead:
    method: bytes
    head: bytes  # what the model gets: the head as sent but the headers not meant for it
    body: Length | Chunked | None
    authorization: bytes | None
    keep_alive: bool
    upgrade: bool


def parse_request(head: bytes, strip_authorization: bool) -> RequestHead:
    """The request a head starts; BadMessage for any this proxy will not pass on. A few regular
    expressions over the whole head, not a loop over its lines: this is the proxy's hot path."""
    valid = REQUEST_HEAD.fullmatch(head)
    if valid is None or (len(head) > MAX_LINE_BYTES and _request_line_too_long(head)):
        raise _why_bad(head)
    method, version = valid.group(1), valid.group(2) == b"1"  # version: 1.1 or not
    watched = {}
    for name, value in REQUEST_FIELD.findall(head):
        watched.setdefault(name.lower(), []).append(value.rstrip(b" \t"))
    options = _options(watched[b"connection"]) if b"connection" in watched else NO_OPTIONS
    if not watched.keys() <= FRAMING_FIELDS:
        dropped = DROPPED_FIELD if strip_authorization else DROPPED_FIELD_BUT_AUTHORIZATION
        head = dropped.sub(b"", head)
    if options - CONNECTION_OPTIONS:  # headers the client meant for this proxy only
        head = _without_connection_named(head, options)
    authorization = watched.get(b"authorization", NO_AUTHORIZATION)
    if len(authorization) > 1:
        raise BadMessage(400, "more than one Authorization header")
    return RequestHead(
        method=method,
        head=head + HEAD_END,
        body=_request_body(watched, version),
        authorization=authorization[0],
        keep_alive=b"close" not in options if version else b"keep-alive" in options,
        upgrade=b"upgrade" in options and version,
    )


def _request_line_too_long(head: bytes) -> bool:
    line_end = head.find(CRLF)
    return (len(head) if line_end == -1 else line_end) > MAX_LINE_BYTES


def _why_bad(head: bytes) -> BadMessage:
    """What is wrong with a head REQUEST_HEAD refused (the slow path: it is refused anyway)."""
    line = head.split(CRLF, 1)[0]
    if len(line) > MAX_LINE_BYTES:
        return BadMessage(414, "the request target is too long")
    parts = line.split(b" ")
    if len(parts) != 3 or not re.fullmatch(TOKEN, parts[0]):
        return BadMessage(400, "malformed request line")
    if parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        return BadMessage(505, "only HTTP/1.1 and HTTP/1.0 are served")
    if not parts[1].startswith(b"/") or re.search(rb"[\x00-\x20\x7f]", parts[1]):
        return BadMessage(400, "the request target must be a path")
    return BadMessage(400, "malformed header field")


def _without_connection_named(head: bytes, options: set[bytes]) -> bytes:
    named = (options - CONNECTION_OPTIONS - FRAMING) | {b"connection"}
    lines = head.split(CRLF)
    kept = [lines[0]] + [line for line in lines[1:] if _name(line) not in named]
    if options & CONNECTION_OPTIONS:
        kept.append(b"Connection: " + b", ".join(sorted(options & CONNECTION_OPTIONS)))
    return CRLF.join(kept)


def _request_body(watched: dict, version: bool) -> Length | Chunked | None:
    encodings, lengths = watched.get(b"transfer-encoding"), watched.get(b"content-length")
    if encodings:
        if lengths or not version:
            raise BadMessage(400, "Transfer-Encoding with Content-Length or in HTTP/1.0")
        if len(encodings) != 1 or encodings[0].lower() != b"chunked":
            raise BadMessage(501, "the only Transfer-Encoding served is chunked")
        return Chunked()
    if lengths:
        if len(set(lengths)) != 1 or not _is_length(lengths[0]):
            raise BadMessage(400, "malformed Content-Length")
        length = int(lengths[0])
        return Length(length) if length else None
    return None


@dataclass(slots=True)
class ResponseHead:
    status: int
    body: Length | Chunked | UntilClose | None
    keep_alive: bool


def parse_response(head: bytes, request_method: bytes) -> ResponseHead:
    """The response a head from the model starts (BadMessage: the model broke HTTP)."""
    status_line = STATUS_LINE.match(head)
    if status_line is None:
        raise BadMessage(502, "the model's answer is not HTTP/1.x")
    version, status = int(status_line.group(1)), int(status_line.group(2))
    fields = {}
    for name, value in RESPONSE_FIELD.findall(head):
        fields.setdefault(name.lower(), []).append(value.rstrip(b" \t"))
    encodings = [value.lower() for value in fields.get(b"transfer-encoding", ())]
    lengths, connection = fields.get(b"content-length"), fields.get(b"connection", ())
    options = _options(connection)
    keep_alive = b"close" not in options if version else b"keep-alive" in options
    if request_method == b"HEAD" or status < 200 or status in (204, 304):
        return ResponseHead(status, None, keep_alive)
    if encodings:
        chunked = encodings[-1].rsplit(b",", 1)[-1].strip() == b"chunked"
        return ResponseHead(status, Chunked(), keep_alive) if chunked else _until_close(status)
    if lengths:
        if len(set(lengths)) != 1 or not _is_length(lengths[0]):
            raise BadMessage(502, "the model sent a malformed Content-Length")
        length = int(lengths[0])
        return ResponseHead(status, Length(length) if length else None, keep_alive)
    return _until_close(status)


def _is_length(value: bytes) -> bool:
    """ASCII digits, at most 18 of them: any real body fits, and int() never refuses it."""
    return 0 < len(value) <= MAX_LENGTH_DIGITS and value.isdigit()


def _until_close(status: int) -> ResponseHead:
    return ResponseHead(status, UntilClose(), keep_alive=False)


def _options(values) -> set[bytes]:
    return {option.strip().lower() for value in values for option in value.split(b",")} - {b""}


def _name(line: bytes) -> bytes:
    return line.partition(b":")[0].lower()


def error_response(status: int, code: str, message: str, headers: bytes = b"") -> bytes:
    """An answer of the proxy's own in the platform's error shape; it ends the connection."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    )
    return head.encode() + headers + CRLF + body
