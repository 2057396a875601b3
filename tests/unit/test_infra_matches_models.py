"""The pynamodb models and infra/resources.json must describe the same tables."""

from chalicelib.store.meter_models import LedgerItem, MeterItem
from chalicelib.store.models import ApiKeyItem, DeploymentItem, ResourceItem, SecretItem, UserItem
from chalicelib.store.node_models import ConnectionItem, NodeItem, NodeReplyItem
from prism.dev.infra import table_specs

MODELS = {
    "PRISM_DEPLOYMENTS_TABLE": DeploymentItem,
    "PRISM_USERS_TABLE": UserItem,
    "PRISM_API_KEYS_TABLE": ApiKeyItem,
    "PRISM_RESOURCES_TABLE": ResourceItem,
    "PRISM_NODES_TABLE": NodeItem,
    "PRISM_CONNECTIONS_TABLE": ConnectionItem,
    "PRISM_NODE_REPLIES_TABLE": NodeReplyItem,
    "PRISM_LEDGER_TABLE": LedgerItem,
    "PRISM_METERS_TABLE": MeterItem,
    "PRISM_SECRETS_TABLE": SecretItem,
}


def _keys(schema):
    return {k["KeyType"]: k["AttributeName"] for k in schema}


def test_keys_and_indexes_agree():
    specs = {spec.env_var: spec for spec in table_specs()}
    assert set(MODELS) <= set(specs)
    for env_var, model in MODELS.items():
        props = specs[env_var].properties
        keys = {"HASH": model._hash_keyname}
        if model._range_keyname:
            keys["RANGE"] = model._range_keyname
        assert _keys(props["KeySchema"]) == keys
        template_indexes = {
            i["IndexName"]: _keys(i["KeySchema"]) for i in props.get("GlobalSecondaryIndexes", [])
        }
        model_indexes = (
            {
                index.Meta.index_name: {
                    ("HASH" if a.is_hash_key else "RANGE"): a.attr_name
                    for a in index.Meta.attributes.values()
                }
                for index in model._indexes.values()
            }
            if hasattr(model, "_indexes")
            else {}
        )
        assert template_indexes == model_indexes
        template_projections = {
            i["IndexName"]: i["Projection"] for i in props.get("GlobalSecondaryIndexes", [])
        }
        for index in getattr(model, "_indexes", {}).values():
            projection = index.Meta.projection
            expected = {"ProjectionType": projection.projection_type}
            if projection.non_key_attributes:
                expected["NonKeyAttributes"] = projection.non_key_attributes
            assert template_projections[index.Meta.index_name] == expected


def test_idempotency_table_has_a_ttl():
    spec = next(s for s in table_specs() if s.env_var == "PRISM_IDEMPOTENCY_TABLE")
    assert spec.properties["TimeToLiveSpecification"] == {
        "AttributeName": "expiration",
        "Enabled": True,
    }


def test_template_table_names_are_the_settings_defaults():
    from chalicelib.config import Settings
    from prism.dev.infra import table_name_for

    settings = Settings.from_env({"PRISM_STAGE": "prod"})
    for spec in table_specs():
        pattern = spec.properties["TableName"]["Fn::Sub"]
        assert pattern.replace("${Stage}", "prod") == table_name_for(spec, settings)


def test_the_api_function_gets_every_table_name_from_the_template():
    import json

    from prism.dev.infra import TEMPLATE

    variables = json.loads(TEMPLATE.read_text())["Resources"]["APIHandler"]["Properties"][
        "Environment"
    ]["Variables"]
    tables = {spec.env_var: {"Ref": spec.logical_id} for spec in table_specs()}
    assert {k: v for k, v in variables.items() if k in tables} == tables


def test_the_secrets_key_is_the_template_key_by_its_alias_and_the_secrets_table_has_no_index():
    import json

    from chalicelib.config import Settings
    from prism.dev.infra import TEMPLATE

    resources = json.loads(TEMPLATE.read_text())["Resources"]
    alias = resources["SecretsKeyAlias"]["Properties"]
    assert alias["TargetKeyId"] == {"Ref": "SecretsKey"}
    assert resources["SecretsKey"]["Type"] == "AWS::KMS::Key"
    assert resources["SecretsKey"]["Properties"]["EnableKeyRotation"] is True
    settings = Settings.from_env({"PRISM_STAGE": "prod"})
    assert alias["AliasName"]["Fn::Sub"].replace("${Stage}", "prod") == settings.secrets_key_id
    secrets = resources["SecretsTable"]["Properties"]
    assert "GlobalSecondaryIndexes" not in secrets  # nothing of a secret is copied anywhere
