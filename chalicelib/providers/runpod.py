"""RunPod over its GraphQL API (what the official runpod SDK speaks): GPU types as offers, pods
as instances. Every user value travels as a GraphQL variable, never spliced into the document.

Failures map onto the typed errors of base.py: HTTP 401/403 -> AuthError, 429 -> RateLimited,
5xx and network faults -> TransientError; errors in a 200 body are capacity (CapacityError) or
the request's fault (InvalidRequest). The API key never appears in a message."""

import contextlib
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import requests

from chalicelib import gpu_types
from chalicelib.providers.base import (
    NAME_PREFIX,
    AuthError,
    CapacityError,
    Instance,
    InstanceState,
    InvalidRequest,
    LaunchSpec,
    Offer,
    ProviderError,
    RateLimited,
    TransientError,
    without_secrets,
)

DEFAULT_API_URL = "https://api.runpod.io/graphql"
DEFAULT_ENDPOINT_TEMPLATE = "https://{id}-{port}.proxy.runpod.net"
CLOUD_TYPES = ("ALL", "SECURE", "COMMUNITY")

_POD_FIELDS = """
    id name desiredStatus costPerHr ports
    runtime { uptimeInSeconds ports { ip isIpPublic privatePort publicPort type } }
"""
_GPU_TYPES = "query GpuTypes { gpuTypes { id displayName memoryInGb securePrice communityPrice } }"
_POD = f"query Pod($input: PodFilter!) {{ pod(input: $input) {{ {_POD_FIELDS} }} }}"
_MY_PODS = f"query MyPods {{ myself {{ pods {{ {_POD_FIELDS} }} }} }}"
_DEPLOY = (
    "mutation Deploy($input: PodFindAndDeployOnDemandInput!) "
    f"{{ podFindAndDeployOnDemand(input: $input) {{ {_POD_FIELDS} }} }}"
)
_TERMINATE = "mutation Terminate($input: PodTerminateInput!) { podTerminate(input: $input) }"

# desiredStatus -> (state while runtime is null, state once the container reports a runtime).
# RUNNING without a runtime is a container still pulling or starting; EXITED and PAUSED pods
# serve nothing, so they count as failed and the control plane terminates them.
_STATES: dict[str, tuple[InstanceState, InstanceState]] = {
    "CREATED": (InstanceState.PENDING, InstanceState.PENDING),
    "RUNNING": (InstanceState.PENDING, InstanceState.RUNNING),
    "RESTARTING": (InstanceState.PENDING, InstanceState.PENDING),
    "EXITED": (InstanceState.FAILED, InstanceState.FAILED),
    "PAUSED": (InstanceState.FAILED, InstanceState.FAILED),
    "TERMINATED": (InstanceState.TERMINATED, InstanceState.TERMINATED),
}
_UNKNOWN_STATE = (InstanceState.PENDING, InstanceState.PENDING)  # the boot timeout catches it

# RunPod words "no capacity" several ways; all mean: try the next offer.
_CAPACITY = re.compile(
    r"no longer any instances available|not enough free gpu|\bno (?:\w+ )?available", re.I
)
_NOT_FOUND = re.compile(r"not found|does not exist", re.I)


class _NotFound(InvalidRequest):
    """The pod is unknown to RunPod: for get and terminate, it is gone."""


@dataclass(frozen=True)
class _GpuType:
    id: str
    display_name: str
    memory_gb: int | None
    price: Decimal | None

    def serves(self, wanted: str) -> bool:
        """The id names the card ("NVIDIA A100-SXM4-80GB"); the display name ("H100 SXM") and
        memoryInGb fill in a form factor or memory the id leaves out."""
        memory_mb = self.memory_gb * 1024 if self.memory_gb else None
        return gpu_types.matches(self.id, wanted, memory_mb, aliases=[self.display_name])


class RunPodProvider:
    name = "runpod"

    def __init__(
        self,
        api_key: str,
        api_url: str = DEFAULT_API_URL,
        endpoint_template: str = DEFAULT_ENDPOINT_TEMPLATE,
        timeout_s: float = 15.0,
        cloud_type: str = "ALL",
    ):
        if cloud_type not in CLOUD_TYPES:
            raise ValueError(f"cloud_type must be one of {', '.join(CLOUD_TYPES)}")
        self._api_key = api_key
        self._api_url = api_url
        self._endpoint_template = endpoint_template
        self._timeout_s = timeout_s
        self._cloud_type = cloud_type
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {api_key}"

    def __repr__(self) -> str:  # the key stays out of reprs and tracebacks
        return f"RunPodProvider(api_url={self._api_url!r}, cloud_type={self._cloud_type!r})"

    # Provider

    def offers(self, gpu_type: str) -> list[Offer]:
        if not gpu_type:  # nothing named: renting whichever GPU is cheapest would surprise
            return []
        data = self._call(_GPU_TYPES)
        gpus = [self._gpu_type(raw) for raw in data.get("gpuTypes") or []]
        matching = [g for g in gpus if g.price is not None and g.serves(gpu_type)]
        matching.sort(key=lambda g: (g.price, g.id))
        return [Offer(gpu_type=g.id, region=None, price_per_hour=g.price) for g in matching]

    def launch(self, spec: LaunchSpec, offer: Offer) -> Instance:
        if not spec.image:
            raise InvalidRequest("RunPod runs containers: the launch needs an image")
        pod_input = {
            "name": spec.name,
            "imageName": spec.image,
            "gpuTypeId": offer.gpu_type,
            "gpuCount": spec.gpu_count,
            "cloudType": self._cloud_type,
            "containerDiskInGb": spec.disk_gb,
            "volumeInGb": 0,
            "ports": f"{spec.port}/http",
            "env": [{"key": k, "value": v} for k, v in spec.env.items()],
        }
        try:
            data = self._call(_DEPLOY, {"input": pod_input})
        except ProviderError as exc:
            # GraphQL errors may quote the variables: env values are secrets.
            raise without_secrets(exc, spec.env.values()) from None
        pod = data.get("podFindAndDeployOnDemand")
        if not pod:
            raise CapacityError("RunPod returned no pod for this launch")
        return self._instance(pod)

    def get(self, instance_id: str, port: int | None = None) -> Instance | None:
        """`port` is not needed: a pod knows the ports it exposes."""
        try:
            data = self._call(_POD, {"input": {"podId": instance_id}})
        except _NotFound:
            return None
        pod = data.get("pod")
        return self._instance(pod) if pod else None

    def terminate(self, instance_id: str) -> None:
        with contextlib.suppress(_NotFound):  # already gone: what terminate wants
            self._call(_TERMINATE, {"input": {"podId": instance_id}})

    def list_owned(self) -> list[Instance]:
        data = self._call(_MY_PODS)
        pods = (data.get("myself") or {}).get("pods") or []
        owned = [self._instance(p) for p in pods if (p.get("name") or "").startswith(NAME_PREFIX)]
        return [i for i in owned if i.state is not InstanceState.TERMINATED]

    # Wire

    def _call(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST one GraphQL operation; its `data`, or the typed error it amounts to."""
        body = {"query": query, "variables": variables or {}}
        try:
            response = self._session.post(self._api_url, json=body, timeout=self._timeout_s)
        except requests.Timeout:
            raise TransientError(f"RunPod did not answer within {self._timeout_s:g} s") from None
        except requests.RequestException as exc:
            raise TransientError(
                self._scrub(f"cannot reach RunPod: {type(exc).__name__}")
            ) from None
        self._raise_for_status(response)
        try:
            payload = response.json()
        except ValueError:
            raise TransientError("RunPod answered with a body that is not JSON") from None
        if not isinstance(payload, dict):
            raise TransientError("RunPod answered with an unexpected body")
        if payload.get("errors"):
            raise self._graphql_error(payload["errors"])
        return payload.get("data") or {}

    def _raise_for_status(self, response: requests.Response) -> None:
        status = response.status_code
        if status in (401, 403):
            raise AuthError(f"RunPod rejected the API key (HTTP {status})")
        if status == 429:
            retry_after = _retry_after(response.headers.get("Retry-After"))
            raise RateLimited("RunPod rate limit reached (HTTP 429)", retry_after)
        if status >= 500:
            raise TransientError(f"RunPod server error (HTTP {status})")
        if status >= 400:
            errors = _json_errors(response)
            if errors:
                raise self._graphql_error(errors)
            raise InvalidRequest(f"RunPod refused the request (HTTP {status})")

    def _graphql_error(self, errors: list[Any]) -> Exception:
        messages = [e.get("message", "") if isinstance(e, dict) else str(e) for e in errors]
        message = self._scrub("; ".join(m for m in messages if m) or "RunPod returned an error")
        if _CAPACITY.search(message):
            return CapacityError(message)
        if message.lower().startswith(("unauthorized", "unauthenticated")):
            return AuthError(message)
        if _NOT_FOUND.search(message):
            return _NotFound(message)
        return InvalidRequest(message)

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    # Mapping

    def _gpu_type(self, raw: dict[str, Any]) -> _GpuType:
        secure, community = raw.get("securePrice"), raw.get("communityPrice")
        prices = {"SECURE": [secure], "COMMUNITY": [community], "ALL": [secure, community]}
        known = [Decimal(str(p)) for p in prices[self._cloud_type] if p is not None]
        return _GpuType(
            id=raw["id"],
            display_name=raw.get("displayName") or "",
            memory_gb=raw.get("memoryInGb"),
            price=min(known) if known else None,
        )

    def _instance(self, pod: dict[str, Any]) -> Instance:
        status = pod.get("desiredStatus") or "UNKNOWN"
        runtime = pod.get("runtime")
        state = _STATES.get(status, _UNKNOWN_STATE)[1 if runtime else 0]
        cost = pod.get("costPerHr")
        endpoint = None
        if state is InstanceState.RUNNING:
            port = _http_port(runtime, pod.get("ports"))
            if port is not None:
                endpoint = self._endpoint_template.format(id=pod["id"], port=port)
        return Instance(
            id=pod["id"],
            name=pod.get("name") or "",
            state=state,
            provider_status=status,
            price_per_hour=Decimal(str(cost)) if cost is not None else None,
            endpoint_url=endpoint,
        )


def _http_port(runtime: dict[str, Any] | None, ports: str | None) -> int | None:
    """The private HTTP port the proxy forwards: from the runtime, else as launched."""
    for port in (runtime or {}).get("ports") or []:
        if port.get("type") == "http" and port.get("privatePort"):
            return int(port["privatePort"])
    for entry in (ports or "").split(","):
        number, _, kind = entry.strip().partition("/")
        if kind == "http" and number.isdigit():
            return int(number)
    return None


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: let the caller's backoff decide


def _json_errors(response: requests.Response) -> list[Any]:
    try:
        payload = response.json()
    except ValueError:
        return []
    return (payload.get("errors") or []) if isinstance(payload, dict) else []
