"""Masking: one helper decides what a credential looks like, for banners, logs and lastError."""

from __future__ import annotations

import pytest

from perseus.redact import clean_output, mask_argv, mask_text, mask_url

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@10.0.0.5:6379/0", "redis://:***@10.0.0.5:6379/0"),
        ("redis://hunter2@10.0.0.5:6379/0", "redis://***@10.0.0.5:6379/0"),
        ("rediss://default:hunter2@cache/0", "rediss://default:***@cache/0"),
        (
            "postgresql://perseus:p%40ss@db.example:5432/perseus?sslmode=verify-full&password=zz",
            "postgresql://perseus:***@db.example:5432/perseus?sslmode=verify-full&password=***",
        ),
        ("postgresql://postgres@127.0.0.1:7432/perseus", "postgresql://postgres@127.0.0.1:7432/perseus"),
        (
            "https://discord.com/api/webhooks/1234/AbCdEf-token_x?wait=true",
            "https://discord.com/api/webhooks/1234/***?wait=true",
        ),
    ],
)
def test_mask_url_hides_passwords_query_secrets_and_webhook_tokens(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_mask_text_hides_named_secrets_bearer_and_token_like_words() -> None:
    text = (
        "login failed: password=hunter2 token: abc --api-key sk_live_1 Authorization: Bearer eyJ.x.y "
        "key ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4 url postgresql://u:pw@db/x"
    )
    masked = mask_text(text)
    for secret in ("hunter2", "abc", "sk_live_1", "eyJ.x.y", "ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4", ":pw@"):
        assert secret not in masked
    assert "login failed" in masked and "postgresql://u:***@db/x" in masked
    # Ordinary words, numbers, signals and paths survive.
    plain = "killed by signal SIGKILL (pid 1234), see /var/log/x.log; bad key given"
    assert mask_text(plain) == plain


def test_mask_argv_hides_the_value_after_a_secret_flag() -> None:
    argv = ["python", "conn.py", "--token", "S3CRET", "--api-key=K3Y", "--symbols", "BTC-USD"]
    assert mask_argv(argv) == "python conn.py --token *** --api-key=*** --symbols BTC-USD"


def test_clean_output_strips_control_and_ansi_masks_and_bounds() -> None:
    raw = "\x1b[31mERROR\x1b[0m\x07 token=s3cret\r\x00 \x1b]0;title\x07done" + " pad" * 200
    cleaned = clean_output(raw, 300)
    assert len(cleaned) <= 300
    assert "\x1b" not in cleaned and "\x07" not in cleaned and "\x00" not in cleaned
    assert "s3cret" not in cleaned
    assert clean_output("\x1b[1mERROR\x1b[0m token=s3cret") == "ERROR token=***"


def test_the_dev_banner_masks_server_passwords() -> None:
    from perseus.cli.app import dev_banner
    from perseus.config import load_settings
    from perseus.devstack.stack import DevStack

    settings = load_settings(
        redis_url="redis://:redis-pw@127.0.0.1:7379/0",
        database_url="postgresql://perseus:db-pw@127.0.0.1:7432/perseus",
    )
    key = "2370d370-5d1c-4a8e-9a53-3f1f0c9b7e11"
    stack = DevStack(settings, "127.0.0.1:7233", None, "http://127.0.0.1:8700", key)
    text = "\n".join(dev_banner(stack))
    assert "redis-pw" not in text and "db-pw" not in text
    # The API key: its first characters and where the whole key is, not the key.
    assert key not in text and "2370d370…" in text and "api.key" in text
    assert (
        "redis://:***@127.0.0.1:7379/0" in text and "postgresql://perseus:***@127.0.0.1:7432/perseus" in text
    )
