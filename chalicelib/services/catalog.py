"""The marketplace catalog: read it, and seed it from chalicelib/data/catalog.json."""

import json
import re
from pathlib import Path

from chalicelib.errors import NotFound
from chalicelib.schemas import DeployConfig, ResourceOut
from chalicelib.store.models import DeployConfigAttribute, ResourceItem
from chalicelib.store.resources import ResourceRepository

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
CATALOG_FILE = Path(__file__).resolve().parent.parent / "data" / "catalog.json"


class CatalogService:
    def __init__(self, resources: ResourceRepository):
        self._resources = resources

    def list(self) -> list[ResourceOut]:
        return [ResourceOut.from_item(item) for item in self._resources.list_all()]

    def get(self, slug: str) -> ResourceOut:
        item = self._resources.get(slug) if SLUG.match(slug) else None
        if item is None:
            raise NotFound(f"resource {slug!r} not found in the marketplace")
        return ResourceOut.from_item(item)

    def seed(self, path: Path = CATALOG_FILE, examples_root: Path | None = None) -> int:
        """Write every entry of the data file. Relative "./" paths (the bundled example model's
        weights and script) are resolved against `examples_root`, the checkout we run from."""
        entries = json.loads(path.read_text())
        for entry in entries:
            resource = ResourceOut.model_validate(entry)
            root = examples_root or path.resolve().parents[2]

            def resolve(value: str | None, root: Path = root) -> str | None:
                if value and value.startswith("./"):
                    return str((root / value).resolve())
                return value

            weights = resolve(resource.weights_source)
            config = resource.deploy_config or DeployConfig()
            self._resources.put(
                ResourceItem(
                    slug=resource.slug,
                    title=resource.title,
                    description=resource.description,
                    image=resource.image,
                    weights_source=weights,
                    framework=resource.framework,
                    command=[resolve(arg) for arg in resource.command],
                    gpu=resource.gpu,
                    gpu_type=resource.gpu_type,
                    deploy_config=DeployConfigAttribute(**config.stored()),
                )
            )
        return len(entries)
