"""prism.dev.moto_state: a real moto server (with moto_server's patches) keeps its state in a
directory across SIGTERM, SIGINT and kill -9, and refuses a damaged snapshot with a clear error."""

import contextlib
import os
import pickle
import signal
import stat
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
import requests

from prism.dev import moto_snapshot, moto_state
from prism.dev.processes import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNNER = """
import sys
from pathlib import Path
from moto.server import main
from prism.dev.moto_server import make_dynamodb_writes_atomic, make_transactions_cheap
from prism.dev.moto_state import persist_state
make_dynamodb_writes_atomic()
make_transactions_cheap()
persist_state(Path(sys.argv[1]), interval=float(sys.argv[2]))
main(["-H", "127.0.0.1", "-p", sys.argv[3]])
"""
THREADED_RUNNER = """
import sys, time
from pathlib import Path
from moto.server import ThreadedMotoServer
from prism.dev.moto_state import persist_state
persist_state(Path(sys.argv[1]), interval=float(sys.argv[2]))
ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[3])).start()
time.sleep(60)
"""
TABLE, EVENTS = "prism-test-things", "prism-test-events"
LAZY = 60.0  # an interval no test waits for: only the save at exit can have written


class Server:
    def __init__(self, directory: Path, interval: float, env: dict, runner: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = directory.parent / f"moto-{self.port}.log"
        with self.log.open("wb") as log:  # a file, not a pipe: moto logs every request
            self.process = subprocess.Popen(
                [sys.executable, "-c", runner, str(directory), str(interval), str(self.port)],
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
            )

    def wait_ready(self) -> "Server":
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"moto exited {self.process.returncode}: {self.output()}")
            with contextlib.suppress(requests.ConnectionError):
                requests.get(f"{self.url}/moto-api/", timeout=1)
                return self
            time.sleep(0.05)
        raise AssertionError(f"moto did not start: {self.output()}")

    def client(self, service: str, key: dict | None = None):
        key = key or {"AccessKeyId": "testing", "SecretAccessKey": "testing"}
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
            aws_session_token=None,
        )

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout=20)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def servers(tmp_path):
    started = []

    def start(interval=LAZY, ready=True, runner=RUNNER, **env) -> Server:
        server = Server(tmp_path / "state", interval, env, runner)
        started.append(server)
        return server.wait_ready() if ready else server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


def test_everything_survives_a_restart_and_the_keys_still_authenticate(servers, tmp_path):
    first = servers()
    setup = _populate(first)
    assert first.stop(signal.SIGTERM) == 0
    state = tmp_path / "state"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert [p.name for p in state.iterdir()] == [moto_state.STATE_FILE]
    assert stat.S_IMODE((state / moto_state.STATE_FILE).stat().st_mode) == 0o600

    second = servers(INITIAL_NO_AUTH_ACTION_COUNT="0")  # every call must now carry a known key
    admin = setup["admin_key"]
    assert _everything(second, admin) == setup["everything"]
    kms = second.client("kms", admin)
    assert kms.decrypt(CiphertextBlob=setup["ciphertext"])["Plaintext"] == b"node token"
    queue = second.client("sqs", admin).get_queue_url(QueueName="jobs")["QueueUrl"]
    message = second.client("sqs", admin).receive_message(QueueUrl=queue)["Messages"][0]
    assert message["Body"] == "deploy d-1"

    alice = second.client("dynamodb", setup["alice_key"])  # her policy allows GetItem only
    assert alice.get_item(TableName=TABLE, Key={"id": {"S": "d-7"}})["Item"]["owner"] == {
        "S": "u-1"
    }
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
        alice.scan(TableName=TABLE)
    stranger = {"AccessKeyId": "AKIAIOSFODNN7EXAMPLE", "SecretAccessKey": "nope"}
    with pytest.raises(botocore.exceptions.ClientError, match="InvalidClientTokenId"):
        second.client("dynamodb", stranger).get_item(TableName=TABLE, Key={"id": {"S": "d-7"}})


def test_sigint_saves_on_the_way_out(servers):
    first = servers()
    _create_table(first.client("dynamodb"))
    first.client("dynamodb").put_item(TableName=TABLE, Item={"id": {"S": "d-1"}})
    assert first.stop(signal.SIGINT) == 0
    second = servers()
    assert second.client("dynamodb").get_item(TableName=TABLE, Key={"id": {"S": "d-1"}})["Item"]


def test_without_moto_main_its_own_signal_handler_saves_then_chains(servers):
    """moto.server.main() replaces the SIGTERM handler (its sys.exit reaches the atexit save);
    a server without it gets persist_state's handler, which saves and then dies of SIGTERM."""
    first = servers(runner=THREADED_RUNNER)
    first.client("ssm").put_parameter(Name="/p", Value="v", Type="String")
    assert first.stop(signal.SIGTERM) == -signal.SIGTERM
    second = servers()
    assert second.client("ssm").get_parameter(Name="/p")["Parameter"]["Value"] == "v"


def test_kill_9_loses_at_most_the_last_interval_and_idle_servers_do_not_write(servers, tmp_path):
    first = servers(interval=0.2)
    dynamodb = first.client("dynamodb")
    _create_table(dynamodb)
    for number in range(20):
        dynamodb.put_item(TableName=TABLE, Item={"id": {"S": f"d-{number}"}})
    dynamodb.delete_item(TableName=TABLE, Key={"id": {"S": "d-0"}})
    time.sleep(1.0)  # five intervals
    snapshot = tmp_path / "state" / moto_state.STATE_FILE
    written = _settled(snapshot)
    dynamodb.scan(TableName=TABLE)
    dynamodb.get_item(TableName=TABLE, Key={"id": {"S": "d-1"}})
    time.sleep(0.6)
    assert snapshot.stat().st_mtime_ns == written, "reads alone wrote a snapshot"

    first.process.kill()
    first.process.wait()
    second = servers()
    assert _ids(second.client("dynamodb")) == [f"d-{number}" for number in range(1, 20)]


@pytest.mark.parametrize(
    "damage, complaint",
    [
        (lambda data: data[: len(data) // 2], "damaged"),
        (lambda data: data[:-10] + b"x" * 10, "checksum mismatch"),
        (lambda data: b"PK\x03\x04 not ours", "not a PRISM moto state file"),
    ],
)
def test_a_damaged_snapshot_is_a_clear_error(tmp_path, damage, complaint):
    path = tmp_path / moto_state.STATE_FILE
    moto_snapshot.write_atomically(path, pickle.dumps({"padding": b"x" * 1000}))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(moto_state.StateUnreadable) as raised:
        moto_state._State(path).restore()
    message = str(raised.value)
    assert str(path) in message and complaint in message and "prism dev up --fresh" in message


def test_snapshots_saved_before_the_pickler_moved_still_load():
    # What the pickler wrote for a defaultdict when it lived in moto_state (protocol 0 opcodes:
    # the global, a tuple of its two arguments, a call).
    old = (
        b"cprism.dev.moto_state\n_new_defaultdict\n"
        b"(ccollections\ndefaultdict\nc__builtin__\nlist\ntR."
    )
    loaded = pickle.loads(old)
    assert type(loaded) is defaultdict and loaded.default_factory is list


def test_a_snapshot_from_another_moto_is_refused(tmp_path):
    path = tmp_path / moto_state.STATE_FILE
    snapshot = {"format": moto_state.FORMAT, "moto": "0.0.1", "services": {}, "items": {}}
    moto_snapshot.write_atomically(path, pickle.dumps(snapshot))
    with pytest.raises(moto_state.StateUnreadable, match="by moto 0.0.1"):
        moto_state._State(path).restore()


def test_the_server_stops_with_the_error_instead_of_starting_empty(servers, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / moto_state.STATE_FILE).write_bytes(b"garbage")
    server = servers(ready=False)
    assert server.process.wait(timeout=30) == 1
    assert f"cannot load the local AWS state from {state / moto_state.STATE_FILE}" in (
        server.output()
    )
    assert "prism dev up --fresh" in server.output()


# -- helpers


def _populate(server: Server) -> dict:
    dynamodb = server.client("dynamodb")
    _create_table(dynamodb)
    dynamodb.update_time_to_live(
        TableName=TABLE, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
    )
    dynamodb.create_table(
        TableName=EVENTS,
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    _write_items(dynamodb)
    keys = _identities(server.client("iam"))
    server.client("ssm").put_parameter(Name="/prism/hub-token", Value="s3cret", Type="SecureString")
    kms = server.client("kms")
    key_id = kms.create_key(Description="node tokens")["KeyMetadata"]["KeyId"]
    ciphertext = kms.encrypt(KeyId=key_id, Plaintext=b"node token")["CiphertextBlob"]
    sqs = server.client("sqs")
    sqs.send_message(
        QueueUrl=sqs.create_queue(QueueName="jobs")["QueueUrl"], MessageBody="deploy d-1"
    )
    return {**keys, "ciphertext": ciphertext, "everything": _everything(server, keys["admin_key"])}


def _create_table(dynamodb) -> None:
    dynamodb.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[
            {"AttributeName": "id", "AttributeType": "S"},
            {"AttributeName": "owner", "AttributeType": "S"},
            {"AttributeName": "created_at", "AttributeType": "S"},
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "by-owner",
                "KeySchema": [
                    {"AttributeName": "owner", "KeyType": "HASH"},
                    {"AttributeName": "created_at", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
    )


def _write_items(dynamodb) -> None:
    """Every write path: BatchWriteItem, PutItem, UpdateItem, DeleteItem, TransactWriteItems
    (one that commits, one that a failed condition rolls back)."""
    requests_ = [
        {"PutRequest": {"Item": {"id": {"S": f"d-{n}"}, "owner": {"S": f"u-{n % 3}"},
                                 "created_at": {"S": f"2026-05-{n + 1:02d}"}}}}
        for n in range(25)
    ]  # fmt: skip
    dynamodb.batch_write_item(RequestItems={TABLE: requests_})
    dynamodb.put_item(
        TableName=TABLE,
        Item={
            "id": {"S": "d-rich"},
            "spec": {"M": {"gpus": {"N": "2"}, "tags": {"L": [{"S": "a"}, {"BOOL": True}]}}},
            "ports": {"NS": ["80", "443"]},
            "blob": {"B": b"\x00\xffbinary"},
            "gone": {"NULL": True},
            "expires_at": {"N": "1790000000"},
        },
    )
    dynamodb.update_item(
        TableName=TABLE,
        Key={"id": {"S": "d-3"}},
        UpdateExpression="SET #s = :s",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":s": {"S": "running"}},
    )
    dynamodb.delete_item(TableName=TABLE, Key={"id": {"S": "d-4"}})
    dynamodb.transact_write_items(
        TransactItems=[
            {"Put": {"TableName": EVENTS, "Item": {"pk": {"S": "d-3"}, "sk": {"N": "1"}}}},
            {"Delete": {"TableName": TABLE, "Key": {"id": {"S": "d-5"}}}},
        ]
    )
    with pytest.raises(botocore.exceptions.ClientError, match="TransactionCanceled"):
        dynamodb.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": EVENTS, "Item": {"pk": {"S": "d-3"}, "sk": {"N": "2"}}}},
                {
                    "Delete": {
                        "TableName": TABLE,
                        "Key": {"id": {"S": "d-6"}},
                        "ConditionExpression": "attribute_not_exists(id)",
                    }
                },
            ]
        )


def _identities(iam) -> dict:
    everything = (
        '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}'
    )
    get_item = (
        '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"dynamodb:GetItem",'
        '"Resource":"*"}]}'
    )
    iam.create_user(UserName="admin")
    iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=everything)
    iam.create_user(UserName="alice", Tags=[{"Key": "prism:user", "Value": "u-1"}])
    iam.put_user_policy(UserName="alice", PolicyName="read", PolicyDocument=get_item)
    policy = iam.create_policy(PolicyName="nodes", PolicyDocument=get_item)["Policy"]["Arn"]
    iam.attach_user_policy(UserName="alice", PolicyArn=policy)
    iam.create_role(RoleName="node-agent", AssumeRolePolicyDocument=everything)
    return {
        "admin_key": iam.create_access_key(UserName="admin")["AccessKey"],
        "alice_key": iam.create_access_key(UserName="alice")["AccessKey"],
    }


def _everything(server: Server, key: dict) -> dict:
    """What the restart must keep, as the API reports it."""
    dynamodb, iam, ssm = (server.client(name, key) for name in ("dynamodb", "iam", "ssm"))
    table = dynamodb.describe_table(TableName=TABLE)["Table"]
    return {
        "items": {name: _scan(dynamodb, name) for name in (TABLE, EVENTS)},
        "by-owner": dynamodb.query(
            TableName=TABLE,
            IndexName="by-owner",
            KeyConditionExpression="#o = :o",
            ExpressionAttributeNames={"#o": "owner"},
            ExpressionAttributeValues={":o": {"S": "u-1"}},
        )["Items"],
        "indexes": [(i["IndexName"], i["KeySchema"]) for i in table["GlobalSecondaryIndexes"]],
        "ttl": dynamodb.describe_time_to_live(TableName=TABLE)["TimeToLiveDescription"],
        "users": [u["UserName"] for u in iam.list_users()["Users"]],
        "alice": (
            iam.get_user(UserName="alice")["User"]["Tags"],
            iam.get_user_policy(UserName="alice", PolicyName="read")["PolicyDocument"],
            iam.list_attached_user_policies(UserName="alice")["AttachedPolicies"],
            [k["AccessKeyId"] for k in iam.list_access_keys(UserName="alice")["AccessKeyMetadata"]],
        ),
        "role": iam.get_role(RoleName="node-agent")["Role"]["Arn"],
        "parameter": ssm.get_parameter(Name="/prism/hub-token", WithDecryption=True)["Parameter"][
            "Value"
        ],
        "kms": [k["KeyId"] for k in server.client("kms", key).list_keys()["Keys"]],
    }


def _scan(dynamodb, table: str) -> list:
    items = [item for page in dynamodb.get_paginator("scan").paginate(TableName=table)
             for item in page["Items"]]  # fmt: skip
    return sorted(items, key=repr)


def _ids(dynamodb) -> list:
    return sorted((item["id"]["S"] for item in _scan(dynamodb, TABLE)), key=lambda i: int(i[2:]))


def _settled(path: Path, quiet: float = 0.6) -> int:
    """The file's mtime once it has not changed for `quiet` seconds (a loaded machine may run
    the save thread late)."""
    deadline = time.monotonic() + 15
    mtime = path.stat().st_mtime_ns
    while time.monotonic() < deadline:
        time.sleep(quiet)
        mtime, before = path.stat().st_mtime_ns, mtime
        if mtime == before:
            return mtime
    raise AssertionError(f"{path} kept changing")
