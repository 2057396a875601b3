from pathlib import Path

from chalicelib.store.models import ResourceItem
from chalicelib.store.resources import ResourceRepository, packaged_catalog

CATALOG = "/api/v1/marketplace/resources"
DEPLOYMENTS = "/api/v1/compute/deployments"


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
    # Generated from the routes: the list filter's parameter says which statuses it takes.
    (status,) = [
        p for p in document["paths"][DEPLOYMENTS]["get"]["parameters"] if p["name"] == "status"
    ]
    assert status["schema"]["items"] == {"$ref": "#/components/schemas/Status"}


def test_every_api_route_is_in_the_openapi_document(client):
    """A route added without `documented` would be missing from the document the CLI, the
    console and users read; the document itself is the one route it leaves out."""
    from app import app
    from chalicelib.openapi import document

    paths = document(app.routes)["paths"]
    missing = [
        f"{method} {path}"
        for path, methods in app.routes.items()
        if path.startswith("/api/v1/") and path != "/api/v1/openapi.json"
        for method in methods
        if method.lower() not in paths.get(path, {})
    ]
    assert missing == []
    assert len(paths) == 9 and sum(len(ops) for ops in paths.values()) == 12


def _empty_the_catalog_table():
    for item in ResourceItem.scan():
        item.delete()


def test_a_fresh_stage_serves_the_packaged_catalog_without_seeding(api):
    _empty_the_catalog_table()
    slugs = [r["slug"] for r in api.get(CATALOG).data["items"]]
    assert slugs == ["mace-mp-0", "tiny-regressor"]
    tiny = api.get(f"{CATALOG}/tiny-regressor").data
    assert (Path(tiny["weights_source"]) / "model.json").exists()  # locally, from the checkout
    created = api.post(DEPLOYMENTS, {"name": "mace", "resource_slug": "mace-mp-0"})
    assert created.status_code == 201
    assert created.data["command"] == ["python", "-m", "mace_serve"]


def test_a_table_entry_overrides_or_adds_to_the_packaged_catalog(api):
    resources = ResourceRepository()
    curated = resources.get("mace-mp-0")
    curated.title = "MACE-MP-0 (curated)"
    resources.put(curated)
    added = resources.get("mace-mp-0")
    added.slug, added.title = "mace-large", "MACE large"
    resources.put(added)
    items = api.get(CATALOG).data["items"]
    assert [r["slug"] for r in items] == ["mace-large", "mace-mp-0", "tiny-regressor"]
    assert items[1]["title"] == "MACE-MP-0 (curated)"
    assert api.get(f"{CATALOG}/mace-large").data["title"] == "MACE large"


def test_without_a_checkout_the_bundled_example_is_left_out(tmp_path):
    # On Lambda the package holds chalicelib/ but not examples/: no node could run that recipe.
    assert list(packaged_catalog(root=tmp_path)) == ["mace-mp-0"]
    assert list(packaged_catalog()) == ["mace-mp-0", "tiny-regressor"]
