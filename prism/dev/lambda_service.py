"""Lambda, locally: the Invoke API (`POST /2015-03-31/functions/{name}/invocations`) on a
loopback port, each function of the packaged stack in its own container process
(prism/dev/lambda_worker.py), started on first use and kept warm, that sees the Lambda package
alone and exactly the environment the template gives that function, plus LOCAL_SETTINGS.

API Gateway's REST API (prism.dev.api_server) runs in this process, on --rest-port, and hands
APIHandler its events directly. The other local stand-ins for what invokes functions on AWS
call the Invoke API (prism.dev.lambda_client): the WebSocket API, EventBridge and the SQS
event source (prism.dev.ws_gateway), Step Functions (moto, through prism.dev.lambda_router).

    python -m prism.dev.lambda_service --port P --rest-port 8000 --package DIR --stage dev \
        --log-dir DIR --api-url URL --ws-url URL --management-url URL --identities FILE
"""

import argparse
import hmac
import json
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prism.dev import identities
from prism.dev.api_server import rest_api
from prism.dev.identities import Identity
from prism.dev.lambda_client import INVOKE_TOKEN
from prism.dev.lambda_container import Container
from prism.dev.processes import die_with_parent
from prism.dev.stack import FunctionSpec, LocalAws, Stack

WORKER = Path(__file__).with_name("lambda_worker.py")
INVOKE_PATH = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations$")
# What every function gets besides its template environment and its own role's keys (as Lambda
# gives a function its role's, prism.dev.identities): where AWS is, and the local stand-ins'
# addresses and clock. A setting a function needs that its template lacks is missing here as
# on AWS.
LOCAL_SETTINGS = (
    "PRISM_AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "PRISM_RUNPOD_API_URL",
    "PRISM_RUNPOD_ENDPOINT_TEMPLATE",
    "PRISM_LAMBDA_API_URL",
    "PRISM_LAMBDA_ENDPOINT_TEMPLATE",
)
CONTAINER_PORTS = (20000, 32768)  # below Linux's ephemeral range (32768-60999)
MAX_CONTAINERS = 4  # concurrent invocations of one function; Lambda would scale further
TUNABLE = re.compile(r"^PRISM_\w+_SECONDS$")  # timeouts and periods, scaled for local runs


def local_settings(environ) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k in LOCAL_SETTINGS or TUNABLE.match(k)}


class FunctionHost:
    """Each function's containers: started on demand and kept warm, one invocation at a time
    each, as Lambda runs them; up to MAX_CONTAINERS per function, then calls wait their turn."""

    def __init__(
        self, stack: Stack, log_dir: Path, settings: dict[str, str], roles: dict[str, Identity]
    ):
        self.stack = stack
        self.roles = roles
        self.specs = stack.functions()
        self.log_dir = log_dir
        self.settings = settings
        self.idle: dict[str, list[Container]] = {name: [] for name in self.specs}
        self.started: dict[str, int] = dict.fromkeys(self.specs, 0)
        self.everyone: list[Container] = []
        self.turns = threading.Condition()
        # Containers die with this service (PR_SET_PDEATHSIG), and that signal follows the
        # thread that started them: start them all from one thread that lives as long.
        self.spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spawner")

    def spec_for(self, name: str) -> FunctionSpec | None:
        """By logical id (MeterTick), function name (prism-dev-meter_tick) or ARN."""
        name = name.rsplit(":function:", 1)[-1].split(":", 1)[0]
        if name in self.specs:
            return self.specs[name]
        return next((s for s in self.specs.values() if s.name == name), None)

    def invoke(
        self, spec: FunctionSpec, payload: bytes, wait: float | None = None
    ) -> tuple[bytes, bool]:
        """(the response payload, whether it is a function error). `wait`: how long the caller
        waits for the answer (API Gateway's integration: 29 s); past it, TimeoutError, while
        the function runs on to its own timeout, as on Lambda."""
        try:
            container = self._acquire(spec)
        except Exception as exc:  # the container could not start: Lambda's init error
            return _error("Runtime.InitError", str(exc))
        deadline = time.monotonic() + spec.timeout + 1
        try:
            container.send(b"invoke", payload, spec.timeout + 1)
        except OSError:
            self._release(spec, container, keep=False)
            return _error("Runtime.ExitError", "the function's process exited")
        if wait is not None and wait < spec.timeout and not container.answers_within(wait):
            finish = (spec, container, deadline)
            threading.Thread(target=self._answer, args=finish, daemon=True).start()
            raise TimeoutError(f"{spec.logical_id} did not answer within {wait:.0f}s")
        return self._answer(spec, container, deadline)

    def _answer(self, spec: FunctionSpec, container: Container, deadline: float):
        try:
            answer = container.receive(max(0.0, deadline - time.monotonic()))
        except TimeoutError:  # Lambda stops the container of a function that times out
            self._release(spec, container, keep=False)
            return _error("Sandbox.Timedout", f"Task timed out after {spec.timeout}.00 seconds")
        except (OSError, ValueError):
            self._release(spec, container, keep=False)
            return _error("Runtime.ExitError", "the function's process exited")
        self._release(spec, container, keep=True)
        return answer

    def warm_all(self) -> None:
        """Start a container of every function ahead of its first event, one after another
        (provisioned concurrency): a cold start on this small machine takes a second or more,
        and the platform's timing (a budget stop's teardown, a node's hello) should not wait."""
        for spec in self.specs.values():
            try:
                self._release(spec, self._acquire(spec), keep=True)
            except Exception as exc:  # reported again, as an init error, when invoked
                print(f"{spec.logical_id} did not start: {exc}", flush=True)

    def peak_memory(self) -> dict[str, float]:
        """Each function's largest container peak (MB), from the idle ones."""
        peaks: dict[str, float] = {}
        with self.turns:
            idle = [(name, c) for name, found in self.idle.items() for c in found]
        for name, container in idle:
            try:
                stats, _ = container.call(b"stats", b"", timeout=5)
                peaks[name] = max(peaks.get(name, 0.0), json.loads(stats)["max_rss_mb"])
            except (OSError, ValueError, KeyError):
                continue
        return peaks

    def stop(self) -> None:
        for container in self.everyone:
            container.process.terminate()
        for container in self.everyone:
            try:
                container.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                container.process.kill()

    def _acquire(self, spec: FunctionSpec) -> Container:
        name = spec.logical_id
        with self.turns:
            while True:
                while self.idle[name]:
                    container = self.idle[name].pop()
                    if container.process.poll() is None:
                        return container
                    self.started[name] -= 1  # died while idle
                if self.started[name] < MAX_CONTAINERS:
                    self.started[name] += 1
                    break
                self.turns.wait()
        try:
            return self._start(spec)
        except Exception:
            with self.turns:
                self.started[name] -= 1
                self.turns.notify_all()
            raise

    def _release(self, spec: FunctionSpec, container: Container, keep: bool) -> None:
        with self.turns:
            if keep and container.process.poll() is None:
                self.idle[spec.logical_id].append(container)
            else:
                container.process.kill()
                container.close()
                self.started[spec.logical_id] -= 1
            self.turns.notify_all()

    def _start(self, spec: FunctionSpec) -> Container:
        token = secrets.token_urlsafe(24)
        arn = f"arn:aws:lambda:{self.stack.local.region}:{self.stack.local.account}:function:"
        env = self._environment(spec)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{spec.logical_id}.log", "ab") as log, _listening() as sock:
            port = sock.getsockname()[1]
            process = self.spawner.submit(
                subprocess.Popen,
                [sys.executable, "-I", "-S", str(WORKER), str(self.stack.runtime), spec.handler]
                + [str(sock.fileno()), str(spec.timeout), arn + spec.name],
                env=env,
                cwd=self.stack.runtime,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.PIPE,  # its token, never on a command line or in its env
                pass_fds=[sock.fileno()],
                preexec_fn=die_with_parent,
            ).result()
        process.stdin.write(token.encode() + b"\n")
        process.stdin.close()
        # The socket listens already: the first answer comes once the container has imported
        # the app, however long that takes on a busy machine (a cold start).
        container = Container(process, port, token)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                container.call(b"stats", b"", max(1.0, deadline - time.monotonic()))
                self.everyone.append(container)
                return container
            except (OSError, ValueError):
                time.sleep(0.05)
        process.kill()
        raise RuntimeError(
            f"{spec.logical_id} did not start; see {self.log_dir / (spec.logical_id + '.log')}"
        )

    def _environment(self, spec: FunctionSpec) -> dict[str, str]:
        lambda_sets = {  # what the Lambda runtime itself sets in every function
            "AWS_LAMBDA_FUNCTION_NAME": spec.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11",
            "LAMBDA_TASK_ROOT": str(self.stack.runtime),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "en_US.UTF-8",
            "TZ": ":UTC",
        }
        keys = self.roles[spec.logical_id].env()
        return spec.environment | self.settings | keys | lambda_sets


def _listening() -> socket.socket:
    """A loopback socket listening on a port below the ephemeral range, handed to a container:
    no race with the platform's own ports, which are free ephemeral ones picked ahead."""
    while True:
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", random.randrange(*CONTAINER_PORTS)))
        except OSError:
            sock.close()
            continue
        sock.listen(16)
        return sock


def _error(kind: str, message: str) -> tuple[bytes, bool]:
    return json.dumps({"errorType": kind, "errorMessage": message}).encode(), True


def serve(host: FunctionHost, port: int, token: str) -> ThreadingHTTPServer:
    class Invoke(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: with Nagle on, each answer on a kept-alive
        # connection waits for the caller's delayed ACK (~40 ms). Lambda's Invoke API has no
        # such stall, so the local one must not either.
        disable_nagle_algorithm = True

        def do_POST(self):  # noqa: N802
            payload = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if not self._allowed():
                return
            match = INVOKE_PATH.match(self.path.split("?", 1)[0])
            spec = host.spec_for(match.group(1)) if match else None
            if spec is None:
                body = {"Type": "User", "message": f"Function not found: {self.path}"}
                return self._send(404, json.dumps(body).encode(), False)
            self._send(200, *host.invoke(spec, payload))

        def do_GET(self):  # noqa: N802 - readiness, and each function's peak memory
            if self._allowed():
                self._send(200, json.dumps(host.peak_memory()).encode(), False)

        def _allowed(self) -> bool:
            if hmac.compare_digest(self.headers.get("X-Prism-Token", ""), token):
                return True
            self._send(403, b'{"message": "Forbidden"}', False)
            return False

        def _send(self, status: int, body: bytes, failed: bool) -> None:
            self.send_response(status)
            if failed:
                self.send_header("X-Amz-Function-Error", "Unhandled")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Invoke)
    server.daemon_threads = True
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for option in ("--package", "--stage", "--log-dir", "--api-url", "--ws-url"):
        parser.add_argument(option, required=True)
    parser.add_argument("--management-url", required=True)
    parser.add_argument("--identities", required=True, help="each function's role and keys")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rest-port", type=int, required=True, help="API Gateway's REST API")
    parser.add_argument("--host", default="127.0.0.1", help="where the REST API listens")
    args = parser.parse_args()
    local = LocalAws(args.stage, args.api_url, args.ws_url, args.management_url)
    host = FunctionHost(
        Stack(Path(args.package), local),
        Path(args.log_dir),
        local_settings(os.environ),
        identities.load(Path(args.identities)),
    )
    server = serve(host, args.port, os.environ[INVOKE_TOKEN])
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"lambda http://127.0.0.1:{args.port}: {len(host.specs)} functions", flush=True)
    threading.Thread(target=host.warm_all, daemon=True).start()
    api_handler = host.specs["APIHandler"]
    rest = rest_api(
        host.stack,
        lambda event, wait: host.invoke(api_handler, event, wait),
        args.host,
        args.rest_port,
        args.stage,
    )
    threading.Thread(target=rest.serve_forever, daemon=True).start()
    print(f"REST API http://{args.host}:{args.rest_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        host.stop()


if __name__ == "__main__":
    main()
