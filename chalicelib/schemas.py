"""Request and response models of the REST API (pydantic v2); the OpenAPI document is built
from these. Requests forbid unknown fields; env var values never appear in a response."""

import json
import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal
from urllib.parse import unquote_to_bytes

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from chalicelib.errors import ValidationFailed
from chalicelib.lifecycle import Status
from chalicelib.metering import seconds_until_exhausted
from chalicelib.protocol import (
    DEFAULT_MAX_RESTARTS,
    DEFAULT_UNHEALTHY_TIMEOUT_S,
    DEPLOY_CONTENT_BUDGET_BYTES,
    EndpointAuth,
    RestartCause,
    RestartPolicy,
)
from chalicelib.store.secrets import public_weights_source
from chalicelib.store.status_history import status_changes
from chalicelib.weights_uri import InvalidWeightsSource, LocalSource, parse_weights_uri

Target = Literal["prism_node", "runpod", "lambda"]
CLOUD_TARGETS = ("runpod", "lambda")
# What to serve weights with: "auto" (the node picks the engine for the kind of model), an
# engine by name (node_agent.engines), or a kind of model; a command always wins.
Framework = Literal[
    "auto",
    "vllm",
    "tgi",
    "tei",
    "llama.cpp",
    "prism-embed",
    "transformers",
    "sentence-transformers",
    "gguf",
    "onnx",
    "custom",
]

# Python's `$` also matches before a final newline: every pattern checked with `re` here is
# applied with fullmatch (pydantic's `pattern=` uses Rust's regex, where `$` is the very end).
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def _dns_label(value: str) -> str:
    if not _DNS_LABEL.fullmatch(value):
        raise ValueError(
            "must be 1-63 lowercase letters, digits and hyphens, starting and ending with a "
            "letter or digit"
        )
    return value


def _exec_array(value):
    if isinstance(value, str):
        raise ValueError(
            'must be a JSON array of strings (exec form, e.g. ["python", "serve.py"]),'
            " never a shell string"
        )
    return value


Name = Annotated[
    str,
    AfterValidator(_dns_label),
    Field(description="1-63 lowercase letters, digits and hyphens (a DNS label)"),
]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
CommandArg = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
# An OCI image reference: [registry[:port]/]path[:tag][@sha256:digest]
ImageRef = Annotated[
    str,
    StringConstraints(
        pattern=r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*"
        r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$",
        max_length=512,
    ),
]
NodeId = Annotated[str, StringConstraints(pattern=r"^node_[0-9a-f]{16}$")]
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
Usd = Annotated[Decimal, PlainSerializer(float, return_type=float, when_used="json")]
Budget = Annotated[Decimal, Field(gt=0, le=1_000_000, decimal_places=6)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


WeightsPattern = Annotated[str, StringConstraints(min_length=1, max_length=256)]
# RFC 3986 path-absolute characters: unreserved, sub-delims, ':', '@', '/' and %XX escapes;
# so no query ('?'), fragment ('#'), backslash, space or control character.
HEALTH_PATH_PATTERN = r"^/(?:[A-Za-z0-9._~!$&'()*+,;=:@/-]|%[0-9A-Fa-f]{2})*$"
_HEALTH_PATH = re.compile(HEALTH_PATH_PATTERN)
_DOT_SEGMENTS = {".", ".."}


def check_health_path(value: str) -> str:
    """A plain absolute path the node and the control plane append to the endpoint: RFC 3986
    path characters only, no '..' (or '.') segment, also when percent-encoded."""
    if value.startswith("//"):
        raise ValueError("must start with a single '/' (a path, not a host)")
    if not _HEALTH_PATH.fullmatch(value):
        raise ValueError(
            "must be an absolute path of RFC 3986 path characters (letters, digits, "
            "-._~!$&'()*+,;=:@/ and %XX escapes): no query, fragment, backslash, space or "
            "control character"
        )
    segments = value.split("/")
    if any(s in _DOT_SEGMENTS or s.lower().replace("%2e", ".") in _DOT_SEGMENTS for s in segments):
        raise ValueError("must not contain '.' or '..' segments")
    if any(b < 0x20 or b in b"\x7f\\" for b in unquote_to_bytes(value)):
        raise ValueError("must not encode a control character or a backslash")
    return value


class DeployConfig(StrictModel):
    port: int | None = Field(
        None,
        ge=1,
        le=65535,
        strict=True,
        description="the port the model listens on (it also gets it as $PORT and {port}); "
        "unset or null: on a prism_node, a free port the agent picks and reports in "
        "endpoint_url (an image listens on 8000 inside its container); on a cloud target, "
        "8000, stored at create",
    )
    health_path: str = Field(
        "/health", max_length=512, json_schema_extra={"pattern": HEALTH_PATH_PATTERN}
    )
    weights_allow_patterns: list[WeightsPattern] | None = Field(
        None, max_length=64, description="hf:// only: download just the files matching a glob"
    )
    weights_ignore_patterns: list[WeightsPattern] | None = Field(
        None, max_length=64, description="hf:// only: skip the files matching a glob"
    )
    restart: RestartPolicy = Field(
        "on-failure",
        description="never | on-failure (up to max_restarts, with backoff) | always",
    )
    max_restarts: int = Field(DEFAULT_MAX_RESTARTS, ge=0, le=100, strict=True)
    unhealthy_timeout_s: int = Field(
        DEFAULT_UNHEALTHY_TIMEOUT_S,
        ge=0,
        le=86400,
        strict=True,
        description="unhealthy this long counts as a failure under the restart policy (0: never)",
    )

    auth: EndpointAuth = Field(
        "key",
        description="key: the endpoint answers only requests with Authorization: Bearer "
        "<endpoint key> (returned once at create); public: anyone who reaches it",
    )

    @field_validator("health_path")
    @classmethod
    def _plain_health_path(cls, value: str, info: ValidationInfo) -> str:
        if (info.context or {}).get("stored"):
            return value  # accepted when it was created, under the rules of that time
        return check_health_path(value)

    @classmethod
    def of(cls, stored) -> "DeployConfig":
        """From the stored map attribute (DynamoDB numbers come back as floats/Decimals)."""
        optional = {
            name: int(value) if isinstance(value, (int, float, Decimal)) else value
            for name in ("restart", "max_restarts", "unhealthy_timeout_s", "auth")
            if (value := getattr(stored, name, None)) is not None  # older items lack them
        }
        fields = dict(
            port=None if stored.port is None else int(stored.port),
            health_path=stored.health_path,
            weights_allow_patterns=_list_or_none(stored.weights_allow_patterns),
            weights_ignore_patterns=_list_or_none(stored.weights_ignore_patterns),
            **optional,
        )
        return cls.model_validate(fields, context={"stored": True})

    def stored(self) -> dict:
        """The fields of the store's DeployConfigAttribute."""
        return self.model_dump()


def _list_or_none(value) -> list[str] | None:
    return None if value is None else list(value)


class CreateDeploymentRequest(StrictModel):
    """Exactly one of `image` (image form), `resource_slug` (marketplace form) or
    `weights_source` (runtime form)."""

    name: Name
    target: Target = "prism_node"
    image: ImageRef | None = None
    resource_slug: Slug | None = None
    allow_insecure_http: StrictBool = Field(False, description="accept an http:// weights_source")
    weights_source: str | None = Field(
        None,
        max_length=4096,
        description="hf://org/model[@rev], r2://bucket/path, https://… or /local/path",
    )
    framework: Framework = "auto"
    command: Annotated[list[CommandArg] | None, BeforeValidator(_exec_array)] = Field(
        None, max_length=256, description="exec array; never run through a shell"
    )
    gpu: StrictBool = True
    gpu_type: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9 ._-]{1,64}$")] | None = None
    deploy_config: DeployConfig | None = None
    env_vars: dict[EnvName, Annotated[str, StringConstraints(max_length=32768)]] = Field(
        default_factory=dict, max_length=128
    )
    budget_max_usd: Budget | None = None
    node_id: NodeId | None = Field(None, description="run on this node (target prism_node)")

    @field_validator("weights_source")
    @classmethod
    def _parse_weights(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        allow_http = bool(info.data.get("allow_insecure_http"))
        try:
            return parse_weights_uri(value, allow_http=allow_http).uri()
        except InvalidWeightsSource as exc:
            raise ValueError(f"weights_source {exc}") from None

    @model_validator(mode="after")
    def _check_form(self) -> "CreateDeploymentRequest":
        given = [f for f in ("image", "resource_slug", "weights_source") if getattr(self, f)]
        if len(given) != 1:
            message = "give exactly one of image, resource_slug or weights_source"
            named = given or ["image", "resource_slug", "weights_source"]
            raise ValidationFailed(message, fields=dict.fromkeys(named, message))
        if self.target in CLOUD_TARGETS and self.budget_max_usd is None:
            raise ValidationFailed(
                "budget_max_usd is required for cloud targets (they are billed per hour)",
                fields={"budget_max_usd": "required when target is runpod or lambda"},
            )
        if self.node_id and self.target in CLOUD_TARGETS:
            raise ValidationFailed(
                "node_id picks one of your own nodes (target prism_node); cloud targets get an "
                "instance of their own",
                fields={"node_id": "only with target prism_node"},
            )
        self._fits_one_message()
        if (
            self.weights_source
            and self.target in CLOUD_TARGETS
            and isinstance(parse_weights_uri(self.weights_source, allow_http=True), LocalSource)
        ):
            raise ValidationFailed(
                "a local weights path exists only on your own node; use target prism_node "
                "or an hf://, r2:// or https:// source",
                fields={"weights_source": "local paths need target prism_node"},
            )
        return self

    def _fits_one_message(self) -> None:
        """Each field has its own limit, but together they could still exceed what one
        deploy_model message (128 KB) or one DynamoDB item (400 KB) holds: the deployment's
        own content must fit DEPLOY_CONTENT_BUDGET_BYTES, the rest of either is bounded. The
        largest field is named."""
        sizes = {
            name: len(json.dumps(value, ensure_ascii=False).encode())
            for name, value in (
                ("env_vars", self.env_vars),
                ("command", self.command),
                ("weights_source", self.weights_source),
                ("image", self.image),
                ("deploy_config", self.deploy_config and self.deploy_config.model_dump()),
            )
        }
        content = sum(sizes.values())
        if content <= DEPLOY_CONTENT_BUDGET_BYTES:
            return
        largest = max(sizes, key=sizes.__getitem__)
        message = (
            f"{largest} takes {sizes[largest]} bytes, and with the other fields the deployment "
            f"takes {content}; together env_vars, command, weights_source, image and "
            f"deploy_config must fit in {DEPLOY_CONTENT_BUDGET_BYTES} bytes (they travel to the "
            "node in one message)"
        )
        raise ValidationFailed(message, fields={largest: message})


class LastExitOut(BaseModel):
    cause: RestartCause = Field(
        description="crash: the model exited; unhealthy: it failed its health checks for "
        "deploy_config.unhealthy_timeout_s"
    )
    exit_code: int | None
    at: datetime = Field(description="when the node agent reported the restart")
    message: str | None = Field(description="the first line and end of the model's last output")

    @classmethod
    def of(cls, stored) -> "LastExitOut | None":
        if stored is None:
            return None
        return cls(
            cause=stored.cause,
            exit_code=None if stored.exit_code is None else int(stored.exit_code),
            at=stored.at,
            message=stored.message,
        )


class RequestMetricsOut(BaseModel):
    """What the node agent's endpoint proxy last reported: counts since it started (they only
    grow), requests in flight then, and the latency of the last window's requests."""

    requests_total: int
    status_2xx: int
    status_3xx: int
    status_4xx: int = Field(description="including the proxy's own 401s")
    status_5xx: int = Field(description="including the proxy's own 502s (model unreachable)")
    unauthorized: int = Field(description="refused by the proxy: no or a wrong endpoint key")
    in_flight: int
    latency_p50_ms: float | None = Field(description="time to the response's first byte")
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    window_s: float = Field(description="the window the latencies were measured over")
    reported_at: datetime

    @classmethod
    def of(cls, stored) -> "RequestMetricsOut | None":
        if stored is None:
            return None
        counts = ("requests_total", "status_2xx", "status_3xx", "status_4xx", "status_5xx")
        counts += ("unauthorized", "in_flight")
        latencies = ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms")
        return cls(
            **{name: int(getattr(stored, name) or 0) for name in counts},
            **{name: _float_or_none(getattr(stored, name)) for name in latencies},
            window_s=float(stored.window_s),
            reported_at=stored.reported_at,
        )


def _float_or_none(value) -> float | None:
    return None if value is None else float(value)


EndpointAuthView = Literal["key", "public", "none"]


def endpoint_auth(item) -> EndpointAuthView:
    """key: the node agent's proxy requires the endpoint key; public: it lets anyone in
    (deploy_config.auth); none: our proxy does not serve this endpoint (an image run directly
    on a cloud instance), so nothing checks a key."""
    if not item.served_by_agent_proxy():
        return "none"
    return DeployConfig.of(item.deploy_config).auth


class LastProbeOut(BaseModel):
    """The last health probe as the control plane recorded it (a node's report or the cloud
    health check); GET .../health asks the node for a fresh one."""

    healthy: bool | None = Field(description="null until the first probe")
    consecutive_failures: int
    latency_ms: float | None
    checked_at: datetime | None

    @classmethod
    def of(cls, item) -> "LastProbeOut":
        return cls(
            healthy=item.healthy,
            consecutive_failures=int(item.health_consecutive_failures or 0),
            latency_ms=None if item.health_latency_ms is None else float(item.health_latency_ms),
            checked_at=item.health_checked_at,
        )


class StatusChangeOut(BaseModel):
    status: Status
    at: datetime = Field(description="when the deployment entered this status")


class DeploymentOut(BaseModel):
    id: str
    name: str
    target: Target
    status: Status
    status_history: list[StatusChangeOut] = Field(
        description="its statuses with when each began, oldest first (the first and the newest"
        " 19; empty for a deployment created before the history was kept)"
    )
    image: str | None
    resource_slug: str | None
    weights_source: str | None = Field(
        description="without its query string: a signed URL's signature is kept encrypted and "
        "given only to the node that pulls the weights"
    )
    weights_revision: str | None = Field(
        description="what weights_source resolved to when pulled: the commit sha for hf://"
    )
    framework: str = Field(
        description="what was asked for, then what the node found the weights to be"
    )
    engine: str | None = Field(
        description="what serves it: an engine the node chose (vllm, tgi, tei, llama.cpp, "
        "prism-embed), or image / command as given"
    )
    engine_reason: str | None = Field(description="why the node chose that engine")
    command: list[str]
    gpu: bool
    gpu_type: str | None
    deploy_config: DeployConfig
    env_var_names: list[str] = Field(description="names only; values are never returned")
    budget_max_usd: Usd | None
    cost_accrued_usd: Usd
    price_per_hour_usd: Usd | None
    budget_remaining_usd: Usd | None
    budget_seconds_left: float | None = Field(
        description="at the current price, when the budget runs out (null: no budget or free)"
    )
    endpoint_url: str | None
    endpoint_auth: EndpointAuthView = Field(
        description="key: requests need Authorization: Bearer <endpoint key>; public: anyone "
        "who reaches endpoint_url; none: an image deployment on a cloud instance serves "
        "endpoint_url itself, unprotected (weights + command deployments go through PRISM's "
        "proxy)"
    )
    last_probe: LastProbeOut
    request_metrics: RequestMetricsOut | None = Field(
        description="the endpoint proxy's last report (null: none yet, or no proxy)"
    )
    node_id: str | None
    gpu_indices: list[int] | None = Field(description="the GPUs of its node reserved for it")
    status_message: str | None = Field(description="why it waits, or what just happened")
    bytes_done: int | None = Field(description="weights pulled so far, while pulling")
    bytes_total: int | None
    failure_reason: str | None
    failure_message: str | None
    restarts: int = Field(
        description="how many times the node agent restarted it under deploy_config.restart"
    )
    last_exit: LastExitOut | None = Field(description="why it was last restarted (null: never)")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_item(cls, item, meter=None, **more) -> "DeploymentOut":
        """`meter`: the deployment's MeterItem, which holds its cost (None: free or not billed
        yet, or billed on the item from before meters: the item's own figures); `more`: the
        fields a subclass adds."""
        billing = item if meter is None else meter
        return cls(
            id=item.id,
            name=item.name,
            target=item.target,
            status=item.status,
            status_history=[
                StatusChangeOut(status=status, at=at)
                for status, at in status_changes(item.status_history)
            ],
            image=item.image,
            resource_slug=item.resource_slug,
            weights_source=public_weights_source(item.weights_source),  # no signed query
            weights_revision=item.weights_revision,
            framework=item.framework,
            engine=item.engine,
            engine_reason=item.engine_reason,
            command=list(item.command or []),
            gpu=item.gpu,
            gpu_type=item.gpu_type,
            deploy_config=DeployConfig.of(item.deploy_config),
            env_var_names=item.env_names(),
            budget_max_usd=item.budget_max_usd,
            cost_accrued_usd=billing.cost_accrued_usd,
            price_per_hour_usd=billing.price_per_hour_usd,
            **_budget_view(item.budget_max_usd, billing),
            endpoint_url=item.endpoint_url,
            endpoint_auth=endpoint_auth(item),
            last_probe=LastProbeOut.of(item),
            request_metrics=RequestMetricsOut.of(item.request_metrics),
            node_id=item.node_id,
            gpu_indices=[int(i) for i in item.gpu_indices] if item.gpu_indices else None,
            status_message=item.status_message,
            bytes_done=None if item.bytes_done is None else int(item.bytes_done),
            bytes_total=None if item.bytes_total is None else int(item.bytes_total),
            failure_reason=item.failure_reason,
            failure_message=item.failure_message,
            restarts=int(item.restarts or 0),
            last_exit=LastExitOut.of(item.last_exit),
            created_at=item.created_at,
            updated_at=item.updated_at,
            **more,
        )


def _budget_view(budget: Decimal | None, billing) -> dict:
    """What is left of the budget, and for how long while billed; `billing`: the meter (or the
    item) with the cost, the price and whether it is billed now."""
    if budget is None:
        return {"budget_remaining_usd": None, "budget_seconds_left": None}
    cost = billing.cost_accrued_usd or Decimal(0)
    remaining = max(Decimal(0), budget - cost)
    left = None
    if billing.billable and billing.price_per_hour_usd:
        left = round(seconds_until_exhausted(cost, budget, billing.price_per_hour_usd), 1)
    return {"budget_remaining_usd": remaining, "budget_seconds_left": left}


class DeploymentCreated(DeploymentOut):
    endpoint_key: str | None = Field(
        description="the endpoint key, shown once (only its hash is kept): send it as "
        "Authorization: Bearer <key>. null when endpoint_auth is not key, or on an "
        "Idempotency-Key replay (the first response had it; rotate to get a new one)"
    )

    @classmethod
    def of(cls, item, endpoint_key: str | None) -> "DeploymentCreated":
        return cls.from_item(item, endpoint_key=endpoint_key)


class EndpointKeyOut(BaseModel):
    deployment_id: str
    endpoint_key: str = Field(
        description="the new endpoint key, shown once; the previous key stops working"
    )
    delivered: bool = Field(
        description="true: the node serving the endpoint has the new key now; false: it is "
        "not connected (or not placed yet) and gets it when it connects"
    )


class DeploymentList(BaseModel):
    items: list[DeploymentOut]
    next_token: str | None = Field(description="pass back as ?next_token= for the next page")


class ListDeploymentsQuery(StrictModel):
    status: list[Status] | None = Field(
        None, description="only these statuses: status=a&status=b, or comma-separated"
    )
    limit: int = Field(50, ge=1, le=100)
    next_token: str | None = Field(None, max_length=4096)

    @field_validator("status", mode="before")
    @classmethod
    def _split_statuses(cls, value):
        """`status=a,b`, `status=a&status=b` or both."""
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return [s.strip() for v in value for s in v.split(",") if s.strip()] or None
        return value


class HealthOut(BaseModel):
    deployment_id: str
    status: Status
    healthy: bool | None = Field(description="null until the first probe")
    consecutive_failures: int
    latency_ms: float | None
    checked_at: datetime | None
    stale: bool = Field(description="true when this is the last known state, not a fresh probe")


class ResourceOut(BaseModel):
    slug: str
    title: str
    description: str
    image: str | None
    weights_source: str | None
    framework: Framework
    command: list[str]
    gpu: bool
    gpu_type: str | None
    deploy_config: DeployConfig

    @classmethod
    def from_item(cls, item) -> "ResourceOut":
        return cls(
            slug=item.slug,
            title=item.title,
            description=item.description,
            image=item.image,
            weights_source=public_weights_source(item.weights_source),  # no signed query
            framework=item.framework,
            command=list(item.command or []),
            gpu=item.gpu,
            gpu_type=item.gpu_type,
            deploy_config=DeployConfig.of(item.deploy_config),
        )


class ResourceList(BaseModel):
    items: list[ResourceOut]


class ErrorDetail(BaseModel):
    code: str
    message: str
    fields: dict[str, str] | None = Field(None, description="field path -> what is wrong")


class ErrorBody(BaseModel):
    error: ErrorDetail


class LogsOut(BaseModel):
    deployment_id: str
    lines: list[str]


class LogsQuery(StrictModel):
    tail: int = Field(100, ge=1, le=5000)


class CreateNodeRequest(StrictModel):
    name: Name


class NodeGpu(BaseModel):
    index: int
    name: str
    uuid: str | None
    memory_total_mb: int | None


class NodeOut(BaseModel):
    id: str
    name: str
    status: Literal["online", "offline"]
    gpus: list[NodeGpu]
    agent_version: str | None
    last_seen_at: datetime
    created_at: datetime

    @classmethod
    def from_item(cls, item) -> "NodeOut":
        return cls(
            id=item.id,
            name=item.name,
            status=item.status,
            gpus=[
                NodeGpu(
                    index=int(g.index),
                    name=g.name,
                    uuid=g.uuid,
                    memory_total_mb=None if g.memory_total_mb is None else int(g.memory_total_mb),
                )
                for g in item.gpus or []
            ],
            agent_version=item.agent_version,
            last_seen_at=item.last_seen_at,
            created_at=item.created_at,
        )


class NodeCreated(NodeOut):
    token: str = Field(description="the node's token: shown once, only its hash is stored")


class NodeList(BaseModel):
    items: list[NodeOut]


class CostEntry(BaseModel):
    period_start: datetime
    period_end: datetime
    amount_usd: Usd
    price_per_hour_usd: Usd
    cost_after_usd: Usd


class CostList(BaseModel):
    deployment_id: str
    cost_accrued_usd: Usd
    items: list[CostEntry] = Field(description="newest first")
    next_token: str | None


class CostsQuery(StrictModel):
    limit: int = Field(50, ge=1, le=500)
    next_token: str | None = Field(None, max_length=256)
