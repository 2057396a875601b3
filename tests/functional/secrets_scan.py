"""Looking for secrets where they must not be: distinct secret values for one test, and every
table and index of a DynamoDB scanned raw for them (shared by the functional tests and the
e2e test on the local platform)."""

import base64
import json
import secrets as random

from chalicelib import aws

SHA = "b" * 64


def signed_url(signature: str) -> tuple[str, str]:
    """(a presigned S3 URL with a checksum fragment, the same without its query)."""
    public = "https://weights.example.com/models/m.bin"
    query = (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20260101%2Fus-east-1"
        f"%2Fs3%2Faws4_request&X-Amz-Expires=3600&X-Amz-Signature={signature}"
    )
    return f"{public}?{query}#sha256={SHA}", f"{public}#sha256={SHA}"


class Secrets:
    """Distinct secret values for one test, and every form of them that must never be stored."""

    def __init__(self):
        self.env = {"HF_TOKEN": "hf_" + random.token_hex(12), "DB_PASSWORD": random.token_hex(10)}
        self.signature = random.token_hex(32)
        self.token = "tok" + random.token_hex(12)
        self.signed, self.signed_public = signed_url(self.signature)
        self.token_url = f"https://files.example.com/w.tar?token={self.token}"

    def needles(self) -> list[str]:
        return [*self.env.values(), self.signature, self.token, "X-Amz-Signature", "token="]


def raw_dump(value) -> str:
    """Everything a raw DynamoDB answer holds, binary attributes included as they are stored."""

    def default(obj):
        if isinstance(obj, bytes | bytearray):
            return obj.decode("latin-1")
        return str(obj)

    return json.dumps(value, default=default)


def scan_everything(dynamodb) -> dict[str, str]:
    """Every table and every index of every table, scanned raw: where -> what it holds."""
    found = {}
    for table in dynamodb.list_tables()["TableNames"]:
        described = dynamodb.describe_table(TableName=table)["Table"]
        targets = [(table, {})]
        for kind in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
            for index in described.get(kind, []):
                name = index["IndexName"]
                targets.append((f"{table}/index/{name}", {"IndexName": name}))
        for where, extra in targets:
            items = []
            for page in dynamodb.get_paginator("scan").paginate(TableName=table, **extra):
                items += page["Items"]
            found[where] = raw_dump(items)
    return found


def assert_nowhere_in_plaintext(needles: list[str], dynamodb=None) -> dict[str, str]:
    everything = scan_everything(dynamodb or aws.client("dynamodb"))
    assert any("index/" in where for where in everything)  # the indexes were scanned too
    for needle in needles:
        encoded = base64.b64encode(needle.encode()).decode()
        for where, text in everything.items():
            assert needle not in text, f"{needle!r} is stored in plaintext in {where}"
            assert encoded not in text, f"{needle!r} is stored base64-encoded in {where}"
    return everything


def secret_ids() -> set[str]:
    from chalicelib.store.models import SecretItem

    return {item.deployment_id for item in SecretItem.scan()}


class RecordingManagementApi:
    """The WebSocket management API: what was posted, to which connection."""

    def __init__(self):
        self.posted: list[tuple[str, dict]] = []

    def post_to_connection(self, ConnectionId, Data):  # noqa: N803 - boto3's names
        self.posted.append((ConnectionId, json.loads(Data)))

    def deploys(self, deployment_id: str) -> list[dict]:
        return [
            message
            for _, message in self.posted
            if message["type"] == "deploy_model" and message["deployment_id"] == deployment_id
        ]
