"""Metering on the local platform: the ticker fires the real schedule, the drain delivers the
real moto queue to the worker, and a budget stops a billable deployment."""

import json
import time

import pytest

from tests.e2e.conftest import free_port, start_platform, stop_platform

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    fake_ports = [str(free_port()), str(free_port())]
    started = start_platform(
        tmp_path_factory.mktemp("metering"),
        tick=0.5,
        args=(
            "--no-node",
            "--fake-clouds",
            "--runpod-port",
            fake_ports[0],
            "--lambda-port",
            fake_ports[1],
            "--fake-price-per-hour",
            "3600",  # $1 a second
        ),
    )
    yield started
    stop_platform(started)


def test_a_cloud_deployment_is_metered_and_its_budget_stops_it(platform):
    """Provisioned on the fake RunPod by the real state machine on moto; the ticker meters
    it; the budget stops it through teardown, which charges up to the confirmed end."""
    created = json.loads(
        platform.cli(
            "deploy",
            "create",
            "--name",
            "metered",
            "--image",
            "acme/llm:1",
            "--target",
            "runpod",
            "--gpu",
            "A100",
            "--budget",
            "3",
            "--json",
            check=True,
        ).stdout
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        detail = json.loads(
            platform.cli("deploy", "status", created["id"], "--json", check=True).stdout
        )
        if detail["status"] == "failed":
            break
        time.sleep(0.3)
    assert (detail["status"], detail["failure_reason"]) == ("failed", "budget_exceeded")
    # $1 a second against a $3 budget: the stop starts the moment it runs out; the instance
    # bills (and is charged) until its termination is confirmed, a few seconds later.
    assert 3.0 <= detail["cost_accrued_usd"] <= 3.0 + 6.0
    costs = json.loads(platform.cli("deploy", "costs", created["id"], "--json", check=True).stdout)
    assert sum(e["amount_usd"] for e in costs["items"]) == pytest.approx(detail["cost_accrued_usd"])
