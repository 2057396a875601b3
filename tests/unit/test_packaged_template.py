"""`make package`'s template: chalice package merged with infra/resources.json, bound to the
stage being packaged, and cfn-lint accepts it with no error (for both stages)."""

import json
import re
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path
from types import SimpleNamespace

import pytest

from prism.dev.merge_template import (
    ENDS_DEPLOYMENTS,
    OPENS_SECRETS,
    SEALS_SECRETS,
    SIZING,
    merged_template,
)
from prism.dev.stack import chalice_package

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Tables whose loss loses money (charges, the ledger, the meters' totals) or users (accounts,
# keys, their nodes).
RETAINED = (
    "DeploymentsTable",
    "LedgerTable",
    "MetersTable",
    "UsersTable",
    "ApiKeysTable",
    "NodesTable",
)
# prod is packaged with a sizing file of its own: the merge must override what chalice gives.
TEST_SIZING = {"MeterTick": {"MemorySize": 512, "Timeout": 45, "measured": "peak 300 MB, 9 s"}}


@pytest.fixture(scope="module", params=["dev", "prod"])
def packaged(request, tmp_path_factory) -> tuple[str, dict]:
    """(stage, the packaged template); dev with infra/sizing.json, as `make package` does.
    cfn-lint must accept it with no error (nor warning)."""
    stage, out = request.param, tmp_path_factory.mktemp(request.param)
    sizing = SIZING
    if stage == "prod":
        sizing = out / "sizing.json"
        sizing.write_text(json.dumps(TEST_SIZING))
    chalice_package(stage, out / "out", merged_template(stage, sizing=sizing))
    template = out / "out" / "sam.json"
    lint = subprocess.run(
        [str(BIN / "cfn-lint"), str(template)], capture_output=True, text=True, timeout=300
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    return stage, json.loads(template.read_text())


def test_the_packaged_template_wires_queues_workflows_and_urls(packaged):
    stage, template = packaged
    resources = template["Resources"]
    events = resources["MeterWorker"]["Properties"]["Events"]["MeterWorkerSqsEventSource"]
    assert events["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    # The queue by reference, so CloudFormation creates it before the trigger.
    assert events["Properties"]["Queue"] == {"Fn::Sub": "${MeteringQueue.Arn}"}
    machine = resources["ProvisionStateMachine"]["Properties"]
    assert machine["DefinitionSubstitutions"]["CloudLaunchArn"] == {
        "Fn::GetAtt": ["CloudLaunch", "Arn"]
    }
    assert "CloudLaunch" in resources  # the step is a function of the packaged app
    api_env = resources["APIHandler"]["Properties"]["Environment"]["Variables"]
    assert (
        "stateMachine:prism-${Stage}-teardown"
        in api_env["PRISM_TEARDOWN_STATE_MACHINE_ARN"]["Fn::Sub"]
    )
    health = resources["HealthWorker"]["Properties"]["Events"]["HealthWorkerSqsEventSource"]
    assert health["Properties"]["Queue"] == {"Fn::Sub": "${HealthQueue.Arn}"}
    assert health["Properties"]["BatchSize"] == 1  # one message per invocation: all in parallel
    for ends_deployments in ("WebsocketMessage", "SweepNodes", "HealthWorker"):
        variables = resources[ends_deployments]["Properties"]["Environment"]["Variables"]
        assert "PRISM_TEARDOWN_STATE_MACHINE_ARN" in variables, ends_deployments
    launch_env = resources["CloudLaunch"]["Properties"]["Environment"]["Variables"]
    assert launch_env["PRISM_PUBLIC_WS_URL"]["Fn::Sub"].startswith("wss://${WebsocketAPI}.")
    assert launch_env["PRISM_PUBLIC_API_URL"]["Fn::Sub"].startswith("https://${RestAPI}.")
    assert not _dependency_cycles(resources)
    # Every function that can send to a node knows where the management API is (the cloud
    # health step places an agent-run deployment on its instance's node).
    for sends in ("SweepNodes", "CloudCheckHealth", "WebsocketMessage", "APIHandler"):
        management = resources[sends]["Properties"]["Environment"]["Variables"]
        assert "${WebsocketAPI}" in management["PRISM_WS_MANAGEMENT_URL"]["Fn::Sub"]


def test_every_name_and_arn_is_the_packaged_stage(packaged):
    stage, template = packaged
    parameter = template["Parameters"]["Stage"]
    assert parameter["Default"] == stage
    assert parameter["AllowedValues"] == [stage]  # a deploy with another Stage is refused
    resolved = json.loads(json.dumps(template).replace("${Stage}", stage))
    assert set(re.findall(r"prism-([a-z0-9]+)-", json.dumps(resolved))) == {stage}
    granted = [  # table name patterns
        resource.rsplit(":table/", 1)[-1]
        for policy in _role_policies(resolved["Resources"])
        for statement in policy["Statement"]
        for resource in map(_sub, _as_list(statement["Resource"]))
        if isinstance(resource, str) and ":dynamodb:" in resource
    ]
    for logical_id, body in resolved["Resources"].items():
        if body["Type"] == "AWS::DynamoDB::Table":
            name = body["Properties"]["TableName"]["Fn::Sub"]
            assert name.startswith(f"prism-{stage}-"), logical_id
            assert any(fnmatch(name, pattern) for pattern in granted), name
    variables = resolved["Resources"]["MeterTick"]["Properties"]["Environment"]["Variables"]
    assert variables["PRISM_STAGE"] == stage  # the code's default table names agree


def test_secrets_are_granted_per_function_on_the_template_key_and_the_secrets_table(packaged):
    """The API seals, the functions that send deploy_model or launch an image open, those that
    end deployments delete; no role gets the secrets table from the stage policy file."""
    stage, template = packaged
    resources = template["Resources"]
    assert resources["SecretsKey"]["Type"] == "AWS::KMS::Key"
    alias = resources["SecretsKeyAlias"]["Properties"]
    assert alias["AliasName"] == {"Fn::Sub": "alias/prism-${Stage}-secrets"}
    table = f"table/prism-{stage}-secrets"
    key = "key/${SecretsKey}"
    functions = {n for n, b in resources.items() if b["Type"] == "AWS::Serverless::Function"}
    expected = {
        "SealSecretsPolicy": (
            SEALS_SECRETS,
            {("kms:GenerateDataKey", key), ("dynamodb:PutItem", table)},
        ),
        "OpenSecretsPolicy": (OPENS_SECRETS, {("kms:Decrypt", key), ("dynamodb:GetItem", table)}),
        "DeleteSecretsPolicy": (ENDS_DEPLOYMENTS, {("dynamodb:DeleteItem", table)}),
    }
    for name, (holders, grants) in expected.items():
        properties = resources[name]["Properties"]
        assert set(holders) <= functions
        roles = {resources[f]["Properties"]["Role"]["Fn::GetAtt"][0] for f in holders}
        assert {r["Ref"] for r in properties["Roles"]} == roles, name
        granted = {
            (s["Action"], _sub(s["Resource"]).replace("${Stage}", stage).rsplit(":", 1)[-1])
            for s in properties["PolicyDocument"]["Statement"]
        }
        assert granted == grants, name
    for body in resources.values():  # the role's own policy (the stage file) never names it
        if body["Type"] == "AWS::IAM::Role":
            own = json.dumps(body["Properties"].get("Policies", []))
            assert "secrets" not in own and "kms:GenerateDataKey" not in own


def test_tables_holding_money_or_users_survive_stack_deletion_and_replacement(packaged):
    _, template = packaged
    for logical_id, body in template["Resources"].items():
        if body["Type"] != "AWS::DynamoDB::Table":
            continue
        kept = logical_id in RETAINED
        assert (body.get("DeletionPolicy") == "Retain") is kept, logical_id
        assert (body.get("UpdateReplacePolicy") == "Retain") is kept, logical_id
        if kept:
            assert body["Properties"]["PointInTimeRecoverySpecification"] == {
                "PointInTimeRecoveryEnabled": True
            }


def test_the_alarms_watch_the_dead_letter_queue_and_unconfirmed_teardowns(packaged):
    _, template = packaged
    resources = template["Resources"]
    topic = {"Ref": "AlarmTopic"}
    assert resources["AlarmTopic"]["Type"] == "AWS::SNS::Topic"
    assert template["Outputs"]["AlarmTopicArn"]["Value"] == topic
    dead_letters = resources["MeteringDeadLetterAlarm"]["Properties"]
    assert (dead_letters["Namespace"], dead_letters["MetricName"]) == (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
    )
    assert dead_letters["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["MeteringDeadLetterQueue", "QueueName"]}}
    ]
    teardown = resources["TeardownUnconfirmedAlarm"]["Properties"]
    for alarm in (dead_letters, teardown):
        assert alarm["ComparisonOperator"] == "GreaterThanThreshold" and alarm["Threshold"] == 0
        assert alarm["TreatMissingData"] == "notBreaching"
        assert alarm["AlarmActions"] == [topic]


def test_the_teardown_alarm_names_the_metric_exactly_as_the_code_emits_it(capsys):
    """CloudWatch matches a metric by namespace, name and the full set of dimensions: one
    dimension more or less and the alarm never fires."""
    from chalicelib.services.cloud_teardown import CloudTeardown

    deployments = SimpleNamespace(
        get=lambda deployment_id: SimpleNamespace(id=deployment_id, provider_instance_id="i-1"),
        record=lambda item, **changes: None,
    )
    service = CloudTeardown(deployments, None, None, None, None, None)
    capsys.readouterr()
    service.teardown_unconfirmed({"deployment_id": "dep_1"})
    [emf] = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    [directive] = emf["_aws"]["CloudWatchMetrics"]
    alarm = merged_template("dev")["Resources"]["TeardownUnconfirmedAlarm"]["Properties"]
    assert directive["Namespace"] == alarm["Namespace"]
    assert alarm["MetricName"] in [metric["Name"] for metric in directive["Metrics"]]
    [dimensions] = directive["Dimensions"]
    assert {name: emf[name] for name in dimensions} == {
        d["Name"]: d["Value"] for d in alarm["Dimensions"]
    }


def test_measured_sizes_override_chalice_and_the_measurement_is_written_down(packaged):
    stage, template = packaged
    functions = {
        logical_id: body
        for logical_id, body in template["Resources"].items()
        if body["Type"] == "AWS::Serverless::Function"
    }
    sizing = TEST_SIZING if stage == "prod" else json.loads(SIZING.read_text())
    assert set(sizing) <= set(functions)  # every sized function exists
    for logical_id, size in sizing.items():
        function = functions[logical_id]
        assert function["Properties"]["MemorySize"] == size["MemorySize"], logical_id
        assert function["Properties"]["Timeout"] == size["Timeout"], logical_id
        assert function["Metadata"] == {"prism:sizing": size["measured"]}
    if stage == "prod":  # the others keep .chalice/config.json's values
        assert functions["CloudLaunch"]["Properties"]["Timeout"] == 300
        assert functions["MeterWorker"]["Properties"]["MemorySize"] == 128
        assert "Metadata" not in functions["MeterWorker"]
    worker = functions["MeterWorker"]["Properties"]["Timeout"]
    queue = template["Resources"]["MeteringQueue"]["Properties"]["VisibilityTimeout"]
    assert worker <= queue  # else AWS refuses the SQS trigger


def test_a_worker_that_outlives_its_messages_is_refused_at_packaging(tmp_path):
    sizing = tmp_path / "sizing.json"
    sizing.write_text(
        json.dumps({"MeterWorker": {"MemorySize": 128, "Timeout": 900, "measured": "x"}})
    )
    with pytest.raises(ValueError, match="VisibilityTimeout"):
        merged_template("dev", sizing=sizing)
    with pytest.raises(ValueError, match="unknown stage"):
        merged_template("staging")


def _role_policies(resources: dict) -> list[dict]:
    """Every policy document a role gets: its own, and each AWS::IAM::Policy attached to it."""
    return [
        policy["PolicyDocument"]
        for body in resources.values()
        if body["Type"] == "AWS::IAM::Role"
        for policy in body["Properties"].get("Policies", [])
    ] + [
        body["Properties"]["PolicyDocument"]
        for body in resources.values()
        if body["Type"] == "AWS::IAM::Policy"
    ]


def _sub(value):
    """An Fn::Sub's text (anything else as it is)."""
    return value.get("Fn::Sub", value) if isinstance(value, dict) else value


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _dependency_cycles(resources: dict) -> list[str]:
    """CloudFormation refuses Ref/GetAtt cycles (cfn-lint does not catch them all)."""

    def refs(node) -> set[str]:
        if isinstance(node, dict):
            found = set()
            if "Ref" in node and node["Ref"] in resources:
                found.add(node["Ref"])
            if "Fn::GetAtt" in node and node["Fn::GetAtt"][0] in resources:
                found.add(node["Fn::GetAtt"][0])
            if "Fn::Sub" in node and isinstance(node["Fn::Sub"], str):
                found |= {
                    name
                    for name in re.findall(r"\$\{([A-Za-z0-9]+)[.}]", node["Fn::Sub"])
                    if name in resources
                }
            for value in node.values():
                found |= refs(value)
            return found
        if isinstance(node, list):
            return set().union(*(refs(v) for v in node)) if node else set()
        return set()

    def depends_on(body) -> set[str]:
        value = body.get("DependsOn", [])
        return {value} if isinstance(value, str) else set(value)

    graph = {name: refs(body) | depends_on(body) for name, body in resources.items()}
    cycles, state = [], {}

    def visit(name, path):
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            cycles.append(" -> ".join([*path, name]))
            return
        state[name] = "active"
        for dependency in graph.get(name, ()):
            visit(dependency, [*path, name])
        state[name] = "done"

    for name in graph:
        visit(name, [])
    return cycles
