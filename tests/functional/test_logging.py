"""Every request leaves structured JSON log lines keyed by owner_id and deployment_id, and no
secret (API key, env var value) ever reaches the logs."""

import io
import json
import logging

import pytest

from chalicelib.logs import logger

BASE = "/api/v1/compute/deployments"


@pytest.fixture
def log_lines():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logger.registered_formatter)
    level = logger.log_level
    logger.addHandler(handler)
    logger.setLevel("INFO")
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.setLevel(level)
    logger._logger.removeHandler(handler)


def test_requests_log_json_with_owner_and_deployment_keys(api, users, log_lines):
    created = api.post(BASE, {"name": "m", "image": "nginx", "env_vars": {"HF_TOKEN": "hf_xyz"}})
    api.get(f"{BASE}/{created.data['id']}")
    lines = log_lines()
    access = [line for line in lines if line["message"] == "request"]
    assert [(a["method"], a["status"]) for a in access] == [("POST", 201), ("GET", 200)]
    assert all(a["owner_id"].startswith("usr_") for a in access)
    assert access[0]["deployment_id"] == access[1]["deployment_id"] == created.data["id"]
    assert access[0]["target"] == "prism_node"
    assert len(lines) == 2  # one line a request


def test_keys_do_not_leak_into_the_next_request(api, log_lines):
    created = api.post(BASE, {"name": "m", "image": "nginx"}).data
    api.get(f"{BASE}/{created['id']}")
    api.get(BASE)
    last = [line for line in log_lines() if line["message"] == "request"][-1]
    assert "deployment_id" not in last


def test_no_secret_is_ever_logged(api, log_lines):
    api.post(BASE, {"name": "m", "image": "nginx", "env_vars": {"HF_TOKEN": "hf_sekrit_value"}})
    api.post(BASE, {"name": "BAD", "image": "nginx", "env_vars": {"X": "another_sekrit"}})
    api.get(BASE, key="prism_guessed_wrong_key")
    text = json.dumps(log_lines())
    for secret in ("hf_sekrit_value", "another_sekrit", api.key, "prism_guessed_wrong_key"):
        assert secret not in text
