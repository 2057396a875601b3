"""The small interface every runtime satisfies, the plain values that cross it, and the
environment a model gets."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

# What a model process inherits from the agent's environment, and nothing else: the agent's own
# variables (provider API keys, AWS_*, PRISM_*, its HF_TOKEN, ...) never reach a model. The
# deployment's env vars and what the agent sets (PORT, HOST, PRISM_WEIGHTS_DIR,
# PRISM_DEPLOYMENT_ID, CUDA_VISIBLE_DEVICES) come on top.
INHERITED_ENV = frozenset({"PATH", "HOME", "LANG", "TZ", "TMPDIR", "LD_LIBRARY_PATH"})
INHERITED_ENV_PREFIXES = ("LC_", "CUDA_", "NVIDIA_")
# Where models listen, behind the agent's proxy: a container's port is published there, a
# process is told so in HOST (its bind address is its own doing: we cannot force it).
MODEL_HOST = "127.0.0.1"


def inherited_env(agent_env: Mapping[str, str]) -> dict[str, str]:
    """The part of the agent's environment a model process may see (INHERITED_ENV)."""
    return {
        k: v
        for k, v in agent_env.items()
        if k in INHERITED_ENV or k.startswith(INHERITED_ENV_PREFIXES)
    }


class LaunchError(Exception):
    """The runtime could not start or control a workload; the message says why."""


@dataclass(frozen=True)
class LaunchSpec:
    deployment_id: str
    port: int  # the model's own port (host port for containers), on loopback: behind the proxy
    command: list[str] = field(default_factory=list)  # exec array; never a shell string
    image: str | None = None  # container runtimes only
    weights_dir: Path | None = None  # exposed as PRISM_WEIGHTS_DIR (mounted read-only)
    env: dict[str, str] = field(default_factory=dict)  # the user's env vars
    gpu_indices: list[int] = field(default_factory=list)  # host GPU indices assigned
    log_path: Path | None = None  # where stdout/stderr go (size-capped)
    container_port: int | None = None  # port inside a container; defaults to `port`


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
