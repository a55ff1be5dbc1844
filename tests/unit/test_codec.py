"""The payload codec: sealed with the current key, opened with any listed key, plain payloads pass."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload

from perseus.codec import (
    ENCODING,
    EncryptionCodec,
    PlainCodec,
    load_or_create_key,
    new_key,
    parse_keys,
)
from perseus.config import load_settings
from perseus.errors import ConfigError, PayloadKeyError
from perseus.temporal import converter, data_converter

pytestmark = pytest.mark.unit

SECRET = b'{"command": ["conn", "--token", "tok-123"]}'


def plain() -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=SECRET)


async def test_round_trip_hides_the_data_and_keeps_plain_payloads_readable() -> None:
    codec = EncryptionCodec(parse_keys(new_key()))
    (sealed,) = await codec.encode([plain()])
    assert sealed.metadata["encoding"] == ENCODING
    assert b"tok-123" not in sealed.SerializeToString()
    (opened,) = await codec.decode([sealed])
    assert opened == plain()
    # Histories written before encryption (the golden ones) decode unchanged.
    assert await codec.decode([plain()]) == [plain()]
    # Two encodings of the same payload differ (a fresh nonce each time).
    assert (await codec.encode([plain()]))[0].data != sealed.data


async def test_rotation_and_wrong_keys() -> None:
    old, new = new_key(), new_key()
    (sealed_old,) = await EncryptionCodec(parse_keys(old)).encode([plain()])
    rotated = EncryptionCodec(parse_keys(f"{new},{old}"))
    assert await rotated.decode([sealed_old]) == [plain()]
    with pytest.raises(PayloadKeyError, match="which PERSEUS_PAYLOAD_KEY does not hold"):
        await EncryptionCodec(parse_keys(new)).decode([sealed_old])
    tampered = Payload()
    tampered.CopyFrom(sealed_old)
    tampered.data = sealed_old.data[:-1] + bytes([sealed_old.data[-1] ^ 1])
    with pytest.raises(PayloadKeyError, match="does not authenticate"):
        await rotated.decode([tampered])
    with pytest.raises(PayloadKeyError, match="PERSEUS_PAYLOAD_KEY is not set"):
        await PlainCodec().decode([sealed_old])


# Fixed ids: a random key in an id would differ between test processes.
@pytest.mark.parametrize(
    "text",
    ["", "not base64!", "c2hvcnQ=", f"{new_key()},zz"],
    ids=["empty", "not-base64", "too-short", "good-then-bad"],
)
def test_malformed_keys_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="PERSEUS_PAYLOAD_KEY"):
        parse_keys(text)


def test_no_key_needs_an_explicit_plaintext_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("PERSEUS_PAYLOAD_KEY", "PERSEUS_PAYLOAD_PLAINTEXT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PERSEUS_DATA_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="PERSEUS_PAYLOAD_KEY is not set"):
        data_converter(load_settings())
    # A dev stack's key in the same data dir is found (a second terminal talks to `perseus dev`).
    load_or_create_key(tmp_path / "payload.key")
    assert isinstance(data_converter(load_settings()).payload_codec, EncryptionCodec)
    assert isinstance(data_converter(load_settings(payload_plaintext=True)).payload_codec, PlainCodec)
    keyed = data_converter(load_settings(payload_key=new_key()))
    assert isinstance(keyed.payload_codec, EncryptionCodec)
    assert isinstance(converter.payload_codec, PlainCodec)


def test_dev_key_file_is_private_reused_and_refused_when_readable(tmp_path: Path) -> None:
    path = tmp_path / "data" / "payload.key"
    key = load_or_create_key(path)
    assert parse_keys(key) and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key  # the same key on the next `perseus dev`
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_or_create_key(path)


@pytest.mark.parametrize(
    ("authority", "host"),
    [
        ("127.0.0.1:8700", "127.0.0.1"),
        ("LOCALHOST:8700", "localhost"),
        ("[::1]:8700", "::1"),
        ("evil.example", "evil.example"),
        ("evil.example:8700/path", "evil.example"),
    ],
)
def test_the_host_name_of_an_authority(authority: str, host: str) -> None:
    from perseus.api.codec import host_name_of

    assert host_name_of(authority) == host


def test_the_names_an_api_is_served_under() -> None:
    from perseus.api.codec import served_names

    names = served_names("127.0.0.1")
    assert names is not None and {"127.0.0.1", "localhost", "::1"} <= names
    assert "evil.example" not in names
    assert served_names("0.0.0.0") is None  # every interface: any name, and /codec needs a key
