"""The transition table, and random event sequences run against it (hypothesis)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib.errors import IllegalTransition
from chalicelib.lifecycle import ACTIVE, TERMINAL, TRANSITIONS, Status, check_transition


def test_every_status_has_a_row():
    assert set(TRANSITIONS) == set(Status)


def test_terminal_statuses_go_nowhere():
    assert TERMINAL == {Status.STOPPED, Status.FAILED}
    for status in TERMINAL:
        assert TRANSITIONS[status] == frozenset()
        assert status.is_terminal()


def test_every_active_status_can_fail_and_be_stopped():
    for status in ACTIVE:
        assert Status.FAILED in TRANSITIONS[status]
        assert Status.STOPPING in TRANSITIONS[status] or status is Status.STOPPING


def test_happy_path_is_allowed():
    path = [
        "provisioning",
        "pulling",
        "starting",
        "running",
        "unhealthy",
        "running",
        "stopping",
        "stopped",
    ]
    for source, target in zip(path, path[1:], strict=False):
        check_transition(Status(source), Status(target))


def test_a_restart_goes_back_to_starting_and_up_again():
    """The node agent restarts a crashed or too-long-unhealthy model under its restart policy."""
    path = ["running", "starting", "running", "unhealthy", "starting", "running", "stopping"]
    for source, target in zip(path, path[1:], strict=False):
        check_transition(Status(source), Status(target))


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("stopping", "starting"),
        ("failed", "starting"),
        ("stopped", "starting"),
        ("stopped", "running"),
        ("failed", "running"),
        ("stopped", "stopping"),
        ("running", "pulling"),
        ("stopping", "running"),
        ("running", "provisioning"),
        ("pulling", "stopped"),
        ("running", "stopped"),
    ],
)
def test_illegal_transitions_raise(source, target):
    with pytest.raises(IllegalTransition):
        check_transition(Status(source), Status(target))


@given(st.lists(st.sampled_from(list(Status)), max_size=40))
def test_random_event_sequences_only_follow_the_table(events):
    """Apply any sequence of requested targets the way the store does: a legal one moves the
    deployment, an illegal one is refused and changes nothing."""
    status = Status.PROVISIONING
    history = [status]
    for target in events:
        try:
            check_transition(status, target)
        except IllegalTransition:
            continue
        status = target
        history.append(status)
    for before, after in zip(history, history[1:], strict=False):
        assert after in TRANSITIONS[before]
    for i, past in enumerate(history):
        if past.is_terminal():
            assert history[i:] == [past], "a terminal status was left"
