"""Create on a (moto) DynamoDB endpoint exactly the tables infra/resources.json declares,
so local and cloud share one definition."""

import json
from dataclasses import dataclass
from pathlib import Path

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


def create_tables(dynamodb, settings, template: Path = TEMPLATE) -> list[str]:
    """Create every missing table (idempotent). Returns the names created."""
    existing = set(dynamodb.list_tables()["TableNames"])
    created = []
    for spec in table_specs(template):
        name = table_name_for(spec, settings)
        if name in existing:
            continue
        dynamodb.create_table(**spec.create_table_kwargs(name))
        ttl = spec.properties.get("TimeToLiveSpecification")
        if ttl:
            dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
        created.append(name)
    return created


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
