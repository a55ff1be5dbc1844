"""Encrypt Perseus' Temporal payloads, so connector commands, arguments and environments (tokens)
never sit in plain text in Temporal history, its database or the Web UI.

Every payload a Perseus client sends (workflow input, activity inputs and results, updates, queries,
signals) goes through :class:`EncryptionCodec`: the serialized payload is sealed with AES-256-GCM
under a key from ``PERSEUS_PAYLOAD_KEY`` and travels as a new payload marked
``encoding: binary/perseus-aes256gcm`` with the key's id. Search attributes are not payloads and
stay readable (exchange, host, state, role: nothing secret).

Decoding accepts payloads *without* the marker unchanged: histories written before encryption (and
the golden histories the replay tests use) still decode. A marked payload needs a key with its id;
without one it fails with :class:`PayloadKeyError`, never silently.

Keys: ``PERSEUS_PAYLOAD_KEY`` is one or more base64-encoded 32-byte keys separated by commas. The
first encrypts; all of them decrypt, so a key is rotated by putting the new one first and dropping
the old one once no running workflow needs it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from perseus.errors import ConfigError, PayloadKeyError

if TYPE_CHECKING:  # cryptography loads only where a key is used (not in the workflow sandbox)
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ENCODING = b"binary/perseus-aes256gcm"
KEY_ID = "perseus-key-id"
KEY_BYTES = 32
NONCE_BYTES = 12
#: Bound into every ciphertext: a sealed Perseus payload cannot be passed off as something else.
_AAD = b"perseus-temporal-payload-v1"


def new_key() -> str:
    """A fresh key, in the form ``PERSEUS_PAYLOAD_KEY`` takes."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def parse_keys(text: str) -> list[bytes]:
    """The keys of a ``PERSEUS_PAYLOAD_KEY`` value; ConfigError (without the value) when malformed."""
    keys: list[bytes] = []
    for n, part in enumerate((p.strip() for p in text.split(",")), start=1):
        if not part:
            continue
        try:
            standard = part.replace("-", "+").replace("_", "/")  # the URL-safe alphabet too
            key = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"PERSEUS_PAYLOAD_KEY: key {n} is not base64") from None
        if len(key) != KEY_BYTES:
            raise ConfigError(f"PERSEUS_PAYLOAD_KEY: key {n} must be {KEY_BYTES} bytes, got {len(key)}")
        keys.append(key)
    if not keys:
        raise ConfigError("PERSEUS_PAYLOAD_KEY: no key given")
    return keys


#: Where ``perseus dev`` keeps its key, inside the data dir; other commands with the same data dir
#: find it there, so ``perseus stop kraken`` in a second terminal talks to the dev stack.
DEV_KEY_FILE = "payload.key"


def read_key_file(path: Path) -> str:
    """The key list in ``path``; ConfigError if others may read it or it is malformed."""
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"{path} is readable by others: chmod 600 it (it encrypts Temporal payloads)")
    text = path.read_text().strip()
    parse_keys(text)
    return text


def load_or_create_key(path: Path) -> str:
    """The key in ``path``; a new one written there first (0600, in a 0700 folder) if there is none."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_key_file(path)
    key = new_key()
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    return key


def key_id(key: bytes) -> str:
    """A short public name for a key (not reversible): which key sealed a payload."""
    return hashlib.sha256(b"perseus-key-id:" + key).hexdigest()[:16]


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over whole payloads; see the module docstring. Stateless apart from its keys."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if not keys:
            raise ValueError("at least one key")
        self._keys = {key_id(k): AESGCM(k) for k in keys}
        self._current = key_id(keys[0])

    @property
    def current_key_id(self) -> str:
        return self._current

    def encode_one(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") == ENCODING:
            return payload  # already sealed (a payload passed through twice)
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[self._current].encrypt(nonce, payload.SerializeToString(), _AAD)
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID: self._current.encode()},
            data=nonce + sealed,
        )

    def decode_one(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload  # plain: written before encryption, or by a client without a key
        return open_payload(payload, self._keys)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encode_one(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decode_one(p) for p in payloads]


class PlainCodec(PayloadCodec):
    """No key (``PERSEUS_PAYLOAD_PLAINTEXT=1``): payloads go out as they are; a sealed one coming in
    is a clear error rather than bytes the pydantic converter cannot read."""

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return refuse_sealed(payloads)


def open_payload(payload: Payload, keys: dict[str, AESGCM]) -> Payload:
    """Decrypt one sealed payload with the key its metadata names."""
    wanted = payload.metadata.get(KEY_ID, b"").decode(errors="replace")
    cipher = keys.get(wanted)
    if cipher is None:
        raise PayloadKeyError(
            f"payload encrypted with key {wanted or '(unnamed)'}, which PERSEUS_PAYLOAD_KEY does not hold"
        )
    from cryptography.exceptions import InvalidTag

    data = bytes(payload.data)
    try:
        inner = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], _AAD)
    except InvalidTag:
        raise PayloadKeyError(f"payload sealed with key {wanted} does not authenticate") from None
    out = Payload()
    out.ParseFromString(inner)
    return out


def refuse_sealed(payloads: Sequence[Payload]) -> list[Payload]:
    """Decoding without any key: plain payloads pass, a sealed one is a clear error."""
    for payload in payloads:
        if payload.metadata.get("encoding") == ENCODING:
            raise PayloadKeyError("payload is encrypted but PERSEUS_PAYLOAD_KEY is not set in this process")
    return list(payloads)
