"""Deploying on the node: reserve a port and GPUs (under the agent's lock, so no two deployments
ever share either), pull, launch, wait until it answers; after an exit, restart it under its
restart policy (node_agent.restarts) or report the end.

A mixin of node_agent.agent.Agent, whose state (records, lock, runtimes, settings, send,
_finish, ...) it uses; kept apart so that deploying and the rest change independently."""

import logging
import threading
import time
from pathlib import Path

from chalicelib.health_probe import probe
from chalicelib.protocol import (
    DEFAULT_MODEL_PORT,
    ENGINE_REASON_MAX,
    DeployConfig,
    DeploymentProgress,
    DeploymentReady,
    DeploymentRestarted,
    DeploymentStopped,
    DeployModel,
)
from node_agent import gpus, restarts
from node_agent.engines import EngineChoice, NodeAbilities, choose_engine
from node_agent.frameworks import (
    CONTAINER_WEIGHTS,
    FrameworkError,
    detect_framework,
    fill_placeholders,
)
from node_agent.health import HealthTracker
from node_agent.ports import free_port, port_is_free
from node_agent.runtime.base import LaunchError, LaunchSpec
from node_agent.state import Record
from node_agent.weights import PullError, fetch

log = logging.getLogger("prism.node")


class Unavailable(LaunchError):
    """A port or GPU the deployment needs is taken."""


class Deploying:
    def deploy(self, message: DeployModel) -> Record | None:
        with self.lock:
            known = self.records.get(message.deployment_id)
            ended = self.finished.get(message.deployment_id)
            if known is None and ended is None:
                record = Record(
                    deployment_id=message.deployment_id,
                    status="pulling",
                    port=0,
                    health_path=message.deploy_config.health_path,
                    log_path=str(self._log_path(message.deployment_id)),
                    deploy=message.model_dump(mode="json"),
                    key_hashes=list(message.endpoint_key_hashes),
                )
                self.records[record.deployment_id] = record
        if known is not None or ended is not None:
            # Sent again (our answer may have been lost): say again where it stands.
            self._restate(message.deployment_id, known, ended)
            return None
        threading.Thread(target=self._start, args=(message, record), daemon=True).start()
        return record

    def _restate(self, deployment_id: str, known: Record | None, ended: dict | None) -> None:
        if known is not None and known.status in ("running", "unhealthy") and known.endpoint_url:
            self.send(
                DeploymentReady(
                    deployment_id=deployment_id,
                    endpoint_url=known.endpoint_url,
                    framework=known.framework,
                )
            )
        elif known is not None:
            status = "pulling" if known.status == "pulling" else "starting"
            self.send(DeploymentProgress(deployment_id=deployment_id, status=status))
        else:  # ended here (a stop may have overtaken its deploy_model): the end, again
            reason = ended.get("reason") or "stopped"
            self.send(
                DeploymentStopped(
                    deployment_id=deployment_id,
                    reason=reason,
                    exit_code=ended.get("exit_code"),
                    message=ended.get("message"),
                )
            )

    def _start(self, message: DeployModel, record: Record) -> None:
        self._guarded(record, lambda: self._reserve_pull_launch(message, record))

    def _reserve_pull_launch(self, message: DeployModel, record: Record) -> None:
        with self.lock:  # a resumed deployment keeps what it reserved before
            if not record.port:  # the endpoint's: the proxy's port
                record.port = self._reserve_port(message.deploy_config.port)
            if not record.model_port:  # the model's own, on loopback behind the proxy
                record.model_port = self._reserve_port(None)
        if not record.gpu_indices:
            record.gpu_indices = self._reserve_gpus_waiting(message, record)
        with self.lock:
            self._save()
        self._serve_endpoint(record)
        revision = None
        if message.weights_source:
            record.status = "pulling"
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
            record.weights_dir, revision = str(pulled.path), pulled.revision
        record.status = "starting"
        self.send(
            DeploymentProgress(
                deployment_id=record.deployment_id, status="starting", weights_revision=revision
            )
        )
        self._launch(message, record)

    def _guarded(self, record: Record, launch) -> None:
        """Launch, then wait until it answers; whatever fails ends the deployment with the
        reason, never leaves it pulling or starting."""
        try:
            launch()
        except (PullError, FrameworkError, LaunchError) as exc:
            self._stop_quietly(record)
            reason = "pull_error" if isinstance(exc, PullError) else "start_error"
            self._finish(record, reason, str(exc))
            return
        except Exception as exc:
            log.exception("starting %s failed", record.deployment_id)
            self._stop_quietly(record)
            self._finish(record, "start_error", f"{type(exc).__name__}: {exc}")
            return
        try:
            self._await_ready(record)
        except Exception as exc:  # e.g. the container engine failing: report, never hang
            log.exception("waiting for %s to start failed", record.deployment_id)
            self._stop_quietly(record)
            self._finish(record, "start_error", f"{type(exc).__name__}: {exc}")

    # --- reservations (called under self.lock) -----------------------------------------

    def _reserve_port(self, wanted: int | None) -> int:
        taken = {p: r.deployment_id for r in self.records.values() for p in (r.port, r.model_port)}
        taken.pop(0, None)
        if wanted is None:
            for _ in range(100):
                port = free_port()
                if port not in taken:
                    return port
            raise Unavailable("no free port found on this node")
        holder = taken.get(wanted)
        if holder is not None or not port_is_free(wanted):
            by = f"deployment {holder}" if holder else "another program"
            raise Unavailable(
                f"port_in_use: port {wanted} is in use on this node (by {by}); choose another "
                "port, or leave deploy_config.port unset and the node picks a free one"
            )
        return wanted

    def _reserve_gpus_waiting(self, message: DeployModel, record: Record) -> list[int]:
        """The control plane's reservation is the truth: GPUs it gave this deployment that a
        deployment ending here still holds (its stop may come just after this deploy_model)
        are waited for, up to gpu_wait_s; an unreserved request is answered at once."""
        deadline = time.monotonic() + self.settings.gpu_wait_s
        while True:
            with self.lock:
                try:
                    return self._reserve_gpus(message, record)
                except Unavailable:
                    if message.gpu_indices is None or time.monotonic() >= deadline:
                        raise
            if record.stop_requested:
                raise LaunchError("stopped before it started")
            time.sleep(0.1)

    def _reserve_gpus(self, message: DeployModel, record: Record) -> list[int]:
        if message.whole_node:  # a cloud instance of its own: every GPU it has
            return [gpu.index for gpu in self.gpus]
        if not message.gpu:
            return []
        in_use = {i for r in self.records.values() if r is not record for i in r.gpu_indices}
        free = gpus.free_indices(self.gpus, in_use, message.gpu_type)
        if message.gpu_indices is None:  # no reservation from the control plane: pick one
            if free:
                return free[:1]
        elif message.gpu_indices and set(message.gpu_indices) <= set(free):
            return list(message.gpu_indices)
        kind = f"{message.gpu_type} " if message.gpu_type else ""
        asked = "" if message.gpu_indices is None else f" (reserved: {message.gpu_indices})"
        raise Unavailable(
            f"this node has no free {kind}GPU{asked}: {len(self.gpus)} GPUs, "
            f"{sorted(in_use)} in use"
        )

    # --- launching and waiting ---------------------------------------------------------

    def _launch(self, message: DeployModel, record: Record) -> None:
        weights_dir = Path(record.weights_dir) if record.weights_dir else None
        plan = self._plan(message, record, weights_dir)
        record.framework, record.engine, record.engine_reason = (
            None if plan.framework == "auto" else plan.framework,
            plan.engine,
            plan.reason[:ENGINE_REASON_MAX],
        )
        spec = LaunchSpec(
            deployment_id=record.deployment_id,
            port=record.model_port,
            command=plan.command,
            image=plan.image,
            weights_dir=weights_dir,
            env=message.env_vars,
            gpu_indices=record.gpu_indices,
            log_path=Path(record.log_path),
            container_port=plan.container_port,
        )
        with self.lock:
            if record.stop_requested:
                raise LaunchError("stopped before it started")
            record.handle = self.runtimes[plan.runtime].start(spec)
            self._save()

    def _plan(self, message: DeployModel, record: Record, weights_dir: Path | None) -> EngineChoice:
        """The deployment's image or command as given, else the engine for its weights here."""
        framework = message.framework
        if framework == "auto" and weights_dir is not None:
            framework = detect_framework(weights_dir).framework
        if message.image:  # in its container the weights are at /weights, the port its own
            port = message.deploy_config.port or DEFAULT_MODEL_PORT
            mounted = CONTAINER_WEIGHTS if weights_dir is not None else None
            command = fill_placeholders(list(message.command), mounted, port)
            why = f"the deployment's image {message.image}"
            return EngineChoice(framework, "image", why, "docker", message.image, command, port)
        if message.command:
            command = fill_placeholders(list(message.command), weights_dir, record.model_port)
            why = f"the deployment's command ({command[0]})"
            return EngineChoice(framework, "command", why, "process", None, command, None)
        node = NodeAbilities(gpu=bool(record.gpu_indices), docker=self._docker_answers())
        return choose_engine(message.framework, weights_dir, node, record.model_port)

    def _docker_answers(self) -> bool:
        docker = self.runtimes.get("docker")
        return docker is not None and docker.available()

    def _await_ready(self, record: Record) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout_s
        url = self._health_url(record)
        runtime = self.runtimes[record.handle.runtime]
        answered_by_other = False
        while time.monotonic() < deadline and not record.stop_requested:
            if not runtime.is_running(record.handle):
                code = runtime.exit_code(record.handle)
                self._exited(record, "crash", code, self._exit_message(record, "while starting"))
                return
            if probe(url, timeout_s=1.0).healthy:
                if runtime.serves(record.handle, record.model_port):
                    self._ready(record)
                    return
                answered_by_other = True  # another program answers on its port: not ready
            time.sleep(0.1)
        if not record.stop_requested:
            runtime.stop(record.handle, self.settings.stop_grace_s)
            other = " (another program answered on its port)" if answered_by_other else ""
            self._finish(
                record,
                "start_error",
                f"{url} did not answer 2xx within "
                f"{self.settings.startup_timeout_s:.0f}s of starting{other}",
            )

    def _ready(self, record: Record) -> None:
        with self.lock:
            if record.stop_requested:
                return
            record.status = "running"
            record.endpoint_url = f"http://{self.settings.advertise_host}:{record.port}"
            record.healthy_since, record.unhealthy_since = time.time(), None
            self.trackers[record.deployment_id] = HealthTracker()
            self.last_probe[record.deployment_id] = time.monotonic()
            self._save()
        self.send(
            DeploymentReady(
                deployment_id=record.deployment_id,
                endpoint_url=record.endpoint_url,
                framework=record.framework,
                engine=record.engine,
                engine_reason=record.engine_reason,
            )
        )

    # --- after an exit -----------------------------------------------------------------

    def _exited(self, record: Record, cause: str, code: int | None, message: str) -> None:
        """Its process is gone (or was stopped for being unhealthy too long): restart it
        under its policy, or report the end with why it was not restarted."""
        self._stop_quietly(record)  # its workers go with it, freeing GPU memory and port
        config = self._deploy_config(record)
        in_a_row = restarts.restarts_in_a_row(record.in_a_row, record.healthy_since, time.time())
        decision = (
            restarts.decide(
                config.restart,
                config.max_restarts,
                in_a_row,
                code,
                self.settings.restart_backoff_s,
            )
            if config is not None
            else restarts.Decision(False, why="its deploy_model was not kept")
        )
        if not decision.restart:
            policy = config.restart if config else "never"
            note = "" if policy == "never" else f"\n[not restarted: {decision.why}]"
            self._finish(record, "crash", message + note, code)
            return
        with self.lock:
            if record.stop_requested or record.deployment_id not in self.records:
                return
            record.status, record.handle = "starting", None
            record.restarts, record.in_a_row = record.restarts + 1, in_a_row + 1
            record.healthy_since = record.unhealthy_since = None
            self._save()
        self.send(
            DeploymentRestarted(
                deployment_id=record.deployment_id,
                restarts=record.restarts,
                cause=cause,
                exit_code=code,
                message=message,
            )
        )
        threading.Thread(target=self._restart, args=(record, decision.delay_s), daemon=True).start()

    def _restart(self, record: Record, delay_s: float) -> None:
        deadline = time.monotonic() + delay_s
        while time.monotonic() < deadline and not record.stop_requested:
            time.sleep(min(0.05, delay_s))
        if record.stop_requested:
            return  # stop() finishes it
        message = DeployModel.model_validate(record.deploy)
        self._guarded(record, lambda: self._relaunch(message, record))

    def _relaunch(self, message: DeployModel, record: Record) -> None:
        """Launch again on the same endpoint; the model's own port is taken again unless some
        other program took it meanwhile (then another free one: only the proxy knows it)."""
        with self.lock:
            if not port_is_free(record.model_port):
                record.model_port = self._reserve_port(None)
                self._save()
        self._launch(message, record)

    def _deploy_config(self, record: Record) -> DeployConfig | None:
        return DeployModel.model_validate(record.deploy).deploy_config if record.deploy else None

    def _stop_quietly(self, record: Record) -> None:
        """Best effort: stop what may still run of a deployment that ended or is to be
        restarted (its GPU and port must not stay taken)."""
        if record.handle is None:
            return
        try:
            self.runtimes[record.handle.runtime].stop(record.handle, 0)
        except Exception:
            log.exception("stopping %s failed", record.deployment_id)
