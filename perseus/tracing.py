"""Traces with OpenTelemetry: off unless configured, so a default install needs no collector.

What is traced when it is on:

* the commands (:func:`traced` in :mod:`perseus.client.control`): ``perseus handoff`` is a trace whose
  root names the exchange and hosts, with the update call under it;
* every Temporal call and task, through the SDK's ``TracingInterceptor`` on each client (and so on
  every worker built from it). In the SDK's model a workflow's spans live in the trace of its start
  (the instance's registration): ``HandleUpdate:handoff`` there is *linked* to the command's
  ``StartWorkflowUpdate:handoff``, the ``StartActivity:…``/``RunActivity:…`` spans of the handoff
  follow it, and the standby's ``HandleSignal:promote`` is linked from the holder's
  ``SignalExternalWorkflow:promote`` — a trace viewer follows the links from the command to both
  hosts' activities;
* the API's requests (one server span each);
* each Redis claim (``redis claim``, under the activity that makes it, with its epoch and outcome);
* the keeper's renewal batches (:mod:`perseus.host.grid`): a span for every batch that went wrong (a
  renewal failed, refused or missing, or the round trip slow) and for one healthy batch per second,
  each the root of its own small trace — a claim's renewals go on for days, and hanging them all
  under the activity that took the claim would make one trace without end. Never one per renewal.
  A span per healthy batch (up to ten a second at 1,000 claims) cost the traced worker about 15 %
  of its CPU in ``bench.tracing_overhead``; the span is therefore recorded after the fact
  (:func:`finished_span`), once the batch's outcome says whether it is worth keeping.

When: ``OTEL_SDK_DISABLED`` wins; then ``PERSEUS_TRACE_FILE`` (``perseus dev --trace``) writes
spans as JSON lines to a file anyone can read; then ``OTEL_TRACES_EXPORTER=console`` prints them on
stdout, and ``otlp`` — or an ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`` — sends them to a collector
with the OTLP/HTTP exporter (``pip install opentelemetry-exporter-otlp-proto-http``; the exporter
reads its own ``OTEL_EXPORTER_OTLP_*`` settings). Nothing set: no provider, no interceptor, no cost.

Workflow spans are the SDK's: they are ended at once (0 ms) and not emitted on replay.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace

from perseus.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from perseus.config import OtelEnv

log = logging.getLogger(__name__)

Mode = Literal["off", "file", "console", "otlp"]
P = ParamSpec("P")
T = TypeVar("T")

_tracer = trace.get_tracer("perseus")
#: Whether this process installed a provider (clients then get the tracing interceptor).
_installed = False


def tracing_mode(otel: OtelEnv, trace_file: Path | None) -> Mode:
    """Which exporter, if any (pure; the precedence of the module docstring)."""
    if otel.sdk_disabled:
        return "off"
    if trace_file is not None:
        return "file"
    exporter = (otel.traces_exporter or "").strip().lower()
    if exporter == "none":
        return "off"
    if exporter == "console":
        return "console"
    if exporter == "otlp" or otel.exporter_otlp_endpoint or otel.exporter_otlp_traces_endpoint:
        return "otlp"
    return "off"


def install(service: str, mode: Mode, trace_file: Path | None = None) -> TracerProvider | None:
    """Set this process's tracer provider for ``mode`` (None when off). Shut it down on exit
    (:func:`shutdown`), so spans still in a batch reach the exporter."""
    global _installed
    if mode == "off":
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
        SpanExporter,
    )

    exporter: SpanExporter
    if mode == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError:
            raise ConfigError(
                "OTEL_TRACES_EXPORTER=otlp: the OTLP exporter is not installed "
                "(pip install opentelemetry-exporter-otlp-proto-http)"
            ) from None
        exporter = OTLPSpanExporter()
    elif mode == "file":
        assert trace_file is not None
        trace_file.parent.mkdir(parents=True, exist_ok=True)
        # Appended a line at a time: the dev stack's processes (worker, API) share one file.
        out = trace_file.open("a", buffering=1, encoding="utf-8")
        exporter = ConsoleSpanExporter(out=out, formatter=lambda s: s.to_json(indent=None) + "\n")
    else:
        exporter = ConsoleSpanExporter(formatter=lambda s: s.to_json(indent=None) + "\n")
    # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES, if set, win over the role's default name.
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}).merge(Resource.create()))
    processor = BatchSpanProcessor(exporter) if mode == "otlp" else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _installed = True
    log.info("tracing on: %s%s", mode, f" to {trace_file}" if trace_file else "")
    return provider


def shutdown(provider: TracerProvider | None) -> None:
    if provider is not None:
        provider.shutdown()


def enabled() -> bool:
    return _installed


def interceptors(on: bool | None = None) -> list[Any]:
    """The Temporal client interceptors for tracing: the SDK's, when tracing is on in this process."""
    if not (enabled() if on is None else on):
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor()]


@contextlib.contextmanager
def span(name: str, *, root: bool = False, **attributes: str | int | float | bool) -> Iterator[trace.Span]:
    """A span around a Perseus step (a no-op while no provider is installed); yields it, so the
    step can add what it learnt. ``root``: start a trace of its own instead of joining the current
    one (a batch that serves many callers)."""
    parent = otel_context.Context() if root else None
    with _tracer.start_as_current_span(name, context=parent, attributes=attributes) as current:
        yield current


def finished_span(
    name: str, start_ns: int, end_ns: int, *, error: str | None = None, **attributes: str | int | float | bool
) -> None:
    """A root span recorded after the fact, with the start and end it had: for work whose span is
    kept only once its outcome is known (a no-op while no provider is installed)."""
    recorded = _tracer.start_span(
        name, context=otel_context.Context(), start_time=start_ns, attributes=attributes
    )
    if error is not None:
        recorded.set_status(trace.Status(trace.StatusCode.ERROR, error))
    recorded.end(end_time=end_ns)


def traced(name: str) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """:func:`span` around a whole command (:mod:`perseus.client.control`), named by what it does, with the
    exchange and hosts it was given: the root of the trace its update and workflow join."""

    def wrap(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(fn)
        async def run(*args: P.args, **kwargs: P.kwargs) -> T:
            attributes = {
                f"perseus.{k}": str(v)
                for k, v in kwargs.items()
                if k in ("exchange", "host", "to_host", "from_host", "command") and v is not None
            }
            with _tracer.start_as_current_span(name, attributes=attributes):
                return await fn(*args, **kwargs)

        return run

    return wrap


class TraceRequests:
    """ASGI middleware: one server span per HTTP request (added by the API only while tracing is
    on). Pure ASGI, so the live event stream's response is passed through untouched."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope.get("method", "GET"), scope.get("path", "")
        attributes = {"http.request.method": method, "url.path": path}
        with _tracer.start_as_current_span(
            f"{method} {path}", kind=trace.SpanKind.SERVER, attributes=attributes
        ) as current:

            async def answered(message: dict[str, Any]) -> None:
                if message.get("type") == "http.response.start":
                    current.set_attribute("http.response.status_code", int(message.get("status", 0)))
                await send(message)

            await self.app(scope, receive, answered)
