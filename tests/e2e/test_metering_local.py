"""Metering on the local platform: the ticker fires the real schedule, the drain delivers the
real moto queue to the worker, and a budget stops a billable deployment."""

import json
import time
from datetime import UTC, datetime, timedelta

import boto3
import pytest

from tests.e2e.conftest import start_platform, stop_platform

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    started = start_platform(tmp_path_factory.mktemp("metering"), tick=0.5)
    yield started
    stop_platform(started)


def start_billing(platform, deployment_id: str, price: str, since: datetime) -> None:
    """What cloud provisioning does at instance launch (the price the provider reported)."""
    table = boto3.resource(
        "dynamodb",
        endpoint_url=f"http://127.0.0.1:{platform.aws_port}",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    ).Table("prism-dev-deployments")
    table.update_item(
        Key={"id": deployment_id},
        UpdateExpression="SET billable = :b, price_per_hour_usd = :p, last_metered_at = :t",
        ExpressionAttributeValues={
            ":b": "1",
            ":p": __import__("decimal").Decimal(price),
            ":t": since.strftime("%Y-%m-%dT%H:%M:%S.%f+0000"),
        },
    )


def test_the_local_ticker_meters_and_the_budget_stops_it(platform):
    created = json.loads(
        platform.cli(
            "deploy",
            "create",
            "--name",
            "pricey",
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
    start_billing(platform, created["id"], "3600", datetime.now(UTC) - timedelta(seconds=1))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        detail = json.loads(
            platform.cli("deploy", "status", created["id"], "--json", check=True).stdout
        )
        if detail["status"] == "failed":
            break
        time.sleep(0.3)
    assert (detail["status"], detail["failure_reason"]) == ("failed", "budget_exceeded")
    # $1 a second against a $3 budget: stopped at the moment it ran out, give or take a tick.
    assert 3.0 <= detail["cost_accrued_usd"] <= 3.0 + 1.0
    costs = json.loads(platform.cli("deploy", "costs", created["id"], "--json", check=True).stdout)
    assert sum(e["amount_usd"] for e in costs["items"]) == pytest.approx(detail["cost_accrued_usd"])
