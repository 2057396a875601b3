"""IAM enforcement on moto that checks the resources a request touches, as AWS does.

moto 5.2.5 enforces IAM (INITIAL_NO_AUTH_ACTION_COUNT) on every service, but checks DynamoDB,
Step Functions, SSM, KMS and Lambda against resource "*" (and SQS's GetQueueUrl too), so a
policy scoped to our tables, machines and parameters refuses them all. `match_resources()`:
- gives those services the ARN(s) each request touches, and checks a request that touches
  several (batches, transactions) on every one: one refusal refuses it;
- matches Action/Resource as IAM does (`*`, `?`, actions ignore case, nothing else is regex);
- stops ignoring an identity policy's Condition (moto allowed a conditional Allow outright);
- answers an unsigned request 403 MissingAuthenticationToken (moto: 500).
`fixed_key_acts_as` lets moto's Step Functions call Lambda as the state machine's role.

`requested_access` (API call -> the IAM action and ARN pairs AWS authorizes) and
`iam_pattern_matches` are shared with tests/iam_audit.py, which audits the app's calls.
"""

import base64
import functools
import json
import re
from typing import NamedTuple
from urllib.parse import unquote

# An (IAM action, resource ARN) pair that must be allowed.
Access = tuple[str, str]


class Where(NamedTuple):
    """Where a request goes: what an ARN of a resource it names is built from."""

    partition: str
    region: str
    account: str

    def arn(self, service: str, resource: str) -> str:
        return f"arn:{self.partition}:{service}:{self.region}:{self.account}:{resource}"


def requested_access(service: str, operation: str, params: dict, where: Where) -> list[Access]:
    """What IAM checks for `operation` of `service` (its IAM prefix, e.g. "states") with these
    API parameters. Services not listed here are checked on "*"."""
    derive = _DERIVERS.get(service)
    if derive is None:
        return [(f"{service}:{operation}", "*")]
    return list(dict.fromkeys(derive(operation, params, where)))  # once each, in order


# DynamoDB transactions are authorized per item, by the single-item actions.
_TRANSACT_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
    "Get": "GetItem",
}


def _dynamodb(operation: str, params: dict, where: Where) -> list[Access]:
    def table_arn(name: str) -> str:
        return name if name.startswith("arn:") else where.arn("dynamodb", f"table/{name}")

    if operation in ("BatchWriteItem", "BatchGetItem"):
        action = f"dynamodb:{operation}"
        return [(action, table_arn(table)) for table in params.get("RequestItems") or {}]
    if operation in ("TransactWriteItems", "TransactGetItems"):
        return [
            (f"dynamodb:{_TRANSACT_ACTIONS[kind]}", table_arn(request["TableName"]))
            for entry in params.get("TransactItems") or []
            for kind, request in entry.items()
        ]
    action = f"dynamodb:{operation}"
    if not params.get("TableName"):
        return [(action, "*")]
    arn = table_arn(params["TableName"])
    if operation in ("Query", "Scan") and params.get("IndexName"):
        arn += f"/index/{params['IndexName']}"
    return [(action, arn)]


def _states(operation: str, params: dict, where: Where) -> list[Access]:
    action = f"states:{operation}"
    for key in ("executionArn", "stateMachineArn", "resourceArn"):
        if params.get(key):
            return [(action, params[key])]
    if operation == "CreateStateMachine" and params.get("name"):
        return [(action, where.arn("states", f"stateMachine:{params['name']}"))]
    return [(action, "*")]


def _ssm(operation: str, params: dict, where: Where) -> list[Access]:
    def parameter_arn(name: str) -> str:
        if name.startswith("arn:"):
            return name
        name = name.split(":", 1)[0]  # without a ":version" or ":label" selector
        return where.arn("ssm", f"parameter/{name.lstrip('/')}")

    names = params.get("Names") or [params.get("Name") or params.get("Path")]
    action = f"ssm:{operation}"
    return [(action, parameter_arn(n)) if n else (action, "*") for n in names]


def _kms(operation: str, params: dict, where: Where) -> list[Access]:
    key = params.get("KeyId")
    if not key:
        resource = "*"
    elif key.startswith("arn:"):
        resource = key
    elif key.startswith("alias/"):
        resource = where.arn("kms", key)
    else:
        resource = where.arn("kms", f"key/{key}")
    return [(f"kms:{operation}", resource)]


def _lambda(operation: str, params: dict, where: Where) -> list[Access]:
    action = "lambda:InvokeFunction" if operation == "Invoke" else f"lambda:{operation}"
    name = params.get("FunctionName")
    if not name:
        return [(action, "*")]
    if name.startswith("arn:"):
        arn = name
    else:  # "name", "name:qualifier" or "account:function:name[:qualifier]"
        parts = name.split(":")
        if len(parts) >= 3 and parts[1] == "function":
            where = where._replace(account=parts[0])
            parts = parts[2:]
        arn = where.arn("lambda", "function:" + ":".join(parts))
    if params.get("Qualifier") and arn.count(":") == 6:
        arn += f":{params['Qualifier']}"
    return [(action, arn)]


def _sqs(operation: str, params: dict, where: Where) -> list[Access]:
    action = f"sqs:{operation}"
    url = params.get("QueueUrl")
    if url:  # .../<account>/<name>
        parts = url.rstrip("/").split("/")
        if len(parts) >= 2 and parts[-2].isdigit():
            where = where._replace(account=parts[-2])
        return [(action, where.arn("sqs", parts[-1]))]
    if params.get("QueueName"):
        return [(action, where.arn("sqs", params["QueueName"]))]
    return [(action, "*")]


_DERIVERS = {
    "dynamodb": _dynamodb,
    "states": _states,
    "ssm": _ssm,
    "kms": _kms,
    "lambda": _lambda,
    "sqs": _sqs,
}


def iam_pattern_matches(pattern: str, value: str, is_action: bool = False) -> bool:
    """IAM's matching of an Action or Resource element: `*` any run of characters, `?` one;
    actions ignore case. In an ARN a wildcard in partition, service, region or account stays
    within that segment; in the resource part it may cross `:` and `/`."""
    if is_action:
        return _glob(pattern.lower(), value.lower())
    if pattern == "*":
        return True
    pattern_parts, value_parts = pattern.split(":", 5), value.split(":", 5)
    if len(pattern_parts) < 6 or len(value_parts) < 6:
        return _glob(pattern, value)
    return all(_glob(p, v) for p, v in zip(pattern_parts, value_parts, strict=True))


@functools.lru_cache(maxsize=4096)
def _glob_regex(pattern: str) -> re.Pattern:
    body = "".join(
        ".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern
    )
    return re.compile(body, re.DOTALL)


def _glob(pattern: str, value: str) -> bool:
    return _glob_regex(pattern).fullmatch(value) is not None


# --- the moto patches -------------------------------------------------------------------------


def _json_body(response) -> dict:
    return json.loads(response.body or "{}")


def _dynamodb_params(response) -> dict:
    return dict(getattr(response, "params", None) or {})  # moto parsed them with the API model


def _kms_params(response) -> dict:
    """The KeyId as the key's own id: IAM checks the key's ARN, whatever names it (an alias,
    or for Decrypt without KeyId, the key inside the ciphertext)."""
    params = _json_body(response)
    key = params.get("KeyId")
    if not key and params.get("CiphertextBlob"):
        key = base64.b64decode(params["CiphertextBlob"])[:36].decode()  # moto's blob: id first
    if key:
        try:
            params["KeyId"] = response.kms_backend.any_id_to_key_id(key)
        except Exception:  # an unknown alias: the request fails on its own; check it as named
            params["KeyId"] = key
    return params


def _lambda_params(response) -> dict:
    found = re.search(r"/functions/([^/]+)", response.path)
    qualifier = response.querystring.get("Qualifier", [None])[0]
    return {"FunctionName": unquote(found.group(1)) if found else None, "Qualifier": qualifier}


def _sqs_params(response) -> dict:
    params = {"QueueUrl": response._get_param("QueueUrl")}
    params["QueueName"] = response._get_param("QueueName")
    if not params["QueueUrl"] and response.path.count("/") >= 2:  # the query API's queue URL
        params["QueueUrl"] = response.path
    return params


def _response_classes():
    """(response class, IAM prefix, how to read a request's parameters) for each service."""
    from moto.awslambda.responses import LambdaResponse
    from moto.dynamodb.responses import DynamoHandler
    from moto.kms.responses import KmsResponse
    from moto.sqs.responses import SQSResponse
    from moto.ssm.responses import SimpleSystemManagerResponse
    from moto.stepfunctions.responses import StepFunctionResponse

    return [
        (DynamoHandler, "dynamodb", _dynamodb_params),
        (StepFunctionResponse, "states", _json_body),
        (SimpleSystemManagerResponse, "ssm", _json_body),
        (KmsResponse, "kms", _kms_params),
        (LambdaResponse, "lambda", _lambda_params),
        (SQSResponse, "sqs", _sqs_params),
    ]


def _resource_determiner(service: str, read_params):
    def _determine_resource(self):
        try:
            where = Where(self.partition, self.region, self.current_account)
            return requested_access(service, self._get_action(), read_params(self), where)
        except Exception:  # a malformed request: checked on "*" (refused), as moto did
            return "*"

    _determine_resource._prism_iam = True
    return _determine_resource


def match_resources() -> None:
    """Install the patches (idempotent); call before moto.server.main()."""
    from moto.iam.access_control import IAMPolicyStatement, IAMRequestBase

    for response_class, service, read_params in _response_classes():
        if not getattr(response_class.__dict__.get("_determine_resource"), "_prism_iam", False):
            response_class._determine_resource = _resource_determiner(service, read_params)
    if not getattr(IAMRequestBase.check_action_permitted, "_prism_iam", False):
        IAMRequestBase.check_action_permitted = _check_each(IAMRequestBase.check_action_permitted)
        IAMRequestBase.__init__ = _require_signature(IAMRequestBase.__init__)
        IAMPolicyStatement.is_action_permitted = _conditions_without_context(
            IAMPolicyStatement.is_action_permitted
        )
    IAMPolicyStatement._check_element_matches = _element_matches


def _check_each(check_action_permitted):
    """moto checks one (action, resource) per request; check each pair the request touches
    (AccessDenied names the refused action)."""

    @functools.wraps(check_action_permitted)
    def check_each(self, resource):
        if isinstance(resource, str):
            return check_action_permitted(self, resource)
        for action, arn in resource or [(self._action, "*")]:
            self._action = action
            check_action_permitted(self, arn)

    check_each._prism_iam = True
    return check_each


def _require_signature(init):
    """moto fails an unsigned request with a 500 (no Authorization header); AWS refuses it."""
    from moto.core.exceptions import _RESTError

    class MissingAuthenticationToken(_RESTError):
        code = 403

        def __init__(self):
            super().__init__(
                "MissingAuthenticationToken", "Request is missing Authentication Token"
            )

    @functools.wraps(init)
    def checked_init(self, *args, **kwargs):
        headers = kwargs.get("headers", args[5] if len(args) > 5 else {})
        if "Authorization" not in headers:
            raise MissingAuthenticationToken()
        init(self, *args, **kwargs)

    return checked_init


def _conditions_without_context(is_action_permitted):
    """moto evaluates a Condition only in trust policies; in an identity policy it ignores it,
    so a conditional Allow (kms:Decrypt only via SSM) allows everything. It knows no request
    context there, so every key is absent: the statement applies only if its Condition holds
    with no keys, and then as if unconditional."""
    from moto.iam.access_control import IAMPolicyStatement, PermissionResult

    @functools.wraps(is_action_permitted)
    def permitted(self, action, resource="*", principal=None, incoming_condition_values=None):
        condition = self._statement.get("Condition")
        if not condition or incoming_condition_values is not None:  # no Condition, or trust
            return is_action_permitted(self, action, resource, principal, incoming_condition_values)
        if not _holds_with_no_keys(condition):
            return PermissionResult.NEUTRAL
        statement = {k: v for k, v in self._statement.items() if k != "Condition"}
        return IAMPolicyStatement(statement).is_action_permitted(action, resource, principal)

    return permitted


def _holds_with_no_keys(condition: dict) -> bool:
    """A test on an absent key holds only when negated, ...IfExists, ForAllValues or Null."""
    for operator, tests in condition.items():
        if operator == "Null":
            holds = all(str(value).lower() == "true" for value in tests.values())
        elif operator.startswith(("ForAllValues:", "ForAnyValue:")):
            holds = operator.startswith("ForAllValues:")  # over no values: all yes, any no
        else:
            holds = "Not" in operator or operator.endswith("IfExists")
        if not holds:
            return False
    return True


def _element_matches(self, element: str, value: str) -> bool:
    """moto turns `*` into a regex and leaves `?`, `.` and case alone; match as IAM does."""
    patterns = self._statement[element]
    patterns = [patterns] if isinstance(patterns, str) else patterns
    is_action = element in ("Action", "NotAction")
    return any(iam_pattern_matches(p, value, is_action) for p in patterns)


def fixed_key_acts_as(access_key_id: str, secret_access_key: str, role_name: str) -> None:
    """Requests signed with this fixed key act as a session of IAM role `role_name` (once it
    exists; until then they are refused as an unknown key). moto's Step Functions signs its
    Lambda tasks with "ak"/"sk", a key IAM never issued: on AWS they run as the state
    machine's role, so `fixed_key_acts_as("ak", "sk", <that role>)` does the same here."""
    from moto.iam import access_control

    roles = getattr(access_control.create_access_key, "_prism_roles", None)
    if roles is None:
        roles = {}
        access_control.create_access_key = _create_access_key(
            access_control.create_access_key, roles
        )
    roles[access_key_id] = (secret_access_key, role_name)


def _create_access_key(create_access_key, roles: dict):
    from botocore.credentials import Credentials
    from moto.iam.access_control import AssumedRoleAccessKey

    class RoleSessionKey(AssumedRoleAccessKey):
        def __init__(self, account_id, partition, access_key_id, secret, role_name):
            self.account_id, self.partition = account_id, partition
            self._access_key_id, self._secret_access_key = access_key_id, secret
            self._owner_role_name, self._session_name = role_name, "prism-fixed-key"

        def create_credentials(self):
            return Credentials(self._access_key_id, self._secret_access_key)

    @functools.wraps(create_access_key)
    def create(account_id, partition, access_key_id, headers):
        if access_key_id in roles:
            secret, role_name = roles[access_key_id]
            key = RoleSessionKey(account_id, partition, access_key_id, secret, role_name)
            if any(role.name == role_name for role in key.backend.get_roles()):
                return key
        return create_access_key(account_id, partition, access_key_id, headers)

    create._prism_roles = roles
    return create
