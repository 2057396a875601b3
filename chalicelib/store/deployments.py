"""Deployment repository. Status changes are conditional writes on (status, version), so two
racing writers cannot both win and a late message cannot resurrect a finished deployment."""

import re
from collections.abc import Iterator
from decimal import Decimal
from enum import Enum

from pynamodb.exceptions import PutError, TransactWriteError, UpdateError
from pynamodb.transactions import TransactWrite

from chalicelib.errors import Conflict, NotFound
from chalicelib.lifecycle import ACTIVE, COMING_UP, Status, check_transition
from chalicelib.store.meter_models import MeterItem
from chalicelib.store.model_base import utcnow
from chalicelib.store.models import DeploymentItem, SecretItem
from chalicelib.store.nodes import gpu_claim, release_gpus
from chalicelib.store.secrets import split_weights_source
from chalicelib.store.shards import (
    AWAITING_ACK_SHARDS,
    BILLING_SHARDS,
    CLOUD_SHARDS,
    UNPLACED_SHARDS,
    shard_of,
)
from chalicelib.store.status_history import status_history_after
from chalicelib.store.writes import (
    cancelled_by_a_condition,
    is_condition_failure,
    transaction_connection,
    update_if,
)

MAX_RETRIES = 5
DEPLOYMENT_ID = re.compile(r"^dep_[0-9a-f]{16}$")  # what new_deployment_id() makes


class StaleWrite(Conflict):
    """Someone else changed the deployment between our read and our write."""


class Assignment(Enum):
    ASSIGNED = "assigned"
    GPU_TAKEN = "gpu_taken"  # another deployment claimed the GPU first: choose again
    MOVED = "moved"  # the deployment was placed elsewhere, stopped or ended meanwhile


def owner_status_key(owner_id: str, status: str) -> str:
    return f"{owner_id}#{status}"


def billing_shard(deployment_id: str) -> str:
    """The billable index key a deployment's meter is filed under while it is billed: one
    shared key would put every billed deployment on one index partition (1,000 writes a second
    at most); each key costs the tick one Query a page."""
    return shard_of(deployment_id, BILLING_SHARDS)


class DeploymentRepository:
    def create(self, item: DeploymentItem, secret: SecretItem | None = None) -> DeploymentItem:
        """A new deployment, with its sealed secrets (store/secrets.py) in the same transaction:
        neither is written without the other."""
        item.owner_status = owner_status_key(item.owner_id, item.status)
        item.status_history = status_history_after(None, item.status, item.created_at)
        if item.target == "prism_node" and not item.node_id:
            item.unplaced = shard_of(item.id, UNPLACED_SHARDS)
        if item.target != "prism_node":
            item.cloud = shard_of(item.id, CLOUD_SHARDS)
        new = DeploymentItem.id.does_not_exist()
        try:
            if secret is None:
                item.save(condition=new)
                return item
            with TransactWrite(connection=transaction_connection()) as transaction:
                transaction.save(item, condition=new)
                transaction.save(secret, condition=SecretItem.deployment_id.does_not_exist())
        except PutError as exc:
            if is_condition_failure(exc):
                raise Conflict(f"deployment {item.id} already exists") from None
            raise
        except TransactWriteError as exc:
            if cancelled_by_a_condition(exc):
                raise Conflict(f"deployment {item.id} already exists") from None
            raise
        return item

    def get(self, deployment_id: str) -> DeploymentItem | None:
        try:
            return DeploymentItem.get(deployment_id, consistent_read=True)
        except DeploymentItem.DoesNotExist:
            return None

    def get_owned(self, owner_id: str, deployment_id: str) -> DeploymentItem:
        """Another owner's deployment is reported exactly like a missing one."""
        item = self.get(deployment_id) if DEPLOYMENT_ID.match(deployment_id) else None
        if item is None or item.owner_id != owner_id:
            raise NotFound(f"deployment {deployment_id} not found")
        return item

    def transition(self, item: DeploymentItem, target: Status, **changes) -> DeploymentItem:
        """Move `item` to `target` if the table allows it and nobody wrote since we read it. A
        terminal status deletes the deployment's secrets in the same write."""
        check_transition(Status(item.status), target)
        now = utcnow()
        values = {
            "status": target.value,
            "owner_status": owner_status_key(item.owner_id, target.value),
            # Read with the status the write is conditioned on: no other transition between.
            "status_history": status_history_after(item.status_history, target.value, now),
            "updated_at": now,
        }
        if item.unplaced:  # any status change ends the wait for a node
            values["unplaced"] = None
        if item.billable and target.is_terminal():  # billed from before meters: it ends here
            values["billable"] = None
        # A cloud deployment's end also ends its meter's billing (read before the write
        # clears `cloud`). Teardown has ended it already, unless the end did not pass there.
        ends_billing = bool(item.cloud) and target.is_terminal()
        if ends_billing:
            values["cloud"] = None
        if item.awaiting_ack:  # any status change is the node's answer (or makes it moot)
            values["awaiting_ack"] = None
        if target.is_terminal():
            values |= _plaintext_secrets_gone(item)
        values |= changes
        condition = DeploymentItem.status == item.status
        try:
            if target.is_terminal() and item.has_sealed_secrets():
                self._end_with_secrets(item, values, condition)
            else:
                item.update(actions=_set_actions(values), condition=condition)
        except UpdateError as exc:
            if is_condition_failure(exc):
                raise StaleWrite(f"deployment {item.id} changed concurrently") from None
            raise
        except TransactWriteError as exc:
            if cancelled_by_a_condition(exc):
                raise StaleWrite(f"deployment {item.id} changed concurrently") from None
            raise
        if target.is_terminal() and item.node_id and item.gpu_indices:
            # Every end passes here, so no path can keep a GPU. A crash before this leaves a
            # stale claim, which placement reclaims when it finds the node full.
            release_gpus(item.node_id, item.id, list(item.gpu_indices))
        if ends_billing:
            _stop_meter(item.id)
        return item

    @staticmethod
    def _end_with_secrets(item: DeploymentItem, values: dict, condition) -> None:
        """The terminal write and the deletion of its sealed secrets, in one transaction: a
        deployment is over exactly when its secrets are gone (deleting a missing one is no
        error, so a repeated end is harmless)."""
        with TransactWrite(connection=transaction_connection()) as transaction:
            transaction.update(item, _set_actions(values), condition)
            transaction.delete(SecretItem(deployment_id=item.id))
        for name, value in values.items():  # what the update returned, as item.update() does
            setattr(item, name, value)

    def transition_latest(
        self, deployment_id: str, decide, first: DeploymentItem | None = None, **changes
    ) -> tuple[DeploymentItem, bool]:
        """Read-decide-write with retries. `decide(item)` returns the target status, or None to
        leave the deployment as it is; `first` saves the first read when the caller has one.
        Returns (item, whether it changed)."""
        for attempt in range(MAX_RETRIES):
            item = first if attempt == 0 and first is not None else self.get(deployment_id)
            if item is None:
                raise NotFound(f"deployment {deployment_id} not found")
            target = decide(item)
            if target is None:
                return item, False
            try:
                return self.transition(item, target, **changes), True
            except StaleWrite:
                continue
        raise Conflict(f"deployment {deployment_id} is changing too fast; try again")

    def record(self, item: DeploymentItem, **changes) -> DeploymentItem:
        """Update fields that are not the status (health, progress), only while the deployment
        is not over: a late report never rewrites a finished one."""
        active = [s.value for s in ACTIVE]
        update_if(item, _set_actions(changes), DeploymentItem.status.is_in(*active))
        return item

    def assign_node(
        self, item: DeploymentItem, node_id: str, message: str, gpu_indices: list[int] | None
    ) -> Assignment:
        """Place a waiting deployment on a node and claim its GPUs there, in one transaction:
        both happen or neither (a DynamoDB transaction is all-or-nothing), so no crash or race
        can leave a deployment on a GPU it does not hold, or a claim nobody was assigned."""
        now, awaiting = utcnow(), shard_of(item.id, AWAITING_ACK_SHARDS)
        actions = [
            DeploymentItem.node_id.set(node_id),
            DeploymentItem.unplaced.remove(),
            DeploymentItem.status_message.set(message),
            DeploymentItem.updated_at.set(now),
            DeploymentItem.assigned_at.set(now),
            DeploymentItem.awaiting_ack.set(awaiting),
        ]
        waiting = (DeploymentItem.status == Status.PROVISIONING.value) & (
            DeploymentItem.node_id.does_not_exist()
        )
        if not gpu_indices:
            return Assignment.ASSIGNED if update_if(item, actions, waiting) else Assignment.MOVED
        actions.append(DeploymentItem.gpu_indices.set(gpu_indices))
        node, claim_actions, claim_free = gpu_claim(node_id, item.id, gpu_indices)
        try:
            with TransactWrite(connection=transaction_connection()) as transaction:
                transaction.update(item, actions, waiting, add_version_condition=False)
                transaction.update(node, claim_actions, claim_free)
        except TransactWriteError as exc:
            reasons = exc.cancellation_reasons  # one per item: the deployment, then the node
            if exc.cause_response_code != "TransactionCanceledException" or not reasons:
                raise
            moved = reasons[0] is not None and reasons[0].code == "ConditionalCheckFailed"
            # Otherwise the claim was refused, or a concurrent transaction on the same node
            # (TransactionConflict) won: either way another placement got there first.
            return Assignment.MOVED if moved else Assignment.GPU_TAKEN
        item.node_id, item.gpu_indices, item.status_message = node_id, gpu_indices, message
        item.unplaced, item.assigned_at, item.awaiting_ack = None, now, awaiting
        return Assignment.ASSIGNED

    def unassign(
        self, item: DeploymentItem, node_id: str, message: str, unanswered: bool = False
    ) -> bool:
        """Give a deployment back to the waiting pool and free its GPUs there (its node turned
        out to be gone, or never answered: `unanswered` counts that). False when it is no
        longer waiting on that node, from that assignment."""
        held = list(item.gpu_indices or [])
        shard = shard_of(item.id, UNPLACED_SHARDS)
        waiting = [DeploymentItem.unplaced.set(shard)] if item.target == "prism_node" else []
        counted = [DeploymentItem.unacked_deploys.add(1)] if unanswered else []
        condition = (DeploymentItem.status == Status.PROVISIONING.value) & (
            DeploymentItem.node_id == node_id
        )
        if item.assigned_at is not None:  # this assignment, not a later one to the same node
            condition &= DeploymentItem.assigned_at == item.assigned_at
        actions = [
            DeploymentItem.node_id.remove(),
            DeploymentItem.gpu_indices.remove(),
            DeploymentItem.assigned_at.remove(),
            DeploymentItem.awaiting_ack.remove(),
            DeploymentItem.status_message.set(message),
            *waiting,
            *counted,
        ]
        if not update_if(item, actions, condition):
            return False
        release_gpus(node_id, item.id, held)
        return True

    def awaiting_ack(self, assigned_before) -> Iterator[DeploymentItem]:
        """Deployments sent to a node before then that the node has not reported on: a Query
        per shard of the sparse index, page by page."""
        condition = DeploymentItem.assigned_at < assigned_before
        for shard in AWAITING_ACK_SHARDS:
            yield from DeploymentItem.awaiting_ack_index.query(shard, condition)

    def get_many(self, deployment_ids) -> dict[str, DeploymentItem]:
        """Consistent reads of several deployments, by id (missing ones left out)."""
        found = DeploymentItem.batch_get(set(deployment_ids), consistent_read=True)
        return {item.id: item for item in found}

    def on_node(self, node_id: str) -> list[DeploymentItem]:
        """Deployments placed on a node that are not over yet."""
        active = [s.value for s in ACTIVE]
        return list(
            DeploymentItem.by_node.query(
                node_id, filter_condition=DeploymentItem.status.is_in(*active)
            )
        )

    def stop_billing(self, item: DeploymentItem) -> DeploymentItem:
        """Its meter out of the billable index: the metering tick charges it no more (its
        provider stopped billing). The meter stays, with the final total."""
        _stop_meter(item.id)
        if item.billable:  # billed from before meters, and not moved to one
            update_if(item, [DeploymentItem.billable.remove()], DeploymentItem.id.exists())
        return item

    def cloud_active(self) -> Iterator[DeploymentItem]:
        """Cloud deployments that are not over, by Query on each shard of their sparse index,
        page by page (never all of them in memory)."""
        for shard in CLOUD_SHARDS:
            yield from DeploymentItem.cloud_index.query(shard)

    def record_instance(
        self, item: DeploymentItem, instance_id: str, price, launched_at, region=None
    ) -> bool:
        """Remember the provider instance and start billing it on its meter, in one
        transaction that holds only while the deployment is still coming up without an
        instance (False: it was stopped meanwhile, and the caller must terminate what it
        launched): an instance is recorded exactly when it is billed. An agent on the instance
        can already have reported pulling or starting by then."""
        changes = {
            "provider_instance_id": instance_id,
            "launched_at": launched_at,
            "status_message": f"instance {instance_id} launched",
        } | ({"provider_region": region} if region else {})
        coming_up = (
            DeploymentItem.status.is_in(*(s.value for s in COMING_UP))
            & DeploymentItem.provider_instance_id.does_not_exist()
        )
        meter = MeterItem(deployment_id=item.id)
        for _ in range(MAX_RETRIES):
            try:
                with TransactWrite(connection=transaction_connection()) as transaction:
                    transaction.update(
                        item, _set_actions(changes), coming_up, add_version_condition=False
                    )
                    transaction.update(meter, _start_billing(item, price, launched_at))
            except TransactWriteError as exc:
                reasons = exc.cancellation_reasons  # the deployment's first
                if exc.cause_response_code != "TransactionCanceledException" or not reasons:
                    raise
                if reasons[0] is not None and reasons[0].code == "ConditionalCheckFailed":
                    return False
                continue  # another transaction on the same items (TransactionConflict)
            for name, value in changes.items():  # what the update wrote, as item.update() does
                setattr(item, name, value)
            return True
        raise Conflict(f"deployment {item.id} is changing too fast; try again")

    def mark_launch_requested(self, item: DeploymentItem, at) -> None:
        """The first time launch asks a provider for an instance (kept by later attempts)."""
        update_if(
            item,
            [DeploymentItem.launch_requested_at.set(at)],
            DeploymentItem.status.is_in(*(s.value for s in COMING_UP))
            & DeploymentItem.launch_requested_at.does_not_exist(),
        )

    def dedicate_node(self, item: DeploymentItem, node_id: str) -> bool:
        """Pin a cloud deployment to the node its instance will run (one per deployment: False
        when an earlier launch attempt pinned one, or the deployment is no longer
        provisioning)."""
        return update_if(
            item,
            [DeploymentItem.pinned_node_id.set(node_id)],
            (DeploymentItem.status == Status.PROVISIONING.value)
            & DeploymentItem.pinned_node_id.does_not_exist(),
        )

    def unplaced(self, created_before=None) -> Iterator[DeploymentItem]:
        """prism_node deployments waiting for a node (created before a time: only those), from
        every shard of their sparse index, page by page."""
        condition = None if created_before is None else (DeploymentItem.created_at < created_before)
        for shard in UNPLACED_SHARDS:
            yield from DeploymentItem.unplaced_index.query(shard, condition)

    def waiting_for(self, owner_id: str) -> Iterator[DeploymentItem]:
        """One owner's deployments waiting for a node: a Query of that owner's provisioning
        deployments, so a node's hello reads nothing of other owners'."""
        key = owner_status_key(owner_id, Status.PROVISIONING.value)
        waiting = DeploymentItem.unplaced.exists()
        return DeploymentItem.by_owner_status.query(key, filter_condition=waiting)


def _start_billing(item: DeploymentItem, price, since) -> list:
    """The meter's update that starts billing at `since`: created with a total of 0, or kept
    with its total and newest charges if it exists (billed before, under an earlier instance)."""
    budget = (
        [] if item.budget_max_usd is None else [MeterItem.budget_max_usd.set(item.budget_max_usd)]
    )
    return [
        MeterItem.billable.set(billing_shard(item.id)),
        MeterItem.price_per_hour_usd.set(price),
        MeterItem.last_metered_at.set(since),
        MeterItem.cost_accrued_usd.set(MeterItem.cost_accrued_usd | Decimal(0)),
        # the charge's condition measures the tail: it must exist before the first
        MeterItem.ledger_tail.set(MeterItem.ledger_tail | []),
        *budget,
    ]


def _stop_meter(deployment_id: str) -> None:
    """Out of the meters' billable index (a deployment without a meter is left without one)."""
    update_if(
        MeterItem(deployment_id=deployment_id),
        [MeterItem.billable.remove()],
        MeterItem.billable.exists(),
    )


def _plaintext_secrets_gone(item: DeploymentItem) -> dict:
    """What an item older than sealed secrets loses when it ends: its plaintext env var values
    and its weights URL's query string."""
    gone = {}
    if item.legacy_env():
        gone["env_vars"] = None
    public, query = split_weights_source(item.weights_source)
    if query:
        gone["weights_source"] = public
    return gone


def _set_actions(changes: dict) -> list:
    return [
        getattr(DeploymentItem, name).remove()
        if value is None
        else getattr(DeploymentItem, name).set(value)
        for name, value in changes.items()
    ]
