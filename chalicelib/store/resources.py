"""The marketplace catalog: a small table of ready-made deployment recipes."""

from chalicelib.store.models import ResourceItem


class ResourceRepository:
    def get(self, slug: str) -> ResourceItem | None:
        try:
            return ResourceItem.get(slug)
        except ResourceItem.DoesNotExist:
            return None

    def list_all(self) -> list[ResourceItem]:
        # The catalog holds tens of entries, so reading it whole is the right query.
        return sorted(ResourceItem.scan(), key=lambda r: r.slug)

    def put(self, item: ResourceItem) -> None:
        item.save()
