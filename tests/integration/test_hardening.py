"""Hardening, through the real CLI and API: secrets stay out of Temporal history, bad input is refused
at the edge in one line, start-up failures are one line, and a frozen PostgreSQL cannot hold a
request (the API answers 503 in bounded time and /readyz names it)."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
import pytest_asyncio
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from pydantic import SecretStr
from temporalio.api.common.v1 import Payloads
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError

from perseus.codec import ENCODING, EncryptionCodec, new_key, parse_keys
from perseus.config import Settings
from perseus.devstack import services
from perseus.keys import workflow_id
from perseus.store import db
from perseus.temporal import register_search_attributes
from tests.conftest import Servers, WorkerProcess, perseus
from tests.connectors.support import child_command
from tests.integration.conftest_api import in_process
from tests.integration.helpers import host_name, wait_for

pytestmark = pytest.mark.integration

NAMESPACE = "perseus-hardening"
TOKEN = "tok-" + uuid.uuid4().hex


async def cli(servers: Servers, *args: str, **env: str) -> tuple[int, str, str]:
    result = await asyncio.to_thread(perseus, servers, *args, timeout=60, **env)
    return result.returncode, result.stdout, result.stderr


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


@pytest_asyncio.fixture(scope="module")
async def ns_client(servers: Servers) -> AsyncIterator[Client]:
    """A raw client (no codec) of a namespace of our own, so only our keyed worker polls it."""
    base = await Client.connect(servers.temporal_address)
    try:
        await base.workflow_service.register_namespace(
            RegisterNamespaceRequest(
                namespace=NAMESPACE, workflow_execution_retention_period=Duration(seconds=86400)
            )
        )
    except RPCError as exc:
        if "already" not in str(exc).lower():
            raise
    client = await Client.connect(servers.temporal_address, namespace=NAMESPACE)

    async def registered() -> bool:
        try:
            await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=NAMESPACE))
            await register_search_attributes(client)
        except RPCError:
            return False
        return True

    await wait_for(registered, 30)
    yield client


async def test_exec_arguments_and_environment_never_reach_history_in_clear(
    servers: Servers, settings: Settings, ns_client: Client, exchange: str
) -> None:
    key = new_key()
    host = host_name("sealed")
    env: dict[str, str] = {"TEMPORAL_NAMESPACE": NAMESPACE, "PERSEUS_PAYLOAD_KEY": key}
    worker = WorkerProcess(servers, host, shared=True, extra_env=env)
    try:
        await worker.ready()
        command = shlex.join(child_command("--token", TOKEN))
        code, out, err = await cli(
            servers, "register", exchange, "--host", host, "--exec", command, "--start", **env
        )
        assert code == 0, err
        events = [
            e async for e in ns_client.get_workflow_handle(workflow_id(exchange, host)).fetch_history_events()
        ]
        raw = b"".join(e.SerializeToString() for e in events)
        assert TOKEN.encode() not in raw
        started = events[0].workflow_execution_started_event_attributes
        (sealed,) = started.input.payloads
        assert sealed.metadata["encoding"] == ENCODING
        # Those who hold the key read it: the codec opens it, and so does the API's codec endpoint.
        (opened,) = await EncryptionCodec(parse_keys(key)).decode([sealed])
        assert TOKEN in opened.data.decode()
        api_key = await _api_key(servers)
        keyed = settings.model_copy(
            # in_process() calls it http://perseus: that is the name it is served under here.
            update={
                "payload_key": SecretStr(key),
                "codec_cors_origins": ["http://127.0.0.1:8233"],
                "api_host": "perseus",
            }
        )
        async with in_process(keyed) as http:
            body = json_format.MessageToJson(Payloads(payloads=[sealed]))
            refused = await http.post("/codec/decode", content=body)
            assert refused.status_code == 401
            answer = await http.post(
                "/codec/decode", content=body, headers={"Authorization": f"Bearer {api_key}"}
            )
            assert answer.status_code == 200, answer.text
            assert TOKEN.encode() in _payload_bytes(answer.text)
            preflight = await http.options(
                "/codec/decode",
                headers={"Origin": "http://127.0.0.1:8233", "Access-Control-Request-Method": "POST"},
            )
            assert preflight.headers["access-control-allow-origin"] == "http://127.0.0.1:8233"
            assert "X-Namespace" in preflight.headers["access-control-allow-headers"]
            stranger = await http.options("/codec/decode", headers={"Origin": "http://evil.example"})
            assert "access-control-allow-origin" not in stranger.headers
            # DNS rebinding: another name pointed at this address gets nothing, key or not, and so
            # does a page of another origin.
            for headers in ({"Host": "evil.example:8700"}, {"Origin": "http://evil.example"}):
                rebound = await http.post(
                    "/codec/decode", content=body, headers={"Authorization": f"Bearer {api_key}", **headers}
                )
                assert rebound.status_code == 403 and TOKEN.encode() not in rebound.content, rebound.text
        code, _, err = await cli(servers, "shutdown", exchange, "--host", host, **env)
        assert code == 0, err
    finally:
        worker.stop()


def _payload_bytes(text: str) -> bytes:
    payloads = json_format.Parse(text, Payloads())
    return b"".join(p.data for p in payloads.payloads)


async def _api_key(servers: Servers) -> str:
    conn = await db.connect(servers.database_url)
    async with conn:
        return await db.Catalog(db.OneConnection(conn)).create_api_key(f"hardening-{uuid.uuid4().hex[:6]}")


async def test_bad_input_is_refused_at_the_edge_in_one_line(
    servers: Servers, shared_worker: str, exchange: str
) -> None:
    host = shared_worker
    for value in ("inf", "1e-9"):
        code, out, err = await cli(
            servers, "register", exchange, "--host", host, "--heartbeat-interval", value
        )
        assert code != 0 and out == ""
        assert "heartbeat interval must be between 0.5 and 3600 seconds" in one_line(err)
    code, _, err = await cli(servers, "register", exchange, "--host", host, PERSEUS_HEARTBEAT_INTERVAL="inf")
    assert code != 0 and "PERSEUS_HEARTBEAT_INTERVAL" in one_line(err)
    # Once pasted into a Temporal list query; now refused before any query.
    code, _, err = await cli(servers, "stop", "zzz' or exchangename != '")
    assert code != 0 and "invalid exchange name" in one_line(err)
    code, _, err = await cli(servers, "register", "a'b", "--host", host)
    assert code != 0 and "invalid exchange name" in one_line(err)


async def _each_one_line(servers: Servers, cases: list[tuple[tuple[str, ...], dict[str, str], str]]) -> None:
    # Independent processes that mostly wait: run them side by side.
    results = await asyncio.gather(*(cli(servers, *args, **env) for args, env, _ in cases))
    for (args, _, expected), (code, _, err) in zip(cases, results, strict=True):
        line = one_line(err)
        assert code != 0 and expected in line, (args, err)
        assert "hunter2" not in err


async def test_a_dependency_down_at_start_up_is_one_line(servers: Servers) -> None:
    closed = f"127.0.0.1:{services.free_port()}"
    no_database = {"PERSEUS_DATABASE_URL": f"postgresql://postgres:hunter2@{closed}/perseus"}
    no_redis = {"PERSEUS_REDIS_URL": f"redis://:hunter2@{closed}/0"}
    await _each_one_line(
        servers,
        [
            # A worker serves without PostgreSQL and enrols once it answers (see test_fleet.py).
            (("api", "--port", str(services.free_port())), no_database, "PostgreSQL unreachable"),
            (("worker", "--host", "h1"), no_redis, "Redis unreachable"),
        ],
    )


async def test_a_malformed_temporal_address_is_one_line(servers: Servers) -> None:
    bad = {"TEMPORAL_ADDRESS": "::::"}
    await _each_one_line(
        servers,
        [
            (("worker", "--host", "h1"), bad, "TEMPORAL_ADDRESS '::::'"),
            (("dev", "--api-port", str(services.free_port()), "--headless"), bad, "TEMPORAL_ADDRESS '::::'"),
        ],
    )


@pytest_asyncio.fixture
async def private_postgres(tmp_path: Path) -> AsyncIterator[tuple[services.Service, str]]:
    # Scratch: as root its data is relocated under /var/lib/perseus, and must go with the server.
    service = await services.start_postgres(tmp_path / "pg", None, scratch=True)
    try:
        url = await services.ensure_database(service, "perseus")
        await db.apply_schema(url)
        await db.apply_sql(url, db.DEMO_DATA_PATH)
        yield service, url
    finally:
        service.stop()


def _freeze(pid: int, sig: signal.Signals) -> None:
    """Signal the postmaster and every backend it forked (a frozen server, not a dead one)."""
    main = psutil.Process(pid)
    for proc in [main, *main.children(recursive=True)]:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass


async def test_frozen_postgresql_cannot_hold_a_request(
    servers: Servers,
    settings: Settings,
    private_postgres: tuple[services.Service, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", servers.temporal_address)  # /readyz asks Temporal too
    service, url = private_postgres
    pid = service.pid()
    assert pid is not None
    conn = await db.connect(url)
    async with conn:
        api_key = await db.Catalog(db.OneConnection(conn)).create_api_key("frozen")
    ours = settings.model_copy(update={"database_url": url})
    async with in_process(ours) as http:
        headers = {"Authorization": f"Bearer {api_key}"}
        assert (await http.get("/api/network/instances", headers=headers)).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text
        _freeze(pid, signal.SIGSTOP)
        try:
            # The client's own deadline is the bound: a hang fails the test instead of waiting.
            answer = await http.get("/api/network/instances", headers=headers, timeout=20)
            assert answer.status_code == 503, answer.text
            assert "PostgreSQL" in answer.json()["error"]
            ready = await http.get("/readyz", timeout=20)
            assert ready.status_code == 503
            # No key can be checked with PostgreSQL frozen: the short answer, without details.
            assert ready.json()["ready"] is False and "down" not in ready.json()
        finally:
            _freeze(pid, signal.SIGCONT)

        async def recovered() -> bool:
            return (await http.get("/readyz", timeout=20)).status_code == 200

        await wait_for(recovered, 30)


def test_workflow_input_refuses_a_bad_interval() -> None:
    from pydantic import ValidationError

    from perseus.models import InstanceInput

    for bad in (float("inf"), float("nan"), 1e-9, 0.49, 3600.5):
        with pytest.raises(ValidationError):
            InstanceInput(exchange="coinbase", host="h1", heartbeat_interval_s=bad)
    assert InstanceInput(exchange="coinbase", host="h1", heartbeat_interval_s=0.5).heartbeat_interval_s == 0.5
    for exchange, host in (("a'b", "h1"), ("coinbase", "h 1"), ("", "h1")):
        with pytest.raises(ValidationError):
            InstanceInput(exchange=exchange, host=host)
