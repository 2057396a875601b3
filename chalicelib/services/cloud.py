"""Cloud GPU deployments: the steps the provision and teardown state machines run (each a
Lambda task taking the execution's state and returning the next). The schedules that look after
them (reaper, health) are in cloud_upkeep.py.

Waiting lives in the state machines (Wait states); every step here is short and safe to run
again: launch adopts an instance already carrying the deployment's name, terminate of a gone
instance is success, and a deployment that is being stopped ends its provision workflow
(teardown owns it from there).
"""

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal

from chalicelib.config import CloudSettings
from chalicelib.health_probe import probe
from chalicelib.lifecycle import COMING_UP, Status, can_transition, towards
from chalicelib.logs import logger
from chalicelib.metering import charge
from chalicelib.providers.base import (
    CapacityError,
    Instance,
    InstanceState,
    InvalidRequest,
    Provider,
    instance_name,
)
from chalicelib.services.cloud_instances import (
    PROBE_TIMEOUT_S,
    launch_spec,
    midpoint,
    runs_agent,
    with_short_rate_limit,
)
from chalicelib.services.node_bootstrap import AgentBootstrap
from chalicelib.store.deployments import DeploymentRepository
from chalicelib.store.metering import MeteringRepository
from chalicelib.store.models import DeploymentItem
from chalicelib.store.nodes import NodeRepository
from chalicelib.store.secrets import SecretStore


class Cancelled(Exception):
    """The deployment is stopping or over: the provision workflow ends, teardown owns it."""


class NoCapacity(Exception):
    """No offer of the GPU had capacity."""


class DeadlineExceeded(Exception):
    """The instance did not come up, or did not answer its health path, in time."""


class InstanceLost(Exception):
    """The provider ended the instance before it came up."""


class CloudService:
    def __init__(
        self,
        deployments: DeploymentRepository,
        nodes: NodeRepository,
        providers: Callable[[str], Provider],
        workflows,
        cloud: CloudSettings,
        clock: Callable[[], datetime],
        place: Callable[[DeploymentItem], object] = lambda item: item,
        secrets: SecretStore | None = None,
        meters: MeteringRepository | None = None,
    ):
        self._deployments = deployments
        self._nodes = nodes
        self._providers = providers
        self._workflows = workflows
        self._cloud = cloud
        self._clock = clock
        self._place = place
        self._secrets = secrets or SecretStore()
        self._meters = meters or MeteringRepository()

    # --- provision ----------------------------------------------------------------------

    def launch(self, state: dict) -> dict:
        item = self._provisioning(state["deployment_id"])
        provider = self._providers(item.target)
        launched_at = self._clock()
        retried = item.launch_requested_at is not None  # an earlier attempt may have launched
        if not retried:
            self._deployments.mark_launch_requested(item, launched_at)
        adopted = self._adopt(item, provider, retried)
        if adopted is not None and not item.provider_instance_id and item.launch_requested_at:
            launched_at = item.launch_requested_at  # billed since an earlier attempt made it
        if adopted is None:  # billed from the launch call that made it, as the provider bills
            adopted, launched_at = self._launch_first_offer(item, provider)
        instance = adopted
        price = instance.price_per_hour
        if not item.provider_instance_id and not self._deployments.record_instance(
            item, instance.id, price, launched_at, instance.region
        ):
            instance = self._after_lost_record(item, provider, instance, launched_at)
        logger.info(
            "instance launched",
            extra={"deployment_id": item.id, "instance_id": instance.id, "price_per_hour": price},
        )
        deadline = launched_at + timedelta(seconds=self._cloud.boot_deadline_seconds[item.target])
        return state | {"instance_id": instance.id, "boot_deadline": deadline.isoformat()}

    def poll(self, state: dict) -> dict:
        item = self._provisioning(state["deployment_id"])
        instance = self._providers(item.target).get(
            state["instance_id"], port=int(item.deploy_config.port)
        )
        gone = (InstanceState.TERMINATED, InstanceState.FAILED, InstanceState.STOPPING)
        if instance is None or instance.state in gone:
            word = "is gone" if instance is None else f"is {instance.provider_status}"
            raise InstanceLost(f"the {item.target} instance {state['instance_id']} {word}")
        if instance.state is InstanceState.RUNNING and instance.endpoint_url:
            if runs_agent(item):
                return self._agent_phase(item, instance, state)
            self._deployments.transition_latest(
                item.id,
                _still_coming_up_to(Status.STARTING),  # a late poll never moves it back
                first=item,
                endpoint_url=instance.endpoint_url,
                status_message="instance up; waiting for the model's health path",
            )
            grace = timedelta(seconds=self._cloud.health_grace_seconds)
            return state | {"phase": "up", "health_deadline": (self._clock() + grace).isoformat()}
        if self._clock() > datetime.fromisoformat(state["boot_deadline"]):
            raise DeadlineExceeded(
                f"the {item.target} instance {instance.id} was still {instance.provider_status}"
                f" at its boot deadline ({self._cloud.boot_deadline_seconds[item.target]} s)"
            )
        return state | {"phase": "booting"}

    def check_health(self, state: dict) -> dict:
        item = self._provisioning(state["deployment_id"])
        if runs_agent(item):
            return self._agent_progress(item, state)
        url = item.endpoint_url + item.deploy_config.health_path
        result = probe(url, PROBE_TIMEOUT_S)
        if result.healthy:
            return state | {"healthy": True}
        if self._clock() > datetime.fromisoformat(state["health_deadline"]):
            raise DeadlineExceeded(
                f"{url} did not answer within {self._cloud.health_grace_seconds} s of the "
                f"instance coming up (last probe: {result.detail})"
            )
        return state | {"healthy": False}

    def mark_running(self, state: dict) -> dict:
        item = self._provisioning(state["deployment_id"])
        # An agent reports its model's health itself; ours is the one probe that just passed.
        health = (
            {}
            if runs_agent(item)
            else {
                "healthy": True,
                "health_consecutive_failures": 0,
                "health_checked_at": self._clock(),
            }
        )
        self._deployments.transition_latest(
            item.id, towards(Status.RUNNING), first=item, status_message=None, **health
        )
        return state

    def provision_failed(self, state: dict) -> dict:
        """The Catch of every provision step: stop through teardown (terminate + confirm),
        ending failed/provision_error with the provider's message."""
        message = _error_message(state.get("error", {}))
        item, _ = self._deployments.transition_latest(
            state["deployment_id"],
            towards(Status.STOPPING),
            failure_reason="provision_error",
            failure_message=message,
        )
        logger.warning("provisioning failed", extra={"deployment_id": item.id, "why": message})
        if item.status == Status.STOPPING:
            self._workflows.start_teardown(item.id)
        return state

    # --- helpers ---------------------------------------------------------------------------

    def _provisioning(self, deployment_id: str) -> DeploymentItem:
        item = self._deployments.get(deployment_id)
        if item is None or Status(item.status) in (Status.STOPPING, Status.STOPPED, Status.FAILED):
            raise Cancelled(f"{deployment_id} is no longer being provisioned")
        return item

    def _after_lost_record(
        self, item: DeploymentItem, provider: Provider, instance: Instance, launched_at: datetime
    ) -> Instance:
        """record_instance's condition failed: our write may have landed (a retried request),
        another launch recorded its instance, or the deployment was stopped meanwhile."""
        latest = self._deployments.get(item.id)
        if latest.provider_instance_id == instance.id:
            return instance  # it was ours after all
        if latest.provider_instance_id:  # a duplicate of another attempt's: ours to pay
            provider.terminate(instance.id)
            if Status(latest.status) in COMING_UP:
                return self._adopt(latest, provider)
        else:  # stopped while it launched: charged as the provider bills it, to the terminate
            asked_at = self._clock()
            provider.terminate(instance.id)
            ended = midpoint(asked_at, self._clock())
            self._charge_once(latest, instance.price_per_hour, launched_at, ended)
        raise Cancelled(f"{item.id} was stopped while its instance was launched")

    def _charge_once(self, item: DeploymentItem, price, since: datetime, until: datetime) -> None:
        price = Decimal(price or 0)
        self._meters.charge_once(item.id, since, until, price, charge(price, since, until))

    def _adopt(self, item: DeploymentItem, provider: Provider, retried: bool) -> Instance | None:
        """The instance launched for this deployment by an earlier attempt, if any (a retried
        launch must never start a second one). Only a retry lists the account's instances for
        its name: a first launch costs the provider two calls (offers, launch), however many
        instances the account runs."""
        if item.provider_instance_id:
            instance = provider.get(item.provider_instance_id, port=int(item.deploy_config.port))
            if instance is None:
                raise InstanceLost(f"the recorded instance {item.provider_instance_id} is gone")
            return instance
        if not retried:
            return None
        wanted = instance_name(item.id, self._cloud.stage)
        found = next((i for i in provider.list_owned() if i.name == wanted), None)
        if found is not None and runs_agent(item):
            # Its agent holds a token this launch is about to replace: start afresh.
            provider.terminate(found.id)
            return None
        return found

    # --- deployments run by our node agent on the instance ---------------------------------

    def _bootstrap(self, item: DeploymentItem) -> AgentBootstrap | None:
        """A token for the node this instance will be (a new token on every launch attempt:
        only the instance launched now knows it)."""
        if not runs_agent(item):
            return None
        if not self._cloud.public_ws_url:
            raise InvalidRequest(
                "weights and command deployments run our node agent on the instance, which "
                "needs the control plane's public WebSocket URL (PRISM_PUBLIC_WS_URL)"
            )
        name = instance_name(item.id, self._cloud.stage)
        node = self._nodes.get(item.pinned_node_id) if item.pinned_node_id else None
        if node is not None:
            token = self._nodes.new_token(node)
        else:
            node, token = self._nodes.register(item.owner_id, name, dedicated_to=item.id)
            if not self._deployments.dedicate_node(item, node.id):
                self._nodes.retire(node.id)
                raise Cancelled(f"{item.id} changed while its node was registered")
        return AgentBootstrap(
            image=self._cloud.node_agent_image,
            token=token,
            ws_url=self._cloud.public_ws_url,
            api_url=self._cloud.public_api_url,
            name=name,
        )

    def _agent_phase(self, item: DeploymentItem, instance: Instance, state: dict) -> dict:
        """The instance is up: remember its public endpoint and wait for its agent."""
        self._deployments.record(item, endpoint_url=instance.endpoint_url)
        now = self._clock()
        connect_by = now + timedelta(seconds=self._cloud.health_grace_seconds)
        ready_by = now + timedelta(seconds=self._cloud.agent_start_seconds)
        return state | {
            "phase": "up",
            "health_deadline": connect_by.isoformat(),
            "start_deadline": ready_by.isoformat(),
        }

    def _agent_progress(self, item: DeploymentItem, state: dict) -> dict:
        """Healthy once the agent reported the model ready; its failures (pull, start, crash)
        end the deployment through the node protocol, which ends this workflow too."""
        ready = item.status == Status.STARTING and item.healthy  # the agent said ready
        if item.endpoint_url and (ready or item.status in (Status.RUNNING, Status.UNHEALTHY)):
            return state | {"healthy": True}
        if not item.node_id:  # placing at hello can miss (a lost message): try again
            item = self._place(item) or item
        now = self._clock()
        if not item.node_id and now > datetime.fromisoformat(state["health_deadline"]):
            raise DeadlineExceeded(
                f"the node agent on the {item.target} instance did not connect within "
                f"{self._cloud.health_grace_seconds} s of it coming up (agent image "
                f"{self._cloud.node_agent_image}, control plane {self._cloud.public_ws_url})"
            )
        if now > datetime.fromisoformat(state["start_deadline"]):
            raise DeadlineExceeded(
                f"the model was not up within {self._cloud.agent_start_seconds} s of the "
                f"instance coming up (still {item.status}: {item.status_message or 'no news'})"
            )
        return state | {"healthy": False}

    def _launch_first_offer(
        self, item: DeploymentItem, provider: Provider
    ) -> tuple[Instance, datetime]:
        """The first offer with capacity, launched; and when the call that launched it began."""
        offers = provider.offers(item.gpu_type or "")[: self._cloud.max_offers]
        bootstrap = self._bootstrap(item)
        # An image gets the deployment's env at launch; our agent gets it over the protocol.
        env = self._secrets.open(item).env if bootstrap is None else {}
        spec = launch_spec(item, self._cloud.stage, bootstrap, env)
        tried = []
        called_at = self._clock()

        def launch(offer):  # the call that made the instance, after any 429 wait
            nonlocal called_at
            started = self._clock()
            instance = provider.launch(spec, offer)
            called_at = midpoint(started, self._clock())  # when the provider acted, best guess
            return instance

        for offer in offers:
            try:
                instance = with_short_rate_limit(lambda offer=offer: launch(offer))
            except CapacityError as exc:
                tried.append(f"{offer.gpu_type}{' in ' + offer.region if offer.region else ''}")
                logger.info("no capacity", extra={"offer": tried[-1], "why": str(exc)})
                continue
            if instance.price_per_hour is None:  # not reported yet: the offer's price
                instance = replace(instance, price_per_hour=offer.price_per_hour)
            return instance, called_at
        raise NoCapacity(
            f"no {item.gpu_type or 'GPU'} capacity at {item.target}"
            + (
                f" (tried {', '.join(tried)})"
                if tried
                else ": none is offered with capacity right now (or no such GPU type there)"
            )
        )


def _error_message(error: dict) -> str:
    """The message of a state machine Catch: Cause is the Lambda's error JSON, or text."""
    cause = error.get("Cause") or error.get("Error") or "provisioning failed"
    try:
        parsed = json.loads(cause)
    except (TypeError, ValueError):
        return str(cause)
    return parsed.get("errorMessage") or str(parsed) if isinstance(parsed, dict) else str(cause)


def _still_coming_up_to(target: Status):
    """Like lifecycle.towards, for a deployment still on its way up only."""

    def decide(item):
        status = Status(item.status)
        return target if status in COMING_UP and can_transition(status, target) else None

    return decide
