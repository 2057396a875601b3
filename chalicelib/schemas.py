"""Request models of the REST API (pydantic v2) and the types they share with the responses
(chalicelib/responses.py); the OpenAPI document is built from both. Requests forbid unknown
fields."""

import json
import re
from decimal import Decimal
from typing import Annotated, Literal
from urllib.parse import unquote_to_bytes

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from chalicelib.errors import ValidationFailed
from chalicelib.lifecycle import Status
from chalicelib.protocol import (
    DEFAULT_MAX_RESTARTS,
    DEFAULT_UNHEALTHY_TIMEOUT_S,
    DEPLOY_CONTENT_BUDGET_BYTES,
    EndpointAuth,
    RestartPolicy,
)
from chalicelib.weights_uri import InvalidWeightsSource, LocalSource, parse_weights_uri

Target = Literal["prism_node", "runpod", "lambda"]
CLOUD_TARGETS = ("runpod", "lambda")
# What to serve weights with: "auto" (the node picks the engine for the kind of model), an
# engine by name (node_agent.engines), or a kind of model; a command always wins.
Framework = Literal[
    "auto",
    "vllm",
    "tgi",
    "tei",
    "llama.cpp",
    "prism-embed",
    "transformers",
    "sentence-transformers",
    "gguf",
    "onnx",
    "custom",
]

# Python's `$` also matches before a final newline: every pattern checked with `re` here is
# applied with fullmatch (pydantic's `pattern=` uses Rust's regex, where `$` is the very end).
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def _dns_label(value: str) -> str:
    if not _DNS_LABEL.fullmatch(value):
        raise ValueError(
            "must be 1-63 lowercase letters, digits and hyphens, starting and ending with a "
            "letter or digit"
        )
    return value


def _exec_array(value):
    if isinstance(value, str):
        raise ValueError(
            'must be a JSON array of strings (exec form, e.g. ["python", "serve.py"]),'
            " never a shell string"
        )
    return value


Name = Annotated[
    str,
    AfterValidator(_dns_label),
    Field(description="1-63 lowercase letters, digits and hyphens (a DNS label)"),
]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
CommandArg = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
# An OCI image reference: [registry[:port]/]path[:tag][@sha256:digest]
ImageRef = Annotated[
    str,
    StringConstraints(
        pattern=r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*"
        r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$",
        max_length=512,
    ),
]
NodeId = Annotated[str, StringConstraints(pattern=r"^node_[0-9a-f]{16}$")]
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
Usd = Annotated[Decimal, PlainSerializer(float, return_type=float, when_used="json")]
Budget = Annotated[Decimal, Field(gt=0, le=1_000_000, decimal_places=6)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


WeightsPattern = Annotated[str, StringConstraints(min_length=1, max_length=256)]
# RFC 3986 path-absolute characters: unreserved, sub-delims, ':', '@', '/' and %XX escapes;
# so no query ('?'), fragment ('#'), backslash, space or control character.
HEALTH_PATH_PATTERN = r"^/(?:[A-Za-z0-9._~!$&'()*+,;=:@/-]|%[0-9A-Fa-f]{2})*$"
_HEALTH_PATH = re.compile(HEALTH_PATH_PATTERN)
_DOT_SEGMENTS = {".", ".."}


def check_health_path(value: str) -> str:
    """A plain absolute path the node and the control plane append to the endpoint: RFC 3986
    path characters only, no '..' (or '.') segment, also when percent-encoded."""
    if value.startswith("//"):
        raise ValueError("must start with a single '/' (a path, not a host)")
    if not _HEALTH_PATH.fullmatch(value):
        raise ValueError(
            "must be an absolute path of RFC 3986 path characters (letters, digits, "
            "-._~!$&'()*+,;=:@/ and %XX escapes): no query, fragment, backslash, space or "
            "control character"
        )
    segments = value.split("/")
    if any(s in _DOT_SEGMENTS or s.lower().replace("%2e", ".") in _DOT_SEGMENTS for s in segments):
        raise ValueError("must not contain '.' or '..' segments")
    if any(b < 0x20 or b in b"\x7f\\" for b in unquote_to_bytes(value)):
        raise ValueError("must not encode a control character or a backslash")
    return value


class DeployConfig(StrictModel):
    port: int | None = Field(
        None,
        ge=1,
        le=65535,
        strict=True,
        description="the port the model listens on (it also gets it as $PORT and {port}); "
        "unset or null: on a prism_node, a free port the agent picks and reports in "
        "endpoint_url (an image listens on 8000 inside its container); on a cloud target, "
        "8000, stored at create",
    )
    health_path: str = Field(
        "/health", max_length=512, json_schema_extra={"pattern": HEALTH_PATH_PATTERN}
    )
    weights_allow_patterns: list[WeightsPattern] | None = Field(
        None, max_length=64, description="hf:// only: download just the files matching a glob"
    )
    weights_ignore_patterns: list[WeightsPattern] | None = Field(
        None, max_length=64, description="hf:// only: skip the files matching a glob"
    )
    restart: RestartPolicy = Field(
        "on-failure",
        description="never | on-failure (up to max_restarts, with backoff) | always",
    )
    max_restarts: int = Field(DEFAULT_MAX_RESTARTS, ge=0, le=100, strict=True)
    unhealthy_timeout_s: int = Field(
        DEFAULT_UNHEALTHY_TIMEOUT_S,
        ge=0,
        le=86400,
        strict=True,
        description="unhealthy this long counts as a failure under the restart policy (0: never)",
    )

    auth: EndpointAuth = Field(
        "key",
        description="key: the endpoint answers only requests with Authorization: Bearer "
        "<endpoint key> (returned once at create); public: anyone who reaches it",
    )

    @field_validator("health_path")
    @classmethod
    def _plain_health_path(cls, value: str, info: ValidationInfo) -> str:
        if (info.context or {}).get("stored"):
            return value  # accepted when it was created, under the rules of that time
        return check_health_path(value)

    @classmethod
    def of(cls, stored) -> "DeployConfig":
        """From the stored map attribute (DynamoDB numbers come back as floats/Decimals)."""
        optional = {
            name: int(value) if isinstance(value, (int, float, Decimal)) else value
            for name in ("restart", "max_restarts", "unhealthy_timeout_s", "auth")
            if (value := getattr(stored, name, None)) is not None  # older items lack them
        }
        fields = dict(
            port=None if stored.port is None else int(stored.port),
            health_path=stored.health_path,
            weights_allow_patterns=_list_or_none(stored.weights_allow_patterns),
            weights_ignore_patterns=_list_or_none(stored.weights_ignore_patterns),
            **optional,
        )
        return cls.model_validate(fields, context={"stored": True})

    def stored(self) -> dict:
        """The fields of the store's DeployConfigAttribute."""
        return self.model_dump()


def _list_or_none(value) -> list[str] | None:
    return None if value is None else list(value)


class CreateDeploymentRequest(StrictModel):
    """Exactly one of `image` (image form), `resource_slug` (marketplace form) or
    `weights_source` (runtime form)."""

    name: Name
    target: Target = "prism_node"
    image: ImageRef | None = None
    resource_slug: Slug | None = None
    allow_insecure_http: StrictBool = Field(False, description="accept an http:// weights_source")
    weights_source: str | None = Field(
        None,
        max_length=4096,
        description="hf://org/model[@rev], r2://bucket/path, https://… or /local/path",
    )
    framework: Framework = "auto"
    command: Annotated[list[CommandArg] | None, BeforeValidator(_exec_array)] = Field(
        None, max_length=256, description="exec array; never run through a shell"
    )
    gpu: StrictBool = True
    gpu_type: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9 ._-]{1,64}$")] | None = None
    deploy_config: DeployConfig | None = None
    env_vars: dict[EnvName, Annotated[str, StringConstraints(max_length=32768)]] = Field(
        default_factory=dict, max_length=128
    )
    budget_max_usd: Budget | None = None
    node_id: NodeId | None = Field(None, description="run on this node (target prism_node)")

    @field_validator("weights_source")
    @classmethod
    def _parse_weights(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        allow_http = bool(info.data.get("allow_insecure_http"))
        try:
            return parse_weights_uri(value, allow_http=allow_http).uri()
        except InvalidWeightsSource as exc:
            raise ValueError(f"weights_source {exc}") from None

    @model_validator(mode="after")
    def _check_form(self) -> "CreateDeploymentRequest":
        given = [f for f in ("image", "resource_slug", "weights_source") if getattr(self, f)]
        if len(given) != 1:
            message = "give exactly one of image, resource_slug or weights_source"
            named = given or ["image", "resource_slug", "weights_source"]
            raise ValidationFailed(message, fields=dict.fromkeys(named, message))
        if self.target in CLOUD_TARGETS and self.budget_max_usd is None:
            raise ValidationFailed(
                "budget_max_usd is required for cloud targets (they are billed per hour)",
                fields={"budget_max_usd": "required when target is runpod or lambda"},
            )
        if self.node_id and self.target in CLOUD_TARGETS:
            raise ValidationFailed(
                "node_id picks one of your own nodes (target prism_node); cloud targets get an "
                "instance of their own",
                fields={"node_id": "only with target prism_node"},
            )
        self._fits_one_message()
        if (
            self.weights_source
            and self.target in CLOUD_TARGETS
            and isinstance(parse_weights_uri(self.weights_source, allow_http=True), LocalSource)
        ):
            raise ValidationFailed(
                "a local weights path exists only on your own node; use target prism_node "
                "or an hf://, r2:// or https:// source",
                fields={"weights_source": "local paths need target prism_node"},
            )
        return self

    def _fits_one_message(self) -> None:
        """Each field has its own limit, but together they could still exceed what one
        deploy_model message (128 KB) or one DynamoDB item (400 KB) holds: the deployment's
        own content must fit DEPLOY_CONTENT_BUDGET_BYTES, the rest of either is bounded. The
        largest field is named."""
        sizes = {
            name: len(json.dumps(value, ensure_ascii=False).encode())
            for name, value in (
                ("env_vars", self.env_vars),
                ("command", self.command),
                ("weights_source", self.weights_source),
                ("image", self.image),
                ("deploy_config", self.deploy_config and self.deploy_config.model_dump()),
            )
        }
        content = sum(sizes.values())
        if content <= DEPLOY_CONTENT_BUDGET_BYTES:
            return
        largest = max(sizes, key=sizes.__getitem__)
        message = (
            f"{largest} takes {sizes[largest]} bytes, and with the other fields the deployment "
            f"takes {content}; together env_vars, command, weights_source, image and "
            f"deploy_config must fit in {DEPLOY_CONTENT_BUDGET_BYTES} bytes (they travel to the "
            "node in one message)"
        )
        raise ValidationFailed(message, fields={largest: message})


class ListDeploymentsQuery(StrictModel):
    status: list[Status] | None = Field(
        None, description="only these statuses: status=a&status=b, or comma-separated"
    )
    limit: int = Field(50, ge=1, le=100)
    next_token: str | None = Field(None, max_length=4096)

    @field_validator("status", mode="before")
    @classmethod
    def _split_statuses(cls, value):
        """`status=a,b`, `status=a&status=b` or both."""
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return [s.strip() for v in value for s in v.split(",") if s.strip()] or None
        return value


class LogsQuery(StrictModel):
    tail: int = Field(100, ge=1, le=5000)


class CreateNodeRequest(StrictModel):
    name: Name


class CostsQuery(StrictModel):
    limit: int = Field(50, ge=1, le=500)
    next_token: str | None = Field(None, max_length=256)
