"""Response models of the REST API (pydantic v2), built from the store's items; the OpenAPI
document is built from these. Env var values never appear in a response: only their names."""

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field

from chalicelib.lifecycle import Status
from chalicelib.metering import seconds_until_exhausted
from chalicelib.protocol import RestartCause
from chalicelib.schemas import DeployConfig, Framework, Target, Usd
from chalicelib.store.secrets import public_weights_source
from chalicelib.store.status_history import status_changes


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
