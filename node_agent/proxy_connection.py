"""One client connection to a deployment's endpoint and its own connection to the model
(node_agent.proxy has the listeners). Requests go to the model in order on the client's own
connection and every answer comes back the same way, bytes unchanged; only heads are read
(node_agent.http1), a request's for its framing and its endpoint key, a response's for its
status and framing. The model closing an idle connection is never seen by a client: the next
request opens another.
"""

import asyncio
import logging
import time
from collections import deque

from node_agent import http1
from node_agent.model_connection import ModelConnection

log = logging.getLogger("prism.node")
# A connection to the model idle this long is not sent on again but replaced, before a model
# server would drop it (gunicorn: 2 s, uvicorn: 5 s): a request sent on a connection the model
# is closing would be lost.
UPSTREAM_IDLE_S = 1.5
CLIENT_IDLE_S = 75.0  # a kept-alive client connection with nothing to do is closed
HEAD_TIMEOUT_S = 30.0  # a request head still arriving after this long: a client holding a slot
# After the proxy's own answer (401, 400, 502) it stops sending and drops what the client still
# sends this long, so the client reads the answer rather than a reset.
LINGER_S = 2.0
ERROR_CODES = {401: "unauthorized", 502: "model_unreachable"}  # any other: "bad_request"
CLIENT_WRITE_BUFFER = 1024 * 1024  # what a slow client may have waiting before the model waits


class Exchange:
    """A request sent to the model and not yet answered in full."""

    __slots__ = ("method", "started", "keep_alive", "upgrade")

    def __init__(self, method: bytes, started: float, keep_alive: bool, upgrade: bool):
        self.method, self.started = method, started
        self.keep_alive, self.upgrade = keep_alive, upgrade


class ClientConnection(asyncio.Protocol):
    """One client connection: its requests go to the model on the client's own connection to
    it, in order, and every answer comes back the same way."""

    def __init__(self, listener):
        self._listener = listener
        self.model_port = listener.model_port
        self._metrics = listener.metrics
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._model: ModelConnection | None = None
        self._exchanges: deque[Exchange] = deque()
        self._requests = http1.HeadReader()
        self._request_body = None  # the framing of the request body on its way to the model
        self._outgoing: list[bytes] = []  # for the model, from the read being handled
        self._responses = http1.HeadReader()
        self._response_body = None
        self._response_keep_alive = True
        self._answering = False  # bytes of the first exchange's answer went to the client
        self._tunnel = False  # after a 101: bytes both ways, no more HTTP
        self._held: bytearray | None = None  # what follows an upgrade request, until answered
        self._refusal: bytes | None = None  # the proxy's answer, after the model's before it
        self._ignoring = False  # after a refusal: what the client sends is dropped
        self._closing = False  # after the answers now being written
        self._client_eof = False
        self.full = False  # the client reads slower than the model answers
        self._paused: set[str] = set()
        self._passed: tuple | None = None  # the key that passed last, with the key set it passed
        self._idle_since = time.monotonic()
        self._head_since: float | None = None

    # -- the client's side --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=CLIENT_WRITE_BUFFER)
        self._listener.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener.clients.discard(self)
        for _ in self._exchanges:  # cut short: no longer in flight
            self._metrics.done()
        self._exchanges.clear()
        if self._model is not None:
            self._model.close(abort=True)  # the model learns its client went away
            self._model = None

    def data_received(self, data: bytes) -> None:
        if self._tunnel:
            self._model.send(data)
        elif self._held is not None:
            self._held += data
        elif not self._ignoring:
            try:
                self._read_requests(data)
            except http1.BadMessage as exc:
                self._bad_request(exc)
            finally:
                self._flush()

    def eof_received(self) -> bool:
        self._client_eof = True
        if self._tunnel or self._request_body is not None:
            return False  # a request cut short can never end: both connections close
        # A client that half-closed after its requests still gets the answers it is owed
        # (and a refusal after them).
        return bool(self._exchanges)

    def pause_writing(self) -> None:
        self.full = True
        if self._model is not None:
            self._model.pause_reading()

    def resume_writing(self) -> None:
        self.full = False
        if self._model is not None:
            self._model.resume_reading()

    def _read_requests(self, data: bytes) -> None:
        position, end = 0, len(data)
        while position < end:
            if self._request_body is not None:
                stop = self._request_body.feed(data, position)
                self._outgoing.append(data if stop - position == end else data[position:stop])
                position = stop
                if self._request_body.done:
                    self._request_body = None
                    self._request_sent()
            else:
                head, position = self._requests.take(data, position)
                if head is None:
                    if self._requests.partial and self._head_since is None:
                        self._head_since = time.monotonic()
                    return
                self._head_since = None
                public = self._listener.public
                self._request(http1.parse_request(head, strip_authorization=not public))
            if self._ignoring:
                return
            if self._held is not None:
                self._held += data[position:]
                return

    def _request(self, request: http1.RequestHead) -> None:
        self._metrics.arrived()
        if not self._authorized(request.authorization):
            self._metrics.answered(401, unauthorized=True)
            self._metrics.done()
            sent = request.authorization is not None
            return self._refuse(
                401,
                "the endpoint key is not valid for this deployment"
                if sent
                else "send the deployment's endpoint key: Authorization: Bearer <key>",
                b"WWW-Authenticate: Bearer\r\n",
            )
        now = time.monotonic()
        if (
            self._model is not None
            and not self._exchanges
            and now - self._idle_since > UPSTREAM_IDLE_S
        ):
            self._drop_model()  # idle too long to be trusted: a fresh connection instead
        if self._model is None:
            self._model = ModelConnection(self)
        self._exchanges.append(Exchange(request.method, now, request.keep_alive, request.upgrade))
        self._outgoing.append(request.head)
        self._request_body = request.body
        if request.body is None:
            self._request_sent()

    def _flush(self) -> None:
        """One write to the model for all a read brought (a head and its body: one packet)."""
        if self._outgoing and self._model is not None:
            out = self._outgoing
            self._model.send(out[0] if len(out) == 1 else b"".join(out))
        self._outgoing.clear()

    def _authorized(self, authorization: bytes | None) -> bool:
        """The listener's check, once per key and key set on this connection: a kept-alive
        client sends the same key each time; a rotation is a new key set, checked again."""
        hashes = self._listener.key_hashes
        if authorization is not None and self._passed == (authorization, hashes):
            return True
        if not self._listener.authorized(authorization):
            return False
        self._passed = (authorization, hashes)
        return True

    def _request_sent(self) -> None:
        # The model may have answered before the body was all sent: then nothing is waited for.
        upgrading = bool(self._exchanges) and self._exchanges[-1].upgrade
        if upgrading:  # nothing more goes until the model says what follows
            self._held = bytearray()
            self.pause("upgrade")

    def _bad_request(self, exc: http1.BadMessage) -> None:
        if self._request_body is not None:  # part of it went to the model: only a cut is left
            log.info("endpoint request body cut: %s", exc)
            return self.abort()
        self._metrics.arrived()
        self._metrics.answered(exc.status)
        self._metrics.done()
        self._refuse(exc.status, str(exc))

    def _refuse(self, status: int, message: str, headers: bytes = b"") -> None:
        """The proxy's own answer; then the connection ends (after the answers before it)."""
        self._ignoring = True
        answer = _error(status, message, headers)
        if self._exchanges:
            self._refusal = answer
        else:
            self._answer_and_close(answer)

    def _answer_and_close(self, answer: bytes) -> None:
        self._ignoring = True
        self._drop_model()
        self.transport.write(answer)
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the client reads the answer; the rest is dropped
            self._loop.call_later(LINGER_S, self.transport.abort)
        else:
            self.transport.close()

    # -- the model's side ---------------------------------------------------------------------

    def response_data(self, model: "ModelConnection", data: bytes) -> None:
        if model is not self._model:
            return
        if self._tunnel:
            self.transport.write(data)
            return
        if not self._exchanges:  # bytes for no request: the model broke HTTP; never passed on
            log.warning("the model sent %d bytes no request asked for", len(data))
            self._drop_model()
            return
        try:
            ended = self._read_responses(data)
        except http1.BadMessage as exc:
            return self._model_broke(exc)
        if ended is not None and ended < len(data) and not self._exchanges and not self._tunnel:
            # Bytes after the last answer, for no request: the model broke HTTP. The client
            # gets its answers, never bytes that would read as the start of the next one.
            self.transport.write(data[:ended])
            self._drop_model()
            self._answering = False
            return self._settle()
        self.transport.write(data)  # every byte as the model sent it
        self._answering = bool(self._exchanges) and (ended is None or ended < len(data))
        self._settle()

    def _read_responses(self, data: bytes) -> int | None:
        """Reads the answers in data for their status and framing; where the last one that
        ended in data ended (None: none did)."""
        ended = None
        position, end = 0, len(data)
        while position < end and not self._tunnel:
            if self._response_body is None:
                head, position = self._responses.take(data, position)
                if head is None:
                    break
                self._response_head(head)
            else:
                position = self._response_body.feed(data, position)
            if self._response_body is not None and self._response_body.done:
                self._response_done()
                ended = position
        return ended

    def _response_head(self, head: bytes) -> None:
        if not self._exchanges:
            raise http1.BadMessage(502, "the model answered a request that was not sent")
        exchange = self._exchanges[0]
        response = http1.parse_response(head, exchange.method)
        if response.status == 101 and not exchange.upgrade:
            raise http1.BadMessage(502, "the model switched protocols unasked")
        self._model.answered = True
        if response.status < 200 and response.status != 101:
            return  # interim (100 Continue, 103 Early Hints): the answer follows
        self._metrics.answered(response.status, (time.monotonic() - exchange.started) * 1000)
        if response.status == 101:
            self._tunnel = True  # the exchange stays in flight until the connection closes
            return
        self._response_keep_alive = response.keep_alive
        self._response_body = response.body or http1.Length(0)

    def _response_done(self) -> None:
        exchange = self._exchanges.popleft()
        self._metrics.done()
        self._response_body = None
        if not (exchange.keep_alive and self._response_keep_alive):
            self._closing = True
        if not self._exchanges:
            self._idle_since = time.monotonic()

    def _settle(self) -> None:
        """What the answers just written make due."""
        if self._tunnel:
            if self._held is not None:
                held, self._held = bytes(self._held), None
                if held:
                    self._model.send(held)
                self.resume("upgrade")
        elif self._closing:
            self.close()
        elif self._exchanges:
            return
        elif self._refusal is not None:
            self._answer_and_close(self._refusal)
        elif self._held is not None:  # an upgrade the model answered without switching
            held, self._held = bytes(self._held), None
            self.resume("upgrade")
            if held:
                self.data_received(held)
        elif self._client_eof:
            self.close()

    def model_lost(self, model: "ModelConnection", exc: BaseException | None) -> None:
        if model is not self._model:
            return
        self._drop_model()
        if self._tunnel:
            self.close()
        elif isinstance(self._response_body, http1.UntilClose):  # that was its end
            self._response_done()
            self.close()
        elif self._exchanges and self._answering:
            self.abort()  # mid-answer: the client must see it cut, not ended
        elif self._exchanges:
            self._metrics.answered(502)
            reason = type(exc).__name__ if exc is not None else "closed the connection"
            self._answer_and_close(
                _error(
                    502,
                    f"the model did not answer ({reason}): it may be starting, restarting or "
                    "have crashed",
                )
            )

    def _model_broke(self, exc: http1.BadMessage) -> None:
        log.warning("the model broke HTTP: %s", exc)
        answered = self._model.answered or self._answering
        self._drop_model()
        if answered:
            return self.abort()
        self._metrics.answered(502)
        self._answer_and_close(_error(502, f"the model broke HTTP/1.1: {exc}"))

    # -- the connection -----------------------------------------------------------------------

    def pause(self, reason: str) -> None:
        if not self._paused:
            self.transport.pause_reading()
        self._paused.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self._paused:
            self._paused.discard(reason)
            if not self._paused and not self.transport.is_closing():
                self.transport.resume_reading()

    def _drop_model(self) -> None:
        if self._model is not None:
            self._model.close()
            self._model = None
        self._responses = http1.HeadReader()  # what the old one sent never starts an answer
        self.resume("connecting")
        self.resume("model_full")

    def close(self) -> None:
        self.transport.close()  # after what is buffered for the client
        self._drop_model()

    def abort(self) -> None:
        self.transport.abort()
        if self._model is not None:
            self._model.close(abort=True)
            self._model = None

    def close_if_idle(self) -> None:
        if not self._exchanges:
            self.close()

    def expire(self, now: float) -> None:
        if self._head_since is not None and now - self._head_since > HEAD_TIMEOUT_S:
            self.abort()
        elif self._idle(now):
            self.close()

    def _idle(self, now: float) -> bool:
        quiet = not self._exchanges and not self._requests.partial
        return quiet and now - self._idle_since > CLIENT_IDLE_S


def _error(status: int, message: str, headers: bytes = b"") -> bytes:
    return http1.error_response(status, ERROR_CODES.get(status, "bad_request"), message, headers)
