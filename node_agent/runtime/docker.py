"""Runs a model as a Docker container through the Engine API (the docker SDK).

Containers are found again by name (`prism-<deployment_id>`) and by label, so an agent that
restarts can list what it started and adopt what is still running.
"""

import math
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import docker
import requests
from docker.errors import DockerException, ImageNotFound, NotFound
from docker.models.containers import Container
from docker.types import DeviceRequest, Mount

from node_agent.runtime.base import MODEL_HOST, Handle, LaunchError, LaunchSpec

LABEL_DEPLOYMENT = "prism.deployment_id"
LABEL_MANAGED = "prism.managed"
WEIGHTS_MOUNT = "/weights"

# APIError is both; a connection failure to the engine is only a requests error.
_ENGINE_ERRORS = (DockerException, requests.RequestException)


def container_name(deployment_id: str) -> str:
    return f"prism-{deployment_id}"


class DockerRuntime:
    name = "docker"

    def __init__(self, client: docker.DockerClient | None = None):
        self._client = client

    @property
    def _docker(self) -> docker.DockerClient:
        # Made on first use: importing this module, or choosing another runtime, needs no engine.
        if self._client is None:
            with _engine_errors("connect to the Docker engine"):
                self._client = docker.from_env()
        return self._client

    def available(self) -> bool:
        """The engine answers: what the node has to run an engine's image (node_agent.engines)."""
        try:
            with _engine_errors("reach the Docker engine"):
                return bool(self._docker.ping())
        except LaunchError:
            return False

    def start(self, spec: LaunchSpec) -> Handle:
        if not spec.image:
            raise LaunchError(f"deployment {spec.deployment_id} has no image to run")
        self._ensure_image(spec.image)
        name = container_name(spec.deployment_id)
        self._discard(name)
        try:
            container = self._docker.containers.run(spec.image, detach=True, **_run_options(spec))
        except _ENGINE_ERRORS as e:
            # A start that fails (say, the host port is taken) leaves a created container behind.
            with suppress(LaunchError):
                self._discard(name)
            raise LaunchError(f"could not start container {name}: {_explain(e)}") from e
        return Handle(spec.deployment_id, self.name, container.id, spec.port)

    def is_running(self, handle: Handle) -> bool:
        container = self._find(handle.ref)
        return container is not None and _is_running(container)

    def exit_code(self, handle: Handle) -> int | None:
        container = self._find(handle.ref)
        return None if container is None else _exit_code(container)

    def stop(self, handle: Handle, grace_seconds: float) -> int | None:
        container = self._find(handle.ref)
        if container is None:
            return None
        with _engine_errors(f"stop container {handle.ref}"):
            try:
                # The API takes whole seconds: round up so the grace is never cut short, and
                # never pass a negative value, which the engine reads as "wait forever".
                container.stop(timeout=max(0, math.ceil(grace_seconds)))
                container.reload()
                code = _exit_code(container)
                container.remove(force=True)
            except NotFound:  # removed by someone else meanwhile: nothing left to stop
                return None
        return code

    def serves(self, handle: Handle, port: int) -> bool:
        """The engine publishes the host port to this container only (it refuses to start a
        container whose host port is taken)."""
        return True

    def logs(self, handle: Handle, tail: int) -> list[str]:
        container = self._find(handle.ref)
        if container is None:
            return []
        with _engine_errors(f"read the logs of container {handle.ref}"):
            raw = container.logs(tail=tail)
        return raw.decode("utf-8", errors="replace").splitlines()

    def adopt(self, handle: Handle) -> bool:
        container = self._find(handle.ref)
        return (
            container is not None
            and container.labels.get(LABEL_DEPLOYMENT) == handle.deployment_id
            and _is_running(container)
        )

    def list_managed(self) -> list[Handle]:
        """Every container this runtime started, stopped ones included, for reconciliation."""
        with _engine_errors("list managed containers"):
            containers = self._docker.containers.list(
                all=True, filters={"label": f"{LABEL_MANAGED}=true"}, ignore_removed=True
            )
        return [handle for c in containers if (handle := self._handle_of(c)) is not None]

    def _handle_of(self, container: Container) -> Handle | None:
        deployment_id = container.labels.get(LABEL_DEPLOYMENT)
        port = _host_port(container)
        if deployment_id is None or port is None:  # labelled by hand, not started by us
            return None
        return Handle(deployment_id, self.name, container.id, port)

    def _ensure_image(self, image: str) -> None:
        with _engine_errors(f"look up image {image}"):
            try:
                self._docker.images.get(image)
                return
            except ImageNotFound:
                pass
        try:
            self._docker.images.pull(image)
        except _ENGINE_ERRORS as e:
            raise LaunchError(f"image {image} not found or not accessible: {_explain(e)}") from e

    def _find(self, ref: str) -> Container | None:
        with _engine_errors(f"inspect container {ref}"):
            try:
                return self._docker.containers.get(ref)
            except NotFound:
                return None

    def _discard(self, name: str) -> None:
        """Remove the container called `name`, if any: a leftover would block the name."""
        container = self._find(name)
        if container is None:
            return
        with _engine_errors(f"remove leftover container {name}"), suppress(NotFound):
            container.remove(force=True)


def _run_options(spec: LaunchSpec) -> dict[str, Any]:
    container_port = spec.container_port or spec.port
    # The image brings its own PATH and the rest: nothing of the agent's environment goes in.
    env = {**spec.env, "PORT": str(container_port), "PRISM_DEPLOYMENT_ID": spec.deployment_id}
    mounts = []
    if spec.weights_dir:
        env["PRISM_WEIGHTS_DIR"] = WEIGHTS_MOUNT
        # A Mount, not a bind string: the engine refuses a missing source instead of quietly
        # creating an empty directory the model would read as "no weights".
        mounts.append(Mount(WEIGHTS_MOUNT, str(spec.weights_dir), type="bind", read_only=True))
    options: dict[str, Any] = {
        "name": container_name(spec.deployment_id),
        "command": spec.command or None,
        "labels": {LABEL_DEPLOYMENT: spec.deployment_id, LABEL_MANAGED: "true"},
        "environment": env,
        "mounts": mounts,
        # Loopback only: the model is reached through the agent's proxy, never from outside.
        "ports": {f"{container_port}/tcp": (MODEL_HOST, spec.port)},
        "restart_policy": {"Name": "no"},  # restarts are the agent's decision, not the engine's
    }
    if spec.gpu_indices:
        device_ids = [str(i) for i in spec.gpu_indices]
        options["device_requests"] = [DeviceRequest(device_ids=device_ids, capabilities=[["gpu"]])]
    return options


def _is_running(container: Container) -> bool:
    return container.attrs["State"]["Running"]


def _exit_code(container: Container) -> int | None:
    state = container.attrs["State"]
    return state["ExitCode"] if state["Status"] in ("exited", "dead") else None


def _host_port(container: Container) -> int | None:
    port_bindings = container.attrs["HostConfig"].get("PortBindings") or {}
    bindings = [b for per_port in port_bindings.values() for b in per_port or []]
    return int(bindings[0]["HostPort"]) if bindings else None


def _explain(error: Exception) -> str:
    # The engine's own message ("pull access denied ...") beats the SDK's URL-laden summary.
    return getattr(error, "explanation", None) or str(error)


@contextmanager
def _engine_errors(action: str) -> Iterator[None]:
    try:
        yield
    except _ENGINE_ERRORS as e:
        raise LaunchError(f"could not {action}: {_explain(e)}") from e
