"""The local Lambda service runs each function in a container process of its own, as Lambda
does: an answer, a function error, a function past its timeout (its container stopped), a
container that dies, a caller (API Gateway) that stops waiting while the function runs on, and
a container that answers nobody but the service. Real containers of a tiny package."""

import json
import socket
import time
from pathlib import Path

import pytest

from prism.dev.identities import Identity
from prism.dev.lambda_service import FunctionHost
from prism.dev.stack import LocalAws, Stack

HANDLERS = """
import os, time

def echo(event, context):
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("fail"):
        raise ValueError(event["fail"])
    if event.get("exit"):
        os._exit(3)
    return {"event": event, "pid": os.getpid(), "left_ms": context.get_remaining_time_in_millis()}
"""


@pytest.fixture
def host(tmp_path):
    runtime = tmp_path / "package" / "runtime"
    runtime.mkdir(parents=True)
    (runtime / "handlers.py").write_text(HANDLERS)
    function = {"Type": "AWS::Serverless::Function", "Properties": {"Timeout": 2}}
    function["Properties"]["Handler"] = "handlers.echo"
    template = {"Resources": {"Echo": function}}
    (tmp_path / "package" / "sam.json").write_text(json.dumps(template))
    stack = Stack(tmp_path / "package", LocalAws("dev", "http://a", "ws://b", "http://c"))
    role = Identity(role="EchoRole", access_key="AKIA", secret_key="secret", policies=[])
    functions = FunctionHost(stack, tmp_path / "logs", {}, {"Echo": role})
    yield functions
    functions.stop()


def _invoke(host: FunctionHost, event: dict, wait: float | None = None) -> tuple[dict, bool]:
    body, failed = host.invoke(host.specs["Echo"], json.dumps(event).encode(), wait)
    return json.loads(body), failed


def test_answers_errors_and_keeps_its_container_warm(host):
    answer, failed = _invoke(host, {"n": 1})
    assert not failed and answer["event"] == {"n": 1} and 0 < answer["left_ms"] <= 2000
    error, failed = _invoke(host, {"fail": "bad input"})
    assert failed and error["errorType"] == "ValueError" and error["errorMessage"] == "bad input"
    again, _ = _invoke(host, {"n": 2})
    assert again["pid"] == answer["pid"]  # a function error does not cost the container


def test_a_function_past_its_timeout_is_stopped_and_replaced(host):
    first, _ = _invoke(host, {})
    error, failed = _invoke(host, {"sleep": 5})
    assert failed and error == {
        "errorType": "Sandbox.Timedout",
        "errorMessage": "Task timed out after 2.00 seconds",
    }
    after, failed = _invoke(host, {"n": 3})
    assert not failed and after["pid"] != first["pid"]


def test_a_container_that_dies_is_reported_and_replaced(host):
    first, _ = _invoke(host, {})
    error, failed = _invoke(host, {"exit": True})
    assert failed and error["errorType"] == "Runtime.ExitError"
    after, failed = _invoke(host, {"n": 4})
    assert not failed and after["pid"] != first["pid"]


def test_a_caller_that_stops_waiting_leaves_the_function_running(host):
    """API Gateway gives up after 29 s; Lambda runs the function on to its end."""
    first, _ = _invoke(host, {})
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        _invoke(host, {"sleep": 1}, wait=0.2)
    assert time.monotonic() - started < 0.8
    # The function runs on to its end and its container is kept (it was not stopped): once it
    # is idle again, the next call gets that same container.
    deadline = time.monotonic() + 10
    while not host.idle["Echo"] and time.monotonic() < deadline:
        time.sleep(0.02)
    after, failed = _invoke(host, {"n": 5})
    assert not failed and after["pid"] == first["pid"]


def test_a_container_answers_only_the_service(host):
    _invoke(host, {})
    container = host.idle["Echo"][0]
    container.close()  # a container serves one connection at a time: the service lets go
    with socket.create_connection(("127.0.0.1", container.port), timeout=5) as intruder:
        intruder.sendall(b"not-the-token\n" + b"2 invoke\n{}")
        intruder.settimeout(5)
        assert intruder.recv(100) == b""  # closed unanswered
    answer, failed = _invoke(host, {"n": 6})
    assert not failed and answer["event"] == {"n": 6}


def test_logs_go_to_the_function_log(host, tmp_path):
    _invoke(host, {"fail": "logged"})
    log = Path(tmp_path / "logs" / "Echo.log").read_text()
    assert "ValueError: logged" in log
