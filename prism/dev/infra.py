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


# Functions that start executions, and so need the state machines' ARNs.
STARTS_WORKFLOWS = (
    "APIHandler",
    "MeterWorker",
    "ReapCloud",
    "HealthWorker",  # an instance the provider ended: its teardown
    "CloudProvisionFailed",
    # A node agent on a cloud instance reporting a crash, or going silent, ends its deployment
    # through teardown.
    "WebsocketMessage",
    "SweepNodes",
)
# Functions that send to nodes over the WebSocket API's management endpoint.
TALKS_TO_NODES = (
    "APIHandler",
    # Places an agent-run deployment on its instance's node once the agent has connected.
    "CloudCheckHealth",
    "MeterWorker",
    "SweepNodes",
    "WebsocketConnect",
    "WebsocketMessage",
    "WebsocketDisconnect",
)
# Who may use deployments' sealed secrets (chalicelib/store/secrets.py): KMS key and table.
SEALS_SECRETS = ("APIHandler",)  # creates deployments: a data key, the secret's put
OPENS_SECRETS = (  # build deploy_model (every caller of Placement.place) or launch an image
    "WebsocketMessage",  # a node's hello places waiting deployments, re-sends deploy_models
    "SweepNodes",  # places waiting and unanswered deployments, after an end too
    "CloudCheckHealth",  # places an agent-run deployment on its instance's node
    "CloudLaunch",  # an image deployment's env goes to the provider at launch
)
# Functions whose transitions end deployments: the terminal write deletes the secret.
ENDS_DEPLOYMENTS = (
    "APIHandler",  # stop before placement
    "WebsocketMessage",  # a node's reports (stopped, crash, ...) and hello reconciliation
    "SweepNodes",  # no_node, node_lost, stops confirmed by silence
    "CloudFinishTeardown",  # the end of every cloud deployment
    "MeterWorker",  # a budget stop before anything was handed over
)
SECRETS_KEY_ARN = {
    "Fn::Sub": "arn:${AWS::Partition}:kms:${AWS::Region}:${AWS::AccountId}:key/${SecretsKey}"
}
SECRETS_TABLE_ARN = {
    "Fn::Sub": "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:"
    "table/prism-${Stage}-secrets"
}
MANAGEMENT_URL = {"Fn::Sub": "https://${WebsocketAPI}.execute-api.${AWS::Region}.amazonaws.com/api"}
# Where the node agent on a launched instance connects back to (weights/command deployments).
PUBLIC_URLS = {
    "PRISM_PUBLIC_WS_URL": {
        "Fn::Sub": "wss://${WebsocketAPI}.execute-api.${AWS::Region}.amazonaws.com/api"
    },
    "PRISM_PUBLIC_API_URL": {
        "Fn::Sub": "https://${RestAPI}.execute-api.${AWS::Region}.amazonaws.com/api"
    },
}


SIZING = REPO_ROOT / "infra" / "sizing.json"


def merged_template(stage: str, template: Path = TEMPLATE, sizing: Path = SIZING) -> dict:
    """infra/resources.json plus the state machines of infra/statemachines and their role, bound
    to `stage` and sized by infra/sizing.json: what `chalice package --stage <stage>
    --merge-template` takes (`make package` writes it out)."""
    merged = json.loads(template.read_text())
    _bind_stage(merged["Parameters"]["Stage"], stage)
    resources = merged["Resources"]
    invoked: set[str] = set()
    for path in sorted(STATE_MACHINES.glob("*.asl.json")):
        kind = path.name.removesuffix(".asl.json")
        definition = json.loads(path.read_text())
        substitutions = sorted(set(re.findall(r"\$\{(\w+)\}", path.read_text())))
        functions = {s: s.removesuffix("Arn") for s in substitutions}
        invoked |= set(functions.values())
        resources[f"{kind.capitalize()}StateMachine"] = {
            "Type": "AWS::StepFunctions::StateMachine",
            "Properties": {
                "StateMachineName": {"Fn::Sub": f"prism-${{Stage}}-{kind}"},
                "Definition": definition,
                "DefinitionSubstitutions": {
                    s: {"Fn::GetAtt": [logical_id, "Arn"]} for s, logical_id in functions.items()
                },
                "RoleArn": {"Fn::GetAtt": ["StatesRole", "Arn"]},
            },
        }
    resources["StatesRole"] = _states_role(sorted(invoked))
    for logical_id in STARTS_WORKFLOWS:
        variables = _env_of(resources, logical_id)
        # Built from the name, not Ref'd: the provision machine invokes CloudProvisionFailed,
        # which starts teardown, and a Ref would make that a dependency cycle.
        for kind in ("provision", "teardown"):
            variables[f"PRISM_{kind.upper()}_STATE_MACHINE_ARN"] = _machine_arn(kind)
    for logical_id in TALKS_TO_NODES:
        _env_of(resources, logical_id)["PRISM_WS_MANAGEMENT_URL"] = MANAGEMENT_URL
    resources["NodeConnectionsPolicy"] = _node_connections_policy()
    resources |= _secrets_policies()
    _env_of(resources, "CloudLaunch").update(PUBLIC_URLS)
    if sizing.exists():
        _apply_sizing(resources, json.loads(sizing.read_text()))
    return merged


def _role(function: str) -> dict:
    """The role Chalice gives a function (its logical id + Role; APIHandler's is ApiHandler)."""
    return {"Ref": ("ApiHandler" if function == "APIHandler" else function) + "Role"}


def _policy(name: str, functions: tuple[str, ...], grants: list[tuple[str, dict]]) -> dict:
    statements = [
        {"Effect": "Allow", "Action": action, "Resource": resource} for action, resource in grants
    ]
    return {
        "Type": "AWS::IAM::Policy",
        "Properties": {
            "PolicyName": name,
            "Roles": [_role(f) for f in functions],
            "PolicyDocument": {"Version": "2012-10-17", "Statement": statements},
        },
    }


def _secrets_policies() -> dict:
    """Least privilege on the sealed secrets: the API seals (it never opens), the functions that
    send deploy_model or launch an image open, the ones that end deployments delete.
    .chalice/policy-<stage>.json grants no function the secrets table (nor the key)."""
    return {
        "SealSecretsPolicy": _policy(
            "seal-deployment-secrets",
            SEALS_SECRETS,
            [("kms:GenerateDataKey", SECRETS_KEY_ARN), ("dynamodb:PutItem", SECRETS_TABLE_ARN)],
        ),
        "OpenSecretsPolicy": _policy(
            "open-deployment-secrets",
            OPENS_SECRETS,
            [("kms:Decrypt", SECRETS_KEY_ARN), ("dynamodb:GetItem", SECRETS_TABLE_ARN)],
        ),
        "DeleteSecretsPolicy": _policy(
            "delete-deployment-secrets",
            ENDS_DEPLOYMENTS,
            [("dynamodb:DeleteItem", SECRETS_TABLE_ARN)],
        ),
    }


def _node_connections_policy() -> dict:
    """ManageConnections on our WebSocket API only, for the functions that send to nodes: the
    API's id exists only once deployed, so .chalice/policy-<stage>.json cannot name it."""
    roles = [_role(f) for f in TALKS_TO_NODES]
    connections = (
        "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:"
        "${WebsocketAPI}/api/POST/@connections/*"
    )
    statement = {
        "Effect": "Allow",
        "Action": "execute-api:ManageConnections",
        "Resource": {"Fn::Sub": connections},
    }
    return {
        "Type": "AWS::IAM::Policy",
        "Properties": {
            "PolicyName": "manage-node-connections",
            "Roles": roles,
            "PolicyDocument": {"Version": "2012-10-17", "Statement": [statement]},
        },
    }


def _bind_stage(parameter: dict, stage: str) -> None:
    """The package holds this stage's code (PRISM_STAGE) and IAM policy (prism-<stage>-*), so
    the tables and queues must carry the same name: no other value is accepted."""
    if stage not in parameter["AllowedValues"]:
        raise ValueError(f"unknown stage {stage!r}; one of {parameter['AllowedValues']}")
    parameter["Default"] = stage
    parameter["AllowedValues"] = [stage]


def _apply_sizing(resources: dict, sizing: dict) -> None:
    """Measured memory and timeout per function, overriding what .chalice/config.json gives
    (the merge wins), with the measurement written beside them."""
    for logical_id, size in sizing.items():
        function = resources.setdefault(logical_id, {})
        function.setdefault("Properties", {}).update(
            MemorySize=size["MemorySize"], Timeout=size["Timeout"]
        )
        function.setdefault("Metadata", {})["prism:sizing"] = size["measured"]
    worker = sizing.get("MeterWorker")
    visibility = resources["MeteringQueue"]["Properties"]["VisibilityTimeout"]
    if worker and worker["Timeout"] > visibility:
        # AWS refuses an SQS trigger whose function may outlive the message's invisibility.
        raise ValueError(
            f"MeterWorker Timeout {worker['Timeout']} s exceeds the metering queue's "
            f"VisibilityTimeout {visibility} s (infra/resources.json)"
        )


def _machine_arn(kind: str) -> dict:
    return {
        "Fn::Sub": "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:"
        f"stateMachine:prism-${{Stage}}-{kind}"
    }


def _env_of(resources: dict, logical_id: str) -> dict:
    """The merge-template fragment holding a Chalice function's environment variables."""
    return (
        resources.setdefault(logical_id, {})
        .setdefault("Properties", {})
        .setdefault("Environment", {})
        .setdefault("Variables", {})
    )


def _states_role(functions: list[str]) -> dict:
    """Step Functions may invoke exactly the step functions, nothing else."""
    return {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "states.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            },
            "Policies": [
                {
                    "PolicyName": "invoke-cloud-steps",
                    "PolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Effect": "Allow",
                                "Action": "lambda:InvokeFunction",
                                "Resource": [{"Fn::GetAtt": [f, "Arn"]} for f in functions],
                            }
                        ],
                    },
                }
            ],
        },
    }


if __name__ == "__main__":  # python -m prism.dev.infra STAGE OUT.json: the merge template
    import sys

    stage, out = sys.argv[1], Path(sys.argv[2])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged_template(stage), indent=2) + "\n")
