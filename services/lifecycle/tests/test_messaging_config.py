"""The ``messaging`` block of an agent's configuration: bus limits and subscriptions, checked at registration."""

from __future__ import annotations

from symbi_lifecycle.config import convert_config, validate_config


def test_bus_limits_and_subscriptions_are_checked_at_registration() -> None:
    config = convert_config(
        {
            "name": "talker",
            "messaging": {
                "messages_per_s": 0,
                "bytes_per_s": 10,
                "max_message_bytes": 2 * 1024 * 1024,
                "queue_depth": 5000,
                "subscriptions": ["findings", "findings", "no.dots"],
            },
        }
    )
    issues = {i.field: i.message for i in validate_config(config)}
    assert set(issues) == {
        "messaging.messages_per_s",
        "messaging.max_message_bytes",
        "messaging.queue_depth",
        "messaging.subscriptions[1]",
        "messaging.subscriptions[2]",
    }
    assert issues["messaging.queue_depth"] == "must be between 1 and 1000 messages, got 5000"
    assert "not a topic" in issues["messaging.subscriptions[2]"]
    fine = convert_config({"name": "talker", "messaging": {"queue_depth": 10, "subscriptions": ["findings"]}})
    assert validate_config(fine) == []
    assert fine.messaging.messages_per_s == 1000.0  # defaults: the hosts' defaults
    assert validate_config(convert_config({"name": "quiet"})) == []
