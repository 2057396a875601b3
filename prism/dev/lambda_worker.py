"""One Lambda function's container, locally:
`python -I -S lambda_worker.py RUNTIME HANDLER LISTENING_FD TIMEOUT_S FUNCTION_ARN`.

Standard library only, and run isolated (-I -S): the interpreter sees the unpacked Lambda
package (RUNTIME) and nothing else, so a module the package lacks fails here as on Lambda. The
environment is the function's own (prism.dev.lambda_service sets it).

It serves the Lambda service alone, on the loopback socket the service opened for it
(LISTENING_FD): a connection opens with the token the service wrote to its standard input (else
it is closed unanswered), then carries frames (`frame`): `invoke` with the event as JSON,
answered `ok` with the handler's return value or `error` with {errorType, errorMessage,
stackTrace}, as Lambda reports a function error; `stats`, answered with the peak memory.
"""

import hmac
import importlib
import json
import os
import resource
import socket
import sys
import time
import traceback
import uuid


class LambdaContext:
    """What a handler may read of Lambda's context object."""

    def __init__(self, request_id: str, timeout_s: float, arn: str):
        self.aws_request_id = request_id
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
        self.invoked_function_arn = arn
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def load_handler(runtime: str, handler: str):
    sys.path.insert(0, runtime)
    module_name, _, attribute = handler.rpartition(".")
    return getattr(importlib.import_module(module_name), attribute)


def frame(kind: bytes, body: bytes) -> bytes:
    """One message, either way: `<length> <kind>` and a newline, then the body."""
    return b"%d %s\n" % (len(body), kind) + body


def read_frame(reader) -> tuple[bytes, bytes] | None:
    """(kind, body) of the next message; None once the other end has closed."""
    header = reader.readline(64)
    if not header:
        return None
    length, kind = header.split()
    body = reader.read(int(length))
    if len(body) != int(length):
        raise ConnectionResetError("the stream ended inside a message")
    return kind, body


def answer(handler, message: tuple[bytes, bytes], timeout_s: float, arn: str) -> bytes:
    kind, body = message
    if kind == b"stats":
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return frame(b"ok", json.dumps({"max_rss_mb": round(peak_kb / 1024, 1)}).encode())
    event = json.loads(body or b"{}")
    try:
        result = handler(event, LambdaContext(str(uuid.uuid4()), timeout_s, arn))
        return frame(b"ok", json.dumps(result, default=str).encode())
    except Exception as exc:  # Lambda reports it to the caller as a function error
        traceback.print_exc()
        error = {
            "errorType": type(exc).__name__,
            "errorMessage": str(exc),
            "stackTrace": traceback.format_tb(exc.__traceback__),
        }
        return frame(b"error", json.dumps(error).encode())


def serve(handler, listening: socket.socket, timeout_s: float, arn: str, token: str) -> None:
    """One connection at a time, one invocation at a time, as in a Lambda sandbox; the
    service runs more containers."""
    while True:
        connection, _ = listening.accept()
        with connection, connection.makefile("rb") as reader:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not hmac.compare_digest(reader.readline(256).strip(), token.encode()):
                continue  # only the service, which holds the token, is answered
            try:
                while message := read_frame(reader):
                    connection.sendall(answer(handler, message, timeout_s, arn))
            except (OSError, ValueError) as exc:  # the service went away mid-message
                print(f"connection dropped: {exc}", flush=True)


if __name__ == "__main__":
    runtime_dir, handler_name, listening_fd, function_timeout, function_arn = sys.argv[1:6]
    service_token = sys.stdin.readline().strip()  # from the service, never on the command line
    try:
        loaded = load_handler(runtime_dir, handler_name)
    except Exception:  # an import error fails the function's every invocation, as on Lambda
        traceback.print_exc()
        sys.exit(1)
    inherited = socket.socket(fileno=int(listening_fd))
    serve(loaded, inherited, float(function_timeout), function_arn, service_token)
