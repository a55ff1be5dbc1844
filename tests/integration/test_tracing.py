"""A handoff followed through its traces: the command's span and its update call, the workflow's
handling of the update (linked to the call), the activities that follow on the holder's side, and the
standby's promotion (linked from the holder's signal) — collected by an in-memory exporter here.

The workers run in this process on a client with the tracing interceptor, against a private Temporal
(the harness' shared worker, which has no interceptor, never sees these workflows).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client

from perseus import tracing
from perseus.client import control
from perseus.config import Settings, load_otel_env
from perseus.core.lifecycle import Command
from perseus.store.redis_store import RedisStore
from perseus.temporal import UPDATE_COMMAND, converter, register_search_attributes
from perseus.tracing import tracing_mode
from tests.conftest import Servers, exchange_id
from tests.integration.helpers import PrivateTemporal, active_and_standby, active_on, host_name, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@dataclass
class Traced:
    client: Client
    exporter: InMemorySpanExporter


class Gate(SpanProcessor):
    """Passes finished spans on while open. The process's provider can be set only once, and a
    provider shut down warns at every later span: this test closes the gate instead."""

    def __init__(self, inner: SpanProcessor) -> None:
        self.inner = inner
        self.open = True

    def on_end(self, span: ReadableSpan) -> None:
        if self.open:
            self.inner.on_end(span)


@pytest_asyncio.fixture
async def traced(temporal: PrivateTemporal) -> AsyncIterator[Traced]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    gate = Gate(SimpleSpanProcessor(exporter))
    provider.add_span_processor(gate)
    trace.set_tracer_provider(provider)  # the only test in the suite that sets it
    client = await Client.connect(
        f"127.0.0.1:{temporal.port}", data_converter=converter, interceptors=tracing.interceptors(on=True)
    )
    await register_search_attributes(client)
    try:
        yield Traced(client, exporter)
    finally:
        gate.open = False
        exporter.clear()


def tree(spans: list[ReadableSpan]) -> str:
    """The spans as an indented tree (for the failure message)."""
    by_parent: dict[int | None, list[ReadableSpan]] = {}
    for s in spans:
        by_parent.setdefault(s.parent.span_id if s.parent else None, []).append(s)
    ids = {s.context.span_id for s in spans if s.context}
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for s in sorted(by_parent.get(parent, []), key=lambda s: s.start_time or 0):
            lines.append("  " * depth + s.name)
            walk(s.context.span_id if s.context else None, depth + 1)

    walk(None, 0)
    for parent in by_parent:
        if parent is not None and parent not in ids:
            walk(parent, 0)
    return "\n".join(lines)


def same_trace(x: ReadableSpan, y: ReadableSpan) -> bool:
    return x.context is not None and y.context is not None and x.context.trace_id == y.context.trace_id


def children(spans: list[ReadableSpan], parent: ReadableSpan, name: str) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in spans if s.name == name and s.parent and s.parent.span_id == parent.context.span_id]


def linked_from(spans: list[ReadableSpan], source: ReadableSpan, name: str) -> ReadableSpan:
    """The one span named ``name`` that links to ``source``."""
    assert source.context is not None
    (found,) = [
        s
        for s in spans
        if s.name == name and any(link.context.span_id == source.context.span_id for link in s.links)
    ]
    return found


def after(spans: list[ReadableSpan], first: ReadableSpan) -> set[str]:
    """Names of the spans of ``first``'s trace that started with it or later."""
    return {s.name for s in spans if same_trace(s, first) and (s.start_time or 0) >= (first.start_time or 0)}


async def test_a_handoff_is_followed_from_the_command_through_the_update_to_both_hosts_activities(
    servers: Servers, settings: Settings, traced: Traced, store: RedisStore, exchange: str
) -> None:
    from worker import run_worker

    a, b = host_name("trace-a"), host_name("trace-b")
    stop = asyncio.Event()
    readies = [asyncio.Event(), asyncio.Event()]
    workers = [
        asyncio.create_task(run_worker(settings, traced.client, a, stop, ready=readies[0])),
        asyncio.create_task(
            run_worker(settings, traced.client, b, stop, shared_queue=False, ready=readies[1])
        ),
    ]
    try:
        for ready, task in zip(readies, workers, strict=True):
            waiting = asyncio.ensure_future(ready.wait())
            await asyncio.wait([task, waiting], return_when=asyncio.FIRST_COMPLETED, timeout=60)
            if task.done():
                task.result()
        ex_id = await exchange_id(servers, exchange)
        await active_and_standby(traced.client, store, exchange, ex_id, a, b, 1.0, timeout=60)

        async def standing_by() -> bool:
            return bool(await store.standbys(ex_id))

        await wait_for(standing_by, timeout=30)
        traced.exporter.clear()

        await control.handoff(
            traced.client, exchange=exchange, to_host=b, from_host=a, default_host=a, shutdown=False
        )
        await wait_for(lambda: active_on(store, ex_id, b), timeout=60)
        spans = list(traced.exporter.get_finished_spans())
        shown = tree([s for s in spans if s.name != "renew batch"])
        (root,) = [s for s in spans if s.name == "perseus handoff"]
        assert root.parent is None and root.attributes is not None, shown
        assert root.attributes["perseus.to_host"] == b and root.attributes["perseus.exchange"] == exchange
        (call,) = children(spans, root, "StartWorkflowUpdate:handoff")
        # The workflow handles the update in the instance's own trace (the SDK's model: a workflow's
        # spans hang under its start), linked to the command's call; the handoff's activities follow
        # in that trace, and the promotion it signals is linked from the standby's side.
        handled = linked_from(spans, call, "HandleUpdate:handoff")
        holder_side = after(spans, handled)
        assert {"StartActivity:connector_disconnect", "StartActivity:release_claim"} <= holder_side, shown
        assert "RunActivity:release_claim" in holder_side, shown
        (signal,) = [
            s for s in spans if s.name == "SignalExternalWorkflow:promote" and same_trace(s, handled)
        ]
        promoted = linked_from(spans, signal, "HandleSignal:promote")
        standby_side = after(spans, promoted)
        assert {"RunActivity:claim_and_hold", "RunActivity:connector_connect"} <= standby_side, shown
        (claim,) = [s for s in spans if s.name == "redis claim" and same_trace(s, promoted)]
        assert claim.attributes is not None and claim.attributes["outcome"] in ("claimed", "taken"), shown
        assert claim.parent is not None and claim.parent.span_id in {
            s.context.span_id for s in spans if s.name == "RunActivity:claim_and_hold" and s.context
        }, shown
        # The renewals are no part of any of it: each batch is a trace of its own.
        batches = [s for s in spans if s.name == "renew batch"]
        assert batches and all(s.parent is None for s in batches)
        print(shown)

        # A plain command is one trace as well: its root, the update call under it, and the
        # workflow's handling of the update linked to that call.
        traced.exporter.clear()
        await control.command(traced.client, exchange=exchange, host=b, default_host=b, command=Command.STOP)
        spans = list(traced.exporter.get_finished_spans())
        shown = tree([s for s in spans if s.name != "renew batch"])
        (root,) = [s for s in spans if s.name == "perseus command"]
        assert root.parent is None and root.attributes is not None, shown
        assert "stop" in str(root.attributes["perseus.command"]).lower(), shown
        (call,) = children(spans, root, f"StartWorkflowUpdate:{UPDATE_COMMAND}")
        handled = linked_from(spans, call, f"HandleUpdate:{UPDATE_COMMAND}")
        assert not same_trace(handled, root)  # the instance's trace, linked, as for the handoff
        client_side = [s for s in spans if s.name.startswith(("StartWorkflowUpdate", "QueryWorkflow"))]
        assert client_side and all(same_trace(s, root) for s in client_side), shown
    finally:
        # Shut both down first: a worker stopping with instances still running waits for them.
        for host in (b, a):
            with contextlib.suppress(Exception):
                await control.command(
                    traced.client, exchange=exchange, host=host, default_host=host, command=Command.SHUTDOWN
                )
        stop.set()
        await asyncio.gather(*workers, return_exceptions=True)


def test_tracing_is_off_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    for name in ("OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert tracing_mode(load_otel_env(), None) == "off"
    assert tracing_mode(load_otel_env(), Path("t.jsonl")) == "file"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert tracing_mode(load_otel_env(), None) == "otlp"
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert tracing_mode(load_otel_env(), None) == "off"
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    assert tracing_mode(load_otel_env(), None) == "console"
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing_mode(load_otel_env(), Path("t.jsonl")) == "off"
    assert tracing.interceptors(on=False) == []
