"""Functional tests: the real Chalice app through chalice.test.Client on moto's in-process AWS,
with the tables (and the KMS key that seals deployments' secrets) created from
infra/resources.json."""

import json

import pytest
from chalice.test import Client
from moto import mock_aws

from chalicelib import aws
from chalicelib.config import settings
from chalicelib.services import registry
from chalicelib.services.catalog import CatalogService
from chalicelib.store.resources import ResourceRepository
from chalicelib.store.users import UserRepository
from prism.dev.infra import create_queues, create_tables
from prism.dev.moto_server import make_dynamodb_writes_atomic, make_transactions_cheap
from tests.cloud_sandbox import (
    agent_cloud_sandbox,
    cloud_sandbox,
    fake_clouds,
    fast_cloud_settings,
)
from tests.openapi_check import assert_matches_openapi

make_dynamodb_writes_atomic()  # as real DynamoDB: a conditional write is check-and-set
make_transactions_cheap()  # and a transaction's cost does not grow with the table


@pytest.fixture
def fakes():
    """Fake RunPod and Lambda Cloud on 127.0.0.1, by provider name (the cloud tests')."""
    with fake_clouds() as running:
        yield running


# A cloud test module says which sandbox it runs in: `pytestmark = pytest.mark.clouds("plain")`
# (deployments with images) or `clouds("agent")` (deployments whose instance runs the played
# node agent). Step Functions then really executes, against the fakes.
CLOUD_SANDBOXES = {
    "plain": lambda fakes: cloud_sandbox(fast_cloud_settings(fakes["runpod"], fakes["lambda"])),
    "agent": agent_cloud_sandbox,
}


@pytest.fixture
def aws_backend(request, monkeypatch):
    clouds = request.node.get_closest_marker("clouds")
    if clouds is not None:
        monkeypatch.setattr(registry, "settings", registry.settings)  # restored afterwards
        with CLOUD_SANDBOXES[clouds.args[0]](request.getfixturevalue("fakes")):
            yield
        return
    with mock_aws():
        registry.reset()
        create_tables(aws.client("dynamodb"), settings, kms=aws.client("kms"))  # + secrets key
        create_queues(aws.client("sqs"), settings.stage)
        CatalogService(ResourceRepository()).seed()
        yield
        registry.reset()


@pytest.fixture
def client(aws_backend):
    from app import app

    with Client(app) as test_client:
        yield test_client


class Api:
    """A tiny helper so tests read like requests: api.post(path, body, key=...)."""

    def __init__(self, client, key):
        self.client = client
        self.key = key

    def _headers(self, key, extra):
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return headers | (extra or {})

    def request(self, method, path, body=None, key="default", headers=None, raw=None):
        key = self.key if key == "default" else key
        payload = raw if raw is not None else (json.dumps(body) if body is not None else None)
        response = self.client.http.request(
            method, path, body=payload, headers=self._headers(key, headers)
        )
        response.data = json.loads(response.body) if response.body else None
        if path.startswith("/api/v1/") and path != "/api/v1/openapi.json":
            assert_matches_openapi(method, path, response.status_code, response.data)
        return response

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)


@pytest.fixture
def users(aws_backend):
    return UserRepository()


@pytest.fixture
def api(client, users):
    return Api(client, users.create_user_with_key("alice").api_key)


@pytest.fixture
def other_api(client, users):
    return Api(client, users.create_user_with_key("bob").api_key)
