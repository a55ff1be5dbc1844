"""PostgreSQL lookups the lifecycle needs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from temporalio import activity

from activities.edge import edge
from perseus.models import Resolved, ResolveRequest

if TYPE_CHECKING:
    from perseus.store.db import Catalog


class CatalogActivities:
    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    @activity.defn(name="resolve_instance")
    @edge
    async def resolve_instance(self, req: ResolveRequest) -> Resolved:
        """The active exchange by name or id, and the admin by e-mail; unknown ones are refused."""
        exchange = await self._catalog.exchange(req.exchange)
        admin = await self._catalog.admin(req.admin_email) if req.admin_email else None
        return Resolved(exchange=exchange, admin=admin)
