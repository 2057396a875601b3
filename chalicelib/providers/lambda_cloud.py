"""Lambda Cloud (Lambda Labs) API v1 as a Provider: VMs launched into a region, found by id.

Lambda has no notion of ports or containers: a VM boots with our cloud-init `user_data`, and
the model answers on the port the launch asked for. That port is not stored anywhere at Lambda,
and this module keeps no memory between (AWS Lambda) invocations, so the caller passes it back
to `get(instance_id, port=...)` to get an `endpoint_url`.

Wire format: /work/shared/reference/external-apis.md, "Lambda Cloud (Lambda Labs) API v1".
"""

from decimal import Decimal
from email.utils import parsedate_to_datetime
from time import time
from typing import Any
from urllib.parse import quote

import requests

from chalicelib import gpu_types
from chalicelib.logs import logger
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

DEFAULT_API_URL = "https://cloud.lambdalabs.com/api/v1"
DEFAULT_ENDPOINT_TEMPLATE = "http://{ip}:{port}"

# Lambda's instance status -> ours. An unknown word reads as PENDING: billed, not usable.
STATES = {
    "booting": InstanceState.PENDING,
    "active": InstanceState.RUNNING,
    "unhealthy": InstanceState.FAILED,
    "terminating": InstanceState.STOPPING,
    "terminated": InstanceState.TERMINATED,
}

CAPACITY_CODE = "instance-operations/launch/insufficient-capacity"
INVALID_KEY_CODE = "global/invalid-api-key"
NOT_FOUND_CODE = "global/object-does-not-exist"


class ObjectNotFound(InvalidRequest):
    """Lambda does not know the id: for get and terminate, the instance is gone."""


class LambdaCloudProvider:
    name = "lambda"

    def __init__(
        self,
        api_key: str,
        ssh_key_name: str,
        api_url: str = DEFAULT_API_URL,
        endpoint_template: str = DEFAULT_ENDPOINT_TEMPLATE,
        timeout_s: float = 15.0,
    ):
        self._api_key = api_key
        self.ssh_key_name = ssh_key_name
        self.api_url = api_url.rstrip("/")
        self.endpoint_template = endpoint_template
        self.timeout_s = timeout_s
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {api_key}"

    def __repr__(self) -> str:
        return f"LambdaCloudProvider(api_url={self.api_url!r})"

    # -- Provider ------------------------------------------------------------------------------

    def offers(self, gpu_type: str) -> list[Offer]:
        """One offer per (instance type, region with capacity), cheapest first.

        Single-GPU types win whenever one matches, even if it has no capacity right now:
        silently renting an 8-GPU machine for a 1-GPU model would cost ~10x.
        """
        if not gpu_type:  # nothing named: renting whichever GPU is cheapest would surprise
            return []
        entries = self._call("GET", "/instance-types").values()
        types = [entry for entry in entries if _serves(entry, gpu_type)]
        single = [e for e in types if _gpus(e) == 1]
        offers = [offer for entry in (single or types) for offer in _region_offers(entry)]
        return sorted(offers, key=lambda o: (o.price_per_hour, o.gpu_type, o.region or ""))

    def launch(self, spec: LaunchSpec, offer: Offer) -> Instance:
        """Ask for one VM. A launch that timed out may still have created it: the reaper finds
        it later by its prism- name (list_owned)."""
        body: dict[str, Any] = {
            "region_name": offer.region,
            "instance_type_name": offer.gpu_type,
            "ssh_key_names": [self.ssh_key_name],
            "quantity": 1,
            "name": spec.name,
        }
        if spec.user_data is not None:
            body["user_data"] = spec.user_data
        try:
            ids = self._call("POST", "/instance-operations/launch", body).get("instance_ids")
        except ProviderError as exc:  # the node token is in the user data and its env
            raise without_secrets(exc, spec.env.values()) from None
        ids = ids or []
        if not ids:
            raise TransientError("Lambda Cloud accepted the launch but returned no instance id")
        instance_id = ids[0]
        logger.info(
            "lambda instance launched",
            extra={"instance_id": instance_id, "type": offer.gpu_type, "region": offer.region},
        )
        try:
            instance = self.get(instance_id, port=spec.port)
        except ProviderError as exc:
            if not exc.retryable:
                raise
            instance = None  # launched all the same: the next poll reads the real state
        return instance or _pending(instance_id, spec, offer)

    def get(self, instance_id: str, port: int | None = None) -> Instance | None:
        """None once Lambda no longer knows the id. `port`: the model's port, for endpoint_url."""
        try:
            data = self._call("GET", f"/instances/{quote(instance_id, safe='')}")
        except ObjectNotFound:
            return None
        return self._instance(data, port)

    def terminate(self, instance_id: str) -> None:
        try:
            self._call("POST", "/instance-operations/terminate", {"instance_ids": [instance_id]})
        except ObjectNotFound:
            return  # already gone: what we wanted
        logger.info("lambda instance terminated", extra={"instance_id": instance_id})

    def list_owned(self) -> list[Instance]:
        """Our live instances; endpoint_url stays None (the port is the deployment's to know)."""
        instances = [self._instance(item, None) for item in self._call("GET", "/instances")]
        return [
            i
            for i in instances
            if i.name.startswith(NAME_PREFIX) and i.state is not InstanceState.TERMINATED
        ]

    # -- wire ------------------------------------------------------------------------------------

    def _instance(self, data: dict[str, Any], port: int | None) -> Instance:
        state = STATES.get(data.get("status", ""), InstanceState.PENDING)
        ip = data.get("ip") or None
        endpoint = None
        if state is InstanceState.RUNNING and ip and port is not None:
            endpoint = self.endpoint_template.format(id=data["id"], ip=ip, port=port)
        instance_type = data.get("instance_type") or {}
        return Instance(
            id=data["id"],
            name=data.get("name") or "",
            state=state,
            provider_status=data.get("status", ""),
            price_per_hour=_price(instance_type) if instance_type else None,
            endpoint_url=endpoint,
            ip=ip,
            region=(data.get("region") or {}).get("name"),
        )

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        """The `data` of a successful answer; every failure as a typed ProviderError."""
        try:
            response = self._session.request(
                method, self.api_url + path, json=body, timeout=self.timeout_s
            )
        except requests.RequestException as exc:
            raise TransientError(
                self._redact(f"Lambda Cloud unreachable ({type(exc).__name__}): {exc}")
            ) from None
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.ok and isinstance(payload, dict) and "data" in payload:
            return payload["data"]
        raise self._error(response, payload)

    def _error(self, response: requests.Response, payload: Any) -> ProviderError:
        error = payload.get("error") if isinstance(payload, dict) else None
        error = error if isinstance(error, dict) else {}
        code, status = error.get("code", ""), response.status_code
        message = self._redact(_message(error, response))
        if status == 429:
            return RateLimited(message, _retry_after(response.headers.get("Retry-After")))
        if code == INVALID_KEY_CODE or status in (401, 403):
            return AuthError(message)
        if code == CAPACITY_CODE:
            return CapacityError(message)
        if code == NOT_FOUND_CODE or status == 404:
            return ObjectNotFound(message)
        if 400 <= status < 500:
            return InvalidRequest(message)
        return TransientError(message)  # 5xx, or a 2xx we cannot read

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text


def _message(error: dict[str, Any], response: requests.Response) -> str:
    message = error.get("message") or f"HTTP {response.status_code} {response.reason}"
    suggestion = error.get("suggestion")
    return f"Lambda Cloud: {message}" + (f" ({suggestion})" if suggestion else "")


def _retry_after(header: str | None) -> float | None:
    """Retry-After in seconds: either a number or an HTTP date."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(header).timestamp() - time())
    except (TypeError, ValueError):
        return None


def _pending(instance_id: str, spec: LaunchSpec, offer: Offer) -> Instance:
    return Instance(
        id=instance_id,
        name=spec.name,
        state=InstanceState.PENDING,
        provider_status="booting",
        price_per_hour=offer.price_per_hour,
        region=offer.region,
    )


def _price(instance_type: dict[str, Any]) -> Decimal:
    return Decimal(str(instance_type["price_cents_per_hour"])) / 100


def _region_offers(entry: dict[str, Any]) -> list[Offer]:
    """One offer per region that has capacity now; a sold-out type yields none."""
    instance_type = entry["instance_type"]
    return [
        Offer(instance_type["name"], region["name"], _price(instance_type))
        for region in entry.get("regions_with_capacity_available") or []
    ]


def _gpus(entry: dict[str, Any]) -> int | None:
    return (entry.get("instance_type", {}).get("specs") or {}).get("gpus")


def _serves(entry: dict[str, Any], gpu_type: str) -> bool:
    """Whether an instance type's GPUs serve the request. The name ("gpu_1x_a100") may leave
    out the memory or form factor that its GPU description ("A100 (40 GB SXM4)") tells."""
    instance_type = entry.get("instance_type") or {}
    descriptions = [instance_type.get(k) or "" for k in ("gpu_description", "description")]
    return gpu_types.matches(instance_type.get("name", ""), gpu_type, aliases=descriptions)
