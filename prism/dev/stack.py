"""The packaged stack as the local platform runs it: `chalice package` with the merge template
(what `make package` deploys), read back as functions with their own environments, their
event sources and the REST API's routes, every CloudFormation reference resolved to this
machine's stand-ins.

The package is built once per content of what goes into it and cached under
.prism/package/<stage>-<hash>/: sam.json and runtime/ (deployment.zip unpacked: app.py,
chalicelib and the Lambda dependencies from requirements.txt, nothing else). Each function then
runs from runtime/ alone (prism.dev.lambda_service), so what is tested is what Lambda runs.
"""

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from prism.dev.infra import REPO_ROOT
from prism.dev.merge_template import merged_template

PACKAGE_CACHE = REPO_ROOT / ".prism" / "package"
KEEP_BUILDS = 3
# What the package and its template are made of: a change to any of these builds anew.
PACKAGE_INPUTS = (
    "app.py",
    "requirements.txt",
    ".chalice",
    "chalicelib",
    "infra",
    "prism/dev/infra.py",
    "prism/dev/merge_template.py",
)
ACCOUNT = "123456789012"  # moto's default account
# The template's API ids stand for the local gateway (see LocalAws.url_for).
LOCAL_API_IDS = {"RestAPI": "local-rest-api", "WebsocketAPI": "local-websocket-api"}
API_URL = re.compile(
    r"^(https|wss)://(local-rest-api|local-websocket-api)\.execute-api\.[\w.${}:-]+?/(\w+)/?$"
)


@dataclass(frozen=True)
class LocalAws:
    """Where the template's AWS names and addresses are on this machine."""

    stage: str
    api_url: str  # the REST API (API Gateway) locally
    ws_url: str  # the WebSocket API
    management_url: str  # the WebSocket API's @connections management endpoint
    region: str = "us-east-1"
    account: str = ACCOUNT

    def url_for(self, url: str) -> str:
        """https://<RestAPI>.execute-api.<region>.amazonaws.com/api -> the local API, etc."""
        match = API_URL.match(url)
        if not match:
            return url
        scheme, api, _stage = match.groups()
        if api == "local-rest-api":
            return self.api_url
        return self.ws_url if scheme == "wss" else self.management_url


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str  # MeterTick
    name: str  # prism-dev-meter_tick, as Chalice names it and the state machines invoke it
    handler: str  # app.meter_tick
    timeout: int
    memory: int
    environment: dict  # exactly the template's, resolved


class Stack:
    def __init__(self, directory: Path, local: LocalAws):
        self.directory = directory
        self.runtime = directory / "runtime"
        self.template = json.loads((directory / "sam.json").read_text())
        self.resources = self.template["Resources"]
        self.local = local

    def functions(self) -> dict[str, FunctionSpec]:
        specs = {}
        for logical_id, resource in self.resources.items():
            if resource["Type"] != "AWS::Serverless::Function":
                continue
            props = resource["Properties"]
            variables = props.get("Environment", {}).get("Variables", {})
            specs[logical_id] = FunctionSpec(
                logical_id=logical_id,
                name=self.function_name(logical_id),
                handler=props["Handler"],
                timeout=int(props.get("Timeout", 3)),
                memory=int(props.get("MemorySize", 128)),
                environment={k: str(self.resolve(v)) for k, v in variables.items()},
            )
        return specs

    def function_name(self, logical_id: str) -> str:
        handler = self.resources[logical_id]["Properties"]["Handler"].removeprefix("app.")
        base = f"prism-{self.local.stage}"
        return base if handler == "app" else f"{base}-{handler}"

    def websocket_routes(self) -> dict[str, str]:
        """$connect/$default/$disconnect -> the function's logical id."""
        routes = {}
        for resource in self.resources.values():
            if resource["Type"] != "AWS::ApiGatewayV2::Route":
                continue
            integration = resource["Properties"]["Target"]["Fn::Join"][1][1]["Ref"]
            uri = self.resources[integration]["Properties"]["IntegrationUri"]["Fn::Sub"]
            routes[resource["Properties"]["RouteKey"]] = uri[1]["WebsocketHandler"]["Ref"]
        return routes

    def event_sources(self, kind: str) -> list[tuple[str, dict]]:
        """(logical id, resolved properties) of every event of this kind (Schedule, SQS)."""
        found = []
        for logical_id, resource in self.resources.items():
            for event in resource.get("Properties", {}).get("Events", {}).values():
                if event["Type"] == kind:
                    found.append((logical_id, self.resolve(event["Properties"])))
        return found

    def role_policies(self, role: str) -> list[dict]:
        """The policy documents an IAM role of the template gets: its own inline policies and
        every AWS::IAM::Policy that names it, resolved."""
        props = self.resources[role]["Properties"]
        documents = [p["PolicyDocument"] for p in props.get("Policies", [])]
        for resource in self.resources.values():
            named = resource["Type"] == "AWS::IAM::Policy" and resource["Properties"]["Roles"]
            if named and {"Ref": role} in named:
                documents.append(resource["Properties"]["PolicyDocument"])
        return [self.resolve(document) for document in documents]

    def function_role(self, logical_id: str) -> str:
        return self.resources[logical_id]["Properties"]["Role"]["Fn::GetAtt"][0]

    def rest_paths(self) -> dict[str, list[str]]:
        """The REST API's paths and their methods, from the template's swagger."""
        body = self.resources["RestAPI"]["Properties"]["DefinitionBody"]
        return {path: [m.upper() for m in ops] for path, ops in body["paths"].items()}

    def binary_types(self) -> list[str]:
        body = self.resources["RestAPI"]["Properties"]["DefinitionBody"]
        return body.get("x-amazon-apigateway-binary-media-types", [])

    # --- CloudFormation's intrinsic functions, the ones our template uses -----------------

    def resolve(self, value):
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "Ref" in value:
            return self._ref(value["Ref"])
        if "Fn::GetAtt" in value:
            return self._get_att(*value["Fn::GetAtt"])
        if "Fn::Sub" in value:
            return self._sub(value["Fn::Sub"])
        if "Fn::Join" in value:
            separator, parts = value["Fn::Join"]
            return separator.join(str(self.resolve(p)) for p in parts)
        return {k: self.resolve(v) for k, v in value.items()}

    def _ref(self, name: str):
        pseudo = {
            "Stage": self.local.stage,
            "AWS::Region": self.local.region,
            "AWS::AccountId": self.local.account,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
        } | LOCAL_API_IDS
        if name in pseudo:
            return pseudo[name]
        resource = self.resources[name]
        kind, props = resource["Type"], resource.get("Properties", {})
        if kind == "AWS::DynamoDB::Table":
            return self.resolve(props["TableName"])
        if kind == "AWS::SQS::Queue":  # Ref gives the queue's URL; we name queues by name
            return self.resolve(props["QueueName"])
        if kind == "AWS::Serverless::Function":
            return self.function_name(name)
        if kind == "AWS::KMS::Key":
            # Its id exists only once bootstrap has created it, after the roles: a policy
            # naming it stands for the local account's keys (bootstrap creates no other).
            return "*"
        raise ValueError(f"cannot resolve Ref {name} ({kind}) locally")

    def _get_att(self, name: str, attribute: str):
        kind = self.resources[name]["Type"]
        if attribute == "QueueName" or (kind == "AWS::DynamoDB::Table" and attribute == "Name"):
            return self._ref(name)
        if attribute == "Arn":
            service, prefix = {
                "AWS::Serverless::Function": ("lambda", "function:"),
                "AWS::SQS::Queue": ("sqs", ""),
                "AWS::DynamoDB::Table": ("dynamodb", "table/"),
            }[kind]
            local = self.local
            return f"arn:aws:{service}:{local.region}:{local.account}:{prefix}{self._ref(name)}"
        raise ValueError(f"cannot resolve GetAtt {name}.{attribute} locally")

    def _sub(self, spec) -> str:
        text, variables = (spec, {}) if isinstance(spec, str) else spec

        def substitute(match: re.Match) -> str:
            key = match.group(1)
            if key in variables:
                return str(self.resolve(variables[key]))
            if "." in key and not key.startswith("AWS::"):
                return str(self._get_att(*key.split(".", 1)))
            return str(self._ref(key))

        return self.local.url_for(re.sub(r"\$\{([\w:.]+)\}", substitute, text))


def build(stage: str) -> Path:
    """The package for `stage`, built if what it is made of changed (one build at a time)."""
    PACKAGE_CACHE.mkdir(parents=True, exist_ok=True)
    directory = PACKAGE_CACHE / f"{stage}-{_inputs_digest()}"
    with open(PACKAGE_CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel platforms (tests) build once
        if not (directory / "runtime" / "app.py").exists():
            _build_into(directory, stage)
    return directory


def chalice_package(stage: str, out: Path, merge: dict | None = None) -> None:
    """`chalice package` into `out` (sam.json, deployment.zip), with this merge template.
    chalice caches the built dependencies in .chalice/deployments: two builds at once would
    write the same cache file, so they take turns."""
    out.mkdir(parents=True, exist_ok=True)
    argv = [str(Path(sys.executable).with_name("chalice")), "package", "--stage", stage]
    if merge is not None:
        (out / "merge.json").write_text(json.dumps(merge))
        argv += ["--merge-template", str(out / "merge.json")]
    with open(REPO_ROOT / ".chalice" / "deployments.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(
            [*argv, str(out)],
            cwd=REPO_ROOT,
            env=os.environ | {"AWS_DEFAULT_REGION": "us-east-1"},
            capture_output=True,
            text=True,
            timeout=900,
        )
    if result.returncode != 0:
        raise RuntimeError(f"chalice package failed: {result.stderr.strip()[-2000:]}")


def _build_into(directory: Path, stage: str) -> None:
    # Older builds go, but not the last few: a platform still running may run from one.
    builds = sorted(PACKAGE_CACHE.glob(f"{stage}-*"), key=lambda p: p.stat().st_mtime)
    for old in builds[:-KEEP_BUILDS]:
        shutil.rmtree(old, ignore_errors=True)
    building = directory.with_name(directory.name + ".partial")
    shutil.rmtree(building, ignore_errors=True)
    chalice_package(stage, building, merged_template(stage))
    with zipfile.ZipFile(building / "deployment.zip") as archive:
        archive.extractall(building / "runtime")
    building.rename(directory)


def _generated(file: Path) -> bool:
    """Not what the package is made of: chalice's dependency cache, locks, bytecode."""
    skipped = {"deployments", "venv", "__pycache__"}
    parts = set(file.relative_to(REPO_ROOT).parts)
    return bool(skipped & parts) or file.suffix in (".lock", ".pyc")


def _inputs_digest() -> str:
    digest = hashlib.sha256()
    for entry in PACKAGE_INPUTS:
        path = REPO_ROOT / entry
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for file in files:
            if file.is_file() and not _generated(file):
                digest.update(str(file.relative_to(REPO_ROOT)).encode())
                digest.update(file.read_bytes())
    return digest.hexdigest()[:16]
