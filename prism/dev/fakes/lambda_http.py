"""The fake Lambda Cloud's HTTP face (lambda_cloud.py has the instances): the API under
/api/v1 with its error answers, and each VM's ports at /vm/{id}/{port}/<anything>."""

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from prism.dev.fakes.http_server import FakeHandler, FakeServer

if TYPE_CHECKING:
    from prism.dev.fakes.lambda_cloud import FakeLambdaCloud

API_PREFIX = "/api/v1"


class ApiError(Exception):
    """An error answer: `{"error": {"code", "message", "suggestion"?}}` with the real codes."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        suggestion: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.suggestion, self.headers = suggestion, headers or {}

    def body(self) -> dict[str, Any]:
        error = {"code": self.code, "message": self.message}
        if self.suggestion:
            error["suggestion"] = self.suggestion
        return {"error": error}


def invalid(message: str) -> ApiError:
    return ApiError(400, "global/invalid-parameters", message)


def not_found(message: str = "Specified instance does not exist.") -> ApiError:
    return ApiError(404, "global/object-does-not-exist", message)


def internal_error() -> ApiError:
    return ApiError(500, "global/internal-error", "Internal server error.")


def insufficient_capacity() -> ApiError:
    return ApiError(
        400,
        "instance-operations/launch/insufficient-capacity",
        "Not enough capacity to fulfill launch request.",
        "Choose an instance type with more availability, or try again later.",
    )


class LambdaServer(FakeServer):
    cloud: "FakeLambdaCloud"


class LambdaHandler(FakeHandler):
    server: LambdaServer

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        cloud = self.server.cloud
        path = urlsplit(self.path).path
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path.startswith("/vm/"):
            parts = path.split("/", 4)  # "", "vm", id, port, rest
            if len(parts) < 4 or not parts[3].isdigit():
                return self.send_json(404, {"ok": False, "error": "no such port"})
            rest = "/" + (parts[4] if len(parts) > 4 else "")
            status, data, content_type = cloud.handle_vm(
                method,
                unquote(parts[2]),
                int(parts[3]),
                rest,
                raw,
                self.headers.get("Authorization"),
            )
            return self.send_body(status, data, content_type, {})
        if not path.startswith(API_PREFIX + "/"):
            error = {"code": "global/not-found", "message": "Not found"}
            return self.send_json(404, {"error": error})
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            return self.send_json(400, invalid("Request body is not valid JSON.").body())
        status, body, headers = cloud.handle_api(
            method, path[len(API_PREFIX) :], self.bearer_token(), payload
        )
        self.send_json(status, body, headers)
