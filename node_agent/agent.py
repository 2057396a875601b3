"""The agent's brain: turns server messages into runtime actions and reports what happens.

Every deployment has a worker thread for its start (pull -> start -> wait until healthy), then
one supervisor loop watches all of them: liveness often (a crash is noticed within a fraction
of a second), HTTP health every probe interval.
"""

import ipaddress
import logging
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chalicelib.protocol import (
    DeploymentProgress,
    DeploymentReady,
    DeploymentStopped,
    DeployModel,
    Error,
    HealthCheck,
    HealthResult,
    LogsRequest,
    LogsResult,
    Message,
    NodeHello,
    RunningDeployment,
    StopDeployment,
)
from node_agent import __version__, gpus
from node_agent.frameworks import (
    CONTAINER_WEIGHTS,
    FrameworkError,
    detect_framework,
    fill_placeholders,
    resolve_command,
)
from node_agent.health import HealthTracker, probe
from node_agent.runtime.base import LaunchSpec, RuntimeError_
from node_agent.runtime.process import tail_lines
from node_agent.state import Record, StateStore
from node_agent.supervision import Supervision
from node_agent.weights import PullError, PullSettings, WeightsCache, fetch

log = logging.getLogger("prism.node")


@dataclass(frozen=True)
class AgentSettings:
    node_id: str
    state_dir: Path
    advertise_host: str = "127.0.0.1"
    probe_interval_s: float = 10.0
    startup_timeout_s: float = 600.0
    stop_grace_s: float = 10.0
    liveness_interval_s: float = 0.25
    weights_cache_max_bytes: int | None = None  # None: 80% of the disk the cache is on
    pull: PullSettings = PullSettings()


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return sock.getsockname()[1]


class Agent(Supervision):
    def __init__(self, settings: AgentSettings, runtimes: dict, send: Callable[[Message], None]):
        self.settings = settings
        self.runtimes = runtimes  # "process" -> ProcessRuntime, "docker" -> DockerRuntime
        self.send = send
        self.store = StateStore(settings.state_dir / "state.json")
        self.records: dict[str, Record] = {}
        self.trackers: dict[str, HealthTracker] = {}
        self.last_probe: dict[str, float] = {}
        self.last_report: dict[str, float] = {}
        self.lock = threading.RLock()
        self.gpus = gpus.inventory()
        self.finished: dict[str, dict] = {}  # recent ends, for the node's local API
        self.weights = _weights_cache(settings, self._weights_in_use)

    # --- startup and hello -------------------------------------------------------------

    def adopt_existing(self) -> None:
        """Re-adopt what a previous agent run started; report what did not survive."""
        for deployment_id, record in self.store.load().items():
            runtime = self.runtimes.get(record.handle.runtime) if record.handle else None
            if runtime is not None and runtime.adopt(record.handle):
                self.records[deployment_id] = record
                self.trackers[deployment_id] = HealthTracker()
            else:
                self.send(
                    DeploymentStopped(
                        deployment_id=deployment_id,
                        reason="crash",
                        message="it exited while the node agent was down; last output:\n"
                        + "\n".join(tail_lines(Path(record.log_path), 20)),
                    )
                )
        self._save()

    def hello(self) -> NodeHello:
        with self.lock:
            running = [
                RunningDeployment(
                    deployment_id=r.deployment_id, status=r.status, endpoint_url=r.endpoint_url
                )
                for r in self.records.values()
                if not r.stop_requested
            ]
        return NodeHello(
            node_id=self.settings.node_id,
            agent_version=__version__,
            gpus=self.gpus,
            running=running,
        )

    def describe(self, deployment_id: str) -> dict | None:
        with self.lock:
            record = self.records.get(deployment_id)
            if record is None:
                return self.finished.get(deployment_id)
            return {
                "deployment_id": deployment_id,
                "status": record.status,
                "endpoint_url": record.endpoint_url,
                "port": record.port,
                "framework": record.framework,
                "gpu_indices": record.gpu_indices,
            }

    def describe_all(self) -> list[dict]:
        with self.lock:
            ids = list(self.records) + [i for i in self.finished if i not in self.records]
        return [d for i in ids if (d := self.describe(i)) is not None]

    # --- server messages ---------------------------------------------------------------

    def on_message(self, message: Message) -> None:
        if isinstance(message, DeployModel):
            self.deploy(message)
        elif isinstance(message, StopDeployment):
            threading.Thread(target=self.stop, args=(message.deployment_id,), daemon=True).start()
        elif isinstance(message, HealthCheck):
            self.send(self._health_now(message))
        elif isinstance(message, LogsRequest):
            self.send(
                LogsResult(
                    request_id=message.request_id,
                    deployment_id=message.deployment_id,
                    lines=self.logs(message.deployment_id, message.tail),
                )
            )

    def deploy(self, message: DeployModel) -> Record | None:
        with self.lock:
            if message.deployment_id in self.records:
                return None  # a re-sent deploy_model: already on it
            if message.deployment_id in self.finished:
                return None  # ended here already (e.g. a stop overtook its deploy_model)
            record = Record(
                deployment_id=message.deployment_id,
                status="pulling",
                port=0,
                health_path=message.deploy_config.health_path,
                log_path=str(self._log_path(message.deployment_id)),
            )
            self.records[record.deployment_id] = record
        threading.Thread(target=self._start, args=(message, record), daemon=True).start()
        return record

    def _start(self, message: DeployModel, record: Record) -> None:
        try:
            self._pull_and_launch(message, record)
        except (PullError, FrameworkError, RuntimeError_) as exc:
            reason = "pull_error" if isinstance(exc, PullError) else "start_error"
            self._finish(record, reason, str(exc))
            return
        except Exception as exc:  # never leave a deployment hanging in pulling/starting
            log.exception("starting %s failed", record.deployment_id)
            self._finish(record, "start_error", f"{type(exc).__name__}: {exc}")
            return
        try:
            self._await_ready(record)
        except Exception as exc:  # e.g. the container engine failing: report, never hang
            log.exception("waiting for %s to start failed", record.deployment_id)
            self._stop_quietly(record)
            self._finish(record, "start_error", f"{type(exc).__name__}: {exc}")

    def _stop_quietly(self, record: Record) -> None:
        """Best effort: stop what may still run of a deployment being failed for another
        reason (its GPU and port must not stay taken)."""
        try:
            self.runtimes[record.handle.runtime].stop(record.handle, 0)
        except Exception:
            log.exception("stopping %s failed", record.deployment_id)

    def _pull_and_launch(self, message: DeployModel, record: Record) -> None:
        weights_dir, revision = None, None
        if message.weights_source:
            self.send(DeploymentProgress(deployment_id=record.deployment_id, status="pulling"))
            pulled = fetch(
                message.weights_source,
                self.weights,
                self._progress_reporter(record.deployment_id),
                env=message.env_vars,
                settings=self.settings.pull,
                allow_patterns=message.deploy_config.weights_allow_patterns,
                ignore_patterns=message.deploy_config.weights_ignore_patterns,
            )
            weights_dir, revision = pulled.path, pulled.revision
            record.weights_dir = str(weights_dir)
        framework = message.framework
        if framework == "auto" and weights_dir is not None:
            framework = detect_framework(weights_dir).framework
        record.framework = None if framework == "auto" else framework
        port = message.deploy_config.port
        record.port = port if port_is_free(port) else free_port()
        if message.whole_node:  # a cloud instance of its own: every GPU it has
            record.gpu_indices = [gpu.index for gpu in self.gpus]
        elif message.gpu:
            record.gpu_indices = self._claim_gpu(message.gpu_type)
        runtime_name = "docker" if message.image else "process"
        command = list(message.command)
        if runtime_name == "process":
            command = resolve_command(framework, command, weights_dir, record.port)
        else:  # in its container the weights are at /weights, the port the container's own
            mounted = CONTAINER_WEIGHTS if weights_dir is not None else None
            command = fill_placeholders(command, mounted, message.deploy_config.port)
        record.status = "starting"
        self.send(
            DeploymentProgress(
                deployment_id=record.deployment_id, status="starting", weights_revision=revision
            )
        )
        spec = LaunchSpec(
            deployment_id=record.deployment_id,
            port=record.port,
            command=command,
            image=message.image,
            weights_dir=weights_dir,
            env=message.env_vars,
            gpu_indices=record.gpu_indices,
            log_path=Path(record.log_path),
            container_port=message.deploy_config.port,
            publish_on="127.0.0.1" if _is_loopback(self.settings.advertise_host) else "0.0.0.0",
        )
        with self.lock:
            if record.stop_requested:
                raise RuntimeError_("stopped before it started")
            record.handle = self.runtimes[runtime_name].start(spec)
            self._save()

    def _claim_gpu(self, gpu_type: str | None) -> list[int]:
        with self.lock:
            in_use = {i for r in self.records.values() for i in r.gpu_indices}
        free = gpus.free_indices(self.gpus, in_use, gpu_type)
        if not free:
            kind = f"{gpu_type} " if gpu_type else ""
            raise RuntimeError_(
                f"this node has no free {kind}GPU ({len(self.gpus)} GPUs, {len(in_use)} in use)"
            )
        return free[:1]

    def _await_ready(self, record: Record) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout_s
        url = self._health_url(record)
        runtime = self.runtimes[record.handle.runtime]
        while time.monotonic() < deadline and not record.stop_requested:
            if not runtime.is_running(record.handle):
                message = self._exit_message(record, "while starting")
                runtime.stop(record.handle, 0)  # its workers go with it, freeing GPU and port
                self._finish(record, "crash", message)
                return
            if probe(url, timeout=1.0).healthy:
                record.status = "running"
                record.endpoint_url = f"http://{self.settings.advertise_host}:{record.port}"
                self.trackers[record.deployment_id] = HealthTracker()
                self.last_probe[record.deployment_id] = time.monotonic()
                self._save()
                self.send(
                    DeploymentReady(
                        deployment_id=record.deployment_id,
                        endpoint_url=record.endpoint_url,
                        framework=record.framework,
                    )
                )
                return
            time.sleep(0.1)
        if not record.stop_requested:
            runtime.stop(record.handle, self.settings.stop_grace_s)
            self._finish(
                record,
                "start_error",
                f"{url} did not answer 2xx within "
                f"{self.settings.startup_timeout_s:.0f}s of starting",
            )

    # --- stopping ----------------------------------------------------------------------

    def stop(self, deployment_id: str, reason: str = "stopped") -> None:
        with self.lock:
            record = self.records.get(deployment_id)
            if record is None:
                # Not here (gone, or its deploy_model is still on the way): remember it so a
                # late deploy_model does not start it, and confirm so the server can finish.
                self.finished.setdefault(
                    deployment_id, {"deployment_id": deployment_id, "status": "stopped"}
                )
                self.send(DeploymentStopped(deployment_id=deployment_id, reason="stopped"))
                return
            record.stop_requested = True
        exit_code = None
        if record.handle is not None:
            exit_code = self.runtimes[record.handle.runtime].stop(
                record.handle, self.settings.stop_grace_s
            )
        self._finish(record, reason, None, exit_code)

    def stop_all(self) -> None:
        for deployment_id in list(self.records):
            self.stop(deployment_id)

    def _finish(
        self, record: Record, reason: str, message: str | None, exit_code: int | None = None
    ) -> None:
        with self.lock:
            if self.records.pop(record.deployment_id, None) is None:
                return
            self.trackers.pop(record.deployment_id, None)
            self._save()
            self.finished[record.deployment_id] = {
                "deployment_id": record.deployment_id,
                "exit_code": exit_code,
                "message": message,
                "status": "stopped" if reason == "stopped" else "failed",
                "reason": reason,
            }
            while len(self.finished) > 100:
                self.finished.pop(next(iter(self.finished)))
        self.send(
            DeploymentStopped(
                deployment_id=record.deployment_id,
                reason=reason,
                exit_code=exit_code,
                message=message,
            )
        )

    def _exit_message(self, record: Record, when: str) -> str:
        code = self.runtimes[record.handle.runtime].exit_code(record.handle)
        lines = tail_lines(Path(record.log_path), 20)
        head = f"the process exited {when}" + ("" if code is None else f" with code {code}")
        return head + (":\n" + "\n".join(lines) if lines else "")

    def _health_now(self, message: HealthCheck) -> Message:
        record = self.records.get(message.deployment_id)
        if record is None or record.handle is None:
            return Error(
                code="not_running", message="not running on this node", reply_to=message.id
            )
        result = probe(self._health_url(record))
        tracker = self.trackers.get(record.deployment_id, HealthTracker())
        return HealthResult(
            request_id=message.request_id,
            deployment_id=record.deployment_id,
            healthy=result.healthy,
            latency_ms=result.latency_ms,
            consecutive_failures=tracker.consecutive_failures,
            detail=result.detail,
        )

    def logs(self, deployment_id: str, tail: int) -> list[str]:
        """A container's own log while it exists; else the log file the agent keeps."""
        record = self.records.get(deployment_id)
        if record is not None and record.handle is not None and record.handle.runtime != "process":
            return self.runtimes[record.handle.runtime].logs(record.handle, tail)
        return tail_lines(self._log_path(deployment_id), tail)

    # --- small helpers -----------------------------------------------------------------

    def _weights_in_use(self) -> set[Path]:
        with self.lock:
            return {Path(r.weights_dir) for r in self.records.values() if r.weights_dir}

    def _health_url(self, record: Record) -> str:
        return f"http://127.0.0.1:{record.port}{record.health_path}"

    def _log_path(self, deployment_id: str) -> Path:
        return self.settings.state_dir / "logs" / f"{deployment_id}.log"

    def _progress_reporter(self, deployment_id: str):
        last = [0.0]

        def report(done: int, total: int | None) -> None:
            now = time.monotonic()
            if now - last[0] >= 1.0 or (total is not None and done >= total):
                last[0] = now
                self.send(
                    DeploymentProgress(
                        deployment_id=deployment_id,
                        status="pulling",
                        bytes_done=done,
                        bytes_total=total,
                    )
                )

        return report

    def _save(self) -> None:
        with self.lock:
            self.store.save({k: v for k, v in self.records.items() if v.handle is not None})


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _weights_cache(settings: AgentSettings, in_use) -> WeightsCache:
    root = settings.state_dir / "weights"
    root.mkdir(parents=True, exist_ok=True)
    max_bytes = settings.weights_cache_max_bytes or int(shutil.disk_usage(root).total * 0.8)
    return WeightsCache(root, max_bytes, in_use)
