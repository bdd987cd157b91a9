"""Notifications for people: a failed task, a degraded night, a missed publishing deadline.

Every notification is a log line (ERROR for failures and missed deadlines, WARNING for degraded nights) and,
when the `alert_webhook_url` setting is set, a JSON POST to it: {"event", "summary", "details"}. Slack,
Teams and most paging services accept such a webhook (directly or through a small relay). Standard library
only: the DAG's callbacks import this module.

A notifier must never turn a night's outcome into another failure: a webhook that cannot be reached is
logged at ERROR level and the notification returns False.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

log = logging.getLogger(__name__)

EVENTS = ("task_failed", "degraded", "deadline_missed")
WEBHOOK_TIMEOUT_S = 10.0


def notify(event: str, summary: str, details: dict[str, Any], webhook_url: str = "") -> bool:
    """Log the notification and POST it to webhook_url when one is set; True when it was delivered (or
    there was nowhere to deliver it but the log)."""
    assert event in EVENTS, f"unknown notification event {event!r}; known: {EVENTS}"
    level = logging.WARNING if event == "degraded" else logging.ERROR
    log.log(level, "NOTIFY %s: %s %s", event, summary, json.dumps(details, default=str, sort_keys=True))
    if not webhook_url:
        return True
    body = json.dumps({"event": event, "summary": summary, "details": details}, default=str).encode()
    request = urllib.request.Request(webhook_url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S) as response:
            delivered = 200 <= response.status < 300
    except (urllib.error.URLError, OSError) as err:
        log.error("notification %s could not be delivered to the webhook: %s", event, err)
        return False
    if not delivered:
        log.error("notification %s: the webhook answered HTTP %s", event, response.status)
    return delivered
