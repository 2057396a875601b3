"""Tearing a cloud deployment down (the teardown state machine's steps): terminate until the
provider confirms, then end the deployment. Billing ends when the provider accepts the
terminate, which is when the providers stop billing, not when our confirmation comes."""

from collections.abc import Callable
from datetime import datetime, timedelta

from chalicelib.config import CloudSettings
from chalicelib.lifecycle import Status, towards
from chalicelib.logs import Unit, logger, metrics
from chalicelib.providers import ProviderNotConfigured
from chalicelib.providers.base import InstanceState, Provider, instance_name
from chalicelib.services.cloud_instances import midpoint, runs_agent
from chalicelib.store import legacy_billing
from chalicelib.store.deployments import DeploymentRepository
from chalicelib.store.metering import BillableEntry, MeteringRepository
from chalicelib.store.models import DeploymentItem
from chalicelib.store.nodes import NodeRepository


class CloudTeardown:
    def __init__(
        self,
        deployments: DeploymentRepository,
        nodes: NodeRepository,
        providers: Callable[[str], Provider],
        meter: Callable[[BillableEntry, datetime], object],
        cloud: CloudSettings,
        clock: Callable[[], datetime],
        meters: MeteringRepository | None = None,
    ):
        self._deployments = deployments
        self._meters = meters or MeteringRepository()
        self._nodes = nodes
        self._providers = providers
        self._meter = meter
        self._cloud = cloud
        self._clock = clock

    def terminate(self, state: dict) -> dict:
        """Ask the provider to terminate (again) and report whether it is confirmed gone."""
        item = self._deployments.get(state["deployment_id"])
        started = state.get("teardown_started") or self._clock().isoformat()
        state = state | {"teardown_started": started}
        instance_id = item.provider_instance_id
        try:
            provider = self._providers(item.target)
            instance_id = instance_id or self._find_by_name(provider, item.id)
            if instance_id is not None:
                asked_at = self._clock()
                provider.terminate(instance_id)  # raises unless the provider accepted it
                if "billing_ended_at" not in state:  # the provider's bill stops here
                    ended = midpoint(asked_at, self._clock())  # as the launch's start
                    self.end_billing(item, ended)
                    state = state | {"billing_ended_at": ended.isoformat()}
            confirmed = instance_id is None or _gone(provider, instance_id)
        except ProviderNotConfigured:
            confirmed = instance_id is None  # without a key nothing was ever launched
        except Exception as exc:  # every provider failure is retried on the next round
            logger.warning(
                "terminate not confirmed yet",
                extra={"deployment_id": item.id, "instance_id": instance_id, "why": str(exc)},
            )
            confirmed = False
        give_up_at = datetime.fromisoformat(started) + timedelta(
            seconds=self._cloud.terminate_give_up_seconds
        )
        return state | {"confirmed": confirmed, "give_up": self._clock() > give_up_at}

    def finish_teardown(self, state: dict) -> dict:
        """Termination confirmed: end (failed when a failure reason was recorded on the way,
        e.g. budget_exceeded or provision_error). Billing ended when the provider accepted the
        terminate; an instance never found is charged up to now."""
        item = self.end_billing(self._deployments.get(state["deployment_id"]), self._clock())
        target = Status.FAILED if item.failure_reason else Status.STOPPED
        if Status(item.status) is not Status.STOPPING:
            self._deployments.transition_latest(item.id, towards(Status.STOPPING), first=item)
        self._deployments.transition_latest(
            item.id,
            towards(target),
            healthy=None,
            status_message="instance terminated",
        )
        if runs_agent(item) and item.pinned_node_id:
            self._nodes.retire(item.pinned_node_id)  # its token dies with the instance
        return state

    def teardown_unconfirmed(self, state: dict) -> dict:
        item = self._deployments.get(state["deployment_id"])
        logger.error(
            "instance termination NOT confirmed: the reaper keeps trying",
            extra={"deployment_id": item.id, "instance_id": item.provider_instance_id},
        )
        metrics.add_metric(name="TeardownUnconfirmed", unit=Unit.Count, value=1)
        metrics.flush_metrics()
        self._deployments.record(
            item, status_message="termination not confirmed yet; retried every 5 minutes"
        )
        return state

    def end_billing(self, item: DeploymentItem, ended: datetime) -> DeploymentItem:
        """Charge its meter up to `ended`, when the provider stopped billing, then take it out
        of the metering tick: no later charge, whenever the teardown confirms."""
        if item.billable:  # still billed on its item (from before meters): moved first
            legacy_billing.move(item.id)
        meter = self._meters.meter(item.id)
        for _ in range(3):  # a metering worker charging at the same moment wins; then us
            if meter is None or not meter.billable or meter.last_metered_at >= ended:
                break
            self._meter(BillableEntry.of(meter), ended)
            meter = self._meters.meter(item.id)
        if item.billable or (meter is not None and meter.billable):
            item = self._deployments.stop_billing(item)
        return item

    def _find_by_name(self, provider: Provider, deployment_id: str) -> str | None:
        wanted = instance_name(deployment_id, self._cloud.stage)
        return next((i.id for i in provider.list_owned() if i.name == wanted), None)


def _gone(provider: Provider, instance_id: str) -> bool:
    instance = provider.get(instance_id)
    return instance is None or instance.state is InstanceState.TERMINATED
