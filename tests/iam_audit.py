"""Audits the AWS calls the app makes against the IAM policy its Lambda functions get.

Every botocore call (boto3 and pynamodb both end in BaseClient._make_api_call) made by app code
(the innermost project frame on the stack is in chalicelib/ or app.py) is recorded as the IAM
action(s) and resource ARN(s) AWS would authorize; `denials` then evaluates on each, as IAM
does, what the functions are granted: .chalice/policy-<stage>.json plus the statements the merge
template attaches to their roles. tests/conftest.py wires it into the session.
"""

import functools
import json
import os
import re
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import botocore.client

from prism.dev.moto_iam import Where, iam_pattern_matches, requested_access

REPO_ROOT = Path(__file__).resolve().parents[1]
POLICY_DIR = REPO_ROOT / ".chalice"
ACCOUNT = os.environ.get("PRISM_AWS_ACCOUNT_ID", "123456789012")  # moto's default account


@dataclass(frozen=True)
class Call:
    """One (action, resource) an API call needs, and the condition keys known for it."""

    service: str  # the IAM prefix: dynamodb, sqs, states, execute-api, ...
    operation: str  # the API operation, e.g. BatchWriteItem
    action: str  # the IAM action, e.g. dynamodb:BatchWriteItem
    resource: str
    context: tuple[tuple[str, str], ...] = ()  # condition keys and their values
    test: str = ""  # the test that first made it


def calls_for(client, operation: str, params: dict, test: str = "") -> list[Call]:
    """What IAM authorizes for one API call made through this botocore client."""
    service = client.meta.service_model.signing_name
    region = client.meta.region_name
    where = Where(client.meta.partition, region, ACCOUNT)
    if service == "execute-api":
        access = [_connection_access(client.meta.endpoint_url, operation, params, where)]
    else:
        if service == "kms":
            params = _kms_key_by_id(params, region)
        access = requested_access(service, operation, params, where)
    context = _condition_context(service, params, region)
    return [Call(service, operation, a, r, context, test) for a, r in access]


# The WebSocket API's id and stage in the ARNs of calls to a local (non-AWS) management
# endpoint; ${WebsocketAPI} in the merge template stands for the same API.
LOCAL_WEBSOCKET_API = "websocket-api-id"
WEBSOCKET_STAGE = "api"  # Chalice's api_gateway_stage


_CONNECTION_METHODS = {"PostToConnection": "POST", "GetConnection": "GET"}


def _connection_access(endpoint_url, operation, params, where) -> tuple[str, str]:
    """API Gateway's management API: execute-api:ManageConnections on
    <api id>/<stage>/<METHOD>/@connections/<connection id>, the API from the endpoint URL."""
    url = urlparse(endpoint_url or "")
    host, path = url.hostname or "", url.path.strip("/")
    if ".execute-api." in host:
        api_id, stage = host.split(".")[0], path.split("/")[0]
    else:  # the local gateway stands for our WebSocket API
        api_id, stage = LOCAL_WEBSOCKET_API, WEBSOCKET_STAGE
    method = _CONNECTION_METHODS.get(operation, "DELETE")
    resource = f"{api_id}/{stage}/{method}/@connections/{params.get('ConnectionId', '*')}"
    return "execute-api:ManageConnections", where.arn("execute-api", resource)


def _kms_key_by_id(params: dict, region: str) -> dict:
    """IAM authorizes a KMS call on the key's ARN whatever names it (an alias): the alias
    resolved as the in-process moto KMS resolves it (prism.dev.moto_iam does the same on the
    local platform's server)."""
    key = params.get("KeyId")
    if not key or not (key.startswith("alias/") or ":alias/" in key):
        return params
    try:
        from moto.kms.models import kms_backends

        return params | {"KeyId": kms_backends[ACCOUNT][region].any_id_to_key_id(key)}
    except Exception:  # an unknown alias: the call fails on its own; audited as named
        return params


def _condition_context(service: str, params: dict, region: str) -> tuple:
    """The condition keys the audit can know from a request. A key not here is absent, as
    for a direct call by the app (kms:ViaService is only set when SSM calls KMS)."""
    context = {"aws:RequestedRegion": region}
    if service == "cloudwatch" and params.get("Namespace"):
        context["cloudwatch:namespace"] = params["Namespace"]
    return tuple(sorted(context.items()))


CHECKABLE_KEYS = {"aws:requestedregion", "cloudwatch:namespace", "kms:viaservice"}


# --- recording --------------------------------------------------------------------------------


class Recorder:
    """The app's calls, each (action, resource, context) once with the first test that made
    it. Installs itself around BaseClient._make_api_call; threads may record concurrently."""

    def __init__(self):
        self.calls: dict[tuple, Call] = {}
        self._lock = threading.Lock()
        self._original = None

    def __enter__(self) -> "Recorder":
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.uninstall()

    def install(self) -> None:
        if self._original is not None:
            return
        original = self._original = botocore.client.BaseClient._make_api_call
        recorder = self

        @functools.wraps(original)
        def _make_api_call(client, operation_name, api_params):
            if made_by_app(sys._getframe(1)):
                recorder.record(client, operation_name, api_params)
            return original(client, operation_name, api_params)

        botocore.client.BaseClient._make_api_call = _make_api_call

    def uninstall(self) -> None:
        if self._original is not None:
            botocore.client.BaseClient._make_api_call = self._original
            self._original = None

    def record(self, client, operation: str, params: dict) -> None:
        test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
        try:
            calls = calls_for(client, operation, params, test)
        except Exception as exc:  # never break the app's call; report it as unknown
            service = client.meta.service_model.signing_name
            calls = [Call(service, operation, f"{service}:{operation}", f"? ({exc!r})", (), test)]
        with self._lock:
            for call in calls:
                self.calls.setdefault((call.action, call.resource, call.context), call)

    def dump(self, path: Path) -> None:
        with self._lock:
            rows = [asdict(c) for c in self.calls.values()]
        path.write_text(json.dumps(rows))


RECORDER = Recorder()  # the session's, installed by tests/conftest.py


def load_calls(paths) -> list[Call]:
    calls = {}
    for path in paths:
        for row in json.loads(Path(path).read_text()):
            call = Call(**row | {"context": tuple(tuple(kv) for kv in row["context"])})
            calls.setdefault((call.action, call.resource, call.context), call)
    return list(calls.values())


@functools.cache
def _frame_kind(filename: str) -> str:
    """app (chalicelib/, app.py), other (tests, prism/dev, moto: not the app's calls), or
    library (botocore, boto3, pynamodb, powertools, the standard library: look further out)."""
    path = os.path.abspath(filename)
    if path == os.path.abspath(__file__):
        return "library"  # a recorder's wrapper, maybe around another one
    if f"{os.sep}moto{os.sep}" in path and "site-packages" in path:
        return "other"
    root = str(REPO_ROOT) + os.sep
    if not path.startswith(root) or path.startswith(root + ".venv" + os.sep):
        return "library"
    relative = path[len(root) :]
    return "app" if relative.startswith("chalicelib" + os.sep) or relative == "app.py" else "other"


def made_by_app(frame) -> bool:
    while frame is not None:
        kind = _frame_kind(frame.f_code.co_filename)
        if kind != "library":
            return kind == "app"
        frame = frame.f_back
    return False


# --- evaluating -------------------------------------------------------------------------------


def policy_file(stage: str) -> dict:
    """.chalice/policy-dev.json for `stage` (the test suite's stage is "test"): the files differ
    only in the stage inside names, which tests/unit/test_iam_audit.py checks."""
    text = (POLICY_DIR / "policy-dev.json").read_text()
    text = text.replace("prism-dev-", f"prism-{stage}-").replace("/prism/dev/", f"/prism/{stage}/")
    return json.loads(text)


def stage_policy(stage: str, template: dict | None = None) -> dict:
    """What the app's functions are granted: the policy file, plus the statements the merge
    template (prism.dev.merge_template.merged_template) attaches to their roles, which can name
    resources known only at deploy, such as the WebSocket API."""
    policy = policy_file(stage)
    policy["Statement"] += template_statements(stage, template)
    return policy


def template_statements(stage: str, template: dict | None = None) -> list[dict]:
    if template is None:
        from prism.dev.merge_template import merged_template

        template = merged_template("dev")  # ${Stage} stays a placeholder, resolved below
    names = {"AWS::Partition": "aws", "AWS::Region": "*", "AWS::AccountId": "*"}
    names |= {"Stage": stage, "WebsocketAPI": LOCAL_WEBSOCKET_API}
    # A KMS key's id exists once it is created: in a policy it stands for any key here.
    resources = template.get("Resources", {})
    names |= {name: "*" for name, r in resources.items() if r.get("Type") == "AWS::KMS::Key"}
    statements = []
    for resource in template.get("Resources", {}).values():
        properties = resource.get("Properties", {})
        roles = {json.dumps(role) for role in properties.get("Roles", [])}
        if resource.get("Type") != "AWS::IAM::Policy" or roles <= {'{"Ref": "StatesRole"}'}:
            continue  # StatesRole is Step Functions', not the app's
        document = _resolve(properties["PolicyDocument"], names)
        statements += _statements(document)
    return statements


def _resolve(node, names: dict):
    """Fn::Sub with the names we know; anything else unresolved stays a string no ARN matches."""
    if isinstance(node, list):
        return [_resolve(item, names) for item in node]
    if not isinstance(node, dict):
        return node
    if set(node) == {"Fn::Sub"} and isinstance(node["Fn::Sub"], str):
        return re.sub(r"\$\{([\w:]+)\}", lambda m: names.get(m[1], m[0]), node["Fn::Sub"])
    if len(node) == 1 and next(iter(node)).startswith(("Fn::", "Ref")):
        return f"<unresolved {json.dumps(node)}>"
    return {key: _resolve(value, names) for key, value in node.items()}


def decide(policy: dict, call: Call) -> tuple[str, str]:
    """("allow" | "deny" | "unverifiable", why). An explicit Deny wins, then any Allow; a
    statement whose Condition uses a key or operator the audit cannot check is unverifiable."""
    allowed, unsure_allow, unsure_deny = False, None, None
    for statement in _statements(policy):
        if not _applies(statement, call):
            continue
        condition = statement.get("Condition") or {}
        holds, deny = _conditions_hold(condition, dict(call.context)), statement["Effect"] == "Deny"
        if holds is None and deny:
            unsure_deny = json.dumps(condition)
        elif holds is None:
            unsure_allow = json.dumps(condition)
        elif holds and deny:
            return "deny", "explicitly denied"
        elif holds:
            allowed = True
    if unsure_deny:
        return "unverifiable", f"a Deny's Condition cannot be checked: {unsure_deny}"
    if allowed:
        return "allow", ""
    if unsure_allow:
        return "unverifiable", f"allowed only under a Condition it cannot check: {unsure_allow}"
    return "deny", "no statement allows it"


def _statements(policy: dict) -> list[dict]:
    statements = policy["Statement"]
    return [statements] if isinstance(statements, dict) else statements


def _applies(statement: dict, call: Call) -> bool:
    def any_match(element: str, value: str, is_action: bool) -> bool:
        patterns = statement[element]
        patterns = [patterns] if isinstance(patterns, str) else patterns
        return any(iam_pattern_matches(p, value, is_action) for p in patterns)

    if "Action" in statement:
        action_ok = any_match("Action", call.action, True)
    else:
        action_ok = not any_match("NotAction", call.action, True)
    if "Resource" in statement:
        resource_ok = any_match("Resource", call.resource, False)
    else:
        resource_ok = not any_match("NotResource", call.resource, False)
    return action_ok and resource_ok


# operator -> (the test on one value, whether it is negated: true when the key is absent)
_OPERATORS = {
    "StringEquals": (lambda want, got: got == want, False),
    "StringNotEquals": (lambda want, got: got != want, True),
    "StringEqualsIgnoreCase": (lambda want, got: got.lower() == want.lower(), False),
    "StringLike": (lambda want, got: iam_pattern_matches(want, got), False),
    "StringNotLike": (lambda want, got: not iam_pattern_matches(want, got), True),
}


def _conditions_hold(condition: dict, context: dict) -> bool | None:
    """All of a Condition block's tests (True/False), or None when one cannot be checked."""
    known = {key.lower(): value for key, value in context.items()}
    for operator, tests in condition.items():
        base = operator.removesuffix("IfExists")
        if base not in _OPERATORS:
            return None
        test, negated = _OPERATORS[base]
        for key, wanted in tests.items():
            if key.lower() not in CHECKABLE_KEYS:
                return None
            wanted = [wanted] if isinstance(wanted, str) else wanted
            got = known.get(key.lower())
            if got is None:
                holds = negated or operator.endswith("IfExists")
            elif negated:
                holds = all(test(w, got) for w in wanted)
            else:
                holds = any(test(w, got) for w in wanted)
            if not holds:
                return False
    return True


def denials(policy: dict, calls) -> list[tuple[Call, str]]:
    """Each call the policy does not allow, with why."""
    found = []
    for call in calls:
        verdict, why = decide(policy, call)
        if verdict != "allow":
            found.append((call, f"{verdict}: {why}"))
    return found


def report(found: list[tuple[Call, str]]) -> str:
    lines = [f"the IAM policy does not grant {len(found)} AWS call(s) the app made:"]
    for call, why in sorted(found, key=lambda item: (item[0].action, item[0].resource)):
        lines.append(f"  {call.service} {call.action} on {call.resource} ({why})")
        lines.append(f"      made by {call.test or 'code outside a test'}")
    return "\n".join(lines)


_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def worker_file(directory: Path, worker: str) -> Path:
    return directory / f"calls-{_SAFE.sub('_', worker)}.json"
