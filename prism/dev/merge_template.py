"""The merge template `make package` gives `chalice package`: infra/resources.json plus the
state machines of infra/statemachines, each function's role policies and environment, bound to a
stage and sized by infra/sizing.json (`python -m prism.dev.merge_template STAGE OUT.json`)."""

import json
import re
from pathlib import Path

from prism.dev.infra import REPO_ROOT, STATE_MACHINES, TEMPLATE

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


if __name__ == "__main__":  # python -m prism.dev.merge_template STAGE OUT.json: the merge template
    import sys

    stage, out = sys.argv[1], Path(sys.argv[2])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged_template(stage), indent=2) + "\n")
