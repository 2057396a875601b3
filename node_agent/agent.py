"""The agent's brain: turns server messages into runtime actions and reports what happens.

Every deployment has a worker thread for its start (reserve -> pull -> start -> wait until
healthy; node_agent.deploying), then one supervisor loop watches all of them (liveness often,
so a crash is noticed within a fraction of a second; HTTP health every probe interval;
node_agent.supervision). Each deployment is reached only through the agent's endpoint proxy,
on its reserved port, in front of the model on a loopback port of its own (node_agent.endpoints,
node_agent.proxy). What the agent runs is kept on disk, so a restarted agent re-adopts its
models, serves them again and resumes the pulls it was doing.
"""

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chalicelib.health_probe import probe
from chalicelib.protocol import (
    DeploymentProgress,
    DeploymentStopped,
    DeployModel,
    EndpointKeys,
    Error,
    HealthCheck,
    HealthResult,
    LogsRequest,
    LogsResult,
    Message,
    NodeHello,
    RunningDeployment,
    StopDeployment,
    is_local_deployment,
)
from node_agent import __version__, gpus
from node_agent.deploying import Deploying
from node_agent.endpoints import Endpoints
from node_agent.health import HealthTracker
from node_agent.proxy import EndpointProxy
from node_agent.reporting import METRICS_INTERVAL_S
from node_agent.runtime.base import MODEL_HOST, LaunchError
from node_agent.runtime.process import tail_lines
from node_agent.state import Record, StateStore
from node_agent.supervision import Supervision
from node_agent.weights import PullSettings, WeightsCache

log = logging.getLogger("prism.node")
STOP_ATTEMPTS = 3


@dataclass(frozen=True)
class AgentSettings:
    node_id: str
    state_dir: Path
    advertise_host: str = "127.0.0.1"
    probe_interval_s: float = 10.0
    startup_timeout_s: float = 600.0
    stop_grace_s: float = 10.0
    liveness_interval_s: float = 0.25
    restart_backoff_s: float = 1.0  # the first wait before a restart; doubles each time
    gpu_wait_s: float = 30.0  # how long reserved GPUs an ending deployment holds are waited for
    metrics_interval_s: float = METRICS_INTERVAL_S  # endpoint counts reported this often
    # Pull progress of a deployment at most this often (and at the end): each report is a
    # Lambda invocation and DynamoDB writes on the control plane.
    pull_progress_every_s: float = 5.0
    weights_cache_max_bytes: int | None = None  # None: 80% of the disk the cache is on
    pull: PullSettings = PullSettings()


class Agent(Deploying, Supervision, Endpoints):
    def __init__(self, settings: AgentSettings, runtimes: dict, send: Callable[[Message], None]):
        self.settings = settings
        self.runtimes = runtimes  # "process" -> ProcessRuntime, "docker" -> DockerRuntime
        self.send = send
        self.store = StateStore(settings.state_dir / "state.json")
        self.records: dict[str, Record] = {}
        self.trackers: dict[str, HealthTracker] = {}
        self.last_probe: dict[str, float] = {}
        self.last_report: dict[str, float] = {}
        self.probing: set[str] = set()  # deployments whose health probe is out now
        self.lock = threading.RLock()
        self.gpus = gpus.inventory()
        self.finished: dict[str, dict] = {}  # recent ends, for the node's local API
        self.proxy = EndpointProxy()  # every deployment's endpoint
        self.metrics_sent: dict[str, tuple] = {}  # the counts each endpoint last reported
        self.metrics_reported_at = time.monotonic()
        self.weights = _weights_cache(settings, self._weights_in_use)

    # --- startup and hello -------------------------------------------------------------

    def adopt_existing(self) -> None:
        """Take over what a previous agent run left: re-adopt what still runs, resume what was
        being pulled or started, and restart (under its policy) or report what exited."""
        for record in self.store.load().values():
            with self.lock:
                self.records[record.deployment_id] = record
            try:
                self._adopt(record)
            except Exception as exc:  # one record's trouble never stops the others'
                log.exception("adopting %s failed", record.deployment_id)
                self._finish(record, "start_error", f"{type(exc).__name__}: {exc}")
        self._save()

    def _adopt(self, record: Record) -> None:
        if record.handle is None:  # it was pulling or about to start: start again
            if record.deploy is None:
                self._finish(record, "start_error", "the node agent restarted before it started")
                return
            message = DeployModel.model_validate(record.deploy)
            threading.Thread(target=self._start, args=(message, record), daemon=True).start()
            return
        runtime = self.runtimes.get(record.handle.runtime)
        if runtime is not None and runtime.adopt(record.handle):
            if not record.model_port:  # started by an agent before the proxy: it serves itself
                record.model_port = record.port  # (until it ends; node_agent.endpoints)
            self.trackers[record.deployment_id] = HealthTracker()
            try:
                self._serve_endpoint(record)
            except LaunchError:
                self._stop_quietly(record)  # a model nobody can reach must not keep its GPU
                raise
            if record.status == "starting":  # it had not answered yet: wait for it again
                wait = threading.Thread(target=self._guarded, args=(record, _nothing), daemon=True)
                wait.start()
            return
        lines = tail_lines(Path(record.log_path), 20)
        message = "it exited while the node agent was down; last output:\n" + "\n".join(lines)
        self._exited(record, "crash", None, message)

    def hello(self) -> NodeHello:
        with self.lock:
            running = [
                RunningDeployment(
                    deployment_id=r.deployment_id, status=r.status, endpoint_url=r.endpoint_url
                )
                for r in self.records.values()
                if not r.stop_requested and not is_local_deployment(r.deployment_id)
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
                "model_port": record.model_port,
                "framework": record.framework,
                "engine": record.engine,
                "engine_reason": record.engine_reason,
                "gpu_indices": record.gpu_indices,
                "restarts": record.restarts,
            }

    def describe_all(self) -> list[dict]:
        with self.lock:
            ids = list(self.records) + [i for i in self.finished if i not in self.records]
        return [d for i in ids if (d := self.describe(i)) is not None]

    # --- server messages ---------------------------------------------------------------

    def on_message(self, message: Message) -> None:
        if isinstance(message, DeployModel):
            self.deploy(message)
        elif isinstance(message, EndpointKeys):
            self.set_endpoint_keys(message)
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
        exit_code, trouble = None, None
        for attempt in range(STOP_ATTEMPTS):
            try:
                if record.handle is not None:
                    exit_code = self.runtimes[record.handle.runtime].stop(
                        record.handle, self.settings.stop_grace_s
                    )
                trouble = None
                break
            except Exception as exc:  # e.g. the container engine erring: try again, then say so
                log.exception("stopping %s failed (attempt %d)", deployment_id, attempt + 1)
                trouble = f"stopping it failed ({type(exc).__name__}: {exc}); it may still run"
                time.sleep(0.5 * (attempt + 1))
        self._finish(record, reason, trouble, exit_code)

    def stop_all(self) -> None:
        for deployment_id in list(self.records):
            self.stop(deployment_id)

    def shutdown(self) -> None:
        """The agent exits: its endpoints close; the models keep running, and the next agent
        adopts them and serves them again."""
        self.proxy.close_all()

    def _finish(
        self, record: Record, reason: str, message: str | None, exit_code: int | None = None
    ) -> None:
        # Closed before it is recorded as over: whoever reads "stopped" (the control plane, the
        # local API) finds its endpoint closed and its port free again. Closing twice is a no-op.
        self._close_endpoint(record.deployment_id)
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
        """The model itself, on its internal port: the agent's probes skip the proxy."""
        return f"http://{MODEL_HOST}:{record.model_port}{record.health_path}"

    def _log_path(self, deployment_id: str) -> Path:
        return self.settings.state_dir / "logs" / f"{deployment_id}.log"

    def _progress_reporter(self, deployment_id: str):
        last = [0.0]

        def report(done: int, total: int | None) -> None:
            now = time.monotonic()
            every = self.settings.pull_progress_every_s
            if now - last[0] >= every or (total is not None and done >= total):
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
            self.store.save(self.records)


def _nothing() -> None:
    """The launch of a deployment that already runs."""


def _weights_cache(settings: AgentSettings, in_use) -> WeightsCache:
    root = settings.state_dir / "weights"
    root.mkdir(parents=True, exist_ok=True)
    max_bytes = settings.weights_cache_max_bytes or int(shutil.disk_usage(root).total * 0.8)
    return WeightsCache(root, max_bytes, in_use)
