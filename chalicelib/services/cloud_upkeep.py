"""The orphan reaper of cloud deployments (every 5 minutes): reads the sparse `cloud` index,
never a Scan. Their health is chalicelib/services/cloud_health.py."""

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from chalicelib.config import CloudSettings
from chalicelib.lifecycle import COMING_UP, Status
from chalicelib.logs import Unit, logger, metrics
from chalicelib.providers.base import Instance, Provider, owned_by_stage
from chalicelib.services.cloud_instances import runs_agent
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
        configured: Callable[[], list[str]] = lambda: [],
    ):
        self._deployments = deployments
        self._providers = providers
        self._workflows = workflows
        self._cloud = cloud
        self._clock = clock
        self._provision_failed = provision_failed
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
