"""Deployment statuses and the one transition table. Pure: no I/O.

Every status change in the code asks `check_transition`; the store then writes it
conditionally (expected status + version), so the table is enforced by DynamoDB itself.
"""

from enum import StrEnum

from chalicelib.errors import IllegalTransition


class Status(StrEnum):
    PROVISIONING = "provisioning"
    PULLING = "pulling"
    STARTING = "starting"
    RUNNING = "running"
    UNHEALTHY = "unhealthy"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"

    def is_terminal(self) -> bool:
        return self in TERMINAL


class FailureReason(StrEnum):
    CRASH = "crash"
    PULL_ERROR = "pull_error"
    PROVISION_ERROR = "provision_error"
    BUDGET_EXCEEDED = "budget_exceeded"
    START_ERROR = "start_error"
    NODE_LOST = "node_lost"
    NO_NODE = "no_node"


S = Status
TERMINAL = frozenset({S.STOPPED, S.FAILED})

# source status -> statuses it may move to. Anything not listed is illegal.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    # provisioning -> stopped: nothing was handed to a node or provider yet, nothing to tear down.
    S.PROVISIONING: frozenset({S.PULLING, S.STARTING, S.RUNNING, S.STOPPING, S.STOPPED, S.FAILED}),
    S.PULLING: frozenset({S.STARTING, S.RUNNING, S.STOPPING, S.FAILED}),
    S.STARTING: frozenset({S.RUNNING, S.STOPPING, S.FAILED}),
    # running/unhealthy -> starting: the node agent restarted it under its restart policy.
    S.RUNNING: frozenset({S.UNHEALTHY, S.STARTING, S.STOPPING, S.FAILED}),
    S.UNHEALTHY: frozenset({S.RUNNING, S.STARTING, S.STOPPING, S.FAILED}),
    S.STOPPING: frozenset({S.STOPPED, S.FAILED}),
    S.STOPPED: frozenset(),
    S.FAILED: frozenset(),
}

# Statuses in which something may still be running on a node or provider.
ACTIVE = frozenset(S) - TERMINAL
# On its way up: not serving yet, nobody asked it to stop.
COMING_UP = frozenset({S.PROVISIONING, S.PULLING, S.STARTING})


def can_transition(source: Status, target: Status) -> bool:
    return target in TRANSITIONS[source]


def check_transition(source: Status, target: Status) -> None:
    if not can_transition(source, target):
        raise IllegalTransition(f"a deployment cannot go from {source} to {target}")


def towards(target: Status):
    """A decide function for a read-decide-write: go to `target` if the table allows it from
    wherever the deployment is now, else leave it (late and duplicate messages land here)."""
    return lambda item: target if can_transition(Status(item.status), target) else None
