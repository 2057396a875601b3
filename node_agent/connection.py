"""The agent's WebSocket link to the control plane (websocket-client): token auth, heartbeats,
reconnects with exponential backoff and jitter (1 s -> 60 s), and an outbox so reports made while
disconnected are delivered on the next connection, just before its node_hello."""

import collections
import contextlib
import logging
import random
import threading
from collections.abc import Callable

import websocket

from chalicelib.protocol import (
    MAX_FRAME_BYTES,
    Error,
    Heartbeat,
    Message,
    ProtocolError,
    parse_server_message,
)

log = logging.getLogger("prism.node")
OUTBOX_LIMIT = 1000


def backoff_delays(first: float = 1.0, cap: float = 60.0, rng=random.random):
    """1, 2, 4 … capped at 60 s, each with full jitter in [delay/2, delay]."""
    delay = first
    while True:
        yield delay / 2 + rng() * delay / 2
        delay = min(delay * 2, cap)


class Connection:
    def __init__(
        self,
        url: str,
        token: str,
        on_message: Callable[[Message], None],
        hello: Callable[[], Message],
        heartbeat_s: float = 15.0,
        backoff_first_s: float = 1.0,
        backoff_cap_s: float = 60.0,
    ):
        self.url = url
        self._token = token
        self._on_message = on_message
        self._hello = hello
        self._heartbeat_s = heartbeat_s
        self._backoff = (backoff_first_s, backoff_cap_s)
        self._ws: websocket.WebSocket | None = None
        self._outbox: collections.deque[str] = collections.deque(maxlen=OUTBOX_LIMIT)
        self._send_lock = threading.Lock()
        self.connected = threading.Event()
        self.connects = 0  # how many times a connection was established

    def send(self, message: Message) -> None:
        """Send now, or keep it for the next connection."""
        data = message.to_json()
        with self._send_lock:
            if self._ws is not None:
                try:
                    send_in_frames(self._ws, data)
                    return
                except (websocket.WebSocketException, OSError):
                    self._drop()
            if not isinstance(message, Heartbeat):
                self._outbox.append(data)

    def run(self, stop: threading.Event) -> None:
        delays = backoff_delays(*self._backoff)
        while not stop.is_set():
            try:
                self._connect()
                delays = backoff_delays(*self._backoff)  # a good connection resets the backoff
                self._receive_until_closed(stop)
            except websocket.WebSocketBadStatusException as exc:
                log.error(
                    "control plane refused the connection (%s); check the node token",
                    exc.status_code,
                )
            except (websocket.WebSocketException, OSError) as exc:
                log.warning("connection to %s failed: %s", self.url, type(exc).__name__)
            with self._send_lock:
                self._drop()
            if not stop.is_set():
                stop.wait(next(delays))

    def close(self) -> None:
        with self._send_lock:
            self._drop()

    def _connect(self) -> None:
        ws = websocket.create_connection(
            self.url, header=[f"Authorization: Bearer {self._token}"], timeout=10
        )
        ws.settimeout(1.0)
        with self._send_lock:
            self._ws = ws
            # The reports kept while disconnected go first, then the hello: its reconciliation
            # ends what the node no longer runs, and a crash reported meanwhile must have been
            # recorded as a crash (exit code, output) by then, not found missing.
            while self._outbox:
                send_in_frames(ws, self._outbox[0])  # dropped from the outbox once it went out
                self._outbox.popleft()
            send_in_frames(ws, self._hello().to_json())
        self.connects += 1
        self.connected.set()
        log.info("connected to %s", self.url)

    def _receive_until_closed(self, stop: threading.Event) -> None:
        idle = 0.0
        while not stop.is_set():
            ws = self._ws
            if ws is None:
                return
            try:
                frame = ws.recv()
            except websocket.WebSocketTimeoutException:
                idle += 1.0
                if idle >= self._heartbeat_s:
                    idle = 0.0
                    self.send(Heartbeat())
                continue
            if not frame and not ws.connected:
                return  # closed by the server (an empty text frame is just malformed)
            self._dispatch(frame)

    def _dispatch(self, frame: str) -> None:
        try:
            message = parse_server_message(frame)
        except ProtocolError as exc:
            self.send(exc.to_error())
            return
        if isinstance(message, Error):
            log.warning("control plane error %s: %s", message.code, message.message)
            return
        try:
            self._on_message(message)
        except Exception:  # one bad message must not take the connection down
            log.exception("handling %s failed", message.type)

    def _drop(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                self._ws.close()  # the closing handshake, while the connection is up
            # After a server-initiated close websocket-client has already marked the connection
            # closed, so close() returns without closing the socket: shutdown() always does.
            with contextlib.suppress(Exception):
                self._ws.shutdown()
            self._ws = None
        self.connected.clear()


def send_in_frames(ws: websocket.WebSocket, data: str) -> None:
    """One text message in frames of at most MAX_FRAME_BYTES: API Gateway closes the connection
    on a larger frame (a message may be up to MAX_MESSAGE_BYTES)."""
    payload = data.encode("utf-8")
    if len(payload) <= MAX_FRAME_BYTES:
        ws.send(data)
        return
    chunks = [payload[i : i + MAX_FRAME_BYTES] for i in range(0, len(payload), MAX_FRAME_BYTES)]
    for index, chunk in enumerate(chunks):
        opcode = websocket.ABNF.OPCODE_TEXT if index == 0 else websocket.ABNF.OPCODE_CONT
        ws.send_frame(websocket.ABNF.create_frame(chunk, opcode, fin=index == len(chunks) - 1))
