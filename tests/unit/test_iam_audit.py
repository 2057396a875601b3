"""The IAM audit's evaluator (tests/iam_audit.py) and the resource derivation it shares with
prism.dev.moto_iam: IAM's wildcard rules, conditions, multi-resource calls and the stage policy,
with calls the policy must allow and calls it must not."""

import json
import sys
from pathlib import Path

import boto3
import pytest

from prism.dev.moto_iam import Where, iam_pattern_matches, requested_access
from tests import iam_audit
from tests.iam_audit import Call, decide, denials, policy_file, stage_policy

WHERE = Where("aws", "us-east-1", "123456789012")
ARN = "arn:aws:{}:us-east-1:123456789012:{}"


def call(action: str, resource: str, **context) -> Call:
    return Call(
        action.split(":")[0], action.split(":")[1], action, resource, tuple(context.items())
    )


@pytest.mark.parametrize(
    "pattern, value, is_action, matches",
    [
        ("dynamodb:Get*", "dynamodb:GetItem", True, True),
        ("DynamoDB:getitem", "dynamodb:GetItem", True, True),  # actions ignore case
        ("dynamodb:?etItem", "dynamodb:GetItem", True, True),
        ("dynamodb:?etItem", "dynamodb:BatchGetItem", True, False),
        ("sqs:*", "dynamodb:GetItem", True, False),
        ("*", "arn:aws:sqs:us-east-1:1:q", False, True),
        (
            "arn:aws:dynamodb:*:*:table/prism-dev-*",
            ARN.format("dynamodb", "table/prism-dev-x"),
            False,
            True,
        ),
        (
            "arn:aws:dynamodb:*:*:table/prism-dev-*",
            ARN.format("dynamodb", "table/prism-prod-x"),
            False,
            False,
        ),
        (
            "arn:aws:dynamodb:*:*:table/Prism-dev-*",
            ARN.format("dynamodb", "table/prism-dev-x"),
            False,
            False,
        ),
        # a wildcard in the resource part crosses "/" (a table pattern covers its indexes)...
        (
            "arn:aws:dynamodb:*:*:table/prism-dev-*",
            ARN.format("dynamodb", "table/prism-dev-x/index/i"),
            False,
            True,
        ),
        (
            "arn:aws:dynamodb:*:*:table/prism-dev-x",
            ARN.format("dynamodb", "table/prism-dev-x/index/i"),
            False,
            False,
        ),
        # ...but not out of the region or account segment
        ("arn:aws:sqs:*:123:q", "arn:aws:sqs:us-east-1:9:123:q", False, False),
        ("arn:aws:sqs:us-east-?:*:q", "arn:aws:sqs:us-east-1:9:q", False, True),
        ("arn:aws:s3:::a.b", "arn:aws:s3:::aXb", False, False),  # "." is not a regex here
        (
            "arn:aws:states:*:*:execution:prism-dev-*:*",
            ARN.format("states", "execution:prism-dev-provision:p-1"),
            False,
            True,
        ),
        (
            "arn:aws:states:*:*:execution:prism-dev-*:*",
            ARN.format("states", "execution:other:p-1"),
            False,
            False,
        ),
    ],
)
def test_wildcards_match_as_iam_does(pattern, value, is_action, matches):
    assert iam_pattern_matches(pattern, value, is_action) is matches


def test_resources_derive_from_the_request_parameters():
    table = ARN.format("dynamodb", "table/prism-dev-deployments")
    assert requested_access(
        "dynamodb", "Query", {"TableName": "prism-dev-deployments", "IndexName": "by-node"}, WHERE
    ) == [("dynamodb:Query", f"{table}/index/by-node")]
    batch = {"RequestItems": {"prism-dev-deployments": [], "other": []}}
    assert requested_access("dynamodb", "BatchWriteItem", batch, WHERE) == [
        ("dynamodb:BatchWriteItem", table),
        ("dynamodb:BatchWriteItem", ARN.format("dynamodb", "table/other")),
    ]
    items = [
        {"Put": {"TableName": "prism-dev-deployments"}},
        {"ConditionCheck": {"TableName": "other"}},
    ]
    assert requested_access("dynamodb", "TransactWriteItems", {"TransactItems": items}, WHERE) == [
        ("dynamodb:PutItem", table),
        ("dynamodb:ConditionCheckItem", ARN.format("dynamodb", "table/other")),
    ]
    execution = ARN.format("states", "execution:prism-dev-provision:provision-d")
    assert requested_access("states", "DescribeExecution", {"executionArn": execution}, WHERE) == [
        ("states:DescribeExecution", execution)
    ]
    assert requested_access("ssm", "GetParameter", {"Name": "/prism/dev/key"}, WHERE) == [
        ("ssm:GetParameter", ARN.format("ssm", "parameter/prism/dev/key"))
    ]
    url = "https://sqs.us-east-1.amazonaws.com/210987654321/prism-dev-metering"
    assert requested_access("sqs", "SendMessageBatch", {"QueueUrl": url}, WHERE) == [
        ("sqs:SendMessageBatch", "arn:aws:sqs:us-east-1:210987654321:prism-dev-metering")
    ]
    assert requested_access("lambda", "Invoke", {"FunctionName": "prism-dev-f:live"}, WHERE) == [
        ("lambda:InvokeFunction", ARN.format("lambda", "function:prism-dev-f:live"))
    ]
    assert requested_access("kms", "Decrypt", {"KeyId": "alias/k"}, WHERE) == [
        ("kms:Decrypt", ARN.format("kms", "alias/k"))
    ]
    assert requested_access("sts", "GetCallerIdentity", {}, WHERE) == [
        ("sts:GetCallerIdentity", "*")
    ]


def test_calls_through_botocore_clients_name_the_iam_prefix_and_the_connection_api():
    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    execution = ARN.format("states", "execution:prism-test-provision:p")
    (described,) = iam_audit.calls_for(sfn, "DescribeExecution", {"executionArn": execution})
    assert (described.service, described.action, described.resource) == (
        "states",
        "states:DescribeExecution",
        execution,
    )
    aws_endpoint = "https://abc123.execute-api.us-east-1.amazonaws.com/api"
    management = boto3.client(
        "apigatewaymanagementapi", region_name="us-east-1", endpoint_url=aws_endpoint
    )
    (posted,) = iam_audit.calls_for(management, "PostToConnection", {"ConnectionId": "c1"})
    assert (posted.action, posted.resource) == (
        "execute-api:ManageConnections",
        ARN.format("execute-api", "abc123/api/POST/@connections/c1"),
    )


POLICY = policy_file("test")


@pytest.mark.parametrize(
    "action, resource",
    [
        ("dynamodb:GetItem", ARN.format("dynamodb", "table/prism-test-deployments")),
        ("dynamodb:Query", ARN.format("dynamodb", "table/prism-test-deployments/index/by-node")),
        ("dynamodb:BatchWriteItem", ARN.format("dynamodb", "table/prism-test-ledger")),
        ("sqs:SendMessageBatch", ARN.format("sqs", "prism-test-metering")),
        ("sqs:GetQueueUrl", ARN.format("sqs", "prism-test-metering")),
        ("states:StartExecution", ARN.format("states", "stateMachine:prism-test-provision")),
        (
            "states:DescribeExecution",
            ARN.format("states", "execution:prism-test-provision:provision-d"),
        ),
        ("ssm:GetParameter", ARN.format("ssm", "parameter/prism/test/runpod-api-key")),
    ],
)
def test_the_stage_policy_allows_what_the_app_calls(action, resource):
    assert decide(POLICY, call(action, resource, **{"aws:RequestedRegion": "us-east-1"})) == (
        "allow",
        "",
    )


@pytest.mark.parametrize(
    "action, resource",
    [
        ("dynamodb:GetItem", ARN.format("dynamodb", "table/other-deployments")),
        ("dynamodb:GetItem", ARN.format("dynamodb", "table/prism-prod-deployments")),
        ("dynamodb:BatchGetItem", ARN.format("dynamodb", "table/prism-test-ledger")),
        ("dynamodb:DescribeTable", ARN.format("dynamodb", "table/prism-test-ledger")),
        ("sqs:SendMessage", ARN.format("sqs", "other-queue")),
        ("states:StartExecution", ARN.format("states", "stateMachine:other")),
        ("states:DescribeExecution", ARN.format("states", "execution:other:provision-d")),
        ("states:ListExecutions", ARN.format("states", "stateMachine:someone-elses")),
        ("ssm:GetParameter", ARN.format("ssm", "parameter/prism/prod/runpod-api-key")),
        ("kms:Decrypt", ARN.format("kms", "key/k")),  # only via SSM (kms:ViaService)
        ("execute-api:ManageConnections", ARN.format("execute-api", "a/api/POST/@connections/c")),
    ],
)
def test_the_stage_policy_denies_the_rest(action, resource):
    verdict, why = decide(POLICY, call(action, resource))
    assert verdict == "deny", why


def test_a_call_on_several_resources_is_denied_for_each_one_not_granted():
    calls = iam_audit.calls_for(
        boto3.client("dynamodb", region_name="us-east-1"),
        "BatchWriteItem",
        {"RequestItems": {"prism-test-ledger": [], "other-ledger": []}},
    )
    found = denials(POLICY, calls)
    assert [c.resource for c, _ in found] == [ARN.format("dynamodb", "table/other-ledger")]
    assert "other-ledger" in iam_audit.report(found)


def test_conditions_allow_only_when_they_hold_and_say_when_they_cannot_be_checked():
    metric = "cloudwatch:PutMetricData"
    assert decide(POLICY, call(metric, "*", **{"cloudwatch:namespace": "PRISM"}))[0] == "allow"
    assert decide(POLICY, call(metric, "*", **{"cloudwatch:namespace": "Other"}))[0] == "deny"
    assert decide(POLICY, call(metric, "*"))[0] == "deny"  # the key is absent
    unknown = {"Effect": "Allow", "Action": "sqs:*", "Resource": "*"}
    unknown["Condition"] = {"StringEquals": {"aws:SourceVpc": "vpc-1"}}
    policy = {"Statement": [unknown]}
    assert decide(policy, call("sqs:SendMessage", "*"))[0] == "unverifiable"
    if_exists = {"Effect": "Allow", "Action": "sqs:*", "Resource": "*"}
    if_exists["Condition"] = {"StringEqualsIfExists": {"cloudwatch:namespace": "PRISM"}}
    assert decide({"Statement": if_exists}, call("sqs:SendMessage", "*"))[0] == "allow"


def test_an_explicit_deny_wins_over_an_allow():
    policy = {
        "Statement": [
            {"Effect": "Allow", "Action": "sqs:*", "Resource": "*"},
            {"Effect": "Deny", "Action": "sqs:DeleteQueue", "Resource": "*"},
        ]
    }
    assert decide(policy, call("sqs:SendMessage", "arn:aws:sqs:us-east-1:1:q"))[0] == "allow"
    assert decide(policy, call("sqs:DeleteQueue", "arn:aws:sqs:us-east-1:1:q")) == (
        "deny",
        "explicitly denied",
    )
    not_action = {"Effect": "Allow", "NotAction": "sqs:DeleteQueue", "Resource": "*"}
    assert decide({"Statement": [not_action]}, call("sqs:DeleteQueue", "*"))[0] == "deny"


# The statement the merge template is to add for the WebSocket API (see the report).
CONNECTIONS = {
    "Type": "AWS::IAM::Policy",
    "Properties": {
        "PolicyName": "manage-node-connections",
        "Roles": [{"Ref": "ApiHandlerRole"}],
        "PolicyDocument": {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "execute-api:ManageConnections",
                    "Resource": {
                        "Fn::Sub": "arn:${AWS::Partition}:execute-api:${AWS::Region}:"
                        "${AWS::AccountId}:${WebsocketAPI}/api/POST/@connections/*"
                    },
                }
            ],
        },
    },
}


def test_the_merge_template_statements_for_the_websocket_api_count():
    policy = stage_policy("test", {"Resources": {"NodeConnections": CONNECTIONS}})
    local = boto3.client(
        "apigatewaymanagementapi", region_name="us-east-1", endpoint_url="http://127.0.0.1:8002/dev"
    )
    (post,) = iam_audit.calls_for(local, "PostToConnection", {"ConnectionId": "c1"})
    assert decide(policy, post)[0] == "allow"
    (get,) = iam_audit.calls_for(local, "GetConnection", {"ConnectionId": "c1"})
    assert decide(policy, get)[0] == "deny"
    other_api = call(
        "execute-api:ManageConnections", ARN.format("execute-api", "other/api/POST/@connections/c1")
    )
    assert decide(policy, other_api)[0] == "deny"
    states_only = json.loads(json.dumps(CONNECTIONS))
    states_only["Properties"]["Roles"] = [{"Ref": "StatesRole"}]  # Step Functions', not the app's
    assert iam_audit.template_statements("test", {"Resources": {"X": states_only}}) == []


def test_the_prod_policy_is_the_dev_policy_for_prod():
    prod = json.loads((iam_audit.POLICY_DIR / "policy-prod.json").read_text())
    assert prod == policy_file("prod")


class _Queue:
    """Stands in for the SQS client: says whether its caller is the app."""

    def get_queue_url(self, QueueName):
        self.by_app = iam_audit.made_by_app(sys._getframe(1))
        return {"QueueUrl": f"https://sqs/1/{QueueName}"}


def test_only_calls_from_app_code_count():
    from chalicelib.queue import WorkQueue

    sqs = _Queue()
    assert WorkQueue(sqs, "q").url and sqs.by_app  # chalicelib/queue.py made the call
    sqs.get_queue_url(QueueName="q")
    assert not sqs.by_app  # this test made it
    assert iam_audit._frame_kind(str(Path(boto3.__file__))) == "library"
