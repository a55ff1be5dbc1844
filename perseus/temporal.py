"""Temporal plumbing shared by the worker, CLI and API: connection, search attributes, converter."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, PayloadCodec
from temporalio.envconfig import ClientConfig
from temporalio.service import RPCError, RPCStatusCode

from perseus.codec import DEV_KEY_FILE, EncryptionCodec, PlainCodec, parse_keys, read_key_file
from perseus.core.lifecycle import Role, State
from perseus.errors import ConfigError, Server, ServiceUnavailable

if TYPE_CHECKING:  # workflows import this module: settings stay out of their sandbox
    from perseus.config import Settings

EXCHANGE_NAME = SearchAttributeKey.for_keyword("ExchangeName")
CONNECTION_STATE = SearchAttributeKey.for_keyword("ConnectionState")
INSTANCE_HOST = SearchAttributeKey.for_keyword("InstanceHost")
INSTANCE_ROLE = SearchAttributeKey.for_keyword("InstanceRole")
SEARCH_ATTRIBUTES = [EXCHANGE_NAME, CONNECTION_STATE, INSTANCE_HOST, INSTANCE_ROLE]

#: Bounds on every call Perseus makes to Temporal: connecting, and one RPC (describe, list, signal,
#: query). Long-polls that wait for a worker (updates) carry their own longer bound.
CONNECT_TIMEOUT_S = 10.0
RPC_TIMEOUT = timedelta(seconds=10)

#: The converter for a client without a key: payloads travel plain, a sealed one is refused clearly.
#: Replaying committed (plain) histories uses it too.
converter = dataclasses.replace(pydantic_data_converter, payload_codec=PlainCodec())


def payload_codec(settings: Settings, *, read_only: bool = False) -> PayloadCodec:
    """The codec the settings ask for: encryption with ``PERSEUS_PAYLOAD_KEY``; plain text when
    ``PERSEUS_PAYLOAD_PLAINTEXT=1`` says so; else the key ``perseus dev`` keeps in the data dir;
    none of these is a ConfigError (see docs/security.md), unless ``read_only``: a view that sends
    nothing needs no key until it meets a sealed payload."""
    if settings.payload_key is not None:
        return EncryptionCodec(parse_keys(settings.payload_key.get_secret_value()))
    if settings.payload_plaintext:
        return PlainCodec()
    dev_key = settings.data_dir / DEV_KEY_FILE
    if dev_key.exists():  # a `perseus dev` stack's key, in the same data dir
        return EncryptionCodec(parse_keys(read_key_file(dev_key)))
    if read_only:
        return ReadOnlyCodec()
    raise ConfigError(NO_KEY)


#: Why a client without a key may not write to Temporal.
NO_KEY = (
    "PERSEUS_PAYLOAD_KEY is not set: Temporal history would hold connector commands and their "
    "environment in plain text; set a key (openssl rand -base64 32) on every worker and client, "
    "or PERSEUS_PAYLOAD_PLAINTEXT=1 to accept that"
)


class ReadOnlyCodec(PlainCodec):
    """A view without a key (``fleet diff``/``fleet status`` outside the checkout, as ``status``):
    it reads what needs no key; writing a payload, or reading a sealed one, is the usual one line."""

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        if payloads:
            raise ConfigError(NO_KEY)
        return []


def data_converter(settings: Settings, *, read_only: bool = False) -> DataConverter:
    return dataclasses.replace(
        pydantic_data_converter, payload_codec=payload_codec(settings, read_only=read_only)
    )


#: The instance workflow's type and message names, as clients address them. Clients (the CLI, the
#: API, the fleet) live in ``perseus/`` and must not import ``workflows/``; the workflow itself is
#: checked against these names by tests/unit/test_import_fences.py.
INSTANCE_WORKFLOW = "InstanceWorkflow"
UPDATE_COMMAND = "command"
UPDATE_HANDOFF = "handoff"
UPDATE_WAIT_REGISTERED = "wait_registered"
QUERY_SNAPSHOT = "snapshot"
SIGNAL_COMMAND = "command_signal"
#: Sent to an instance whose next task is near (``models.HeadsUp``): a handoff's target by the
#: caller (``control.handoff``), a standby whose holder missed a renewal by its host's keeper.
SIGNAL_HEADS_UP = "heads_up"
#: Asked of an instance by its exchange's failsafe holder (docs/design.md, "Failsafe").
UPDATE_FAILSAFE_PROMISE = "failsafe_promise"


def search_attributes(
    exchange: str, host: str, state: State, role: Role = Role.ACTIVE
) -> TypedSearchAttributes:
    """The four search attributes an instance workflow starts with."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(EXCHANGE_NAME, exchange),
            SearchAttributePair(INSTANCE_HOST, host),
            SearchAttributePair(CONNECTION_STATE, state.value),
            SearchAttributePair(INSTANCE_ROLE, role.value),
        ]
    )


#: What an exchange or host name may look like before it is put into a list filter: the catalog's
#: names and host names (perseus.keys.valid_host) all fit; anything else is refused up front.
_FILTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def filter_literal(value: str) -> str:
    """``value`` as a quoted string literal of a Temporal list filter.

    The visibility parser reads MySQL-style literals: a backslash escapes the next character and a
    quote is written twice. Both are escaped here, so data can never end the literal and become
    query syntax, whatever it contains.
    """
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def valid_filter_name(value: str) -> bool:
    """True for a name a list filter may search for (letters, digits, '.', '_', '-')."""
    return bool(_FILTER_NAME.match(value))


def instances_filter(exchange: str, *, role: Role | None = None) -> str:
    """The list filter for the running instance workflows of ``exchange`` (optionally by role).

    Refuses a malformed name with :class:`ConfigError` before anything reaches the server.
    """
    if not valid_filter_name(exchange):
        raise ConfigError(f"invalid exchange name {exchange!r}: use letters, digits, '.', '_' or '-'")
    parts = [f"{EXCHANGE_NAME.name} = {filter_literal(exchange.lower())}"]
    if role is not None:
        parts.append(f"{INSTANCE_ROLE.name} = {filter_literal(role.value)}")
    parts.append("ExecutionStatus = 'Running'")
    return " AND ".join(parts)


def connect_config(override_address: str | None = None) -> dict[str, Any]:
    """Temporal's own environment configuration (TEMPORAL_ADDRESS, _NAMESPACE, _API_KEY, TLS profile)."""
    try:
        config: dict[str, Any] = dict(ClientConfig.load_client_connect_config())
    except Exception as exc:  # envconfig raises plain errors on a malformed profile file
        raise ConfigError(f"Temporal configuration: {exc}") from None
    if override_address:
        config["target_host"] = override_address
    config.setdefault("target_host", "127.0.0.1:7233")
    return config


def web_ui_base(ui_url: str) -> str:
    """Where the Temporal Web UI shows this namespace's workflows; append a workflow id."""
    namespace = connect_config().get("namespace") or "default"
    return f"{ui_url.rstrip('/')}/namespaces/{namespace}/workflows"


def _connect_failure(text: str) -> str:
    """A short reason from the core SDK's connect error, whose text is a Rust debug dump such as
    ``Server connection error: tonic::transport::Error(Transport, ConnectError(... message:
    "Connection refused" ...))``: the innermost OS message if there is one, else its first clause."""
    if found := re.findall(r'message: "([^"]+)"', text):
        return str(found[-1]).lower()
    first = text.splitlines()[0] if text else "no answer"
    first = first.split("tonic::", 1)[0].rstrip(" :(")
    return first.removeprefix("Failed client connect: ").lower() or "no answer"


async def connect(
    settings: Settings, override_address: str | None = None, *, read_only: bool = False, **extra: Any
) -> Client:
    """A client with Perseus' converter and payload codec; ServiceUnavailable or ConfigError in one
    line when Temporal cannot be reached or the address is malformed. ``read_only``: see
    :func:`payload_codec`."""
    converter_ = data_converter(settings, read_only=read_only)
    config = connect_config(override_address)
    target = config["target_host"]
    # With tracing on (perseus.tracing), every call of this client and every worker built from it
    # carries the trace: a command's update, the workflow task and its activities join one trace.
    from perseus import tracing  # here, not at the top: workflows import this module

    extra.setdefault("interceptors", tracing.interceptors())
    try:
        return await asyncio.wait_for(
            Client.connect(**config, data_converter=converter_, **extra), CONNECT_TIMEOUT_S
        )
    except TimeoutError:
        raise ServiceUnavailable(
            f"Temporal did not answer at {target} within {CONNECT_TIMEOUT_S:g}s", server=Server.TEMPORAL
        ) from None
    except ValueError as exc:  # a malformed address (TEMPORAL_ADDRESS='::::')
        raise ConfigError(f"TEMPORAL_ADDRESS {target!r}: {str(exc).splitlines()[0]}") from None
    except RuntimeError as exc:  # the core SDK reports an unreachable server as RuntimeError
        raise ServiceUnavailable(
            f"Temporal unreachable at {target} ({_connect_failure(str(exc))})", server=Server.TEMPORAL
        ) from None


async def register_search_attributes(client: Client) -> None:
    """Make sure Perseus' search attributes exist in the client's namespace (repeating is harmless)."""
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=client.namespace,
                search_attributes={
                    k.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for k in SEARCH_ATTRIBUTES
                },
            ),
            timeout=RPC_TIMEOUT,
        )
    except RPCError as exc:
        # A server that already has them answers ALREADY_EXISTS (the dev server: nothing at all).
        if exc.status != RPCStatusCode.ALREADY_EXISTS:
            raise
