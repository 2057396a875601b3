"""Upkeep of cloud deployments, on schedules: the orphan reaper (every 5 minutes) and the health
of running cloud deployments (every minute). Both read the sparse `cloud` index, never a Scan."""

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from chalicelib.config import CloudSettings
from chalicelib.lifecycle import COMING_UP, Status, towards
from chalicelib.logs import Unit, logger, metrics
from chalicelib.protocol import UNHEALTHY_AFTER
from chalicelib.providers.base import Instance, InstanceState, Provider, owned_by_stage
from chalicelib.services.cloud import probe, runs_agent
from chalicelib.store.deployments import DeploymentRepository
from chalicelib.store.models import DeploymentItem


@dataclass(frozen=True)
class ReapReport:
    terminated: list[str]
    failed: list[str]
    restarted_teardowns: list[str]
    restarted_provisions: list[str]


class CloudUpkeep:
    def __init__(
        self,
        deployments: DeploymentRepository,
        providers: Callable[[str], Provider],
        workflows,
        cloud: CloudSettings,
        clock: Callable[[], datetime],
        provision_failed: Callable[[dict], object],
        probe: Callable[[str], bool] = probe,
        configured: Callable[[], list[str]] = lambda: [],
    ):
        self._deployments = deployments
        self._providers = providers
        self._workflows = workflows
        self._cloud = cloud
        self._clock = clock
        self._provision_failed = provision_failed
        self._probe = probe
        self._configured = configured

    # --- the reaper -----------------------------------------------------------------------

    def reap(self) -> ReapReport:
        """Terminate instances of ours no live deployment owns, fail deployments stuck past
        their deadline, and restart teardowns that gave up."""
        report = ReapReport([], [], [], [])
        for name in self._configured():
            _isolated(f"reaping {name}", lambda name=name: self._reap_orphans(name, report))
        try:  # read before the deployments: a provision finishing meanwhile is seen running
            provisioning = self._workflows.running_provisions()
        except Exception:
            logger.exception("reaper step failed", extra={"step": "listing provisions"})
            provisioning = None  # restarts wait for the next run; deadlines still apply
        for item in self._deployments.cloud_active():
            _isolated(
                f"checking {item.id}",
                lambda item=item: self._reap_stuck(item, provisioning, report),
            )
        return report

    def _reap_orphans(self, provider_name: str, report: ReapReport) -> None:
        provider = self._providers(provider_name)
        now = self._clock()
        for instance in provider.list_owned():
            deployment_id = owned_by_stage(instance.name, self._cloud.stage)
            if deployment_id is None:
                continue  # another installation's, or not ours at all
            item = self._deployments.get(deployment_id)
            if not _orphan(item, instance, now, self._cloud.reaper_grace_seconds):
                continue
            _isolated(
                f"terminating {instance.id}",
                lambda instance=instance: self._reap_one(provider, instance, report),
            )

    def _reap_one(self, provider: Provider, instance: Instance, report: ReapReport) -> None:
        provider.terminate(instance.id)
        report.terminated.append(instance.id)
        logger.warning(
            "reaped an orphaned instance",
            extra={
                "provider": provider.name,
                "instance_id": instance.id,
                "instance_name": instance.name,
                "price_per_hour": instance.price_per_hour,
            },
        )
        metrics.add_metric(name="OrphansReaped", unit=Unit.Count, value=1)

    def _reap_stuck(
        self, item: DeploymentItem, provisioning: set[str] | None, report: ReapReport
    ) -> None:
        status, age = Status(item.status), (self._clock() - item.updated_at).total_seconds()
        deadline = (
            self._cloud.boot_deadline_seconds.get(item.target, 1800)
            + self._cloud.health_grace_seconds
            + (self._cloud.agent_start_seconds if runs_agent(item) else 0)
        )
        # A deployment its agent restarted is `starting` again, but its workflow is long done.
        coming_up = status in COMING_UP and not item.restarts
        lost = self._cloud.workflow_lost_seconds
        lost_workflow = provisioning is not None and item.id not in provisioning
        if coming_up and age > lost and lost_workflow and age <= deadline:
            # Its workflow is gone: it failed to start at create, or died with the control
            # plane. Start it again; its Launch adopts the instance already launched, if any.
            self._workflows.start_provision(item.id, attempt=int(time.time() // lost))
            report.restarted_provisions.append(item.id)
            return
        if coming_up and age > deadline:
            self._provision_failed(
                {
                    "deployment_id": item.id,
                    "error": {"Cause": f"still {status} {int(age)} s after its last change"},
                }
            )
            report.failed.append(item.id)
        elif status is Status.STOPPING and age > self._cloud.terminate_give_up_seconds:
            self._workflows.start_teardown(item.id, attempt=int(time.time()) // 300)
            report.restarted_teardowns.append(item.id)

    # --- health of running cloud deployments ----------------------------------------------

    def check_running(self) -> int:
        """Probe every running cloud deployment's health path: 3 failures in a row make it
        unhealthy, a success running again. Returns how many were probed."""
        watched = [
            item
            for item in self._deployments.cloud_active()
            if item.status in (Status.RUNNING, Status.UNHEALTHY)
            and item.endpoint_url
            and not runs_agent(item)  # the agent on the instance reports its health itself
        ]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(self._check_one, watched))
        return len(watched)

    def _check_one(self, item: DeploymentItem) -> None:
        healthy = self._probe(item.endpoint_url + item.deploy_config.health_path)
        if not healthy and self._instance_gone(item):
            self._instance_died(item)
            return
        failures = 0 if healthy else int(item.health_consecutive_failures or 0) + 1
        changes = {
            "healthy": healthy,
            "health_consecutive_failures": failures,
            "health_checked_at": self._clock(),
        }
        if healthy and item.status == Status.UNHEALTHY:
            self._deployments.transition_latest(item.id, towards(Status.RUNNING), **changes)
        elif failures >= UNHEALTHY_AFTER and item.status == Status.RUNNING:
            self._deployments.transition_latest(item.id, towards(Status.UNHEALTHY), **changes)
        else:
            self._deployments.record(item, **changes)

    def _instance_gone(self, item: DeploymentItem) -> bool:
        try:
            instance = self._providers(item.target).get(
                item.provider_instance_id, port=int(item.deploy_config.port)
            )
        except Exception:  # cannot tell now: the next check asks again
            return False
        return instance is None or instance.state in (
            InstanceState.TERMINATED,
            InstanceState.FAILED,
        )

    def _instance_died(self, item: DeploymentItem) -> None:
        """The provider ended a running instance: fail the deployment (billing stops once the
        teardown confirms the instance is gone)."""
        item, _ = self._deployments.transition_latest(
            item.id,
            towards(Status.STOPPING),
            failure_reason="crash",
            failure_message=f"the {item.target} instance {item.provider_instance_id} stopped",
        )
        if item.status == Status.STOPPING:
            self._workflows.start_teardown(item.id)


def _isolated(what: str, action: Callable[[], None]) -> None:
    """One failing provider or item must not stop the reaper for the rest."""
    try:
        action()
    except Exception:
        logger.exception("reaper step failed", extra={"step": what})


def _orphan(item: DeploymentItem | None, instance: Instance, now: datetime, grace: int) -> bool:
    if item is None or Status(item.status).is_terminal():
        return True
    if item.provider_instance_id:
        return item.provider_instance_id != instance.id  # a second launch for one deployment
    # Launched but never recorded (the control plane died in between): give launch its time.
    return (now - item.created_at).total_seconds() > grace
