"""The marketplace catalog: read it (the table over the packaged chalicelib/data/catalog.json,
see store/resources.py), and store the packaged recipes in the table."""

import re
from pathlib import Path

from chalicelib.errors import NotFound
from chalicelib.responses import ResourceOut
from chalicelib.store.resources import (
    CATALOG_FILE,
    CODE_ROOT,
    ResourceRepository,
    packaged_catalog,
)

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


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
        """Write every packaged recipe into the table (not needed to serve them). Relative "./"
        paths (the bundled example model's weights and script) are resolved against
        `examples_root`, the checkout we run from."""
        items = packaged_catalog(path, examples_root or CODE_ROOT)
        for item in items.values():
            ResourceOut.from_item(item)  # a malformed entry fails here, not in a request
            self._resources.put(item)
        return len(items)
