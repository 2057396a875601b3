"""IAM enforced on a real moto server with prism.dev.moto_iam's patches: the stage policy
(.chalice/policy-dev.json) allows our tables, indexes, queues, machines, executions and
parameters and nothing else; a request touching several tables needs every one; unsigned or
wrongly signed requests are refused. Last, the IAM audit's recorder sees the app's calls."""

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
import requests
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from prism.dev.processes import free_port
from tests import iam_audit

REPO = Path(__file__).resolve().parents[2]
REGION, ACCOUNT = "us-east-1", "123456789012"


def _policy(*allowed: tuple) -> dict:
    """A policy allowing each (action(s), resource(s))."""
    statements = [{"Effect": "Allow", "Action": a, "Resource": r} for a, r in allowed]
    return {"Version": "2012-10-17", "Statement": statements}


ALLOW_ALL = _policy(("*", "*"))
INVOKE_OURS = ("lambda:InvokeFunction", "arn:aws:lambda:*:*:function:prism-dev-*")
# The server: the patches (twice, to show they are idempotent), Step Functions' task key acting
# as the machines' role, then moto.server.main.
RUNNER = """
import sys
from moto.iam.access_control import IAMRequestBase
from prism.dev.moto_iam import fixed_key_acts_as, match_resources

match_resources()
patched = IAMRequestBase.check_action_permitted
match_resources()
assert IAMRequestBase.check_action_permitted is patched, "match_resources() patched twice"
fixed_key_acts_as("ak", "sk", "prism-dev-states")
from moto.server import main
main(["-H", "127.0.0.1", "-p", sys.argv[1]])
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    env = os.environ | {"INITIAL_NO_AUTH_ACTION_COUNT": "3"}  # the admin's own creation
    env.pop("MOTO_ACCOUNT_ID", None)
    log = tmp_path_factory.mktemp("moto") / "server.log"  # a file: a pipe could fill and block
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-c", RUNNER, str(port)],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            requests.get(f"{url}/moto-api/", timeout=1)
            break
        except requests.ConnectionError:
            assert time.monotonic() < deadline, "the moto server did not start"
            time.sleep(0.2)
    config = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}
    requests.post(f"{url}/moto-api/config", json=config, timeout=10)
    yield url
    process.terminate()
    process.wait(timeout=10)


def _client(url: str, service: str, key: tuple[str, str]):
    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=key[0],
        aws_secret_access_key=key[1],
        config=Config(retries={"max_attempts": 1}),
    )


def _user(iam, name: str, policy: dict) -> tuple[str, str]:
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="policy", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@pytest.fixture(scope="module")
def aws(server):
    """Everything made as an admin (the server's three unchecked calls create it); `app` signs
    as a user holding the dev stage policy, `scoped` as one with a small policy of exact ARNs."""
    free = _client(server, "iam", ("setup", "setup"))
    free.create_user(UserName="admin")
    free.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps(ALLOW_ALL))
    key = free.create_access_key(UserName="admin")["AccessKey"]
    admin = (key["AccessKeyId"], key["SecretAccessKey"])
    world = SimpleNamespace(url=server, admin=admin)
    world.client = lambda service, who: _client(server, service, getattr(world, who))
    _make_resources(world)
    iam = world.client("iam", "admin")
    stage_policy = json.loads((REPO / ".chalice" / "policy-dev.json").read_text())
    world.app = _user(iam, "prism-dev-app", stage_policy)
    world.scoped = _user(iam, "scoped", _scoped_policy(world))
    return world


def _make_resources(world) -> None:
    dynamodb = world.client("dynamodb", "admin")
    for table in ("prism-dev-deployments", "prism-dev-ledger", "other-deployments"):
        dynamodb.create_table(
            TableName=table,
            AttributeDefinitions=[
                {"AttributeName": "id", "AttributeType": "S"},
                {"AttributeName": "owner", "AttributeType": "S"},
            ],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": "by-owner",
                    "KeySchema": [{"AttributeName": "owner", "KeyType": "HASH"}],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
            BillingMode="PAY_PER_REQUEST",
        )
    sqs = world.client("sqs", "admin")
    world.queues = {
        n: sqs.create_queue(QueueName=n)["QueueUrl"] for n in ("prism-dev-metering", "other-queue")
    }
    ssm = world.client("ssm", "admin")
    for name in ("/prism/dev/runpod-api-key", "/prism/prod/runpod-api-key", "/elsewhere/key"):
        ssm.put_parameter(Name=name, Value="secret", Type="SecureString")
    kms = world.client("kms", "admin")
    world.keys = [kms.create_key()["KeyMetadata"] for _ in range(2)]
    kms.create_alias(AliasName="alias/prism-dev", TargetKeyId=world.keys[0]["KeyId"])
    _make_functions_and_machines(world)


def _make_functions_and_machines(world) -> None:
    iam = world.client("iam", "admin")
    role = iam.create_role(
        RoleName="prism-dev-states", AssumeRolePolicyDocument=json.dumps(ALLOW_ALL)
    )
    invoke = json.dumps(_policy(INVOKE_OURS))
    iam.put_role_policy(RoleName="prism-dev-states", PolicyName="invoke", PolicyDocument=invoke)
    role_arn = role["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("app.py", "def handler(event, context):\n    return event\n")
    lam = world.client("lambda", "admin")
    world.functions = {
        name: lam.create_function(
            FunctionName=name,
            Runtime="python3.11",
            Role=role_arn,
            Handler="app.handler",
            Code={"ZipFile": code.getvalue()},
        )["FunctionArn"]
        for name in ("prism-dev-cloud_launch", "other-function")
    }
    sfn = world.client("stepfunctions", "admin")
    passing = json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}})

    def task(function_arn: str) -> str:
        state = {"Type": "Task", "Resource": function_arn, "End": True}
        return json.dumps({"StartAt": "Call", "States": {"Call": state}})

    definitions = {
        "prism-dev-provision": passing,
        "other-provision": passing,
        "prism-dev-calls-ours": task(world.functions["prism-dev-cloud_launch"]),
        "prism-dev-calls-other": task(world.functions["other-function"]),
    }
    world.machines = {
        name: sfn.create_state_machine(name=name, definition=definition, roleArn=role_arn)[
            "stateMachineArn"
        ]
        for name, definition in definitions.items()
    }


def _scoped_policy(world) -> dict:
    table = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/prism-dev-deployments"
    return _policy(
        ("dynamodb:Query", table),  # the table's exact ARN: not its indexes
        (["kms:Encrypt", "kms:Decrypt"], world.keys[0]["Arn"]),
        INVOKE_OURS,
    )


def assert_denied(call, *args, **kwargs) -> None:
    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)
    response = caught.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 403, response
    # moto answers JSON services with an XML error, which botocore leaves in the Message.
    assert "AccessDenied" in str(response["Error"]), response


def _item(owner: str = "alice") -> dict:
    return {"id": {"S": "dep_1"}, "owner": {"S": owner}}


def test_dynamodb_allows_our_tables_and_their_indexes_only(aws):
    dynamodb = aws.client("dynamodb", "app")
    dynamodb.put_item(TableName="prism-dev-deployments", Item=_item())
    assert dynamodb.get_item(TableName="prism-dev-deployments", Key={"id": {"S": "dep_1"}})["Item"]
    by_owner = {"IndexName": "by-owner", "KeyConditionExpression": "#o = :o"}
    by_owner |= {
        "ExpressionAttributeNames": {"#o": "owner"},
        "ExpressionAttributeValues": {":o": {"S": "alice"}},
    }
    assert dynamodb.query(TableName="prism-dev-deployments", **by_owner)["Count"] == 1
    dynamodb.scan(TableName="prism-dev-ledger")
    assert_denied(dynamodb.get_item, TableName="other-deployments", Key={"id": {"S": "dep_1"}})
    assert_denied(dynamodb.query, TableName="other-deployments", **by_owner)
    assert_denied(dynamodb.list_tables)  # not granted: no table named, checked on "*"

    scoped = aws.client("dynamodb", "scoped")  # Query on the exact table ARN, not its indexes
    by_id = {
        "KeyConditionExpression": "id = :i",
        "ExpressionAttributeValues": {":i": {"S": "dep_1"}},
    }
    assert scoped.query(TableName="prism-dev-deployments", **by_id)["Count"] == 1
    assert_denied(scoped.query, TableName="prism-dev-deployments", **by_owner)


def test_a_batch_or_transaction_needs_every_table_it_touches(aws):
    dynamodb = aws.client("dynamodb", "app")

    def put(item_id: str) -> list[dict]:
        return [{"PutRequest": {"Item": {"id": {"S": item_id}, "owner": {"S": "batch"}}}}]

    dynamodb.batch_write_item(
        RequestItems={"prism-dev-ledger": put("b1"), "prism-dev-deployments": put("b2")}
    )
    mixed = {"prism-dev-ledger": put("m"), "other-deployments": put("m2")}
    assert_denied(dynamodb.batch_write_item, RequestItems=mixed)
    admin = aws.client("dynamodb", "admin")
    assert "Item" not in admin.get_item(TableName="prism-dev-ledger", Key={"id": {"S": "m"}})

    # A transaction is authorized item by item: PutItem, ConditionCheckItem, GetItem.
    check = {"TableName": "prism-dev-ledger", "Key": {"id": {"S": "b1"}}}
    check |= {"ConditionExpression": "attribute_exists(id)"}
    ours = [
        {"Put": {"TableName": "prism-dev-deployments", "Item": _item("tx")}},
        {"ConditionCheck": check},
    ]
    dynamodb.transact_write_items(TransactItems=ours)
    other = {"Put": {"TableName": "other-deployments", "Item": _item("tx")}}
    assert_denied(dynamodb.transact_write_items, TransactItems=[ours[0], other])
    key = {"id": {"S": "dep_1"}}
    gets = [
        {"Get": {"TableName": t, "Key": key}} for t in ("prism-dev-deployments", "prism-dev-ledger")
    ]
    assert len(dynamodb.transact_get_items(TransactItems=gets)["Responses"]) == 2
    assert_denied(
        dynamodb.transact_get_items,
        TransactItems=[*gets, {"Get": {"TableName": "other-deployments", "Key": key}}],
    )
    # BatchGetItem is not in the policy (the app never calls it).
    assert_denied(dynamodb.batch_get_item, RequestItems={"prism-dev-ledger": {"Keys": [key]}})


def test_step_functions_our_machines_and_their_executions_only(aws):
    sfn, admin = aws.client("stepfunctions", "app"), aws.client("stepfunctions", "admin")
    ours, other = aws.machines["prism-dev-provision"], aws.machines["other-provision"]
    started = sfn.start_execution(stateMachineArn=ours, name="provision-dep_1", input="{}")
    assert (
        started["executionArn"]
        == f"{ours.replace(':stateMachine:', ':execution:')}:provision-dep_1"
    )
    assert sfn.describe_execution(executionArn=started["executionArn"])["name"] == "provision-dep_1"
    assert_denied(sfn.start_execution, stateMachineArn=other, name="x", input="{}")
    theirs = admin.start_execution(stateMachineArn=other, name="x", input="{}")["executionArn"]
    assert_denied(sfn.describe_execution, executionArn=theirs)
    # Granted exactly what the code calls: StartExecution, DescribeExecution, ListExecutions
    # (the reaper's look for running provisions) on our machines.
    assert sfn.list_executions(stateMachineArn=ours)["executions"]
    assert_denied(sfn.list_executions, stateMachineArn=other)
    assert_denied(sfn.stop_execution, executionArn=started["executionArn"])


def test_ssm_parameters_under_the_stage_path_only(aws):
    ssm = aws.client("ssm", "app")
    found = ssm.get_parameter(Name="/prism/dev/runpod-api-key", WithDecryption=True)
    assert found["Parameter"]["Value"] == "secret"
    assert_denied(ssm.get_parameter, Name="/prism/prod/runpod-api-key", WithDecryption=True)
    assert_denied(ssm.get_parameter, Name="/elsewhere/key")


def test_sqs_the_metering_queues_only(aws):
    sqs = aws.client("sqs", "app")
    url = sqs.get_queue_url(QueueName="prism-dev-metering")["QueueUrl"]
    assert url == aws.queues["prism-dev-metering"]
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": "0", "MessageBody": "{}"}])
    assert_denied(sqs.get_queue_url, QueueName="other-queue")
    assert_denied(sqs.send_message, QueueUrl=aws.queues["other-queue"], MessageBody="{}")


def test_kms_checks_the_key_arn_whatever_names_the_key(aws):
    kms, admin = aws.client("kms", "scoped"), aws.client("kms", "admin")
    ours, theirs = aws.keys
    for name in (ours["KeyId"], ours["Arn"], "alias/prism-dev"):
        blob = kms.encrypt(KeyId=name, Plaintext=b"x")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"x"  # the key is in the blob
    assert_denied(kms.encrypt, KeyId=theirs["KeyId"], Plaintext=b"x")
    their_blob = admin.encrypt(KeyId=theirs["KeyId"], Plaintext=b"x")["CiphertextBlob"]
    assert_denied(kms.decrypt, CiphertextBlob=their_blob)
    # The stage policy allows kms:Decrypt only through SSM (kms:ViaService), not directly.
    assert_denied(aws.client("kms", "app").decrypt, CiphertextBlob=blob)


def test_lambda_invoke_is_checked_on_the_function_arn(aws):
    lam = aws.client("lambda", "scoped")
    assert lam.invoke(FunctionName="prism-dev-cloud_launch", Payload=b"{}")["StatusCode"] == 200
    assert_denied(lam.invoke, FunctionName="other-function", Payload=b"{}")
    # (moto checks the signature of an empty body wrongly, so send one)
    app = aws.client("lambda", "app")
    assert_denied(app.invoke, FunctionName="prism-dev-cloud_launch", Payload=b"{}")


def test_state_machine_tasks_run_as_the_machine_role(aws):
    """moto's Step Functions signs its Lambda calls with "ak"; fixed_key_acts_as makes that the
    role, which may invoke prism-dev-* functions only."""
    sfn = aws.client("stepfunctions", "admin")
    results = {}
    for name in ("prism-dev-calls-ours", "prism-dev-calls-other"):
        arn = sfn.start_execution(stateMachineArn=aws.machines[name], input="{}")["executionArn"]
        deadline = time.monotonic() + 30
        while (status := sfn.describe_execution(executionArn=arn)["status"]) == "RUNNING":
            assert time.monotonic() < deadline, f"{name} still running"
            time.sleep(0.2)
        results[name] = status
    assert results == {"prism-dev-calls-ours": "SUCCEEDED", "prism-dev-calls-other": "FAILED"}


def test_unsigned_or_wrongly_signed_requests_are_refused(aws):
    unsigned = boto3.client(
        "dynamodb",
        endpoint_url=aws.url,
        region_name=REGION,
        config=Config(signature_version=UNSIGNED),
    )
    wrong_secret = _client(aws.url, "dynamodb", (aws.app[0], "not-the-secret"))
    unknown_key = _client(aws.url, "dynamodb", ("AKIAUNKNOWNKEY000000", "whatever"))
    refusals = {
        unsigned: "MissingAuthenticationToken",
        wrong_secret: "SignatureDoesNotMatch",
        unknown_key: "InvalidClientTokenId",
    }
    for client, code in refusals.items():
        with pytest.raises(ClientError) as caught:
            client.get_item(TableName="prism-dev-deployments", Key={"id": {"S": "dep_1"}})
        response = caught.value.response
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert code in str(response["Error"]), response


# --- the IAM audit's recorder (tests/iam_audit.py) sees the app's calls ---------------------


def test_the_audit_records_the_app_calls_to_dynamodb_sqs_and_step_functions(aws_backend):
    from chalicelib import aws as app_aws
    from chalicelib.config import settings
    from chalicelib.queue import WorkQueue
    from chalicelib.services import registry
    from chalicelib.store.users import UserRepository

    machine = f"prism-{settings.stage}-provision"
    passing = json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}})
    role = f"arn:aws:iam::{ACCOUNT}:role/states"
    app_aws.client("stepfunctions").create_state_machine(
        name=machine, definition=passing, roleArn=role
    )
    with iam_audit.Recorder() as recorder:
        UserRepository().create_user_with_key("audited")
        WorkQueue(app_aws.client("sqs"), settings.metering_queue).send_all([{"n": 1}])
        registry.workflows().start_provision("dep_audit")
        assert "dep_audit" in registry.workflows().running_provisions()
    calls = list(recorder.calls.values())
    assert {"dynamodb", "sqs", "states"} <= {call.service for call in calls}
    machine_arn = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{machine}"
    assert ("states:ListExecutions", machine_arn) in {(c.action, c.resource) for c in calls}
    assert "states:CreateStateMachine" not in {call.action for call in calls}  # the test's own
    assert {call.test for call in calls} == {os.environ["PYTEST_CURRENT_TEST"].rsplit(" (", 1)[0]}
    assert iam_audit.denials(iam_audit.policy_file(settings.stage), calls) == []
