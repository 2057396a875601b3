"""How a deployment ends when its node reports it over (a crash, a failed pull, a stop) or goes
silent for good. A prism_node deployment ends at once. A cloud deployment runs on an instance
that bills until it is terminated, so it goes through teardown instead: stopping (with the
reason), terminate + confirm, charge up to the end, then stopped or failed."""

from chalicelib.lifecycle import FailureReason, Status, towards
from chalicelib.schemas import CLOUD_TARGETS
from chalicelib.store.deployments import DeploymentRepository
from chalicelib.store.models import DeploymentItem


class Ending:
    def __init__(self, deployments: DeploymentRepository, workflows):
        self._deployments = deployments
        self._workflows = workflows

    def fail(self, item: DeploymentItem, reason: FailureReason, message: str) -> None:
        failure = {"failure_reason": reason.value, "failure_message": message, "healthy": None}
        if item.target not in CLOUD_TARGETS:
            self._deployments.transition_latest(
                item.id, towards(Status.FAILED), first=item, **failure
            )
            return
        self._tear_down(item, **failure)

    def stopped(self, item: DeploymentItem, note: str) -> None:
        """Stopped on purpose (asked by us or by the node's owner)."""
        if item.target in CLOUD_TARGETS:
            self._tear_down(item, status_message=note)
            return
        if item.status != Status.STOPPING:
            item, _ = self._deployments.transition_latest(
                item.id, towards(Status.STOPPING), first=item
            )
        self._deployments.transition_latest(
            item.id, towards(Status.STOPPED), first=item, status_message=note, healthy=None
        )

    def _tear_down(self, item: DeploymentItem, **changes) -> None:
        """Teardown owns a stopping cloud deployment: nothing to do when it already is."""
        item, changed = self._deployments.transition_latest(
            item.id, towards(Status.STOPPING), first=item, **changes
        )
        if changed:
            self._workflows.start_teardown(item.id)
