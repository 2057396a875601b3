"""How a deployment ends when its node reports it over (a crash, a failed pull, a stop) or goes
silent for good. A prism_node deployment ends at once. A cloud deployment runs on an instance
that bills until it is terminated, so it goes through teardown instead: stopping (with the
reason), terminate + confirm, charge up to the end, then stopped or failed.

The GPUs an ending deployment held are freed by the repository's terminal transition; the
owner's waiting deployments are then offered to placement at once (not a minute later)."""

from collections.abc import Callable

from chalicelib.lifecycle import FailureReason, Status, towards
from chalicelib.schemas import CLOUD_TARGETS
from chalicelib.store.deployments import DeploymentRepository
from chalicelib.store.models import DeploymentItem


class Ending:
    def __init__(
        self,
        deployments: DeploymentRepository,
        workflows,
        place_waiting: Callable[[str], None] | None = None,
    ):
        self._deployments = deployments
        self._workflows = workflows
        self._place_waiting = place_waiting

    def fail(
        self,
        item: DeploymentItem,
        reason: FailureReason,
        message: str,
        only_if: Callable[[DeploymentItem], bool] | None = None,
    ) -> None:
        """`only_if(latest)`: fail it only while this still holds (a reread after a lost race
        decides again)."""
        failure = {"failure_reason": reason.value, "failure_message": message, "healthy": None}
        if item.target not in CLOUD_TARGETS:
            ended, changed = self._deployments.transition_latest(
                item.id, _towards(Status.FAILED, only_if), first=item, **failure
            )
            self._freed(ended, changed)
            return
        self._tear_down(item, _towards(Status.STOPPING, only_if), **failure)

    def stopped(self, item: DeploymentItem, note: str) -> None:
        """Stopped on purpose (asked by us or by the node's owner)."""
        if item.target in CLOUD_TARGETS:
            self._tear_down(item, towards(Status.STOPPING), status_message=note)
            return
        if item.status != Status.STOPPING:
            item, _ = self._deployments.transition_latest(
                item.id, towards(Status.STOPPING), first=item
            )
        ended, changed = self._deployments.transition_latest(
            item.id, towards(Status.STOPPED), first=item, status_message=note, healthy=None
        )
        self._freed(ended, changed)

    def _tear_down(self, item: DeploymentItem, decide, **changes) -> None:
        """Teardown owns a stopping cloud deployment: nothing to do when it already is."""
        item, changed = self._deployments.transition_latest(item.id, decide, first=item, **changes)
        if changed:
            self._workflows.start_teardown(item.id)

    def _freed(self, ended: DeploymentItem, changed: bool) -> None:
        if changed and ended.gpu_indices and self._place_waiting is not None:
            self._place_waiting(ended.owner_id)


def _towards(target: Status, only_if: Callable[[DeploymentItem], bool] | None):
    move = towards(target)
    if only_if is None:
        return move
    return lambda item: move(item) if only_if(item) else None
