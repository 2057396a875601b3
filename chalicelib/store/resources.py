"""The marketplace catalog: a small table of ready-made deployment recipes, over the catalog that
ships inside the package (chalicelib/data/catalog.json). A slug missing from the table is served
from the packaged file, so a fresh stage has its marketplace with no seeding step and a redeploy
brings the packaged recipes up to date; an entry in the table overrides the packaged one."""

import json
from pathlib import Path

from chalicelib.store.models import DeployConfigAttribute, ResourceItem

CATALOG_FILE = Path(__file__).resolve().parent.parent / "data" / "catalog.json"
# The directory holding chalicelib: the checkout locally, the unpacked package on Lambda.
CODE_ROOT = CATALOG_FILE.parents[2]


def packaged_catalog(path: Path = CATALOG_FILE, root: Path = CODE_ROOT) -> dict[str, ResourceItem]:
    """The packaged recipes by slug. A "./" path (the bundled example model's weights and
    script) is resolved against `root`; a recipe naming such a file is left out where the file
    is missing: on Lambda examples/ is not in the package, and no node could run it."""
    items = {}
    for entry in json.loads(path.read_text()):
        local = [v for v in (entry["weights_source"], *entry["command"]) if _is_local(v)]
        if any(not (root / value).exists() for value in local):
            continue

        def resolve(value: str | None) -> str | None:
            return str((root / value).resolve()) if _is_local(value) else value

        resolved = {
            "weights_source": resolve(entry["weights_source"]),
            "command": [resolve(arg) for arg in entry["command"]],
            "deploy_config": DeployConfigAttribute(**entry["deploy_config"]),
        }
        items[entry["slug"]] = ResourceItem(**(entry | resolved))
    return items


def _is_local(value: str | None) -> bool:
    return bool(value) and value.startswith("./")


class ResourceRepository:
    def __init__(self, packaged: dict[str, ResourceItem] | None = None):
        self._packaged = packaged_catalog() if packaged is None else packaged

    def get(self, slug: str) -> ResourceItem | None:
        try:
            return ResourceItem.get(slug)
        except ResourceItem.DoesNotExist:
            return self._packaged.get(slug)

    def list_all(self) -> list[ResourceItem]:
        # The catalog holds tens of entries, so reading it whole is the right query.
        by_slug = self._packaged | {item.slug: item for item in ResourceItem.scan()}
        return sorted(by_slug.values(), key=lambda r: r.slug)

    def put(self, item: ResourceItem) -> None:
        item.save()
