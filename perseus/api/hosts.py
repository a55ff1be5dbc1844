"""``GET /api/network/hosts``: every live host worker (DESIGN §2.5; perseus/host/workers.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from perseus.api.auth import require_api_key
from perseus.api.deps import StoreDep
from perseus.api.ready import plain_temporal
from perseus.host.workers import HostsBoard, read_hosts

router = APIRouter(prefix="/api/network", tags=["network"], dependencies=[Depends(require_api_key)])


@router.get("/hosts", response_model=HostsBoard, summary="Every live host worker")
async def hosts(request: Request, store: StoreDep) -> HostsBoard:
    """Each host with a live worker: `version`, `lastPollAt` (when a worker last polled its task
    queue, from Temporal; null if Temporal did not answer), the `claims` and `watches` its keepers
    hold, `capacity`, whether it serves the shared queue (`sharedQueue`), its `metricsUrl` (null
    without `--metrics-port`), and `workers` (processes serving the host)."""
    return await read_hosts(store, await plain_temporal(request))
