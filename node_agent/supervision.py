"""Supervision of the deployments an agent runs: a process or container that exited is a
crash, reported with its last output; a live one is probed every probe interval and its health
changes reported; the endpoints' counts are reported every metrics interval. Errors are per
deployment: one that cannot be checked counts as a failed probe, and the loop goes on for the
others. The loop itself does no network I/O: probes run on a small pool, so models whose health
path hangs never delay noticing another's crash.

A mixin of node_agent.agent.Agent, whose state (records, runtimes, trackers, settings, send,
_finish, ...) it reads; kept apart so that deploying and supervising change independently."""

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from chalicelib.health_probe import ProbeResult, probe
from chalicelib.protocol import DeploymentHealthUpdate
from node_agent.health import HealthTracker
from node_agent.runtime.process import cap_log
from node_agent.state import Record

HEALTH_REFRESH_S = 60.0  # re-state health this often even when nothing changed
PROBE_WORKERS = 8
log = logging.getLogger("prism.node")


class Supervision:
    def supervise(self, stop: threading.Event) -> None:
        while not stop.wait(self.settings.liveness_interval_s):
            with self.lock:
                watched = [
                    r
                    for r in self.records.values()
                    if r.status in ("running", "unhealthy") and not r.stop_requested
                ]
            for record in watched:
                try:
                    self._check(record)
                except Exception as exc:  # one deployment's trouble never stops the others'
                    log.exception("checking %s failed", record.deployment_id)
                    self._check_failed(record, exc)
            try:
                self._report_metrics()
            except Exception:  # counts are never worth stopping supervision for
                log.exception("reporting endpoint metrics failed")

    def _unhealthy_too_long(self, record: Record, tracker: HealthTracker, result) -> bool:
        """Unhealthy for longer than its deploy_config allows counts as a failure: stopped
        (gracefully, off this loop) and handed to the restart policy."""
        now = time.time()
        if tracker.healthy:
            record.unhealthy_since = None
            if record.healthy_since is None:  # healthy again: the restart count may reset later
                record.healthy_since = now
            return False
        record.healthy_since = None  # unhealthy time never counts towards resetting restarts
        if record.unhealthy_since is None:
            record.unhealthy_since = now
        config = self._deploy_config(record)
        if config is None or config.restart == "never" or not config.unhealthy_timeout_s:
            return False
        unhealthy_for = now - record.unhealthy_since
        if unhealthy_for < config.unhealthy_timeout_s:
            return False
        with self.lock:
            if record.stop_requested:
                return False
            record.status = "starting"  # out of this loop's watch while it is restarted
        message = f"unhealthy for {unhealthy_for:.0f} s (last probe: {result.detail})"
        restart = threading.Thread(target=self._restart_unhealthy, args=(record, message))
        restart.daemon = True
        restart.start()
        return True

    def _restart_unhealthy(self, record: Record, message: str) -> None:
        try:
            self.runtimes[record.handle.runtime].stop(record.handle, self.settings.stop_grace_s)
            self._exited(record, "unhealthy", None, message)
        except Exception as exc:
            log.exception("restarting %s failed", record.deployment_id)
            self._finish(record, "crash", f"{message}; restarting it failed: {exc}")

    def _check_failed(self, record: Record, exc: Exception) -> None:
        """The runtime could not say how the deployment is (e.g. the container engine errs):
        that counts as a failed probe, so three in a row make it unhealthy, with the reason."""
        tracker = self.trackers.setdefault(record.deployment_id, HealthTracker())
        result = ProbeResult(healthy=False, latency_ms=None, detail=f"{type(exc).__name__}: {exc}")
        if tracker.observe(result):
            record.status = "running" if tracker.healthy else "unhealthy"
            self.send(
                DeploymentHealthUpdate(
                    deployment_id=record.deployment_id,
                    healthy=False,
                    consecutive_failures=tracker.consecutive_failures,
                    latency_ms=None,
                )
            )

    def _check(self, record: Record) -> None:
        runtime = self.runtimes[record.handle.runtime]
        if not runtime.is_running(record.handle):
            if not record.stop_requested:
                code = runtime.exit_code(record.handle)
                self._exited(record, "crash", code, self._exit_message(record, "unexpectedly"))
            return
        now = time.monotonic()
        if now - self.last_probe.get(record.deployment_id, 0) < self.settings.probe_interval_s:
            return
        with self.lock:
            if record.deployment_id in self.probing:
                return  # its last probe has not come back yet
            self.probing.add(record.deployment_id)
        self.last_probe[record.deployment_id] = now
        self._probe_pool().submit(self._probe_guarded, record)

    def _probe_pool(self) -> ThreadPoolExecutor:
        with self.lock:
            if getattr(self, "_probes", None) is None:
                self._probes = ThreadPoolExecutor(PROBE_WORKERS, thread_name_prefix="probe")
            return self._probes

    def _probe_guarded(self, record: Record) -> None:
        try:
            self._probe_and_report(record)
        except Exception as exc:  # counts as a failed probe of this deployment only
            log.exception("probing %s failed", record.deployment_id)
            self._check_failed(record, exc)
        finally:
            with self.lock:
                self.probing.discard(record.deployment_id)

    def _probe_and_report(self, record: Record) -> None:
        if record.stop_requested or record.status not in ("running", "unhealthy"):
            return
        now = time.monotonic()
        cap_log(Path(record.log_path))
        tracker = self.trackers.setdefault(record.deployment_id, HealthTracker())
        result = probe(self._health_url(record))
        changed = tracker.observe(result)
        if self._unhealthy_too_long(record, tracker, result):
            return
        # Also re-state health now and then: the server may have marked the deployment
        # unhealthy while this node was silent, and only a report brings it back.
        stale = now - self.last_report.get(record.deployment_id, 0) >= HEALTH_REFRESH_S
        if changed or stale:
            self.last_report[record.deployment_id] = now
            record.status = "running" if tracker.healthy else "unhealthy"
            self.send(
                DeploymentHealthUpdate(
                    deployment_id=record.deployment_id,
                    healthy=result.healthy,
                    consecutive_failures=tracker.consecutive_failures,
                    latency_ms=result.latency_ms,
                )
            )
