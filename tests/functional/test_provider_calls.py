"""Provider calls per launch and per terminate are O(1) (issue 17): a deployment's whole life
against the fake RunPod and Lambda Cloud, with many other instances in the account, never lists
the account's instances (only a retried launch would, to adopt its own), and each terminate
round is one terminate and one lookup by id."""

import pytest

from chalicelib.services import registry
from tests.cloud_sandbox import (
    create,
    reaches,
    wait_for_executions,
)

pytestmark = pytest.mark.clouds("plain")


LISTS = {"runpod": lambda r: r == "myself", "lambda": lambda r: r == ("GET", "/instances")}
LAUNCHES = {
    "runpod": lambda r: r == "podFindAndDeployOnDemand",
    "lambda": lambda r: r == ("POST", "/instance-operations/launch"),
}
TERMINATES = {
    "runpod": lambda r: r == "podTerminate",
    "lambda": lambda r: r == ("POST", "/instance-operations/terminate"),
}


@pytest.mark.parametrize("target", ["runpod", "lambda"])
def test_a_deployments_life_never_lists_the_account(api, fakes, target):
    fake = fakes[target]
    deployment_id = create(api, target)
    reaches(api, deployment_id, {"running"})
    assert api.delete(f"/api/v1/compute/deployments/{deployment_id}").status_code == 202
    reaches(api, deployment_id, {"stopped"})
    wait_for_executions()
    served = list(fake.requests)
    assert not [r for r in served if LISTS[target](r)], served
    assert len([r for r in served if LAUNCHES[target](r)]) == 1
    terminates = [r for r in served if TERMINATES[target](r)]
    assert 1 <= len(terminates) <= 2, served  # one per teardown round
    registry.cloud_upkeep().reap()  # the reaper does list the account (its job): so would we
    assert [r for r in fake.requests if LISTS[target](r)]
