"""A client connection's own connection to the model (node_agent.proxy_connection): what the
client sends before it is made waits; what the model sends goes to the client connection."""

import asyncio

from node_agent.runtime.base import MODEL_HOST

CONNECT_TIMEOUT_S = 10.0


class ModelConnection(asyncio.Protocol):
    """A client connection's own connection to the model."""

    def __init__(self, client):
        self._client = client
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.answered = False  # a head came back on it
        self._pending: list[bytes] = []  # sent before the connection was made
        client.pause("connecting")  # held back until there is somewhere to send it
        self._connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        port = self._client.model_port
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: self, MODEL_HOST, port), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            if not self.closed:
                self.closed = True
                self._client.model_lost(self, exc)

    def connection_made(self, transport: asyncio.Transport) -> None:
        if self.closed:  # its client went away meanwhile
            transport.abort()
            return
        self.transport = transport
        transport.write(b"".join(self._pending))
        self._pending.clear()
        if self._client.full:
            transport.pause_reading()
        self._client.resume("connecting")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self._client.model_lost(self, exc)

    def data_received(self, data: bytes) -> None:
        self._client.response_data(self, data)

    def pause_writing(self) -> None:
        self._client.pause("model_full")

    def resume_writing(self) -> None:
        self._client.resume("model_full")

    def send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)
        elif not self.closed:
            self._pending.append(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self, abort: bool = False) -> None:
        self.closed = True
        if self.transport is None:
            self._connecting.cancel()
        elif abort:
            self.transport.abort()
        else:
            self.transport.close()
