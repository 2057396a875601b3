"""A cloud deployment whose agent restarts its model: the instance keeps running, so it stays
billed (once per period) while it is starting again, and ends through teardown only when the
agent gives up."""

from decimal import Decimal

import pytest

from chalicelib.services import registry
from chalicelib.store.metering import BillableEntry, MeteringRepository
from chalicelib.store.model_base import utcnow
from tests.cloud_sandbox import (
    TERMINAL,
    assert_nothing_leaked_and_billed_exactly,
    detail,
    reaches,
)
from tests.functional.test_cloud_agent import (
    agent_of,
    brought_up,
    create_weights,
    wait_launched,
)


@pytest.fixture
def app():
    from app import app as chalice_app

    return chalice_app


pytestmark = pytest.mark.clouds("agent")


def charge_now(deployment_id) -> Decimal | None:
    meter = MeteringRepository().meter(deployment_id)
    return registry.metering().meter(BillableEntry.of(meter), utcnow())


def test_a_restarting_cloud_deployment_stays_billed_and_fails_only_when_the_agent_gives_up(
    api, app, fakes
):
    deployment_id = create_weights(api)
    wait_launched(fakes, "runpod", api, deployment_id)
    agent = agent_of(app, fakes, "runpod", deployment_id, api)
    brought_up(agent, deployment_id)
    endpoint = reaches(api, deployment_id, {"running"})["endpoint_url"]

    agent.say(
        type="deployment_restarted",
        deployment_id=deployment_id,
        restarts=1,
        cause="crash",
        exit_code=1,
        message="CUDA out of memory",
    )
    restarting = detail(api, deployment_id)
    assert (restarting["status"], restarting["restarts"]) == ("starting", 1)
    assert deployment_id in {meter.deployment_id for meter in MeteringRepository().billable()}
    charged = charge_now(deployment_id)
    assert charged is not None and charged > Decimal(str(restarting["cost_accrued_usd"]))

    agent.say(
        type="deployment_ready", deployment_id=deployment_id, endpoint_url="http://10.1.2.3:1"
    )
    back = detail(api, deployment_id)
    assert (back["status"], back["endpoint_url"], back["restarts"]) == ("running", endpoint, 1)

    agent.say(
        type="deployment_stopped",
        deployment_id=deployment_id,
        reason="crash",
        exit_code=1,
        message="gave up after 1 restart",
    )
    failed = reaches(api, deployment_id, TERMINAL)
    assert (failed["status"], failed["failure_reason"], failed["restarts"]) == (
        "failed",
        "crash",
        1,
    )
    assert_nothing_leaked_and_billed_exactly(fakes["runpod"], api, [deployment_id])
