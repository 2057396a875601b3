"""The endpoint proxy: every deployment the agent runs is reached through it, never directly.

One asyncio loop in a thread of the agent; one aiohttp listener per deployment, on the
deployment's endpoint port, forwarding to the model on its internal port on loopback. It checks
`Authorization: Bearer <endpoint key>` (when the deployment's auth is "key": the key's sha256
must be one of the deployment's hashes) and strips that header; everything else passes through
unchanged and streaming both ways (request bodies, chunked responses and server-sent events
chunk by chunk as they arrive, WebSocket messages), with no decompression, no redirect
following and no cookie jar. A client that goes away cancels its upstream request. The model
not answering is a 502 in the same error shape as a 401. Each listener counts what it serves
(node_agent.endpoint_metrics).
"""

import asyncio
import hashlib
import hmac
import logging
import threading
import time

import aiohttp
from aiohttp import WSMsgType, hdrs, web
from multidict import CIMultiDict
from yarl import URL

from node_agent.endpoint_metrics import EndpointMetrics
from node_agent.runtime.base import MODEL_HOST

log = logging.getLogger("prism.node")
CONNECT_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 30.0  # the agent's threads wait this long for the proxy's loop
SHUTDOWN_GRACE_S = 1.0  # requests still running when a listener closes get this long
SMALL_BODY = 64 * 1024  # bodies of a known length up to this go whole; others stream
# Idle upstream connections are dropped before a model server would drop them (gunicorn: 2 s,
# uvicorn: 5 s): a POST sent on a connection the model is closing would fail, unretried.
UPSTREAM_IDLE_S = 1.5
MAX_LINE_BYTES = 64 * 1024  # request lines and header fields: aiohttp's own 8 KiB is too few
# What a response may buffer from the model ahead of a slower client (twice this at most):
# a read of asyncio's whole 256 KiB at a time, fewer pauses when streaming.
READ_BUFFER_BYTES = 256 * 1024
# Meaningful for one connection only (RFC 9110 7.6.1), never forwarded; Expect is answered here.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Expect",
    )
)
# The handshake of a WebSocket: each side of the proxy makes its own.
WS_HANDSHAKE = frozenset(
    h.lower()
    for h in (
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Extensions",
        "Sec-WebSocket-Protocol",
        "Sec-WebSocket-Accept",
    )
)
UNSENDABLE_CLOSE_CODES = frozenset({1005, 1006, 1015})  # reported locally, never on the wire


class EndpointProxy:
    """The agent's side: open, re-key and close listeners from any thread."""

    def __init__(self):
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: dict[str, _Listener] = {}
        self._lock = threading.Lock()

    def open(
        self,
        deployment_id: str,
        host: str,
        port: int,
        model_port: int,
        auth: str,
        key_hashes: list[str],
    ) -> None:
        """Listen on host:port for the deployment (a no-op while it already does). Raises
        OSError when the port cannot be bound."""
        with self._lock:
            if deployment_id in self._listeners:
                return
            listener = _Listener(model_port, auth, key_hashes)
            self._call(listener.start(host, port))
            self._listeners[deployment_id] = listener

    def set_keys(self, deployment_id: str, key_hashes: list[str]) -> None:
        listener = self._listeners.get(deployment_id)
        if listener is not None:
            listener.key_hashes = frozenset(key_hashes)  # one assignment: atomic for the loop

    def close(self, deployment_id: str) -> None:
        with self._lock:
            listener = self._listeners.pop(deployment_id, None)
            if listener is not None:
                self._call(listener.stop())

    def close_all(self) -> None:
        for deployment_id in list(self._listeners):
            self.close(deployment_id)

    def metrics(self, deployment_id: str) -> EndpointMetrics | None:
        listener = self._listeners.get(deployment_id)
        return None if listener is None else listener.metrics

    def serving(self) -> set[str]:
        return set(self._listeners)

    def _call(self, coroutine):
        if self._loop is None:  # started on first use: an agent that serves nothing needs none
            self._loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=self._loop.run_forever, name="endpoint-proxy", daemon=True
            )
            thread.start()
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(CALL_TIMEOUT_S)


class _Listener:
    """One deployment's endpoint: its port, its keys, its upstream connections, its counts."""

    def __init__(self, model_port: int, auth: str, key_hashes: list[str]):
        self.model = f"http://{MODEL_HOST}:{model_port}"
        self.public = auth == "public"
        self.key_hashes = frozenset(key_hashes)
        self.metrics = EndpointMetrics()
        self._runner: web.ServerRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self, host: str, port: int) -> None:
        self._session = aiohttp.ClientSession(
            # As many connections as the clients bring.
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=UPSTREAM_IDLE_S),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
            auto_decompress=False,  # bytes pass as the model sent them
            cookie_jar=aiohttp.DummyCookieJar(),  # one client's cookies never reach another
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            max_line_size=MAX_LINE_BYTES,
            max_field_size=MAX_LINE_BYTES,
            read_bufsize=READ_BUFFER_BYTES,
        )
        # Cancelling the handler of a client that went away cancels its upstream request.
        server = web.Server(
            self.handle,
            handler_cancellation=True,
            access_log=None,
            max_line_size=MAX_LINE_BYTES,
            max_field_size=MAX_LINE_BYTES,
        )
        self._runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_GRACE_S)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, host, port).start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.metrics.arrived()
        try:
            refused = self._refusal(request)
            if refused is not None:
                self.metrics.answered(refused.status, unauthorized=refused.status == 401)
                return refused
            headers = _forwarded(request.headers, strip_key=not self.public)
            if _is_websocket(request):
                return await self._websocket(request, headers)
            return await self._forward(request, headers)
        finally:
            self.metrics.done()

    def _refusal(self, request: web.BaseRequest) -> web.Response | None:
        """The proxy's own answer to a request the model must not see, if any."""
        authorization = request.headers.get(hdrs.AUTHORIZATION)
        if not self._authorized(authorization):
            return _error(
                401,
                "unauthorized",
                "the endpoint key is not valid for this deployment"
                if authorization is not None
                else "send the deployment's endpoint key: Authorization: Bearer <key>",
                {hdrs.WWW_AUTHENTICATE: "Bearer"},
            )
        if not request.raw_path.startswith("/"):  # absolute-form or `*`: not for a model
            return _error(400, "bad_request", "the request target must be a path")
        return None

    def _authorized(self, authorization: str | None) -> bool:
        if self.public:
            return True
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return False
        # Header values arrive as UTF-8 with undecodable bytes escaped: hash the bytes sent.
        given = hashlib.sha256(key.strip().encode("utf-8", "surrogateescape")).hexdigest()
        matches = [hmac.compare_digest(given, known) for known in self.key_hashes]
        return any(matches)  # every hash compared: the time does not say which one is close

    async def _forward(self, request: web.BaseRequest, headers: CIMultiDict) -> web.StreamResponse:
        started = time.perf_counter()
        if request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # the key was fine
        response = None
        try:
            async with self._session.request(
                request.method,
                URL(self.model + request.raw_path, encoded=True),
                headers=headers,
                data=await _body(request),
                allow_redirects=False,
            ) as upstream:
                self.metrics.answered(upstream.status, (time.perf_counter() - started) * 1000)
                if _small(request, upstream):  # headers and body in one write
                    return _whole(upstream, await upstream.read())
                response = web.StreamResponse(
                    status=upstream.status, reason=upstream.reason, headers=_returned(upstream)
                )
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():  # as it arrives: SSE, tokens
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, TimeoutError) as exc:
            if response is None:  # nothing sent yet: the client gets a clear answer
                self.metrics.answered(502)
                return _error(502, "model_unreachable", _unreachable(exc))
            # Mid-stream: close the client's connection so it sees a cut response, not an end.
            if request.transport is not None:
                request.transport.close()
            return response
        except ConnectionError:  # the client went away while we wrote to it
            return response or web.Response(status=499)

    async def _websocket(self, request: web.BaseRequest, headers: CIMultiDict):
        protocols = [
            p.strip()
            for p in request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "").split(",")
            if p.strip()
        ]
        for name in list(headers):
            if name.lower() in WS_HANDSHAKE:
                del headers[name]
        url = URL(self.model + request.raw_path, encoded=True)
        try:
            upstream = await self._session.ws_connect(
                url, headers=headers, protocols=protocols, max_msg_size=0
            )
        except aiohttp.WSServerHandshakeError as exc:
            status = exc.status or 502
            self.metrics.answered(status)
            return _error(status, "websocket_refused", f"the model refused it (HTTP {status})")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.metrics.answered(502)
            return _error(502, "model_unreachable", _unreachable(exc))
        chosen = (upstream.protocol,) if upstream.protocol else ()
        client = web.WebSocketResponse(protocols=chosen, max_msg_size=0)
        try:
            await client.prepare(request)
            self.metrics.answered(101)
            await _pump_both(client, upstream)
        finally:
            await upstream.close()
            await client.close()
        return client


async def _pump_both(client: web.WebSocketResponse, upstream) -> None:
    """Messages both ways until either side closes; then the other is closed with its code."""
    tasks = [
        asyncio.ensure_future(_pump(client, upstream)),
        asyncio.ensure_future(_pump(upstream, client)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _pump(source, sink) -> None:
    async for message in source:  # ends at the source's close
        if message.type == WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif message.type == WSMsgType.ERROR:
            break
    code = source.close_code
    if code is None or code in UNSENDABLE_CLOSE_CODES:
        code = 1000
    await sink.close(code=code)


def _connection_listed(headers) -> set[str]:
    """The headers a Connection header names are hop-by-hop too."""
    named = ",".join(headers.getall(hdrs.CONNECTION, ()))
    return {name.strip().lower() for name in named.split(",") if name.strip()}


def _forwarded(incoming, strip_key: bool) -> CIMultiDict:
    """What the model gets: the client's headers but the hop-by-hop ones and our endpoint key
    (a public endpoint passes Authorization on: the model may check its own)."""
    drop = HOP_BY_HOP | _connection_listed(incoming) | ({"authorization"} if strip_key else set())
    return CIMultiDict((k, v) for k, v in incoming.items() if k.lower() not in drop)


def _returned(upstream: aiohttp.ClientResponse) -> CIMultiDict:
    """What the client gets: the model's headers (every Set-Cookie) but the hop-by-hop ones."""
    drop = HOP_BY_HOP | _connection_listed(upstream.headers)
    return CIMultiDict((k, v) for k, v in upstream.headers.items() if k.lower() not in drop)


async def _body(request: web.BaseRequest):
    """A small body (its length given) whole, which goes upstream in one write with the
    headers; any other streamed as it comes."""
    if not request.body_exists:
        return None
    length = request.content_length
    return await request.read() if length is not None and length <= SMALL_BODY else request.content


def _small(request: web.BaseRequest, upstream: aiohttp.ClientResponse) -> bool:
    """A response of a known small length with a body (HEAD, 204, 304 and 1xx have none)."""
    length = upstream.content_length
    return (
        length is not None
        and length <= SMALL_BODY
        and request.method != hdrs.METH_HEAD
        and upstream.status >= 200
        and upstream.status not in (204, 304)
    )


def _whole(upstream: aiohttp.ClientResponse, body: bytes) -> web.Response:
    headers = _returned(upstream)
    headers.popall(hdrs.CONTENT_LENGTH, None)  # set again from the body
    return web.Response(status=upstream.status, reason=upstream.reason, body=body, headers=headers)


def _is_websocket(request: web.BaseRequest) -> bool:
    return request.headers.get(
        hdrs.UPGRADE, ""
    ).lower() == "websocket" and "upgrade" in _connection_listed(request.headers)


def _error(status: int, code: str, message: str, headers=None) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def _unreachable(exc: Exception) -> str:
    return (
        f"the model did not answer ({type(exc).__name__}): it may be starting, restarting or "
        "have crashed"
    )
