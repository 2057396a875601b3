"""What the agent runs, kept on disk so a restarted agent (even after kill -9) re-adopts its
models instead of duplicating or orphaning them."""

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from node_agent.runtime.base import Handle


@dataclass
class Record:
    deployment_id: str
    status: str  # pulling | starting | running | unhealthy
    port: int  # the endpoint's: the agent's proxy listens there
    health_path: str
    log_path: str
    handle: Handle | None = None
    endpoint_url: str | None = None
    framework: str | None = None  # what its weights are
    engine: str | None = None  # what serves them (node_agent.engines), "image" or "command"
    engine_reason: str | None = None
    gpu_indices: list[int] = field(default_factory=list)
    stop_requested: bool = False
    weights_dir: str | None = None  # a weights cache entry it runs from: never evicted
    deploy: dict | None = None  # its deploy_model, to resume a pull or restart it
    restarts: int = 0  # every restart so far
    in_a_row: int = 0  # restarts since it was last healthy for restarts.RESET_AFTER_S
    healthy_since: float | None = None  # wall clock: it survives an agent restart
    unhealthy_since: float | None = None
    model_port: int = 0  # the model's own, on loopback: only the proxy and the probes use it
    key_hashes: list[str] = field(default_factory=list)  # the endpoint keys it accepts (sha256)

    @classmethod
    def from_dict(cls, data: dict) -> "Record":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}  # newer agents
        handle = known.pop("handle", None)
        return cls(**known, handle=Handle(**handle) if handle else None)


class StateStore:
    def __init__(self, path: Path):
        self.path = path

    def load(self) -> dict[str, Record]:
        try:
            data = json.loads(self.path.read_text())
            return {key: Record.from_dict(dict(value)) for key, value in data.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError, AttributeError):
            # A corrupt state file must not keep the agent down; the server reconciles.
            self.path.rename(self.path.with_suffix(".corrupt"))
            return {}

    def save(self, records: dict[str, Record]) -> None:
        """Atomic: write a temp file, fsync, rename over the old one. Owner-only: a
        deploy_model carries the deployment's env vars."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({k: asdict(v) for k, v in records.items()}, out, indent=1)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(self.path)
