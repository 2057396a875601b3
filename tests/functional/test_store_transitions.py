"""Status changes are conditional writes: racing writers cannot both win, a late message
cannot resurrect a finished deployment, and random sequences only follow the table."""

import contextlib
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.errors import IllegalTransition
from chalicelib.lifecycle import TRANSITIONS, Status
from chalicelib.store.deployments import DeploymentRepository, StaleWrite
from chalicelib.store.models import DeployConfigAttribute, DeploymentItem


def new_item(repo, n=0, status=Status.PROVISIONING):
    return repo.create(
        DeploymentItem(
            id=f"dep_test{n}",
            owner_id="usr_1",
            name="m",
            target="prism_node",
            status=status.value,
            image="nginx",
            deploy_config=DeployConfigAttribute(port=8000, health_path="/health"),
        )
    )


@pytest.fixture
def repo(aws_backend):
    return DeploymentRepository()


def test_a_stale_copy_cannot_overwrite_a_newer_status(repo):
    item = new_item(repo)
    stale = repo.get(item.id)
    repo.transition(item, Status.STOPPED)
    with pytest.raises(StaleWrite):
        repo.transition(stale, Status.PULLING)
    assert repo.get(item.id).status == "stopped"


def test_late_ready_message_never_resurrects_a_stopped_deployment(repo):
    item = new_item(repo)
    repo.transition(item, Status.STOPPED)
    with pytest.raises(IllegalTransition):
        repo.transition_latest(item.id, lambda _: Status.RUNNING)
    assert repo.get(item.id).status == "stopped"


def test_of_many_racing_writers_exactly_one_wins(repo):
    item = new_item(repo)
    copies = [repo.get(item.id) for _ in range(8)]
    targets = [Status.PULLING, Status.STOPPED, Status.FAILED, Status.STARTING] * 2
    wins, losses, errors = [], [], []
    barrier = threading.Barrier(len(copies))

    def write(copy, target):
        barrier.wait()
        try:
            repo.transition(copy, target)
            wins.append(target)
        except StaleWrite:
            losses.append(target)
        except Exception as exc:  # anything else is a bug: show it
            errors.append(repr(exc))

    threads = [
        threading.Thread(target=write, args=pair) for pair in zip(copies, targets, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(wins) == 1 and len(losses) == 7
    final = repo.get(item.id)
    assert final.status == wins[0].value
    assert final.version == 2


def test_owner_status_index_key_follows_every_transition(repo):
    item = new_item(repo)
    repo.transition(item, Status.PULLING, node_id="node-a")
    stored = repo.get(item.id)
    assert stored.owner_status == "usr_1#pulling" and stored.node_id == "node-a"
    assert [d.id for d in DeploymentItem.by_owner_status.query("usr_1#pulling")] == [item.id]
    assert list(DeploymentItem.by_owner_status.query("usr_1#provisioning")) == []


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.sampled_from(list(Status)), min_size=1, max_size=12))
def test_random_sequences_against_the_store_follow_the_table(repo, events):
    item = new_item(repo, n=abs(hash(tuple(events))) % 10**9)
    observed = [Status(item.status)]
    for target in events:
        with contextlib.suppress(IllegalTransition):
            item, _ = repo.transition_latest(item.id, lambda _, t=target: t)
        observed.append(Status(repo.get(item.id).status))
    for before, after in zip(observed, observed[1:], strict=False):
        assert after == before or after in TRANSITIONS[before]
        if before.is_terminal():
            assert after == before
