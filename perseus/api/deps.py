"""FastAPI dependencies: the drivers the lifespan opened, handed to routes as typed parameters."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from perseus.store.db import Catalog
from perseus.store.redis_store import RedisStore


def get_store(request: Request) -> RedisStore:
    store: RedisStore = request.app.state.store
    return store


def get_catalog(request: Request) -> Catalog:
    catalog: Catalog = request.app.state.catalog
    return catalog


StoreDep = Annotated[RedisStore, Depends(get_store)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
