"""Create on a (moto) DynamoDB endpoint exactly the tables infra/resources.json declares (and
the KMS key their secrets are sealed with), so local and cloud share one definition."""

import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "infra" / "resources.json"


@dataclass(frozen=True)
class TableSpec:
    logical_id: str
    env_var: str  # the setting that names the table, e.g. PRISM_DEPLOYMENTS_TABLE
    properties: dict

    def create_table_kwargs(self, table_name: str) -> dict:
        props = self.properties
        kwargs = {
            "TableName": table_name,
            "AttributeDefinitions": props["AttributeDefinitions"],
            "KeySchema": props["KeySchema"],
            "BillingMode": props["BillingMode"],
        }
        if props.get("GlobalSecondaryIndexes"):
            kwargs["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
        return kwargs


def table_specs(template: Path = TEMPLATE) -> list[TableSpec]:
    resources = json.loads(template.read_text())["Resources"]
    return [
        TableSpec(logical_id, res["Metadata"]["prism:env"], res["Properties"])
        for logical_id, res in resources.items()
        if res.get("Type") == "AWS::DynamoDB::Table"
    ]


def table_name_for(spec: TableSpec, settings) -> str:
    return getattr(settings, spec.env_var.removeprefix("PRISM_").lower())


def create_tables(dynamodb, settings, template: Path = TEMPLATE, kms=None) -> list[str]:
    """Create every missing table, and every missing index of a kept one, and the KMS keys the
    template declares for them (the secrets table's items are sealed under SecretsKey; `kms`:
    a client for the same AWS, by default one beside `dynamodb`). Idempotent. Returns the
    names of the tables created."""
    create_keys(kms or _kms_beside(dynamodb), settings.stage, template)
    existing = set(dynamodb.list_tables()["TableNames"])
    created = []
    for spec in table_specs(template):
        name = table_name_for(spec, settings)
        if name in existing:
            _add_missing_indexes(dynamodb, name, spec)
            continue
        dynamodb.create_table(**spec.create_table_kwargs(name))
        ttl = spec.properties.get("TimeToLiveSpecification")
        if ttl:
            dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
        created.append(name)
    return created


def _add_missing_indexes(dynamodb, name: str, spec: TableSpec) -> None:
    """A table kept from an earlier run gets the indexes added to the template since, as a
    CloudFormation stack update would add them."""
    described = dynamodb.describe_table(TableName=name)["Table"]
    present = {i["IndexName"] for i in described.get("GlobalSecondaryIndexes", [])}
    for index in spec.properties.get("GlobalSecondaryIndexes", []):
        if index["IndexName"] not in present:
            dynamodb.update_table(
                TableName=name,
                AttributeDefinitions=spec.properties["AttributeDefinitions"],
                GlobalSecondaryIndexUpdates=[{"Create": index}],
            )


def create_keys(kms, stage: str, template: Path = TEMPLATE) -> list[str]:
    """Create each KMS key the template names by an alias (AWS::KMS::Alias), unless the alias
    exists already (a kept state). Returns the aliases created."""
    resources = json.loads(template.read_text())["Resources"]
    existing = {alias["AliasName"] for alias in kms.list_aliases()["Aliases"]}
    created = []
    for resource in resources.values():
        if resource.get("Type") != "AWS::KMS::Alias":
            continue
        alias = _sub_stage(resource["Properties"]["AliasName"], stage)
        if alias in existing:
            continue
        key = resources[resource["Properties"]["TargetKeyId"]["Ref"]]["Properties"]
        key_id = kms.create_key(
            Description=_sub_stage(key.get("Description", ""), stage),
            KeyUsage=key.get("KeyUsage", "ENCRYPT_DECRYPT"),
            KeySpec=key.get("KeySpec", "SYMMETRIC_DEFAULT"),
        )["KeyMetadata"]["KeyId"]
        if key.get("EnableKeyRotation"):
            kms.enable_key_rotation(KeyId=key_id)
        kms.create_alias(AliasName=alias, TargetKeyId=key_id)
        created.append(alias)
    return created


def _kms_beside(dynamodb):
    """A KMS client for the AWS this DynamoDB client talks to: its region, its endpoint when it
    is not AWS's own (a moto server), the default credentials (as the callers' clients)."""
    import boto3

    endpoint = dynamodb.meta.endpoint_url
    if (urlsplit(endpoint).hostname or "").endswith(".amazonaws.com"):
        endpoint = None
    return boto3.client("kms", region_name=dynamodb.meta.region_name, endpoint_url=endpoint)


def _sub_stage(value, stage: str) -> str:
    return value["Fn::Sub"].replace("${Stage}", stage) if isinstance(value, dict) else value


def create_queues(sqs, stage: str, template: Path = TEMPLATE) -> list[str]:
    """Create the template's SQS queues (dead-letter queues first, so redrive can point at
    them). Idempotent. Returns the queue names."""
    resources = json.loads(template.read_text())["Resources"]
    queues = {
        lid: r["Properties"] for lid, r in resources.items() if r.get("Type") == "AWS::SQS::Queue"
    }
    arns: dict[str, str] = {}
    names = []
    for logical_id in sorted(queues, key=lambda lid: "RedrivePolicy" in queues[lid]):
        props = queues[logical_id]
        name = _sub_stage(props["QueueName"], stage)
        attributes = {
            k: str(v)
            for k, v in props.items()
            if k in ("VisibilityTimeout", "MessageRetentionPeriod")
        }
        redrive = props.get("RedrivePolicy")
        if redrive:
            target = arns[redrive["deadLetterTargetArn"]["Fn::GetAtt"][0]]
            attributes["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": target, "maxReceiveCount": redrive["maxReceiveCount"]}
            )
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        arns[logical_id] = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        names.append(name)
    return names


STATE_MACHINES = REPO_ROOT / "infra" / "statemachines"
LOCAL_ROLE = "prism-local-states"


def step_function_name(substitution: str) -> str:
    """`CloudLaunchArn` (a ${...} in a state machine definition) -> `cloud_launch`, the name
    of the @app.lambda_function it stands for."""
    words = re.findall(r"[A-Z][a-z0-9]*", substitution.removesuffix("Arn"))
    return "_".join(word.lower() for word in words)


def create_state_machines(sfn, lambda_client, iam, stage: str) -> list[str]:
    """Create (or update) the state machines of infra/statemachines on a moto server, each
    ${...Arn} pointing at a Lambda function named like Chalice names the app's functions
    (prism-<stage>-<name>); moto's Lambda backend routes those to the app in-process."""
    role = _local_role(iam)
    arns = {}
    for path in sorted(STATE_MACHINES.glob("*.asl.json")):
        text = path.read_text()
        for substitution in sorted(set(re.findall(r"\$\{(\w+)\}", text))):
            function = f"prism-{stage}-{step_function_name(substitution)}"
            arn = _ensure_function(lambda_client, function, role)
            text = text.replace("${" + substitution + "}", arn)
        name = f"prism-{stage}-{path.name.removesuffix('.asl.json')}"
        arns[name] = _ensure_state_machine(sfn, name, text, role)
    return sorted(arns)


def _local_role(iam) -> str:
    try:
        return iam.get_role(RoleName=LOCAL_ROLE)["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        document = {"Version": "2012-10-17", "Statement": []}
        return iam.create_role(RoleName=LOCAL_ROLE, AssumeRolePolicyDocument=json.dumps(document))[
            "Role"
        ]["Arn"]


def _ensure_function(lambda_client, name: str, role: str) -> str:
    # Created, not looked up first: moto's signature check fails a GET without a body (which
    # GetFunction is) under IAM enforcement, and the Lambda backend is not kept across restarts.
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr(
            "app.py", "# routed to the local Lambda service by prism.dev.lambda_router\n"
        )
    try:
        return lambda_client.create_function(
            FunctionName=name,
            Runtime="python3.11",
            Role=role,
            Handler="app.handler",
            Code={"ZipFile": code.getvalue()},
        )["FunctionArn"]
    except lambda_client.exceptions.ResourceConflictException:  # made by an earlier bootstrap
        account = role.split(":")[4]
        return f"arn:aws:lambda:{lambda_client.meta.region_name}:{account}:function:{name}"


def _ensure_state_machine(sfn, name: str, definition: str, role: str) -> str:
    existing = {m["name"]: m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"]}
    if name in existing:
        sfn.update_state_machine(stateMachineArn=existing[name], definition=definition)
        return existing[name]
    return sfn.create_state_machine(name=name, definition=definition, roleArn=role)[
        "stateMachineArn"
    ]
