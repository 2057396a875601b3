"""The endpoint proxy on the wire, byte by byte, as clients other than `requests` use it:
pipelined requests (HEAD among them) answered in order, every request's key checked on a
kept-alive connection, HTTP/1.0, Expect: 100-continue (a wrong key refused before the body is
sent), a smuggling-shaped request refused, a half-closed client still answered, an idle
connection to the model replaced, a model that does not speak HTTP answered with a 502.
EndpointProxy itself, in front of the test model (tests/agent/endpoint_model.py) in a process."""

import hashlib
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chalicelib.protocol import hash_endpoint_key
from node_agent.ports import free_port
from node_agent.proxy import EndpointProxy
from node_agent.proxy_connection import UPSTREAM_IDLE_S

MODEL = Path(__file__).with_name("endpoint_model.py")
KEY, OTHER_KEY = "prismep_" + "c" * 43, "prismep_" + "d" * 43


@pytest.fixture(scope="module")
def model_port(tmp_path_factory):
    port = free_port()
    env = os.environ | {"HOST": "127.0.0.1", "PORT": str(port)}
    env["STATE"] = str(tmp_path_factory.mktemp("model"))
    model = subprocess.Popen([sys.executable, str(MODEL)], env=env)
    deadline = time.monotonic() + 20
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        assert time.monotonic() < deadline and model.poll() is None, "the model did not start"
        time.sleep(0.05)
    yield port
    model.terminate()
    model.wait(10)


@pytest.fixture
def proxy():
    started = EndpointProxy()
    yield started
    started.close_all()


def endpoint(proxy: EndpointProxy, model_port: int, name="dep_00000000000000e1") -> int:
    port = free_port()
    proxy.open(name, "127.0.0.1", port, model_port, "key", [hash_endpoint_key(KEY)])
    return port


def send(port: int, raw: bytes, half_close: bool = False) -> bytes:
    """What the proxy sends back on one connection, until it closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def get(path: str, key: str = KEY, *fields: str, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: node", f"Authorization: Bearer {key}", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_pipelined_requests_with_a_head_among_them_are_answered_in_order(proxy, model_port):
    port = endpoint(proxy, model_port)
    raw = send(
        port,
        get("/echo?n=1")
        + get("/echo?n=2", method="HEAD")
        + get("/echo?n=3")
        + get("/echo?n=4", KEY, "Connection: close"),
    )
    answers = raw.split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200"] * 4
    bodies = [
        json.loads(a.split(b"\r\n\r\n", 1)[1]) for a in answers if not a.endswith(b"\r\n\r\n")
    ]
    assert [b["path_qs"] for b in bodies] == ["/echo?n=1", "/echo?n=3", "/echo?n=4"]
    assert all("Authorization" not in b["headers"] for b in bodies)


def test_every_request_on_a_kept_alive_connection_needs_a_key_that_is_valid_now(proxy, model_port):
    port = endpoint(proxy, model_port)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/echo", headers={"Authorization": f"Bearer {KEY}"})
    assert connection.getresponse().read() and True
    proxy.set_keys("dep_00000000000000e1", [hash_endpoint_key(OTHER_KEY)])  # rotated
    connection.request("GET", "/echo", headers={"Authorization": f"Bearer {KEY}"})
    refused = connection.getresponse()
    assert refused.status == 401 and refused.getheader("Connection") == "close"
    assert json.loads(refused.read())["error"]["code"] == "unauthorized"
    connection.close()


def test_an_http_1_0_client_is_answered_and_its_connection_closed(proxy, model_port):
    raw = send(endpoint(proxy, model_port), get("/echo").replace(b"HTTP/1.1", b"HTTP/1.0"))
    assert raw.startswith(b"HTTP/1.0 200") and b'"path_qs": "/echo"' in raw  # as the model said


def test_expect_100_continue_a_wrong_key_is_refused_before_the_body_is_sent(proxy, model_port):
    port = endpoint(proxy, model_port)
    head = get("/digest", OTHER_KEY, "Content-Length: 5", "Expect: 100-continue", method="POST")
    raw = send(port, head)  # the body is never sent: the answer comes anyway, then the close
    assert raw.startswith(b"HTTP/1.1 401 Unauthorized") and b"WWW-Authenticate: Bearer" in raw
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.replace(OTHER_KEY.encode(), KEY.encode()))
        assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue")  # from the model
        sock.sendall(b"hello")
        answer = sock.recv(4096)
    assert hashlib.sha256(b"hello").hexdigest().encode() in answer


@pytest.mark.parametrize(
    "fields",
    [
        ("Content-Length: 4", "Transfer-Encoding: chunked"),
        ("Transfer-Encoding : chunked",),
        ("Content-Length: 4", "Content-Length: 40"),
    ],
)
def test_a_smuggling_shaped_request_is_a_400_and_ends_the_connection(proxy, model_port, fields):
    raw = send(
        endpoint(proxy, model_port),
        get("/digest", KEY, *fields, method="POST") + b"0\r\n\r\nGET /echo HTTP/1.1\r\n\r\n",
    )
    assert raw.startswith(b"HTTP/1.1 400 Bad Request") and raw.count(b"HTTP/1.1") == 1
    assert json.loads(raw.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "bad_request"


def test_a_client_that_half_closes_after_its_request_still_gets_the_answer(proxy, model_port):
    raw = send(endpoint(proxy, model_port), get("/echo"), half_close=True)
    assert raw.startswith(b"HTTP/1.1 200")


def test_the_connection_to_the_model_is_reused_and_replaced_once_idle(proxy, model_port):
    port = endpoint(proxy, model_port)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def peer() -> int:
        connection.request("GET", "/echo", headers={"Authorization": f"Bearer {KEY}"})
        return json.loads(connection.getresponse().read())["peer_port"]

    first = peer()
    assert peer() == first  # kept alive
    time.sleep(UPSTREAM_IDLE_S + 0.3)
    assert peer() != first  # idle too long to be trusted: a new one, the client none the wiser
    connection.close()


def test_a_model_that_does_not_speak_http_is_a_502(proxy):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()

        def babble():
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

        threading.Thread(target=babble, daemon=True).start()
        raw = send(endpoint(proxy, server.getsockname()[1]), get("/echo"))
    assert raw.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert b"not HTTP/1.x" in raw


# --- found by a hostile pass ----------------------------------------------------------------


REQUEST_LINE = re.compile(rb"[A-Z]+ /\S* HTTP/1\.[01]\r\n")


class RawModel:
    """A model that answers each request head with `answer(head)` (bytes), at once, without
    reading any body: the misbehaving servers the proxy must survive."""

    def __init__(self, answer):
        self.answer = answer
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        with conn:
            pending = b""
            while chunk := conn.recv(65536):
                pending += chunk
                # Each request line answered; body bytes before it skipped, never read.
                while (line := REQUEST_LINE.search(pending)) and b"\r\n\r\n" in pending:
                    head, pending = pending[line.start() :].split(b"\r\n\r\n", 1)
                    conn.sendall(self.answer(head))

    def close(self):
        self.server.close()


def test_a_client_gone_mid_body_frees_both_connections(proxy, model_port):
    port = endpoint(proxy, model_port)
    listener = proxy._listeners["dep_00000000000000e1"]
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(get("/digest", KEY, "Content-Length: 1000000", method="POST"))
            sock.sendall(b"x" * 1000)  # then a normal close, the body never finished
    deadline = time.monotonic() + 5
    while listener.clients or proxy.metrics("dep_00000000000000e1").in_flight:
        assert time.monotonic() < deadline, (len(listener.clients), "connections kept")
        time.sleep(0.05)


def test_a_content_length_too_long_for_a_number_is_a_400(proxy, model_port):
    raw = send(endpoint(proxy, model_port), get("/digest", KEY, "Content-Length: " + "9" * 5000))
    assert raw.startswith(b"HTTP/1.1 400 Bad Request")


def test_a_model_that_answers_before_the_body_is_sent_keeps_the_connection_usable(proxy):
    model = RawModel(lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    try:
        port = endpoint(proxy, model.port)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(get("/upload", KEY, "Content-Length: 10", method="POST"))
            assert sock.recv(4096).endswith(b"ok")  # answered before the body
            sock.sendall(b"0123456789" + get("/again"))
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 OK")
    finally:
        model.close()


def test_a_half_closed_client_gets_its_answers_before_the_refusal(proxy, model_port):
    raw = send(endpoint(proxy, model_port), get("/echo") + get("/echo", OTHER_KEY), half_close=True)
    assert raw.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 401 Unauthorized" in raw


def test_a_model_that_switches_protocols_unasked_is_a_502(proxy):
    model = RawModel(lambda head: b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n")
    try:
        raw = send(endpoint(proxy, model.port), get("/plain"))
        assert raw.startswith(b"HTTP/1.1 502 Bad Gateway"), raw
    finally:
        model.close()


def test_bytes_after_an_answer_for_no_request_never_reach_the_client(proxy):
    model = RawModel(lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiXXX")
    try:
        with socket.create_connection(("127.0.0.1", endpoint(proxy, model.port)), timeout=5) as s:
            s.sendall(get("/one"))
            first = s.recv(4096)
            s.sendall(get("/two", KEY, "Connection: close"))
            rest = b""
            while chunk := s.recv(4096):
                rest += chunk
        assert first.endswith(b"\r\n\r\nhi") and rest.startswith(b"HTTP/1.1 200 OK"), (first, rest)
    finally:
        model.close()
