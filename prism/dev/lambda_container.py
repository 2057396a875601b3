"""The Lambda service's side of one function container (prism/dev/lambda_worker.py): its
process and the service's one connection to it, carrying the worker's frames."""

import select
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from typing import BinaryIO

from prism.dev import lambda_worker


@dataclass
class Container:
    """A function's container process and the service's one connection to it (the container
    serves one connection at a time), carrying lambda_worker's frames. The lock keeps a stats
    call off a busy connection."""

    process: subprocess.Popen
    port: int
    token: str  # the container answers only a connection that opens with it
    lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    sock: socket.socket | None = field(default=None, init=False)
    reader: BinaryIO | None = field(default=None, init=False)

    def call(self, kind: bytes, body: bytes, timeout: float) -> tuple[bytes, bool]:
        self.send(kind, body, timeout)
        return self.receive(timeout)

    def send(self, kind: bytes, body: bytes, timeout: float) -> None:
        """Writes a request; the connection is this caller's until its `receive`."""
        if not self.lock.acquire(timeout=timeout):
            raise TimeoutError(f"container busy for {timeout:.0f}s")
        try:
            if self.sock is None:
                self._connect(timeout)
            self.sock.settimeout(timeout)
            self.sock.sendall(lambda_worker.frame(kind, body))
        except BaseException:
            self.close()
            self.lock.release()
            raise

    def answers_within(self, seconds: float) -> bool:
        """Whether the answer begins within `seconds`."""
        return bool(select.select([self.sock], [], [], seconds)[0])

    def receive(self, timeout: float) -> tuple[bytes, bool]:
        """(the answer, whether it is a function error); TimeoutError, or OSError / ValueError
        when the container is gone."""
        try:
            self.sock.settimeout(timeout)
            message = lambda_worker.read_frame(self.reader)
            if message is None:
                raise ConnectionResetError("the container closed its connection")
            kind, body = message
            return body, kind == b"error"
        except BaseException:
            self.close()
            raise
        finally:
            self.lock.release()

    def close(self) -> None:
        if self.sock is not None:
            self.reader.close()
            self.sock.close()
            self.sock = self.reader = None

    def _connect(self, timeout: float) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        # Each frame is one write, answered before the next: no delayed-ACK stall to wait out.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(self.token.encode() + b"\n")
        self.sock, self.reader = sock, sock.makefile("rb")
