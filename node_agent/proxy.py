"""The endpoint proxy: every deployment the agent runs is reached through it, never directly.

One asyncio loop in a thread of the agent; one listener per deployment on its endpoint port,
forwarding to the model on its internal port on loopback. Each client connection gets a
connection of its own to the model (opened by its first authorized request), so the bytes pass
unchanged and in order both ways: request and response bodies, chunked responses and
server-sent events as they arrive, and after a `101 Switching Protocols` (a WebSocket) the
connection as a tunnel. Only heads are read (node_agent.http1): a request's for its framing and
`Authorization: Bearer <endpoint key>` (when the deployment's auth is "key": the key's sha256
must be one of the deployment's hashes), which is dropped with the hop-by-hop headers before
the model sees the head; a response's for its status and framing. Reading bytes, not messages,
is what keeps the proxy's own cost per request small (benchmarks/proxy.py); so does uvloop
(the transports in C). A client that goes away closes its connection to the model, which is how
the model learns to stop; the model not answering is a 502 in the same error shape as a 401.
Each listener counts what it serves (node_agent.endpoint_metrics). A connection's life is in
node_agent.proxy_connection.
"""

import asyncio
import hashlib
import hmac
import logging
import threading
import time

import uvloop

from node_agent.endpoint_metrics import EndpointMetrics
from node_agent.proxy_connection import ClientConnection

log = logging.getLogger("prism.node")
CALL_TIMEOUT_S = 30.0  # the agent's threads wait this long for the proxy's loop
SHUTDOWN_GRACE_S = 1.0  # requests still running when a listener closes get this long
SWEEP_INTERVAL_S = 5.0  # how often connections that hold a slot doing nothing are looked for


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
            self._loop = uvloop.new_event_loop()  # the transports in C: half the cost
            thread = threading.Thread(
                target=self._loop.run_forever, name="endpoint-proxy", daemon=True
            )
            thread.start()
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(CALL_TIMEOUT_S)


class _Listener:
    """One deployment's endpoint: its port, its keys, its client connections, its counts."""

    def __init__(self, model_port: int, auth: str, key_hashes: list[str]):
        self.model_port = model_port
        self.public = auth == "public"
        self.key_hashes = frozenset(key_hashes)
        self.metrics = EndpointMetrics()
        self.clients: set[ClientConnection] = set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: ClientConnection(self), host, port)
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        self._server.close()
        self._sweeper.cancel()
        for client in list(self.clients):
            client.close_if_idle()
        deadline = loop.time() + SHUTDOWN_GRACE_S
        while self.clients and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for client in list(self.clients):
            client.abort()
        await self._server.wait_closed()

    def authorized(self, authorization: bytes | None) -> bool:
        if self.public:
            return True
        scheme, _, key = (authorization or b"").partition(b" ")
        key = key.strip()
        if scheme.lower() != b"bearer" or not key:
            return False
        given = hashlib.sha256(key).hexdigest()  # of the bytes sent
        matches = [hmac.compare_digest(given, known) for known in self.key_hashes]
        return any(matches)  # every hash compared: the time does not say which one is close

    async def _sweep(self) -> None:
        """Closes client connections that hold a slot doing nothing."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            for client in list(self.clients):
                try:
                    client.expire(time.monotonic())
                except Exception:  # one connection never stops the sweep of the others
                    log.exception("closing an idle endpoint connection failed")
