"""The fake RunPod's HTTP face (runpod.py has the pods): POST /graphql with its key check and
request faults, and the proxy in front of each pod's ports, /proxy/{podId}-{port}/<anything>."""

import json
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from prism.dev.fakes.graphql_lite import DocumentError
from prism.dev.fakes.http_server import FakeHandler, FakeServer

if TYPE_CHECKING:
    from prism.dev.fakes.runpod import FakeRunPod


class HttpError(Exception):
    """An answer other than 200: RunPod's {"errors": [{"message"}]} body, with its headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(status)
        self.status, self.headers = status, headers or {}
        self.body = {"errors": [{"message": message}]}


def server_error() -> HttpError:
    return HttpError(500, "Internal server error")


class RunPodServer(FakeServer):
    fake: "FakeRunPod"


class RunPodHandler(FakeHandler):
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stalls
    server: RunPodServer

    def do_GET(self) -> None:  # noqa: N802
        self._route()

    def do_POST(self) -> None:  # noqa: N802
        self._route()

    def _route(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = urlsplit(self.path).path
        try:
            if path.startswith("/proxy/"):
                self._proxy(path, body)
            elif path == "/graphql" and self.command == "POST":
                self.send_json(200, self._graphql(body))
            else:
                self.send_json(404, {"error": "not found"})
        except HttpError as error:
            self.send_json(error.status, error.body, error.headers)

    def _graphql(self, body: bytes) -> dict:
        fake = self.server.fake
        with fake.lock:
            self._faults(fake)
            if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                raise HttpError(401, "Unauthorized")
            try:
                request = json.loads(body)
                document, variables = request["query"], request.get("variables") or {}
            except (ValueError, KeyError, TypeError):
                raise HttpError(400, "Must provide query string.") from None
            try:
                return fake.run_operation(document, variables)
            except DocumentError as error:
                raise HttpError(400, str(error)) from None

    def _faults(self, fake: "FakeRunPod") -> None:
        if fake.rate_limit_next > 0:
            fake.rate_limit_next -= 1
            retry = f"{fake.retry_after_s:g}"
            raise HttpError(429, "Too many requests", {"Retry-After": retry})
        if fake.server_error_next > 0:
            fake.server_error_next -= 1
            raise server_error()

    def _proxy(self, path: str, body: bytes) -> None:
        target, _, rest = path.removeprefix("/proxy/").partition("/")
        pod_id, _, port = target.rpartition("-")
        authorization = self.headers.get("Authorization")
        answer = self.server.fake.proxy(self.command, pod_id, port, "/" + rest, body, authorization)
        self.send_body(*answer)
