"""PERSEUS_NOTIFY_CHANNELS: a bad channel is one line naming the variable and what is wrong."""

from __future__ import annotations

import json

import pytest

from perseus.config import load_settings
from perseus.errors import ConfigError
from perseus.models import EventKind
from perseus.notify.channels import channel_of, summary

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("channels", "says"),
    [
        ([{"name": "a", "kind": "slack"}], "a slack channel needs a url"),
        ([{"name": "a", "kind": "webhook", "url": "https://example.com/x"}], "needs a secret (its HMAC key)"),
        ([{"name": "a", "kind": "pagerduty"}], "needs a secret (its routing key)"),
        ([{"name": "a", "kind": "slack", "url": "https://h/x", "secret": "s"}], "takes no secret"),
        ([{"name": "a", "kind": "slack", "url": "http://example.com/x"}], "must be https://"),
        ([{"name": "a", "kind": "slack", "url": "https://h/x", "events": []}], "empty filter"),
        ([{"name": "a", "kind": "slack", "url": "https://h/x", "events": ["reboot"]}], "Input should be"),
        ([{"name": "A B", "kind": "slack", "url": "https://h/x"}], "should match pattern"),
        ([{"name": "a", "kind": "sms", "url": "https://h/x"}], "Input should be"),
        ([{"name": "a", "kind": "slack", "url": "https://h/x"}] * 2, "channel names must differ"),
        ([{"name": "discord", "kind": "slack", "url": "https://h/x"}], "choose another"),
    ],
)
def test_a_bad_channel_is_one_line(
    monkeypatch: pytest.MonkeyPatch, channels: list[dict[str, object]], says: str
) -> None:
    monkeypatch.setenv("PERSEUS_NOTIFY_CHANNELS", json.dumps(channels))
    monkeypatch.setenv("PERSEUS_DISCORD_WEBHOOK_URL", "https://discord.com/api/webhooks/1/token")
    with pytest.raises(ConfigError, match="PERSEUS_NOTIFY_CHANNELS") as caught:
        load_settings()
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_a_loopback_target_may_be_plain_http_and_filters_are_case_blind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    channels = [
        {
            "name": "local",
            "kind": "webhook",
            "url": "http://127.0.0.1:9/x",
            "secret": "k",
            "exchanges": ["Binance"],
        },
        {"name": "pd", "kind": "pagerduty", "secret": "rk", "events": ["instance_lost"]},
    ]
    monkeypatch.setenv("PERSEUS_NOTIFY_CHANNELS", json.dumps(channels))
    local, pd = (channel_of(c) for c in load_settings().notify_channels)
    assert local.exchanges == frozenset({"binance"}) and EventKind.STANDBY_REGISTERED not in local.kinds
    assert pd.url == "https://events.pagerduty.com/v2/enqueue" and pd.kinds == {EventKind.INSTANCE_LOST}
    assert "rk" not in repr(load_settings())  # the routing key is a secret


def test_the_summary_names_what_where_and_the_epoch() -> None:
    from datetime import UTC, datetime

    from perseus.models import NetworkEvent

    lost = NetworkEvent(
        event=EventKind.INSTANCE_LOST,
        event_id="e1",
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        exchange_id=1,
        exchange_name="kraken",
        hostname="host-a",
        instance_id="i",
        epoch=3,
        detail="no renewal",
    )
    assert summary(lost) == "kraken: instance lost: no renewal (host host-a, epoch 3)"


def test_every_event_kind_has_a_summary() -> None:
    from datetime import UTC, datetime

    from perseus.models import NetworkEvent

    for kind in EventKind:
        line = summary(
            NetworkEvent(
                event=kind,
                event_id="e",
                timestamp=datetime(2026, 1, 1, tzinfo=UTC),
                exchange_id=1,
                exchange_name="kraken",
                hostname="h",
                instance_id="i",
                epoch=1,
            )
        )
        assert line.startswith("kraken: ") and line.endswith("(host h, epoch 1)"), line
