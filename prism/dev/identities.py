"""Who calls the local AWS, as on AWS: each function as its own role from the packaged template,
the state machines as the template's states role (moto's Step Functions signs its Lambda
tasks with that role's keys), and the platform's operator (bootstrap, `prism admin`) as an
administrator.

The keys are made once per state dir and kept there (0600). The moto server, with IAM enforced,
makes each key act as its role (prism.dev.moto_iam.fixed_key_acts_as), so an unsigned request,
or one signed with any other key, is refused, and a call the role's policy does not grant is
refused as AWS would refuse it.
"""

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from prism.dev.infra import LOCAL_ROLE
from prism.dev.stack import Stack

OPERATOR, STATES = "operator", "states"
ADMIN_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}
TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "lambda.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)


@dataclass(frozen=True)
class Identity:
    role: str
    access_key: str
    secret_key: str
    policies: list

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}


def prepare(stack: Stack, path: Path) -> dict[str, Identity]:
    """Every identity of the platform, with its role's policies as the template has them now
    and the keys this state dir already had (new ones made for what is new)."""
    saved = json.loads(path.read_text()) if path.exists() else {}
    stage = stack.local.stage
    roles = {OPERATOR: ("prism-local-operator", [ADMIN_POLICY])}
    roles[STATES] = (LOCAL_ROLE, stack.role_policies("StatesRole"))
    for logical_id in stack.functions():
        role = stack.function_role(logical_id)
        roles[logical_id] = (f"prism-{stage}-{role}", stack.role_policies(role))
    identities = {}
    for name, (role, policies) in roles.items():
        keys = saved.get(name) or {}
        access_key = keys.get("access_key") or "AKIAPRISM" + secrets.token_hex(6).upper()
        secret_key = keys.get("secret_key") or secrets.token_urlsafe(30)
        identities[name] = Identity(role, access_key, secret_key, policies)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")  # a crash mid-write never leaves it empty
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({name: asdict(i) for name, i in identities.items()}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    return identities


def allows(identity: Identity, action: str, resource: str) -> bool:
    """Whether the identity's policies grant this (unconditional Allow; ours have no Deny)."""
    from prism.dev.moto_iam import iam_pattern_matches

    def matches(patterns, value: str, is_action: bool) -> bool:
        patterns = [patterns] if isinstance(patterns, str) else patterns
        return any(iam_pattern_matches(p, value, is_action) for p in patterns)

    return any(
        statement["Effect"] == "Allow"
        and "Condition" not in statement
        and matches(statement.get("Action", []), action, True)
        and matches(statement.get("Resource", []), resource, False)
        for policy in identity.policies
        for statement in policy["Statement"]
    )


def load(path: Path) -> dict[str, Identity]:
    return {name: Identity(**fields) for name, fields in json.loads(path.read_text()).items()}


def install(path: Path, account: str = "123456789012") -> None:
    """In the moto server, before it serves: each role exists with exactly its policies, and
    each key acts as its role."""
    from moto.iam.models import iam_backends

    from prism.dev.moto_iam import fixed_key_acts_as

    iam = iam_backends[account]["global"]
    existing = {role.name for role in iam.get_roles()}
    for identity in load(path).values():
        if identity.role not in existing:
            iam.create_role(identity.role, TRUST, "/", None, "", [], None)
            existing.add(identity.role)
        names = [f"policy-{index}" for index in range(len(identity.policies))]
        for stale in set(iam.get_role(identity.role).policies) - set(names):
            iam.delete_role_policy(identity.role, stale)
        for name, policy in zip(names, identity.policies, strict=True):
            iam.put_role_policy(identity.role, name, json.dumps(policy))
        fixed_key_acts_as(identity.access_key, identity.secret_key, identity.role)
    _step_functions_sign_as(load(path)[STATES])


def _step_functions_sign_as(states: Identity) -> None:
    """moto's Step Functions calls Lambda signed with a fixed, public key ("ak"); on AWS a
    state machine's tasks run as its role, so here they are signed with the states role's own
    keys, and "ak" is refused like any key IAM never issued."""
    import boto3
    from moto.settings import moto_server_port
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils

    plain = lambda_eval_utils.boto_client_for

    def signed(region: str, service: str, state_credentials=None):
        config = plain(region, service, state_credentials).meta.config
        return boto3.client(
            service,
            region_name=region,
            endpoint_url=f"http://localhost:{moto_server_port()}",
            aws_access_key_id=states.access_key,
            aws_secret_access_key=states.secret_key,
            config=config,
        )

    lambda_eval_utils.boto_client_for = signed
