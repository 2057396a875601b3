"""A local platform started on the state of an older run gets the indexes added since, as a
CloudFormation update would add them (the sweep's awaiting-ack Query needs its index)."""

from chalicelib import aws
from chalicelib.config import settings
from prism.dev.infra import create_tables


def _indexes(dynamodb, table: str) -> set[str]:
    described = dynamodb.describe_table(TableName=table)["Table"]
    return {i["IndexName"] for i in described.get("GlobalSecondaryIndexes", [])}


def test_an_index_missing_from_a_kept_table_is_added(aws_backend):
    dynamodb = aws.client("dynamodb")
    table = settings.deployments_table
    dynamodb.update_table(
        TableName=table, GlobalSecondaryIndexUpdates=[{"Delete": {"IndexName": "awaiting-ack"}}]
    )
    assert "awaiting-ack" not in _indexes(dynamodb, table)  # as an older run left it
    assert create_tables(dynamodb, settings) == []  # nothing new to create...
    assert "awaiting-ack" in _indexes(dynamodb, table)  # ...but the index is back
