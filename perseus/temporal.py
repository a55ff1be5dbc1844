"""Temporal plumbing shared by the worker, CLI and API: connection, search attributes, converter."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, PayloadCodec
from temporalio.envconfig import ClientConfig
from temporalio.service import RPCError

from perseus.codec import DEV_KEY_FILE, EncryptionCodec, PlainCodec, parse_keys, read_key_file
from perseus.errors import ConfigError, ServiceUnavailable
from perseus.lifecycle import State

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


def payload_codec(settings: Settings) -> PayloadCodec:
    """The codec the settings ask for: encryption with ``PERSEUS_PAYLOAD_KEY``; plain text when
    ``PERSEUS_PAYLOAD_PLAINTEXT=1`` says so; else the key ``perseus dev`` keeps in the data dir;
    none of these is a ConfigError (see docs/security.md)."""
    if settings.payload_key is not None:
        return EncryptionCodec(parse_keys(settings.payload_key.get_secret_value()))
    if settings.payload_plaintext:
        return PlainCodec()
    dev_key = settings.data_dir / DEV_KEY_FILE
    if dev_key.exists():  # a `perseus dev` stack's key, in the same data dir
        return EncryptionCodec(parse_keys(read_key_file(dev_key)))
    raise ConfigError(
        "PERSEUS_PAYLOAD_KEY is not set: Temporal history would hold connector commands and their "
        "environment in plain text; set a key (openssl rand -base64 32) on every worker and client, "
        "or PERSEUS_PAYLOAD_PLAINTEXT=1 to accept that"
    )


def data_converter(settings: Settings) -> DataConverter:
    return dataclasses.replace(pydantic_data_converter, payload_codec=payload_codec(settings))


#: The instance workflow's type and message names, as clients address them. Clients (the CLI, the
#: API, the fleet) live in ``perseus/`` and must not import ``workflows/``; the workflow itself is
#: checked against these names by tests/unit/test_import_fences.py.
INSTANCE_WORKFLOW = "InstanceWorkflow"
UPDATE_COMMAND = "command"
UPDATE_HANDOFF = "handoff"
UPDATE_WAIT_REGISTERED = "wait_registered"
QUERY_SNAPSHOT = "snapshot"
SIGNAL_COMMAND = "command_signal"


def search_attributes(exchange: str, host: str, state: State, role: str = "active") -> TypedSearchAttributes:
    """The four search attributes an instance workflow starts with."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(EXCHANGE_NAME, exchange),
            SearchAttributePair(INSTANCE_HOST, host),
            SearchAttributePair(CONNECTION_STATE, state.value),
            SearchAttributePair(INSTANCE_ROLE, role),
        ]
    )


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


async def connect(settings: Settings, override_address: str | None = None, **extra: Any) -> Client:
    """A client with Perseus' converter and payload codec; ServiceUnavailable or ConfigError in one
    line when Temporal cannot be reached or the address is malformed."""
    converter_ = data_converter(settings)
    config = connect_config(override_address)
    target = config["target_host"]
    try:
        return await asyncio.wait_for(
            Client.connect(**config, data_converter=converter_, **extra), CONNECT_TIMEOUT_S
        )
    except TimeoutError:
        raise ServiceUnavailable(
            f"Temporal did not answer at {target} within {CONNECT_TIMEOUT_S:g}s"
        ) from None
    except ValueError as exc:  # a malformed address (TEMPORAL_ADDRESS='::::')
        raise ConfigError(f"TEMPORAL_ADDRESS {target!r}: {str(exc).splitlines()[0]}") from None
    except RuntimeError as exc:  # the core SDK reports an unreachable server as RuntimeError
        raise ServiceUnavailable(f"Temporal unreachable at {target}: {str(exc).splitlines()[0]}") from None


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
        if "already exists" not in str(exc):
            raise
