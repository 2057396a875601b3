"""The small interface every runtime satisfies, and the plain values that cross it."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class RuntimeError_(Exception):
    """The runtime could not start or control a workload; the message says why."""


@dataclass(frozen=True)
class LaunchSpec:
    deployment_id: str
    port: int  # the port the model must listen on (host port for containers)
    command: list[str] = field(default_factory=list)  # exec array; never a shell string
    image: str | None = None  # container runtimes only
    weights_dir: Path | None = None  # exposed as PRISM_WEIGHTS_DIR (mounted read-only)
    env: dict[str, str] = field(default_factory=dict)  # the user's env vars
    gpu_indices: list[int] = field(default_factory=list)  # host GPU indices assigned
    log_path: Path | None = None  # where stdout/stderr go (size-capped)
    container_port: int | None = None  # port inside a container; defaults to `port`
    # The host interface a container's port is published on: loopback only while the
    # endpoint the node advertises is a loopback one, else every interface (it is reached there).
    publish_on: str = "127.0.0.1"


@dataclass(frozen=True)
class Handle:
    """Enough to find the workload again, even from a restarted agent."""

    deployment_id: str
    runtime: str  # "process" or "docker"
    ref: str  # a pid (with start time) or a container id
    port: int


class Runtime(Protocol):
    name: str

    def start(self, spec: LaunchSpec) -> Handle: ...

    def is_running(self, handle: Handle) -> bool: ...

    def exit_code(self, handle: Handle) -> int | None:
        """The exit code once it has exited, else None."""

    def stop(self, handle: Handle, grace_seconds: float) -> int | None:
        """Terminate (graceful, then forced after the grace period); returns the exit code."""

    def logs(self, handle: Handle, tail: int) -> list[str]: ...

    def serves(self, handle: Handle, port: int) -> bool:
        """Whether what answers on the host `port` is this workload (not some other server
        that took the port)."""

    def adopt(self, handle: Handle) -> bool:
        """True when the workload behind `handle` is still the one we started."""
