"""The node WebSocket protocol: every message, one pydantic model per `type`.

The one definition: the control plane (chalicelib) and the node agent both import this module.
Pure pydantic, no AWS. Every message carries `type` and a message `id`.
"""

import hashlib
import json
import uuid
from typing import Annotated, Literal

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from chalicelib import gpu_types

# 2: deploy_config.port may be absent (the agent picks one), restart policy, reserved
# gpu_indices, deployment_restarted.
# 3: the endpoint proxy: deploy_config.auth, endpoint_key_hashes, endpoint_keys,
# deployment_metrics.
PROTOCOL_VERSION = 3
MIN_PROTOCOL_VERSION = 3  # the oldest agent protocol the control plane still serves
# API Gateway WebSocket limits (not raisable): a message is at most 128 KB, sent in frames of
# at most 32 KB each; a larger frame closes the connection (1009), a larger message is refused.
MAX_MESSAGE_BYTES = 128 * 1024
MAX_FRAME_BYTES = 32 * 1024
# What a deployment's own content may take of a deploy_model (env vars and command, checked at
# create), leaving room for the rest of the message.
DEPLOY_CONTENT_BUDGET_BYTES = 96 * 1024
LOGS_BUDGET_BYTES = 96 * 1024  # a logs_result carries the newest lines that fit
NODE_TOKEN_PREFIX = "prismnode_"
UNHEALTHY_AFTER = 3  # consecutive failed probes, by the agent's or the cloud health checks


def node_id_of_token(token: str) -> str | None:
    """Node tokens read `prismnode_<node id>.<secret>`: the control plane finds the node with
    one GetItem, and `prism node up --join <token>` knows which node it is."""
    if not token.startswith(NODE_TOKEN_PREFIX) or "." not in token:
        return None
    return token[len(NODE_TOKEN_PREFIX) :].split(".", 1)[0] or None


def _message_id() -> str:
    return uuid.uuid4().hex


class Message(BaseModel):
    # Fields a newer peer adds are ignored, so an older agent or control plane keeps working.
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(default_factory=_message_id, min_length=1, max_length=64)

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)


CONTROL_PLANE_ID = r"dep_[0-9a-f]{16}"
# A node's own deployments, made through its local API (node_agent.server), are named by their
# caller: lowercase letters, digits and hyphens. Never a control-plane id (no underscore), and
# never reported to the control plane.
LOCAL_NAME = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
DeploymentId = Annotated[str, Field(pattern=rf"^{CONTROL_PLANE_ID}$")]
# What a node deploys and reports on: either (its local ones are filtered out before sending).
NodeDeploymentId = Annotated[str, Field(pattern=rf"^(?:{CONTROL_PLANE_ID}|{LOCAL_NAME})$")]


def is_local_deployment(deployment_id: str) -> bool:
    return not deployment_id.startswith("dep_")


ENGINE_REASON_MAX = 1024  # characters: the engine choice's reason, shown on the detail


# Where a fixed port is needed and the user named none: inside a container, on a cloud instance.
DEFAULT_MODEL_PORT = 8000
EndpointAuth = Literal["key", "public"]  # key: Authorization: Bearer <endpoint key> required
ENDPOINT_KEY_PREFIX = "prismep_"


def hash_endpoint_key(key: str) -> str:
    """What the control plane stores and the node checks: the key itself is shown once."""
    return hashlib.sha256(key.encode()).hexdigest()


EndpointKeyHash = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
RestartPolicy = Literal["never", "on-failure", "always"]
RESTART_POLICIES: tuple[str, ...] = RestartPolicy.__args__
DEFAULT_MAX_RESTARTS = 3  # under on-failure; `always` has no limit
DEFAULT_UNHEALTHY_TIMEOUT_S = 300  # unhealthy this long counts as a failure (0: never)


class DeployConfig(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    # None: the agent picks a free port and reports it in the endpoint (a container then
    # listens on DEFAULT_MODEL_PORT inside).
    port: int | None = Field(None, ge=1, le=65535)
    health_path: str = Field(pattern=r"^/")
    weights_allow_patterns: list[str] | None = None  # hf:// file globs
    weights_ignore_patterns: list[str] | None = None
    restart: RestartPolicy = "on-failure"
    max_restarts: int = Field(DEFAULT_MAX_RESTARTS, ge=0)
    unhealthy_timeout_s: int = Field(DEFAULT_UNHEALTHY_TIMEOUT_S, ge=0)
    auth: EndpointAuth = "key"


# --- server -> node -----------------------------------------------------------------------


class DeployModel(Message):
    type: Literal["deploy_model"] = "deploy_model"
    deployment_id: NodeDeploymentId
    image: str | None = None
    weights_source: str | None = None
    framework: str = "auto"
    command: list[str] = Field(default_factory=list)
    env_vars: dict[str, str] = Field(default_factory=dict)
    deploy_config: DeployConfig
    gpu: bool = False
    gpu_type: str | None = None
    # The node is this deployment's own (a cloud instance): it gets every GPU, claims none.
    whole_node: bool | None = None
    # The node's GPUs the control plane reserved for it at placement (None: the agent picks).
    gpu_indices: list[Annotated[int, Field(ge=0)]] | None = None
    # The endpoint keys the node's proxy accepts (sha256 hex of each; deploy_config.auth "key").
    endpoint_key_hashes: list[EndpointKeyHash] = Field(default_factory=list, max_length=8)


class EndpointKeys(Message):
    """The keys a deployment's endpoint accepts from now on (all of them: a rotation drops
    the old one)."""

    type: Literal["endpoint_keys"] = "endpoint_keys"
    deployment_id: DeploymentId
    key_hashes: list[EndpointKeyHash] = Field(max_length=8)


class StopDeployment(Message):
    type: Literal["stop_deployment"] = "stop_deployment"
    deployment_id: DeploymentId


class HealthCheck(Message):
    type: Literal["health_check"] = "health_check"
    deployment_id: DeploymentId
    request_id: str


class LogsRequest(Message):
    type: Literal["logs_request"] = "logs_request"
    deployment_id: DeploymentId
    request_id: str
    tail: int = Field(100, ge=1, le=5000)


# --- node -> server -----------------------------------------------------------------------


class GpuInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    index: int = Field(ge=0)
    name: str
    uuid: str | None = None
    memory_total_mb: int | None = None


def gpu_matches(gpu_name: str, wanted: str | None, memory_mb: int | None = None) -> bool:
    """How both sides read a GPU type (chalicelib.gpu_types): 'A100' matches
    'NVIDIA A100-SXM4-80GB', 'A10' does not; none wanted matches any GPU."""
    return gpu_types.matches(gpu_name, wanted, memory_mb)


class RunningDeployment(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    deployment_id: DeploymentId
    status: Literal["pulling", "starting", "running", "unhealthy"]
    endpoint_url: str | None = None


class NodeHello(Message):
    type: Literal["node_hello"] = "node_hello"
    node_id: str
    agent_version: str = "0"
    protocol_version: int = PROTOCOL_VERSION
    gpus: list[GpuInfo] = Field(default_factory=list)
    running: list[RunningDeployment] = Field(default_factory=list)


class Heartbeat(Message):
    type: Literal["heartbeat"] = "heartbeat"


class DeploymentProgress(Message):
    type: Literal["deployment_progress"] = "deployment_progress"
    deployment_id: NodeDeploymentId
    status: Literal["pulling", "starting"]
    bytes_done: int = Field(0, ge=0)
    bytes_total: int | None = Field(None, ge=0)
    weights_revision: str | None = Field(None, max_length=128)  # e.g. the hf:// commit sha


class DeploymentReady(Message):
    type: Literal["deployment_ready"] = "deployment_ready"
    deployment_id: NodeDeploymentId
    endpoint_url: str
    framework: str | None = Field(None, max_length=64)  # what the weights are
    engine: str | None = Field(None, max_length=64)  # what serves them
    engine_reason: str | None = Field(None, max_length=ENGINE_REASON_MAX)  # why, for the user


class DeploymentHealthUpdate(Message):
    type: Literal["deployment_health_update"] = "deployment_health_update"
    deployment_id: NodeDeploymentId
    healthy: bool
    consecutive_failures: int = Field(ge=0)
    latency_ms: float | None = None


StopReason = Literal["stopped", "crash", "pull_error", "start_error", "lost"]


STOP_MESSAGE_MAX = 8192  # characters: a crash report (the last log lines) is cut to fit
CUT_MARKER = "\n[... earlier output cut ...]\n"


def fit_report(text: str, limit: int = STOP_MESSAGE_MAX) -> str:
    """`text` within `limit` characters: its first line (what happened) and as much of its end
    (the last output) as fits. A report too long is cut, never dropped."""
    if len(text) <= limit:
        return text
    head = text.split("\n", 1)[0][: limit // 4]
    return head + CUT_MARKER + text[-(limit - len(head) - len(CUT_MARKER)) :]


class DeploymentStopped(Message):
    type: Literal["deployment_stopped"] = "deployment_stopped"
    deployment_id: NodeDeploymentId
    reason: StopReason
    exit_code: int | None = None
    message: str | None = Field(None, max_length=STOP_MESSAGE_MAX)

    @field_validator("message", mode="before")
    @classmethod
    def _fits(cls, message):
        return fit_report(message) if isinstance(message, str) else message


RestartCause = Literal["crash", "unhealthy"]


class DeploymentRestarted(Message):
    """The agent restarted a deployment under its restart policy (it is `starting` again; a
    `deployment_ready` follows once it answers). `restarts` counts every restart so far."""

    type: Literal["deployment_restarted"] = "deployment_restarted"
    deployment_id: NodeDeploymentId
    restarts: int = Field(ge=1)
    cause: RestartCause
    exit_code: int | None = None
    message: str | None = Field(None, max_length=STOP_MESSAGE_MAX)

    @field_validator("message", mode="before")
    @classmethod
    def _fits(cls, message):
        return fit_report(message) if isinstance(message, str) else message


class DeploymentMetrics(Message):
    """What the node's endpoint proxy saw for a deployment: counts since it started (they only
    grow, so a lost or repeated report does no harm), requests in flight now, and the latency
    (time to the response's first byte) of the last window in which the model answered."""

    type: Literal["deployment_metrics"] = "deployment_metrics"
    deployment_id: NodeDeploymentId
    requests_total: int = Field(ge=0)
    # When the proxy started counting (unix seconds): a later value means the counts began
    # again from zero (the agent restarted), so a lower requests_total is then not late.
    counting_since: float = Field(0, ge=0)
    status_2xx: int = Field(0, ge=0)
    status_3xx: int = Field(0, ge=0)
    status_4xx: int = Field(0, ge=0)  # including the proxy's own 401s
    status_5xx: int = Field(0, ge=0)  # including the proxy's own 502s (model unreachable)
    unauthorized: int = Field(0, ge=0)  # refused by the proxy: no or a wrong key
    in_flight: int = Field(0, ge=0)
    window_s: float = Field(ge=0)
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None


class HealthResult(Message):
    type: Literal["health_result"] = "health_result"
    request_id: str
    deployment_id: DeploymentId
    healthy: bool
    consecutive_failures: int = Field(0, ge=0)
    latency_ms: float | None = None
    detail: str | None = None


class LogsResult(Message):
    type: Literal["logs_result"] = "logs_result"
    request_id: str
    deployment_id: DeploymentId
    lines: list[str] = Field(default_factory=list)

    @field_validator("lines")
    @classmethod
    def _fits(cls, lines: list[str]) -> list[str]:
        return newest_lines_within(lines, LOGS_BUDGET_BYTES)


def newest_lines_within(lines: list[str], budget: int) -> list[str]:
    """The newest lines whose JSON fits `budget` bytes, after a line saying how many were cut."""
    kept, used = [], 0
    for line in reversed(lines):
        size = len(json.dumps(line).encode()) + 2
        if used + size > budget - 100:  # room for the marker
            break
        kept.append(line)
        used += size
    cut = len(lines) - len(kept)
    marker = [f"[... {cut} earlier lines cut to fit one message ...]"] if cut else []
    return marker + kept[::-1]


class Error(Message):
    """Either side: a message could not be handled. The connection stays up."""

    type: Literal["error"] = "error"
    code: str
    message: str
    reply_to: str | None = None


ServerMessage = Annotated[
    DeployModel | StopDeployment | EndpointKeys | HealthCheck | LogsRequest | Error,
    Field(discriminator="type"),
]
NodeMessage = Annotated[
    NodeHello
    | Heartbeat
    | DeploymentProgress
    | DeploymentReady
    | DeploymentHealthUpdate
    | DeploymentStopped
    | DeploymentRestarted
    | DeploymentMetrics
    | HealthResult
    | LogsResult
    | Error,
    Field(discriminator="type"),
]
_server_adapter: TypeAdapter = TypeAdapter(ServerMessage)
_node_adapter: TypeAdapter = TypeAdapter(NodeMessage)


class ProtocolError(ValueError):
    """A frame that is not a valid message; `code` and the message go back in an `error`."""

    def __init__(self, code: str, message: str, reply_to: str | None = None):
        super().__init__(message)
        self.code = code
        self.reply_to = reply_to

    def to_error(self) -> Error:
        return Error(code=self.code, message=str(self), reply_to=self.reply_to)


def parse_node_message(raw: str | bytes) -> NodeMessage:
    return _parse(_node_adapter, raw)


def parse_server_message(raw: str | bytes) -> ServerMessage:
    return _parse(_server_adapter, raw)


def _parse(adapter: TypeAdapter, raw: str | bytes):
    try:
        return adapter.validate_json(raw)
    except ValidationError as exc:
        reply_to = _message_id_of(raw)
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        kind = "unknown_type" if first["type"] == "union_tag_invalid" else "malformed"
        if first["type"] == "json_invalid":
            kind, where = "malformed", "frame"
        raise ProtocolError(kind, f"{where}: {first['msg']}", reply_to) from None


def _message_id_of(raw: str | bytes) -> str | None:
    # pydantic's JSON parser, whose nesting limit answers a frame nested 10,000 deep with a
    # ValueError (json.loads would raise RecursionError, which is no ValueError).
    try:
        value = pydantic_core.from_json(raw).get("id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and len(value) <= 64 else None
