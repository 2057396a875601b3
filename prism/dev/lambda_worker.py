"""One Lambda function's container, locally:
`python -I -S lambda_worker.py RUNTIME HANDLER LISTENING_FD TIMEOUT_S FUNCTION_ARN`.

Standard library only, and run isolated (-I -S): the interpreter sees the unpacked Lambda
package (RUNTIME) and nothing else, so a module the package lacks fails here as on Lambda. The
environment is the function's own (prism.dev.lambda_service sets it). Serves invocations on
the loopback socket the service opened for it (LISTENING_FD): POST /invoke with the event as
JSON answers the handler's return value, or {errorType, errorMessage, stackTrace} with
X-Amz-Function-Error, as Lambda does.
GET /stats answers the container's peak memory. Only a caller showing the token the service
wrote to its standard input is answered.
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
from http.server import BaseHTTPRequestHandler, HTTPServer


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


def serve(handler, listening: socket.socket, timeout_s: float, arn: str, token: str) -> None:
    class Invocations(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # the service keeps its connection: no delayed-ACK stall

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if not self._allowed():
                return
            event = json.loads(body or b"{}")
            request_id = self.headers.get("X-Request-Id") or str(uuid.uuid4())
            error = None
            try:
                result = handler(event, LambdaContext(request_id, timeout_s, arn))
                body = json.dumps(result, default=str).encode()
            except Exception as exc:  # Lambda reports it to the caller as a function error
                traceback.print_exc()
                error = {
                    "errorType": type(exc).__name__,
                    "errorMessage": str(exc),
                    "stackTrace": traceback.format_tb(exc.__traceback__),
                }
                body = json.dumps(error).encode()
            self.send_response(200)
            if error:
                self.send_header("X-Amz-Function-Error", "Unhandled")
            self._send(body)

        def do_GET(self):  # noqa: N802 - /stats
            if not self._allowed():
                return
            peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.send_response(200)
            self._send(json.dumps({"max_rss_mb": round(peak_kb / 1024, 1)}).encode())

        def _allowed(self) -> bool:
            """Only the Lambda service, which holds this container's token, may call it."""
            if hmac.compare_digest(self.headers.get("X-Prism-Token", ""), token):
                return True
            self.send_response(403)
            self._send(b"{}")
            return False

        def _send(self, body: bytes) -> None:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    # One invocation at a time, as in a Lambda sandbox; the service runs more containers.
    server = HTTPServer(listening.getsockname(), Invocations, bind_and_activate=False)
    server.socket = listening
    server.serve_forever()


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
