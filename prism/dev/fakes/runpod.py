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
"""

import copy
import json
import re
import secrets
import string
import sys
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prism.dev.fakes.instances import InstanceHost

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
_SCHEMA: dict[str, dict[str, str | None]] = {
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
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.fake = self
        self._thread: threading.Thread | None = None
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.url = f"{self.base_url}/graphql"

    @property
    def endpoint_template(self) -> str:
        return f"{self.base_url}/proxy/{{id}}-{{port}}"

    def start(self) -> "FakeRunPod":
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
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

    # Resolvers; the handler holds the lock

    def resolve(self, field_: "_Field", variables: dict[str, Any]) -> Any:
        args = {name: _value(v, variables) for name, v in field_.args.items()}
        resolver = getattr(self, f"_resolve_{field_.name}")
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
            raise _GraphQLError(CAPACITY_MESSAGE)
        if self.capacity_failures > 0:
            self.capacity_failures -= 1
            raise _GraphQLError(CAPACITY_MESSAGE)
        price = _price(gpu, cloud_type)
        if price is None:  # not offered in that cloud
            raise _GraphQLError(CAPACITY_MESSAGE)
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
            raise _HttpError(500, {"errors": [{"message": "Internal server error"}]})
        pod = self.pods.get(str(pod_input.get("podId")))
        if pod is None or pod["desiredStatus"] == "TERMINATED":
            raise _GraphQLError("pod not found to terminate")
        pod["desiredStatus"] = "TERMINATED"
        pod["terminated_at"] = time.time()
        self.instances.terminate(pod["id"])
        return None

    def _check_deploy(self, pod_input: dict) -> tuple[dict, int, str]:
        if not pod_input.get("imageName"):
            raise _GraphQLError("imageName is required")
        gpu = next((g for g in self.gpu_types if g["id"] == pod_input.get("gpuTypeId")), None)
        if gpu is None:
            raise _GraphQLError(f"Invalid gpuTypeId: {pod_input.get('gpuTypeId')!r}")
        gpu_count = pod_input.get("gpuCount", 1)
        if not isinstance(gpu_count, int) or not 1 <= gpu_count <= 8:
            raise _GraphQLError("gpuCount must be between 1 and 8")
        cloud_type = pod_input.get("cloudType") or "ALL"
        if cloud_type not in _CLOUD_TYPES:
            raise _GraphQLError(f"Invalid cloudType: {cloud_type}")
        env = pod_input.get("env") or []
        if not all(isinstance(e, dict) and set(e) == {"key", "value"} for e in env):
            raise _GraphQLError("env must be a list of {key, value}")
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


# Errors


class _GraphQLError(Exception):
    """A resolver error: HTTP 200 with {"errors": [...]}, as RunPod answers."""


class _HttpError(Exception):
    def __init__(self, status: int, body: dict, headers: dict[str, str] | None = None):
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


def _invalid(message: str) -> _HttpError:
    return _HttpError(400, {"errors": [{"message": message}]})


# A small GraphQL parser: one operation, fields with aliases, arguments and selection sets;
# values may be variables or literals. Fragments and directives are refused.

_TOKEN = re.compile(
    r"""\s+|,|\#[^\n]*
    |(?P<punct>\.\.\.|[{}()\[\]:!$=@])
    |(?P<string>"(?:[^"\\\n]|\\.)*")
    |(?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    |(?P<name>[_A-Za-z][_0-9A-Za-z]*)""",
    re.X,
)


@dataclass
class _Field:
    name: str
    alias: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    selections: list["_Field"] | None = None

    @property
    def key(self) -> str:
        return self.alias or self.name


@dataclass(frozen=True)
class _Var:
    name: str


@dataclass(frozen=True)
class _Enum:
    name: str


def _tokenize(document: str) -> list[tuple[str, Any]]:
    tokens, pos = [], 0
    while pos < len(document):
        match = _TOKEN.match(document, pos)
        if not match:
            raise _invalid(f"Syntax Error: Unexpected character {document[pos]!r}")
        pos = match.end()
        kind = match.lastgroup
        if kind == "string":
            tokens.append(("value", json.loads(match.group(kind))))
        elif kind == "number":
            text = match.group(kind)
            tokens.append(("value", float(text) if re.search(r"[.eE]", text) else int(text)))
        elif kind:
            tokens.append((kind, match.group(kind)))
    return tokens


class _Parser:
    def __init__(self, document: str):
        self.tokens = _tokenize(document)
        self.pos = 0

    def peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> tuple[str, Any]:
        token = self.peek()
        if token is None or (expected is not None and token[1] != expected):
            found = "<EOF>" if token is None else repr(token[1])
            raise _invalid(f"Syntax Error: Expected {expected or 'a token'}, found {found}")
        self.pos += 1
        return token

    def name(self) -> str:
        kind, text = self.take()
        if kind != "name":
            raise _invalid(f"Syntax Error: Expected Name, found {text!r}")
        return text

    def operation(self) -> tuple[str, list[_Field]]:
        op_type = "query"
        if self.peek() and self.peek()[0] == "name":
            op_type = self.name()
            if op_type not in ("query", "mutation"):
                raise _invalid(f"Syntax Error: Unexpected Name {op_type!r}")
            if self.peek() and self.peek()[0] == "name":
                self.name()  # the operation's name
            if self.peek() == ("punct", "("):
                self.skip_balanced("(", ")")  # variable definitions: values come as given
        selections = self.selection_set()
        if self.peek() is not None:
            raise _invalid("This fake answers one operation per document")
        return op_type, selections

    def skip_balanced(self, opening: str, closing: str) -> None:
        depth = 0
        while True:
            _, text = self.take()
            depth += (text == opening) - (text == closing)
            if depth == 0:
                return

    def selection_set(self) -> list[_Field]:
        self.take("{")
        fields = []
        while self.peek() != ("punct", "}"):
            fields.append(self.field())
        self.take("}")
        if not fields:
            raise _invalid("Syntax Error: Expected Name, found '}'")
        return fields

    def field(self) -> _Field:
        if self.peek() in (("punct", "..."), ("punct", "@")):
            raise _invalid("This fake does not support fragments or directives")
        name, alias = self.name(), None
        if self.peek() == ("punct", ":"):
            self.take(":")
            name, alias = self.name(), name
        found = _Field(name=name, alias=alias)
        if self.peek() == ("punct", "("):
            self.take("(")
            while self.peek() != ("punct", ")"):
                arg = self.name()
                self.take(":")
                found.args[arg] = self.value()
            self.take(")")
        if self.peek() == ("punct", "{"):
            found.selections = self.selection_set()
        return found

    def value(self) -> Any:
        kind, text = self.take()
        if kind == "value":
            return text
        if text == "$":
            return _Var(self.name())
        if text == "[":
            items = []
            while self.peek() != ("punct", "]"):
                items.append(self.value())
            self.take("]")
            return items
        if text == "{":
            fields = {}
            while self.peek() != ("punct", "}"):
                key = self.name()
                self.take(":")
                fields[key] = self.value()
            self.take("}")
            return fields
        if kind == "name":
            return {"true": True, "false": False, "null": None}.get(text, _Enum(text))
        raise _invalid(f"Syntax Error: Unexpected {text!r}")


def _value(value: Any, variables: dict[str, Any]) -> Any:
    """A parsed literal with its variables filled in; enums become their names."""
    if isinstance(value, _Var):
        if value.name not in variables:
            raise _GraphQLError(f'Variable "${value.name}" of required type was not provided.')
        return variables[value.name]
    if isinstance(value, _Enum):
        return value.name
    if isinstance(value, list):
        return [_value(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: _value(v, variables) for k, v in value.items()}
    return value


def _validate(selections: list[_Field], type_name: str) -> None:
    for selected in selections:
        if selected.name == "__typename":
            continue
        fields = _SCHEMA[type_name]
        if selected.name not in fields:
            raise _invalid(f'Cannot query field "{selected.name}" on type "{type_name}".')
        subtype = fields[selected.name]
        if subtype and not selected.selections:
            raise _invalid(f'Field "{selected.name}" of type "{subtype}" must have a selection.')
        if not subtype and selected.selections:
            raise _invalid(f'Field "{selected.name}" must not have a selection.')
        if subtype:
            _validate(selected.selections, subtype)


def _project(value: Any, selections: list[_Field] | None, type_name: str | None) -> Any:
    """Only the fields the query selected, under their aliases, as GraphQL answers."""
    if value is None or selections is None:
        return value
    if isinstance(value, list):
        return [_project(item, selections, type_name) for item in value]
    projected = {}
    for selected in selections:
        if selected.name == "__typename":
            projected[selected.key] = type_name
            continue
        subtype = _SCHEMA[type_name][selected.name]
        projected[selected.key] = _project(value.get(selected.name), selected.selections, subtype)
    return projected


# HTTP


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # keep-alive connections must not block shutdown
    fake: FakeRunPod

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client gone from keep-alive
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stalls
    server: _Server

    def log_message(self, *args: object) -> None:
        pass  # quiet

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
                self._reply(200, self._graphql(body))
            else:
                self._reply(404, {"error": "not found"})
        except _HttpError as error:
            self._reply(error.status, error.body, error.headers)

    def _graphql(self, body: bytes) -> dict:
        fake = self.server.fake
        with fake.lock:
            self._faults(fake)
            if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                raise _HttpError(401, {"errors": [{"message": "Unauthorized"}]})
            try:
                request = json.loads(body)
                document, variables = request["query"], request.get("variables") or {}
            except (ValueError, KeyError, TypeError):
                raise _invalid("Must provide query string.") from None
            op_type, selections = _Parser(document).operation()
            _validate(selections, op_type.title())
            fake.requests.append(",".join(f.name for f in selections))
            return self._execute(fake, selections, variables, op_type.title())

    def _faults(self, fake: FakeRunPod) -> None:
        if fake.rate_limit_next > 0:
            fake.rate_limit_next -= 1
            retry = f"{fake.retry_after_s:g}"
            raise _HttpError(
                429, {"errors": [{"message": "Too many requests"}]}, {"Retry-After": retry}
            )
        if fake.server_error_next > 0:
            fake.server_error_next -= 1
            raise _HttpError(500, {"errors": [{"message": "Internal server error"}]})

    def _execute(
        self, fake: FakeRunPod, selections: list[_Field], variables: dict, root: str
    ) -> dict:
        data = {}
        for selected in selections:
            try:
                value = fake.resolve(selected, variables)
            except _GraphQLError as error:
                path = [selected.key]
                return {"errors": [{"message": str(error), "path": path}], "data": None}
            subtype = _SCHEMA[root][selected.name]
            data[selected.key] = _project(value, selected.selections, subtype)
        return {"data": data}

    def _proxy(self, path: str, body: bytes) -> None:
        target, _, rest = path.removeprefix("/proxy/").partition("/")
        pod_id, _, port = target.rpartition("-")
        fake = self.server.fake
        with fake.lock:
            pod = fake.pods.get(pod_id)
            exposed = _exposed(pod["ports"]) if pod else []
            if pod is None or not port.isdigit() or (int(port), "http") not in exposed:
                return self._reply(404, {"error": f"no pod {pod_id!r} with http port {port}"})
            if not fake.booted(pod):
                return self._reply(502, {"error": "pod is not running"})
            if pod_id in fake.unhealthy or "*" in fake.unhealthy:
                return self._reply(500, {"ok": False, "pod": pod_id})
            forwarded = fake.instances.runs_agent(pod_id)
        if not forwarded:  # a canned model
            return self._reply(200, {"ok": True, "pod": pod_id})
        status, data, content_type = fake.instances.forward(
            self.command, int(port), "/" + rest, body, self.headers.get("Authorization")
        )
        self._reply_raw(status, data, content_type)

    def _reply(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        self._reply_raw(status, json.dumps(body).encode(), "application/json", headers)

    def _reply_raw(
        self, status: int, data: bytes, content_type: str, headers: dict | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
