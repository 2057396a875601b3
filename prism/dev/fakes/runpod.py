"""A fake RunPod: a real HTTP server speaking the GraphQL API the runpod SDK uses, plus the HTTP
proxy in front of each pod's ports, so code under test drives real requests over real HTTP:

    with FakeRunPod(boot_seconds=0.2) as runpod:
        provider = RunPodProvider(runpod.api_key, runpod.url, runpod.endpoint_template)

GraphQL (POST /graphql, `Authorization: Bearer <key>`): documents are parsed (operations, aliases,
arguments, variables, inline literals) and checked against a small schema, and answers carry only
the fields asked for. Root fields: `gpuTypes`, `pod(input: {podId})`, `myself { pods }`,
`podFindAndDeployOnDemand(input: {...})`, `podTerminate(input: {podId})`. As RunPod does, resolver
errors come with HTTP 200 as `{"errors": [{"message"}], "data": null}`; a document that does not
parse or asks for an unknown field is answered 400; a wrong or missing key 401.

Pods start with desiredStatus RUNNING and `runtime: null`; after `boot_seconds` they have a
runtime (uptime, ports). `podTerminate` stops billing at once; a terminated pod answers `pod` with
desiredStatus TERMINATED for `terminated_visible_s`, then null, and terminating it again is the
error "pod not found to terminate". `myself.pods` lists pods that are not terminated.

Proxy: `GET|POST /proxy/{podId}-{port}/<anything>` -> 200 {"ok": true, "pod": id} while the pod
runs with that http port exposed; 500 for pods in `unhealthy`; 502 while booting or stopped;
404 for an unknown pod or port. A pod of the node agent image really runs our agent once booted
(prism/dev/fakes/instances.py); its proxy forwards to 127.0.0.1:{port}, where its model listens.

Test hooks: `pods` (id -> state dict, editable: set "desiredStatus" to "EXITED" to crash a pod),
`bill()`, `total_bill()`, `live_pods()`, `requests` (operation root fields, in order), and the
faults `capacity_failures`, `capacity_gpu_types`, `rate_limit_next` / `retry_after_s`,
`server_error_next`, `terminate_failures`, `never_boot`, `unhealthy`.

This module holds the pods, their resolvers and the proxy's answers; the GraphQL language is in
prism/dev/fakes/graphql_lite.py, the HTTP handler in prism/dev/fakes/runpod_http.py.
"""

import copy
import secrets
import string
import threading
import time
from decimal import Decimal
from typing import Any

from prism.dev.fakes import graphql_lite
from prism.dev.fakes.graphql_lite import Field, GraphQLError, Schema
from prism.dev.fakes.http_server import json_answer, serve_in_background
from prism.dev.fakes.instances import InstanceHost
from prism.dev.fakes.runpod_http import RunPodHandler, RunPodServer, server_error

CAPACITY_MESSAGE = (
    "There are no longer any instances available with the requested specifications. "
    "Please refresh and try again."
)
DEFAULT_GPU_TYPES = [
    {
        "id": "NVIDIA A100 80GB PCIe",
        "displayName": "A100 80GB",
        "memoryInGb": 80,
        "securePrice": 1.89,
        "communityPrice": 1.64,
    },
    {
        "id": "NVIDIA A100-SXM4-80GB",
        "displayName": "A100 SXM",
        "memoryInGb": 80,
        "securePrice": 2.29,
        "communityPrice": 1.94,
    },
    {
        "id": "NVIDIA H100 80GB HBM3",
        "displayName": "H100 SXM",
        "memoryInGb": 80,
        "securePrice": 2.99,
        "communityPrice": 2.69,
    },
    {
        "id": "NVIDIA GeForce RTX 4090",
        "displayName": "RTX 4090",
        "memoryInGb": 24,
        "securePrice": 0.69,
        "communityPrice": 0.44,
    },
    {
        "id": "NVIDIA A40",
        "displayName": "A40",
        "memoryInGb": 48,
        "securePrice": 0.44,
        "communityPrice": None,  # secure cloud only
    },
]

# The schema the fake knows: type -> field -> the field's object type (None for scalars).
_SCHEMA: Schema = {
    "Query": {"gpuTypes": "GpuType", "pod": "Pod", "myself": "User"},
    "Mutation": {"podFindAndDeployOnDemand": "Pod", "podTerminate": None},
    "GpuType": dict.fromkeys(
        ["id", "displayName", "memoryInGb", "securePrice", "communityPrice", "maxGpuCount"]
    ),
    "User": {"id": None, "pods": "Pod"},
    "Pod": {
        **dict.fromkeys(
            ["id", "name", "desiredStatus", "costPerHr", "imageName", "gpuCount", "ports"]
            + ["containerDiskInGb", "volumeInGb", "env", "machineId", "uptimeSeconds"]
            + ["lastStatusChange"]
        ),
        "runtime": "PodRuntime",
        "machine": "Machine",
    },
    "PodRuntime": {"uptimeInSeconds": None, "ports": "PodPort"},
    "PodPort": dict.fromkeys(["ip", "isIpPublic", "privatePort", "publicPort", "type"]),
    "Machine": {"podHostId": None, "gpuDisplayName": None},
}
_CLOUD_TYPES = ("ALL", "SECURE", "COMMUNITY")
_ID_ALPHABET = string.ascii_lowercase + string.digits


def priced_gpu_types(price: float | None) -> list[dict] | None:
    """Every GPU type at one price per hour (None: the default prices)."""
    if price is None:
        return None
    return [t | {"securePrice": price, "communityPrice": price} for t in DEFAULT_GPU_TYPES]


class FakeRunPod:
    def __init__(
        self,
        *,
        api_key: str = "rp_test_key",
        boot_seconds: float = 0.5,
        gpu_types: list[dict] | None = None,
        terminated_visible_s: float = 0.0,
        port: int = 0,
        instances: InstanceHost | None = None,
    ):
        self.api_key = api_key
        self.boot_seconds = boot_seconds
        self.gpu_types = copy.deepcopy(gpu_types if gpu_types is not None else DEFAULT_GPU_TYPES)
        self.terminated_visible_s = terminated_visible_s
        # Faults: the counters count down, one per request (or per launch / terminate).
        self.capacity_failures = 0
        self.capacity_gpu_types: set[str] = set()
        self.rate_limit_next = 0
        self.retry_after_s: float = 1
        self.server_error_next = 0
        self.terminate_failures = 0
        self.never_boot: set[str] = set()  # pod names ("*": every pod)
        self.unhealthy: set[str] = set()  # pod ids ("*": every pod)
        self.pods: dict[str, dict[str, Any]] = {}
        self.requests: list[str] = []  # root fields of each GraphQL operation served
        self.lock = threading.RLock()
        self.instances = instances or InstanceHost()  # pods of the node agent image run it
        self._server = RunPodServer(("127.0.0.1", port), RunPodHandler)
        self._server.fake = self
        self._thread: threading.Thread | None = None
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.url = f"{self.base_url}/graphql"

    @property
    def endpoint_template(self) -> str:
        return f"{self.base_url}/proxy/{{id}}-{{port}}"

    def start(self) -> "FakeRunPod":
        self._thread = serve_in_background(self._server, poll_interval=0.02)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join()
        self.instances.close()

    def __enter__(self) -> "FakeRunPod":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # Test hooks

    def bill(self, pod_id: str, now: float | None = None) -> Decimal:
        """What the pod has cost: costPerHr x the seconds it was billed / 3600."""
        with self.lock:
            pod = self.pods[pod_id]
            end = pod["terminated_at"] or (time.time() if now is None else now)
            seconds = Decimal(str(max(0.0, end - pod["created_at"])))
            return Decimal(str(pod["costPerHr"])) * seconds / 3600

    def total_bill(self) -> Decimal:
        with self.lock:
            return sum((self.bill(pod_id) for pod_id in self.pods), Decimal(0))

    def live_pods(self) -> list[dict[str, Any]]:
        with self.lock:
            return [
                copy.deepcopy(p) for p in self.pods.values() if p["desiredStatus"] != "TERMINATED"
            ]

    # Serving, for the handler

    def run_operation(self, document: str, variables: dict[str, Any]) -> dict:
        """The answer to one GraphQL document (the caller holds the lock); DocumentError if it
        does not parse or asks for what the schema lacks."""
        op_type, selections = graphql_lite.parse(document)
        root = op_type.title()
        graphql_lite.validate(selections, root, _SCHEMA)
        self.requests.append(",".join(f.name for f in selections))
        return graphql_lite.execute(selections, variables, root, _SCHEMA, self.resolve)

    def proxy(
        self,
        method: str,
        pod_id: str,
        port: str,
        path: str,
        body: bytes,
        authorization: str | None,
    ) -> tuple[int, bytes, str]:
        """A request through the proxy to the pod's http `port`: forwarded to the model when the
        pod runs our agent, else a canned answer."""
        with self.lock:
            pod = self.pods.get(pod_id)
            exposed = _exposed(pod["ports"]) if pod else []
            if pod is None or not port.isdigit() or (int(port), "http") not in exposed:
                return json_answer(404, {"error": f"no pod {pod_id!r} with http port {port}"})
            if not self.booted(pod):
                return json_answer(502, {"error": "pod is not running"})
            if pod_id in self.unhealthy or "*" in self.unhealthy:
                return json_answer(500, {"ok": False, "pod": pod_id})
            forwarded = self.instances.runs_agent(pod_id)
        if not forwarded:  # a canned model
            return json_answer(200, {"ok": True, "pod": pod_id})
        return self.instances.forward(method, int(port), path, body, authorization)

    # Resolvers

    def resolve(self, selected: Field, variables: dict[str, Any]) -> Any:
        args = graphql_lite.arguments(selected, variables)
        resolver = getattr(self, f"_resolve_{selected.name}")
        return resolver(args.get("input") or {})

    def _resolve_gpuTypes(self, _input: dict) -> list[dict]:  # noqa: N802
        return [{"maxGpuCount": 8, **gpu} for gpu in self.gpu_types]

    def _resolve_pod(self, pod_input: dict) -> dict | None:
        pod = self.pods.get(str(pod_input.get("podId")))
        if pod is None or not self._visible(pod):
            return None
        return self._view(pod)

    def _resolve_myself(self, _input: dict) -> dict:
        live = [p for p in self.pods.values() if p["desiredStatus"] != "TERMINATED"]
        return {"id": "user_fake", "pods": [self._view(p) for p in live]}

    def _resolve_podFindAndDeployOnDemand(self, pod_input: dict) -> dict:  # noqa: N802
        gpu, gpu_count, cloud_type = self._check_deploy(pod_input)
        if gpu["id"] in self.capacity_gpu_types:
            raise GraphQLError(CAPACITY_MESSAGE)
        if self.capacity_failures > 0:
            self.capacity_failures -= 1
            raise GraphQLError(CAPACITY_MESSAGE)
        price = _price(gpu, cloud_type)
        if price is None:  # not offered in that cloud
            raise GraphQLError(CAPACITY_MESSAGE)
        now = time.time()
        pod = {
            "id": _new_pod_id(),
            "name": pod_input.get("name") or "",
            "imageName": pod_input["imageName"],
            "gpuTypeId": gpu["id"],
            "gpuDisplayName": gpu.get("displayName"),
            "gpuCount": gpu_count,
            "cloudType": cloud_type,
            "costPerHr": float(price * gpu_count),
            "containerDiskInGb": pod_input.get("containerDiskInGb"),
            "volumeInGb": pod_input.get("volumeInGb") or 0,
            "ports": pod_input.get("ports") or "",
            "env": {e["key"]: e["value"] for e in pod_input.get("env") or []},
            "desiredStatus": "RUNNING",
            "created_at": now,
            "boot_at": now + self.boot_seconds,
            "terminated_at": None,
        }
        self.pods[pod["id"]] = pod
        return self._view(pod)

    def _resolve_podTerminate(self, pod_input: dict) -> None:  # noqa: N802
        if self.terminate_failures > 0:
            self.terminate_failures -= 1
            raise server_error()
        pod = self.pods.get(str(pod_input.get("podId")))
        if pod is None or pod["desiredStatus"] == "TERMINATED":
            raise GraphQLError("pod not found to terminate")
        pod["desiredStatus"] = "TERMINATED"
        pod["terminated_at"] = time.time()
        self.instances.terminate(pod["id"])
        return None

    def _check_deploy(self, pod_input: dict) -> tuple[dict, int, str]:
        if not pod_input.get("imageName"):
            raise GraphQLError("imageName is required")
        gpu = next((g for g in self.gpu_types if g["id"] == pod_input.get("gpuTypeId")), None)
        if gpu is None:
            raise GraphQLError(f"Invalid gpuTypeId: {pod_input.get('gpuTypeId')!r}")
        gpu_count = pod_input.get("gpuCount", 1)
        if not isinstance(gpu_count, int) or not 1 <= gpu_count <= 8:
            raise GraphQLError("gpuCount must be between 1 and 8")
        cloud_type = pod_input.get("cloudType") or "ALL"
        if cloud_type not in _CLOUD_TYPES:
            raise GraphQLError(f"Invalid cloudType: {cloud_type}")
        env = pod_input.get("env") or []
        if not all(isinstance(e, dict) and set(e) == {"key", "value"} for e in env):
            raise GraphQLError("env must be a list of {key, value}")
        return gpu, gpu_count, cloud_type

    # Views

    def _visible(self, pod: dict) -> bool:
        gone_at = pod["terminated_at"]
        return gone_at is None or time.time() - gone_at < self.terminated_visible_s

    def booted(self, pod: dict) -> bool:
        return (
            pod["desiredStatus"] == "RUNNING"
            and pod["name"] not in self.never_boot
            and "*" not in self.never_boot
            and time.time() >= pod["boot_at"]
        )

    def _view(self, pod: dict) -> dict:
        """The pod as the GraphQL API shows it."""
        runtime = None
        if self.booted(pod):
            self.instances.boot_container(pod["id"], pod["imageName"], pod["env"])
            runtime = {
                "uptimeInSeconds": int(time.time() - pod["boot_at"]),
                "ports": [_port_view(entry) for entry in _exposed(pod["ports"])],
            }
        return {
            "id": pod["id"],
            "name": pod["name"],
            "desiredStatus": pod["desiredStatus"],
            "costPerHr": pod["costPerHr"],
            "imageName": pod["imageName"],
            "gpuCount": pod["gpuCount"],
            "ports": pod["ports"],
            "containerDiskInGb": pod["containerDiskInGb"],
            "volumeInGb": pod["volumeInGb"],
            "env": [f"{k}={v}" for k, v in pod["env"].items()],
            "machineId": f"machine-{pod['id'][:6]}",
            "uptimeSeconds": runtime["uptimeInSeconds"] if runtime else 0,
            "lastStatusChange": f"{pod['desiredStatus'].title()} by fake",
            "runtime": runtime,
            "machine": {"podHostId": f"{pod['id']}-fake", "gpuDisplayName": pod["gpuDisplayName"]},
        }


def _price(gpu: dict, cloud_type: str) -> Decimal | None:
    secure, community = gpu.get("securePrice"), gpu.get("communityPrice")
    candidates = {"SECURE": [secure], "COMMUNITY": [community], "ALL": [secure, community]}
    known = [Decimal(str(p)) for p in candidates[cloud_type] if p is not None]
    return min(known) if known else None


def _exposed(ports: str) -> list[tuple[int, str]]:
    """ "8000/http,22/tcp" -> [(8000, "http"), (22, "tcp")]."""
    exposed = []
    for entry in ports.split(","):
        number, _, kind = entry.strip().partition("/")
        if number.isdigit():
            exposed.append((int(number), kind or "http"))
    return exposed


def _port_view(entry: tuple[int, str]) -> dict:
    port, kind = entry
    public = kind == "tcp"  # http ports go through the proxy; tcp ports get a public ip
    return {
        "ip": "203.0.113.7" if public else "100.64.0.2",
        "isIpPublic": public,
        "privatePort": port,
        "publicPort": 40000 + port if public else port,
        "type": kind,
    }


def _new_pod_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(14))
