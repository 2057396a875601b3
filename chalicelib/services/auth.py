"""Who is calling (`Authorization: Bearer <api key>` -> owner id), and the operator's actions
on users and keys (`prism admin revoke-key`, `delete-user`)."""

from collections.abc import Callable
from dataclasses import dataclass, field

from chalicelib.errors import Conflict, NotFound, PrismError, Unauthorized, ValidationFailed
from chalicelib.lifecycle import Status
from chalicelib.logs import logger
from chalicelib.schemas import CLOUD_TARGETS
from chalicelib.store.deployment_pages import owned_page
from chalicelib.store.deployments import DeploymentRepository
from chalicelib.store.models import ApiKeyItem, DeploymentItem
from chalicelib.store.nodes import NodeRepository
from chalicelib.store.users import UnknownKeyReference, UserRepository, key_id


class AuthService:
    def __init__(self, users: UserRepository):
        self._users = users

    def owner_for(self, authorization: str | None) -> str:
        if not authorization:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthorized("malformed Authorization header: use 'Bearer <key>'")
        if len(key) > 256:
            raise Unauthorized("invalid API key")
        owner_id = self._users.owner_of_key(key)
        if owner_id is None:
            raise Unauthorized("invalid API key")
        return owner_id


OWNER_DELETED = "stopped: its owner was deleted"
PASSES = 3  # a request authenticated just before the keys went may still create something


@dataclass
class UserDeletion:
    """What `delete_user` did."""

    user_id: str
    user_existed: bool = False
    keys_revoked: list[str] = field(default_factory=list)  # key ids
    nodes_removed: list[str] = field(default_factory=list)
    connections_closed: list[str] = field(default_factory=list)
    connections_not_closed: list[str] = field(default_factory=list)
    deployments_stopped: dict[str, str] = field(default_factory=dict)  # id -> status after
    errors: list[str] = field(default_factory=list)

    @property
    def found_anything(self) -> bool:
        return bool(
            self.user_existed
            or self.keys_revoked
            or self.nodes_removed
            or self.deployments_stopped
            or self.connections_closed
        )


class Accounts:
    """Operator actions on users and their keys.

    Deleting a user, in this order, each step repeated until a pass finds nothing (a request
    authenticated just before its keys went may still register a node or create a deployment):

    1. its API keys are deleted: the next request with one is a 401;
    2. its active deployments are stopped as `DELETE` would stop them: a cloud deployment goes
       to `stopping` and teardown (its instance is terminated and charged up to then, so
       nothing keeps billing); a deployment on a node is told to stop while its node is still
       connected;
    3. its nodes are deleted with their tokens and their connections forgotten: every further
       message on one is answered `unknown_connection` and changes nothing, a reconnect is
       refused (401); live connections are closed through the management API
       (`close_connection`, when the caller has it);
    4. its node deployments still `stopping` end `stopped` (their node can no longer confirm);
    5. the user's item is deleted. Deployments and their ledgers stay, as records.
    """

    def __init__(
        self,
        users: UserRepository,
        nodes: NodeRepository,
        deployments: DeploymentRepository,
        stop: Callable[[str, str], DeploymentItem],
        end_stopped: Callable[[DeploymentItem, str], None],
        close_connection: Callable[[str], bool] | None = None,
    ):
        self._users = users
        self._nodes = nodes
        self._deployments = deployments
        self._stop = stop
        self._end_stopped = end_stopped
        self._close = close_connection

    def list_keys(self, user_id: str) -> list[ApiKeyItem]:
        return self._users.keys_of(user_id)

    def revoke_key(self, reference: str, user_id: str | None = None) -> ApiKeyItem:
        """The one key `reference` names (the key, its id or its display prefix): deleted, so
        it stops working at once."""
        try:
            found = self._users.find_keys(reference, user_id)
        except UnknownKeyReference as exc:
            raise ValidationFailed(str(exc), fields={"key": "not a key reference"}) from None
        if not found:
            whose = f" of {user_id}" if user_id else ""
            raise NotFound(f"no key{whose} matches {reference}")
        if len(found) > 1:
            names = ", ".join(f"{key_id(k.key_hash)} ({k.owner_id})" for k in found)
            raise Conflict(
                f"{reference} matches {len(found)} keys: {names}; name one by its key id"
            )
        self._users.delete_key(found[0])
        logger.info("api key revoked", extra={"key_id": key_id(found[0].key_hash)})
        return found[0]

    def delete_user(self, user_id: str) -> UserDeletion:
        report = UserDeletion(user_id, user_existed=self._users.get_user(user_id) is not None)
        for _ in range(PASSES):
            if not self._one_pass(user_id, report):
                break
        self._users.delete_user(user_id)
        logger.info(
            "user deleted",
            extra={
                "user_id": user_id,
                "keys": len(report.keys_revoked),
                "nodes": len(report.nodes_removed),
                "deployments": len(report.deployments_stopped),
            },
        )
        return report

    def _one_pass(self, user_id: str, report: UserDeletion) -> bool:
        """True when it found something to do (so another pass may find more)."""
        found = False
        for key in self._users.keys_of(user_id):
            found = True
            if self._users.delete_key(key):
                report.keys_revoked.append(key_id(key.key_hash))
        for item in self._active(user_id):
            found = found or item.status != Status.STOPPING  # a stopping one is on its way
            try:
                stopped = self._stop(user_id, item.id)
            except PrismError as exc:  # e.g. changing too fast: the next pass tries again
                report.errors.append(f"{item.id}: {exc.message}")
                continue
            report.deployments_stopped[item.id] = stopped.status
        nodes, connection_ids = self._nodes.revoke_owned(user_id)
        found = found or bool(nodes or connection_ids)
        report.nodes_removed += [node.id for node in nodes]
        for connection_id in sorted(connection_ids):
            closed = self._close is not None and self._close(connection_id)
            (report.connections_closed if closed else report.connections_not_closed).append(
                connection_id
            )
        for item in self._active(user_id):
            if item.target not in CLOUD_TARGETS and item.status == Status.STOPPING:
                try:
                    self._end_stopped(item, OWNER_DELETED)
                except PrismError as exc:
                    report.errors.append(f"{item.id}: {exc.message}")
                    continue
                report.deployments_stopped[item.id] = Status.STOPPED.value
        return found

    def _active(self, user_id: str) -> list[DeploymentItem]:
        items, cursor = [], None
        while True:
            page = owned_page(user_id, None, 100, cursor)
            items += [i for i in page.items if not Status(i.status).is_terminal()]
            if page.cursor is None:
                return items
            cursor = page.cursor
