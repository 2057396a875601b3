"""The local platform creates exactly the tables and queues infra/resources.json declares."""

import json

from chalicelib import aws
from chalicelib.config import settings
from prism.dev.infra import TEMPLATE, table_name_for, table_specs


def _key_schema(schema):
    return sorted((k["AttributeName"], k["KeyType"]) for k in schema)


def test_every_table_has_the_template_keys_indexes_and_ttl(aws_backend):
    dynamodb = aws.client("dynamodb")
    for spec in table_specs():
        described = dynamodb.describe_table(TableName=table_name_for(spec, settings))["Table"]
        props = spec.properties
        assert _key_schema(described["KeySchema"]) == _key_schema(props["KeySchema"])
        assert {
            i["IndexName"]: _key_schema(i["KeySchema"])
            for i in described.get("GlobalSecondaryIndexes", [])
        } == {
            i["IndexName"]: _key_schema(i["KeySchema"])
            for i in props.get("GlobalSecondaryIndexes", [])
        }
        ttl = dynamodb.describe_time_to_live(TableName=described["TableName"])
        expected = props.get("TimeToLiveSpecification")
        if expected:
            assert ttl["TimeToLiveDescription"]["AttributeName"] == expected["AttributeName"]
        else:
            assert ttl["TimeToLiveDescription"]["TimeToLiveStatus"] == "DISABLED"


def test_the_queues_and_the_dead_letter_redrive_match(aws_backend):
    sqs = aws.client("sqs")
    resources = json.loads(TEMPLATE.read_text())["Resources"]
    queue = resources["MeteringQueue"]["Properties"]
    url = sqs.get_queue_url(QueueName=settings.metering_queue)["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["VisibilityTimeout"] == str(queue["VisibilityTimeout"])
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive["maxReceiveCount"] == queue["RedrivePolicy"]["maxReceiveCount"]
    assert redrive["deadLetterTargetArn"].endswith(f"{settings.metering_queue}-dlq")
