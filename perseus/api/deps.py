"""FastAPI dependencies: the drivers the lifespan opened, handed to routes as typed parameters."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from temporalio.client import Client

from perseus.store.db import Catalog, RequestCatalog
from perseus.store.redis_store import RedisStore


def get_store(request: Request) -> RedisStore:
    store: RedisStore = request.app.state.store
    return store


def get_catalog(request: Request) -> Catalog:
    """A view per request (FastAPI hands the same one to the key check and the route): the active
    exchanges come from memory while the catalog's version, read with the key, stands still."""
    return RequestCatalog(request.app.state.catalog)


StoreDep = Annotated[RedisStore, Depends(get_store)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]


async def temporal(request: Request) -> Client:
    """The process' Temporal client, connected on first use: the read API needs Temporal only for
    the failsafe (the exchange view's ``?failsafe=true`` and the page's ``/failsafe``)."""
    state = request.app.state
    async with state.temporal_lock:
        if state.temporal_client is None:
            from perseus.temporal import connect

            state.temporal_client = await connect(state.settings, state.temporal_address)
        client: Client = state.temporal_client
        return client
