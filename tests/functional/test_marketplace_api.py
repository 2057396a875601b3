from pathlib import Path

CATALOG = "/api/v1/marketplace/resources"


def test_catalog_lists_the_seeded_resources(api):
    response = api.get(CATALOG)
    assert response.status_code == 200
    slugs = [r["slug"] for r in response.data["items"]]
    assert {"mace-mp-0", "tiny-regressor"} <= set(slugs)


def test_bundled_example_paths_are_made_absolute(api):
    tiny = api.get(f"{CATALOG}/tiny-regressor").data
    assert Path(tiny["weights_source"]).is_absolute()
    assert (Path(tiny["weights_source"]) / "model.json").exists()
    assert Path(tiny["command"][1]).exists()


def test_unknown_resource_is_404(api):
    for slug in ("nothing-here", "x" * 3000, "UPPER"):
        response = api.get(f"{CATALOG}/{slug}")
        assert response.status_code == 404
        assert response.data["error"]["code"] == "not_found"


def test_openapi_document_is_public_and_valid(client):
    from openapi_spec_validator import validate

    response = client.http.get("/api/v1/openapi.json")
    assert response.status_code == 200
    document = __import__("json").loads(response.body)
    validate(document)
    assert "/api/v1/compute/deployments/{deployment_id}/health" in document["paths"]
