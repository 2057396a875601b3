"""The agent's WebSocket link against a real local WebSocket server (websockets, asyncio, in a
background thread on 127.0.0.1), and the backoff schedule."""

import asyncio
import contextlib
import gc
import itertools
import queue
import socket
import threading
import time
from http import HTTPStatus

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from chalicelib.protocol import (
    DeploymentStopped,
    Error,
    Heartbeat,
    LogsRequest,
    NodeHello,
    StopDeployment,
    parse_node_message,
)
from node_agent.connection import Connection, backoff_delays

TOKEN = "node-token-123"
DEPLOYMENT = "dep_0123456789abcdef"
FAST = {"backoff_first_s": 0.05, "backoff_cap_s": 0.2}

# --- backoff_delays -------------------------------------------------------------------------


def take(n, iterator):
    return list(itertools.islice(iterator, n))


def test_backoff_starts_at_one_second_doubles_and_caps_at_sixty():
    assert take(9, backoff_delays(rng=lambda: 1.0)) == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_backoff_jitter_never_goes_below_half_the_delay():
    assert take(8, backoff_delays(rng=lambda: 0.0)) == [0.5, 1, 2, 4, 8, 16, 30, 30]


def test_the_first_default_delay_is_near_one_second():
    first = next(backoff_delays())

    assert 0.5 <= first <= 1.0


@given(
    first=st.floats(0.01, 5),
    cap=st.floats(5, 120),
    rng=st.randoms(use_true_random=False),
)
def test_each_delay_stays_within_half_and_all_of_the_nominal_delay(first, cap, rng):
    delays = take(20, backoff_delays(first, cap, rng=rng.random))

    nominal = first
    for delay in delays:
        assert nominal / 2 <= delay <= nominal
        nominal = min(nominal * 2, cap)


# --- a real control plane to talk to ---------------------------------------------------------


class ControlPlane:
    """A WebSocket server on 127.0.0.1 (random port) that requires `Bearer TOKEN`, records every
    frame it receives as (connection number, parsed node message), and can send or drop."""

    def __init__(self, token: str = TOKEN, port: int = 0, close_timeout: float = 0.3):
        self.token = token
        self.port = port
        self.close_timeout = close_timeout  # how long a close waits for the client's TCP close
        self.frames: queue.Queue = queue.Queue()
        self.accepted = 0
        self.refused = 0
        self.live: list = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="control-plane", daemon=True
        )

    def __enter__(self) -> "ControlPlane":
        self._thread.start()
        try:
            self._server = self._call(self._serve())
        except BaseException:
            self._stop_loop()
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}/node"
        return self

    async def _serve(self):
        return await serve(
            self._handler,
            "127.0.0.1",
            self.port,
            process_request=self._check_token,
            close_timeout=self.close_timeout,
        )

    def __exit__(self, *exc) -> None:
        self._server.close()
        self._call(self._server.wait_closed())
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def _check_token(self, connection, request):
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            self.refused += 1
            return connection.respond(HTTPStatus.UNAUTHORIZED, "bad node token\n")
        return None

    async def _handler(self, ws) -> None:
        self.accepted += 1
        number = self.accepted
        self.live.append(ws)
        try:
            async for frame in ws:
                self.frames.put((number, parse_node_message(frame)))
        except ConnectionClosed:
            pass
        finally:
            self.live.remove(ws)

    def _call(self, awaitable, timeout: float = 5.0):
        async def wrapped():
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wrapped(), self._loop).result(timeout)

    # what a test does with it

    def next_frame(self, timeout: float = 2.0):
        return self.frames.get(timeout=timeout)

    def send(self, frame: str | bytes) -> None:
        """To the newest live connection."""
        self._call(self.live[-1].send(frame))

    def close_connections(self) -> None:
        """A clean close: a close frame, then the TCP connection."""
        for ws in list(self.live):
            self._call(ws.close())

    def reset_connections(self) -> None:
        """An abrupt drop: the TCP connection goes without a close frame."""

        async def abort():
            for ws in list(self.live):
                ws.transport.abort()

        self._call(abort())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def hello() -> NodeHello:
    return NodeHello(node_id="node-1", agent_version="test")


def report(exit_code: int = 7) -> DeploymentStopped:
    return DeploymentStopped(deployment_id=DEPLOYMENT, reason="crash", exit_code=exit_code)


def wait_until(predicate, timeout: float = 2.0, every: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(every)


@pytest.fixture(autouse=True)
def no_leaked_threads():
    before = set(threading.enumerate())
    yield
    wait_until(lambda: set(threading.enumerate()) <= before, timeout=3)


@pytest.fixture
def server():
    with ControlPlane() as server:
        yield server


@pytest.fixture
def inbox() -> queue.Queue:
    return queue.Queue()


@pytest.fixture
def connect(server, inbox):
    """A Connection to `server` whose on_message puts into `inbox`."""

    def make(**overrides) -> Connection:
        options = {"url": server.url, "token": TOKEN, "on_message": inbox.put, "hello": hello}
        return Connection(**(options | FAST | overrides))

    return make


@contextlib.contextmanager
def running(connection: Connection):
    """Connection.run in a thread; stopped with its Event and joined, whatever happens."""
    stop = threading.Event()
    thread = threading.Thread(
        target=connection.run, args=(stop,), name="connection-run", daemon=True
    )
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=3)
        assert not thread.is_alive(), "Connection.run did not stop"
        assert not connection.connected.is_set()


def no_more_frames(server: ControlPlane, within: float = 0.3) -> bool:
    try:
        server.next_frame(timeout=within)
    except queue.Empty:
        return True
    return False


# --- connecting ------------------------------------------------------------------------------


def test_the_reports_kept_while_disconnected_go_first_then_the_hello(server, connect):
    connection = connect()
    first, second = report(1), report(2)
    connection.send(first)
    connection.send(Heartbeat())  # a heartbeat is worthless later: not kept
    connection.send(second)

    with running(connection):
        frames = [server.next_frame() for _ in range(3)]
        assert no_more_frames(server)

    assert [number for number, _ in frames] == [1, 1, 1]
    assert [message for _, message in frames[:2]] == [first, second]
    assert isinstance(frames[2][1], NodeHello)
    assert connection.connects == 1


def test_a_wrong_token_is_refused_and_retried_with_backoff(server, connect):
    connection = connect(token="not-the-token")

    with running(connection):
        wait_until(lambda: server.refused >= 3)
        assert not connection.connected.is_set()

    assert server.accepted == 0
    assert connection.connects == 0
    assert server.frames.empty()


def test_an_unreachable_server_is_retried_until_it_comes_up(inbox):
    port = closed_port()
    connection = Connection(f"ws://127.0.0.1:{port}/node", TOKEN, inbox.put, hello, **FAST)
    kept = report()
    connection.send(kept)

    with running(connection):
        time.sleep(0.2)  # a few refused attempts
        assert connection.connects == 0

        with ControlPlane(port=port) as server:
            frames = [server.next_frame() for _ in range(2)]
            assert frames[0] == (1, kept)
            assert isinstance(frames[1][1], NodeHello)
            wait_until(connection.connected.is_set)
            assert connection.connects == 1


def test_stopping_during_a_long_backoff_returns_at_once(server, connect):
    connection = connect(token="not-the-token", backoff_first_s=30, backoff_cap_s=60)

    with running(connection) as stop:
        wait_until(lambda: server.refused == 1)
        began = time.monotonic()
        stop.set()
    assert time.monotonic() - began < 0.5


def test_reports_sent_while_connected_go_straight_out(server, connect):
    connection = connect()

    with running(connection):
        assert isinstance(server.next_frame()[1], NodeHello)
        sent = report()
        connection.send(sent)

        assert server.next_frame() == (1, sent)


def test_heartbeats_are_sent_when_the_link_is_idle(server, connect):
    connection = connect(heartbeat_s=1)

    with running(connection):
        assert isinstance(server.next_frame()[1], NodeHello)
        began = time.monotonic()
        number, message = server.next_frame(timeout=2.5)
        idle_for = time.monotonic() - began

    assert number == 1
    assert isinstance(message, Heartbeat)
    assert 0.8 <= idle_for <= 2.0


# --- reconnecting ----------------------------------------------------------------------------


@pytest.mark.parametrize("drop", ["close_connections", "reset_connections"])
def test_after_the_server_drops_it_reconnects_and_says_hello_again(server, connect, drop):
    connection = connect()

    with running(connection):
        assert server.next_frame()[0] == 1
        getattr(server, drop)()

        number, message = server.next_frame()
        assert number == 2
        assert isinstance(message, NodeHello)
        wait_until(connection.connected.is_set)
        assert connection.connects == 2


def test_after_the_server_closes_the_agent_closes_its_socket_at_once(inbox):
    gc.disable()  # the socket is freed only by the cyclic GC; keep that from hiding the leak
    try:
        with ControlPlane(close_timeout=1.0) as server:
            connection = Connection(server.url, TOKEN, inbox.put, hello, **FAST)
            with running(connection):
                server.next_frame()  # hello
                began = time.monotonic()
                server.close_connections()  # returns once the TCP connection is closed
                closed_after = time.monotonic() - began
                server.next_frame()  # the reconnect's hello
    finally:
        gc.enable()

    assert closed_after < 0.5  # not the server's close_timeout


def test_reports_made_while_disconnected_go_just_before_the_next_hello(server, connect):
    connection = connect()

    with running(connection):
        assert server.next_frame()[0] == 1
        server.token = "rotated"  # refuse the reconnects for now
        server.reset_connections()
        wait_until(lambda: server.refused >= 1)
        assert not connection.connected.is_set()
        kept = report()
        connection.send(kept)  # nobody to send to: kept for the next connection
        server.token = TOKEN

        frames = [server.next_frame() for _ in range(2)]

    assert [number for number, _ in frames] == [2, 2]
    assert frames[0][1] == kept
    assert isinstance(frames[1][1], NodeHello)


# --- receiving -------------------------------------------------------------------------------


@pytest.mark.parametrize("as_bytes", [False, True], ids=["text", "binary"])
def test_a_valid_server_message_is_dispatched_to_on_message(server, connect, inbox, as_bytes):
    connection = connect()
    stop_it = StopDeployment(deployment_id=DEPLOYMENT)

    with running(connection):
        server.next_frame()  # hello
        frame = stop_it.to_json()
        server.send(frame.encode() if as_bytes else frame)

        assert inbox.get(timeout=2) == stop_it


def test_a_malformed_frame_is_answered_with_an_error_and_the_link_stays_up(server, connect, inbox):
    connection = connect()
    logs = LogsRequest(deployment_id=DEPLOYMENT, request_id="r-1", tail=5)

    with running(connection):
        server.next_frame()  # hello
        server.send("{not json")
        number, error = server.next_frame()
        assert number == 1
        assert isinstance(error, Error)
        assert error.code == "malformed"
        assert error.reply_to is None

        server.send('{"type": "reboot_node", "id": "m-1"}')
        _, error = server.next_frame()
        assert (error.code, error.reply_to) == ("unknown_type", "m-1")

        server.send('{"type": "stop_deployment", "id": "m-2", "deployment_id": "nope"}')
        _, error = server.next_frame()
        assert (error.code, error.reply_to) == ("malformed", "m-2")
        assert "deployment_id" in error.message

        server.send(logs.to_json())  # and the next good message still gets through
        assert inbox.get(timeout=2) == logs

    assert connection.connects == 1
    assert server.accepted == 1
    assert inbox.empty()


def test_an_empty_frame_is_answered_with_an_error_and_the_link_stays_up(server, connect):
    connection = connect()

    with running(connection):
        server.next_frame()  # hello
        server.send("")

        number, error = server.next_frame()
        assert number == 1
        assert isinstance(error, Error)
        assert error.code == "malformed"


def test_an_error_from_the_server_is_not_dispatched(server, connect, inbox):
    connection = connect()
    stop_it = StopDeployment(deployment_id=DEPLOYMENT)

    with running(connection):
        server.next_frame()  # hello
        server.send(Error(code="conflict", message="already stopping").to_json())
        server.send(stop_it.to_json())

        assert inbox.get(timeout=2) == stop_it
        assert no_more_frames(server, within=0.1)  # no error about an error


def test_a_handler_that_raises_does_not_take_the_link_down(server, connect, inbox):
    seen = []

    def on_message(message):
        seen.append(message)
        if len(seen) == 1:
            raise RuntimeError("handler bug")
        inbox.put(message)

    connection = connect(on_message=on_message)
    first = StopDeployment(deployment_id=DEPLOYMENT)
    second = StopDeployment(deployment_id=DEPLOYMENT)

    with running(connection):
        server.next_frame()  # hello
        server.send(first.to_json())
        server.send(second.to_json())

        assert inbox.get(timeout=2) == second

    assert seen == [first, second]
    assert connection.connects == 1


# --- stopping --------------------------------------------------------------------------------


def test_stopping_closes_the_link_promptly(server, connect):
    connection = connect()

    with running(connection) as stop:
        server.next_frame()  # hello
        wait_until(connection.connected.is_set)
        began = time.monotonic()
        stop.set()
    assert time.monotonic() - began < 1.5  # one receive timeout at most

    wait_until(lambda: not server.live)  # the server saw it go
    kept = report()
    connection.send(kept)  # after run: kept, not sent on a dead socket
    assert no_more_frames(server, within=0.1)


def test_close_drops_the_link_and_run_reconnects(server, connect):
    connection = connect()

    with running(connection):
        server.next_frame()  # hello
        connection.close()

        number, message = server.next_frame()
        assert (number, type(message)) == (2, NodeHello)
