"""A fake Docker Engine: a real HTTP server speaking the Engine API paths the docker SDK uses.

It runs nothing. It keeps images and containers in memory and answers as the engine does, so
code under test drives a real `docker.DockerClient` over real HTTP:

    with FakeDockerEngine(images=["org/model:1"]) as engine:
        client = docker.DockerClient(base_url=engine.url, version=engine.api_version)

Test hooks: `container(ref)` (what was created, and its state), `exit(ref, code)`,
`set_logs(ref, lines)`, `pulls` (images pulled, in order), `requests` (every call, in order),
`unpullable` (image names a pull refuses).
"""

import copy
import functools
import json
import re
import struct
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

API_VERSION = "1.41"
_VERSIONED = re.compile(r"/v\d+\.\d+(/.*)")


@dataclass
class FakeContainer:
    id: str
    name: str  # without the engine's leading "/"
    body: dict[str, Any]  # the JSON of POST /containers/create, as the SDK sent it
    image_id: str
    status: str = "created"  # created, running or exited
    exit_code: int = 0
    logs: list[tuple[int, str]] = field(default_factory=list)  # (stream: 1 out, 2 err, line)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat())


class FakeDockerEngine:
    api_version = API_VERSION

    def __init__(self, images: Iterable[str] = (), unpullable: Iterable[str] = ()):
        self.unpullable = {_normalize(name) for name in unpullable}
        self.pulls: list[str] = []
        self.requests: list[str] = []  # "POST /containers/{id}/stop?t=3", without the version
        self.failing: dict[str, int] = {}  # endpoint name -> its next N calls answer 500
        self._images = {_normalize(name): _new_image_id() for name in images}
        self._containers: dict[str, FakeContainer] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True  # keep-alive connections must not block shutdown
        self._server.engine = self
        # A short poll interval: shutdown() waits up to one interval, once per test.
        serve = functools.partial(self._server.serve_forever, poll_interval=0.01)
        self._thread = threading.Thread(target=serve, daemon=True)
        self.url = f"tcp://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "FakeDockerEngine":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> "FakeDockerEngine":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # Test hooks

    def fail(self, endpoint: str, times: int) -> None:
        """The next `times` calls of `endpoint` (e.g. "inspect_container") answer 500, as an
        engine in trouble does."""
        with self._lock:
            self.failing[endpoint] = times

    def container(self, ref: str) -> FakeContainer | None:
        """A copy of the container with this id, id prefix or name; None when there is none."""
        with self._lock:
            return copy.deepcopy(self._find(ref))

    def exit(self, ref: str, code: int) -> None:
        """The container's process exits with `code`."""
        with self._lock:
            container = self._get(ref)
            container.status, container.exit_code = "exited", code

    def set_logs(self, ref: str, lines: Iterable[str], stream: str = "stdout") -> None:
        """Replace the container's log with `lines`, written to stdout or stderr."""
        stream_id = {"stdout": 1, "stderr": 2}[stream]
        with self._lock:
            self._get(ref).logs = [(stream_id, line) for line in lines]

    # State, for the handler; callers hold the lock

    def _find(self, ref: str) -> FakeContainer | None:
        name = ref.removeprefix("/")
        for container in self._containers.values():
            if name in (container.id, container.name):
                return container
        by_prefix = [c for c in self._containers.values() if c.id.startswith(ref)]
        return by_prefix[0] if len(by_prefix) == 1 else None

    def _get(self, ref: str) -> FakeContainer:
        container = self._find(ref)
        if container is None:
            raise _ApiError(404, f"No such container: {ref}")
        return container


class _ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and chunked responses for pulls as the engine
    disable_nagle_algorithm = True  # headers and body go out in two writes: don't stall ~40 ms
    routes: list[tuple[str, re.Pattern[str], str]] = [
        (method, re.compile(pattern), endpoint)
        for method, pattern, endpoint in [
            ("GET", r"/_ping", "ping"),
            ("GET", r"/version", "version"),
            ("GET", r"/images/(?P<name>.+)/json", "inspect_image"),
            ("POST", r"/images/create", "pull_image"),
            ("GET", r"/containers/json", "list_containers"),
            ("POST", r"/containers/create", "create_container"),
            ("GET", r"/containers/(?P<ref>[^/]+)/json", "inspect_container"),
            ("POST", r"/containers/(?P<ref>[^/]+)/start", "start_container"),
            ("POST", r"/containers/(?P<ref>[^/]+)/stop", "stop_container"),
            ("GET", r"/containers/(?P<ref>[^/]+)/logs", "container_logs"),
            ("DELETE", r"/containers/(?P<ref>[^/]+)", "remove_container"),
        ]
    ]

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet

    @property
    def engine(self) -> FakeDockerEngine:
        return self.server.engine

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        if versioned := _VERSIONED.fullmatch(path):
            path = versioned.group(1)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        with self.engine._lock:
            self.engine.requests.append(f"{self.command} {path}?{url.query}".removesuffix("?"))
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        try:
            for method, pattern, endpoint in self.routes:
                if method == self.command and (match := pattern.fullmatch(path)):
                    self._maybe_fail(endpoint)
                    getattr(self, endpoint)(query, body, **match.groupdict())
                    return
            raise _ApiError(501, f"the fake Docker engine does not implement {self.command} {path}")
        except _ApiError as e:
            self._send_json(e.status, {"message": e.message})

    def _maybe_fail(self, endpoint: str) -> None:
        with self.engine._lock:
            left = self.engine.failing.get(endpoint, 0)
            if left:
                self.engine.failing[endpoint] = left - 1
        if left:
            raise _ApiError(500, "Error response from daemon: the fake engine is failing")

    # Endpoints

    def ping(self, query: dict[str, str], body: Any) -> None:
        self._send(200, b"OK", "text/plain; charset=utf-8")

    def version(self, query: dict[str, str], body: Any) -> None:
        self._send_json(
            200,
            {
                "Version": "fake",
                "ApiVersion": API_VERSION,
                "MinAPIVersion": "1.24",
                "Os": "linux",
                "Arch": "amd64",
            },
        )

    def inspect_image(self, query: dict[str, str], body: Any, name: str) -> None:
        with self.engine._lock:
            image_id = self.engine._images.get(_normalize(name))
        if image_id is None:
            raise _ApiError(404, f"No such image: {name}")
        self._send_json(200, {"Id": image_id, "RepoTags": [_normalize(name)]})

    def pull_image(self, query: dict[str, str], body: Any) -> None:
        repository, tag = query["fromImage"], query.get("tag") or "latest"
        name = f"{repository}@{tag}" if tag.startswith("sha256:") else f"{repository}:{tag}"
        with self.engine._lock:
            if name in self.engine.unpullable:
                raise _ApiError(
                    404,
                    f"pull access denied for {repository}, repository does not exist or may "
                    "require 'docker login': denied: requested access to the resource is denied",
                )
            self.engine._images[name] = _new_image_id()
            self.engine.pulls.append(name)
        progress = [
            {"status": f"Pulling from {repository}", "id": tag},
            {"status": "Pull complete", "progressDetail": {}, "id": "0123456789ab"},
            {"status": f"Status: Downloaded newer image for {name}"},
        ]
        self._send_chunked([json.dumps(line).encode() + b"\r\n" for line in progress])

    def list_containers(self, query: dict[str, str], body: Any) -> None:
        filters = json.loads(query.get("filters") or "{}")
        unsupported = set(filters) - {"label"}
        if unsupported:
            raise _ApiError(400, f"the fake Docker engine cannot filter by {sorted(unsupported)}")
        show_all = _truthy(query.get("all"))
        with self.engine._lock:
            listed = [
                _summary(c)
                for c in self.engine._containers.values()
                if (show_all or c.status == "running")
                and all(_has_label(c, wanted) for wanted in filters.get("label", []))
            ]
        self._send_json(200, listed)

    def create_container(self, query: dict[str, str], body: Any) -> None:
        name = query.get("name") or f"fake_{uuid.uuid4().hex[:8]}"
        with self.engine._lock:
            image_id = self.engine._images.get(_normalize(body["Image"]))
            if image_id is None:
                raise _ApiError(404, f"No such image: {body['Image']}")
            taken = next((c for c in self.engine._containers.values() if c.name == name), None)
            if taken is not None:
                raise _ApiError(
                    409,
                    f'Conflict. The container name "/{name}" is already in use by container '
                    f'"{taken.id}". You have to remove (or rename) that container to be able to '
                    "reuse that name.",
                )
            container = FakeContainer(uuid.uuid4().hex + uuid.uuid4().hex, name, body, image_id)
            self.engine._containers[container.id] = container
        self._send_json(201, {"Id": container.id, "Warnings": []})

    def inspect_container(self, query: dict[str, str], body: Any, ref: str) -> None:
        with self.engine._lock:
            details = _details(self.engine._get(ref))
        self._send_json(200, details)

    def start_container(self, query: dict[str, str], body: Any, ref: str) -> None:
        with self.engine._lock:
            container = self.engine._get(ref)
            already_running = container.status == "running"
            if not already_running:
                self._claim_ports(container)
                container.status, container.exit_code = "running", 0
        self._send(304 if already_running else 204)

    def stop_container(self, query: dict[str, str], body: Any, ref: str) -> None:
        with self.engine._lock:
            container = self.engine._get(ref)
            was_running = container.status == "running"
            if was_running:
                # Stops as a workload that shuts down cleanly on SIGTERM within the grace period.
                container.status, container.exit_code = "exited", 0
        self._send(204 if was_running else 304)

    def remove_container(self, query: dict[str, str], body: Any, ref: str) -> None:
        with self.engine._lock:
            container = self.engine._get(ref)
            if container.status == "running" and not _truthy(query.get("force")):
                raise _ApiError(
                    409,
                    f"You cannot remove a running container {container.id}. Stop the container "
                    "before attempting removal or force remove",
                )
            del self.engine._containers[container.id]
        self._send(204)

    def container_logs(self, query: dict[str, str], body: Any, ref: str) -> None:
        # `follow` is answered as a snapshot: the stream ends with the lines there are now.
        wanted = {1} if _truthy(query.get("stdout")) else set()
        wanted |= {2} if _truthy(query.get("stderr")) else set()
        with self.engine._lock:
            lines = [(s, line) for s, line in self.engine._get(ref).logs if s in wanted]
        tail = query.get("tail", "all")
        if tail != "all":
            lines = lines[-int(tail) :] if int(tail) else []
        frames = b"".join(_frame(stream, f"{line}\n".encode()) for stream, line in lines)
        self._send(200, frames, "application/vnd.docker.multiplexed-stream")

    def _claim_ports(self, container: FakeContainer) -> None:
        """As the engine: a host port a running container holds cannot be bound again."""
        others = [c for c in self.engine._containers.values() if c.status == "running"]
        held = set().union(*(_host_ports(c) for c in others))
        clash = sorted(_host_ports(container) & held)
        if clash:
            raise _ApiError(
                500,
                f"driver failed programming external connectivity on endpoint {container.name}: "
                f"Bind for {clash[0]} failed: port is already allocated",
            )

    # Responses

    def _send(self, status: int, data: bytes = b"", content_type: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Api-Version", API_VERSION)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send_chunked(self, chunks: list[bytes]) -> None:
        self.send_response(200)
        self.send_header("Api-Version", API_VERSION)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in chunks:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.write(b"0\r\n\r\n")


def _normalize(image: str) -> str:
    """`org/model` and `org/model:latest` are the same image; a registry port is no tag."""
    if "@" in image or ":" in image.rsplit("/", 1)[-1]:
        return image
    return f"{image}:latest"


def _new_image_id() -> str:
    return f"sha256:{uuid.uuid4().hex}{uuid.uuid4().hex}"


def _truthy(value: str | None) -> bool:
    # requests sends Python booleans as "True"/"False"; the engine also takes 1/0.
    return (value or "").lower() in ("1", "true")


def _labels(container: FakeContainer) -> dict[str, str]:
    return container.body.get("Labels") or {}


def _has_label(container: FakeContainer, wanted: str) -> bool:
    key, has_value, value = wanted.partition("=")
    labels = _labels(container)
    return key in labels and (not has_value or labels[key] == value)


def _host_ports(container: FakeContainer) -> set[str]:
    port_bindings = container.body.get("HostConfig", {}).get("PortBindings") or {}
    return {
        f"{b.get('HostIp') or '0.0.0.0'}:{b['HostPort']}"
        for bindings in port_bindings.values()
        for b in bindings or []
        if b.get("HostPort")
    }


def _state(container: FakeContainer) -> dict[str, Any]:
    return {
        "Status": container.status,
        "Running": container.status == "running",
        "Paused": False,
        "Restarting": False,
        "Dead": False,
        "ExitCode": container.exit_code,
        "Error": "",
    }


def _details(container: FakeContainer) -> dict[str, Any]:
    """GET /containers/{id}/json: what the create body asked for, plus state."""
    config = {
        k: v for k, v in container.body.items() if k not in ("HostConfig", "NetworkingConfig")
    }
    return {
        "Id": container.id,
        "Name": f"/{container.name}",
        "Created": container.created,
        "Image": container.image_id,
        "State": _state(container),
        "Config": {"Tty": False, "Labels": {}, **config},
        "HostConfig": container.body.get("HostConfig", {}),
        "NetworkSettings": {"Ports": {}},
    }


def _summary(container: FakeContainer) -> dict[str, Any]:
    """An entry of GET /containers/json."""
    status = {"running": "Up", "created": "Created"}.get(
        container.status, f"Exited ({container.exit_code})"
    )
    return {
        "Id": container.id,
        "Names": [f"/{container.name}"],
        "Image": container.body["Image"],
        "ImageID": container.image_id,
        "Labels": _labels(container),
        "State": container.status,
        "Status": status,
    }


def _frame(stream: int, payload: bytes) -> bytes:
    """One frame of the engine's multiplexed log stream: an 8-byte header, then the payload."""
    return struct.pack(">BxxxL", stream, len(payload)) + payload
