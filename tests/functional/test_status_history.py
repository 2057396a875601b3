"""A deployment's statuses with when each began: written with each transition, bounded,
returned oldest first on the detail and the list."""

from datetime import UTC, datetime

from chalicelib.lifecycle import Status
from chalicelib.store.deployments import DeploymentRepository
from chalicelib.store.models import DeploymentItem
from chalicelib.store.status_history import STATUS_HISTORY_MAX

BASE = "/api/v1/compute/deployments"


def _history(api, deployment_id):
    detail = api.get(f"{BASE}/{deployment_id}").data
    return [(c["status"], datetime.fromisoformat(c["at"])) for c in detail["status_history"]]


def test_each_transition_is_kept_with_when_it_began(api):
    created = api.post(BASE, {"name": "m", "image": "nginx"}).data
    assert [s for s, _ in _history(api, created["id"])] == ["provisioning"]
    began = datetime.fromisoformat(created["created_at"])
    assert _history(api, created["id"])[0][1] == _to_millis(began)
    repo = DeploymentRepository()
    for target in (Status.STARTING, Status.RUNNING, Status.STOPPING, Status.STOPPED):
        repo.transition(repo.get(created["id"]), target)
    history = _history(api, created["id"])
    assert [s for s, _ in history] == ["provisioning", "starting", "running", "stopping", "stopped"]
    times = [at for _, at in history]
    assert times == sorted(times)
    assert times[-1] == _to_millis(repo.get(created["id"]).updated_at)
    listed = api.get(BASE).data["items"][0]
    assert [c["status"] for c in listed["status_history"]][-1] == "stopped"


def test_a_flapping_deployment_keeps_its_first_status_and_the_newest(api):
    created = api.post(BASE, {"name": "m", "image": "nginx"}).data
    repo = DeploymentRepository()
    repo.transition(repo.get(created["id"]), Status.RUNNING)
    for _ in range(15):
        repo.transition(repo.get(created["id"]), Status.UNHEALTHY)
        repo.transition(repo.get(created["id"]), Status.RUNNING)
    every = ["provisioning", "running"] + ["unhealthy", "running"] * 15
    statuses = [s for s, _ in _history(api, created["id"])]
    assert statuses == every[:1] + every[1 - STATUS_HISTORY_MAX :]
    assert len(statuses) == STATUS_HISTORY_MAX


def test_a_deployment_from_before_the_history_shows_none(api):
    created = api.post(BASE, {"name": "m", "image": "nginx"}).data
    DeploymentRepository().get(created["id"]).update(
        actions=[DeploymentItem.status_history.remove()]
    )
    assert api.get(f"{BASE}/{created['id']}").data["status_history"] == []


def _to_millis(at: datetime) -> datetime:
    """What the history keeps of a time: milliseconds."""
    return datetime.fromtimestamp(round(at.timestamp() * 1000) / 1000, tz=UTC)
