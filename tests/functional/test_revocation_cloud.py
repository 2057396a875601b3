"""Deleting a user tears its cloud deployments down, through the real teardown state machine
against the fake providers: nothing keeps running, nothing keeps billing, and what ran is
charged exactly."""

import time

import pytest

from chalicelib.store.deployments import DeploymentRepository
from chalicelib.store.metering import MeteringRepository
from tests.cloud_sandbox import (
    BILLING_TOLERANCE,
    TERMINAL,
    create,
    reaches,
    wait_for_executions,
)
from tests.functional.test_revocation import accounts

pytestmark = pytest.mark.clouds("plain")


def stored_status_reaches(deployment_id, wanted, timeout=30.0):
    """The owner's key is gone, so read the table, not the API."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        item = DeploymentRepository().get(deployment_id)
        if item.status in wanted:
            return item
        time.sleep(0.2)
    raise AssertionError(f"{deployment_id} never reached {wanted}: {item.status}")


@pytest.mark.parametrize("target", ["runpod", "lambda"])
def test_a_deleted_users_cloud_deployments_are_torn_down_and_billed_exactly(
    api, users, fakes, target
):
    owner = users.owner_of_key(api.key)
    running = create(api, target)
    reaches(api, running, {"running"})
    coming_up = create(api, target, name="late")  # its launch may be under way right now

    report = accounts([]).delete_user(owner)

    assert set(report.deployments_stopped) == {running, coming_up}
    assert api.get("/api/v1/compute/deployments").status_code == 401
    for deployment_id in (running, coming_up):
        assert stored_status_reaches(deployment_id, TERMINAL).status in TERMINAL
    wait_for_executions()
    fake = fakes[target]
    live = fake.live_pods() if target == "runpod" else fake.live_instances()
    assert live == []
    meters = MeteringRepository().meters([running, coming_up])
    charged = sum(meter.cost_accrued_usd for meter in meters.values())
    billed = fake.total_bill()
    assert billed > 0 and abs(charged - billed) <= 2 * BILLING_TOLERANCE, (charged, billed)
