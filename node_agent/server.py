"""The node's own HTTP API (the "Generic Model Deploy" runtime API), for use without a control
plane or next to one. It drives the same Agent.deploy/stop code path as `deploy_model`.

    POST   /deploy            {deployment_id? (a name: lowercase letters, digits, hyphens),
                               weights_source?, image?, framework, port,
                               health_path, gpu, gpu_type?, command, env_vars, auth}
                              auth "key" (the default): the 202 carries `endpoint_key`, shown
                              once, which the endpoint then requires (Authorization: Bearer)
    GET    /deployments       GET /deployments/{id}      DELETE /deployments/{id}
    GET    /health            the agent itself

Listens on 127.0.0.1 by default; every call needs `Authorization: Bearer <local token>` (the
token is in <state dir>/local-token, readable by its owner only).
"""

import json
import os
import re
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chalicelib.protocol import (
    ENDPOINT_KEY_PREFIX,
    LOCAL_NAME,
    DeployConfig,
    DeployModel,
    EndpointAuth,
    hash_endpoint_key,
)
from node_agent.agent import Agent


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # The caller's own name (default: local-<12 hex>); dep_ ids belong to the control plane.
    deployment_id: str = Field(default_factory=lambda: "local-" + secrets.token_hex(6))
    weights_source: str | None = None
    image: str | None = None
    framework: str = "auto"
    command: list[str] = Field(default_factory=list)
    env_vars: dict[str, str] = Field(default_factory=dict)
    port: int | None = Field(None, ge=1, le=65535)  # None: the node picks a free one
    health_path: str = Field("/health", pattern=r"^/")
    gpu: bool = False
    gpu_type: str | None = None
    auth: EndpointAuth = "key"

    @field_validator("deployment_id")
    @classmethod
    def _a_local_name(cls, value: str) -> str:
        if not re.fullmatch(LOCAL_NAME, value):
            raise ValueError(
                "a name of lowercase letters, digits and hyphens, at most 63 (dep_ ids are the "
                "control plane's)"
            )
        return value

    def to_message(self, endpoint_key: str | None) -> DeployModel:
        return DeployModel(
            deployment_id=self.deployment_id,
            weights_source=self.weights_source,
            image=self.image,
            framework=self.framework,
            command=self.command,
            env_vars=self.env_vars,
            gpu=self.gpu,
            gpu_type=self.gpu_type,
            deploy_config=DeployConfig(
                port=self.port, health_path=self.health_path, auth=self.auth
            ),
            endpoint_key_hashes=[hash_endpoint_key(endpoint_key)] if endpoint_key else [],
        )


def new_endpoint_key() -> str:
    """Returned once, kept only as its hash (hash_endpoint_key)."""
    return ENDPOINT_KEY_PREFIX + secrets.token_urlsafe(32)


def local_token(state_dir: Path) -> str:
    path = state_dir / "local-token"
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def make_server(agent: Agent, host: str, port: int, token: str) -> ThreadingHTTPServer:
    return _AgentServer((host, port), agent, token)


class _AgentServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], agent: Agent, token: str):
        super().__init__(address, _Handler)
        self.agent = agent
        self.token = token


class _Handler(BaseHTTPRequestHandler):
    server: _AgentServer

    def _reply(self, status: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: str, message: str) -> None:
        self._reply(status, {"error": {"code": code, "message": message}})

    def _authorized(self) -> bool:
        given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if secrets.compare_digest(given, self.server.token):
            return True
        self._error(401, "unauthorized", "send 'Authorization: Bearer <local token>'")
        return False

    def _deployment_id(self) -> str | None:
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        return parts[1] if len(parts) == 2 and parts[0] == "deployments" else None

    def do_GET(self):  # noqa: N802
        if not self._authorized():
            return
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/health":
            self._reply(200, {"status": "ok", "node_id": self.server.agent.settings.node_id})
        elif path == "/deployments":
            self._reply(200, {"items": self.server.agent.describe_all()})
        elif (deployment_id := self._deployment_id()) is not None:
            found = self.server.agent.describe(deployment_id)
            if found is None:
                self._error(404, "not_found", f"no deployment {deployment_id} here")
            else:
                self._reply(200, found)
        else:
            self._error(404, "not_found", "unknown path")

    def do_POST(self):  # noqa: N802
        if not self._authorized():
            return
        if self.path.rstrip("/") != "/deploy":
            self._error(404, "not_found", "unknown path")
            return
        try:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            request = DeployRequest.model_validate_json(raw or b"{}")
        except (ValidationError, ValueError) as exc:
            self._error(400, "validation_error", _summary(exc))
            return
        if not (request.weights_source or request.image or request.command):
            self._error(400, "validation_error", "give weights_source, image or command")
            return
        key = new_endpoint_key() if request.auth == "key" else None
        if self.server.agent.deploy(request.to_message(key)) is None:
            self._error(409, "conflict", f"{request.deployment_id} is already deployed")
            return
        accepted = self.server.agent.describe(request.deployment_id)
        self._reply(202, accepted | ({"endpoint_key": key} if key else {}))

    def do_DELETE(self):  # noqa: N802
        if not self._authorized():
            return
        deployment_id = self._deployment_id()
        if deployment_id is None or self.server.agent.describe(deployment_id) is None:
            self._error(404, "not_found", "no such deployment here")
            return
        threading.Thread(target=self.server.agent.stop, args=(deployment_id,), daemon=True).start()
        self._reply(202, {"deployment_id": deployment_id, "status": "stopping"})

    def log_message(self, *args):
        pass


def _summary(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
    return f"body is not valid JSON ({exc})"
