"""What Temporal knows of a host's worker: whether anyone is polling its task queue.

A host step that was not picked up within its ``schedule_to_start_timeout`` means one of two things:
no worker serves the host (tell the operator how to start one), or the worker is there but busy
(hundreds of renewals and a registration wave on a loaded machine). The task queue's poller list
tells them apart, so a busy host is waited for and only a missing one is reported.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from temporalio import activity

from activities.edge import edge
from perseus.host.workers import pollers_within
from perseus.models import HostPresence, IdentityRequest
from perseus.timing import POLLED_WITHIN_S

if TYPE_CHECKING:
    from temporalio.client import Client

#: A poller seen this recently is a live worker (perseus.timing says why).
POLLED_WITHIN = timedelta(seconds=POLLED_WITHIN_S)


class PresenceActivities:
    def __init__(self, client: Client) -> None:
        self._client = client

    @activity.defn(name="host_polled")
    @edge
    async def host_polled(self, req: IdentityRequest) -> HostPresence:
        """Whether a worker polled ``req.host``'s queue for activities within ``POLLED_WITHIN``."""
        pollers = await pollers_within(self._client, req.host, POLLED_WITHIN)
        return HostPresence(polled=pollers > 0, pollers=pollers)
