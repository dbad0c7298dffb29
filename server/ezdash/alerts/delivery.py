"""Webhooks for alerts that fire and resolve: signed, retried, every outcome kept.

A delivery runs as its own task (the evaluation does not wait for receivers) and
ends with one record in the alert's deliveries list: attempts made, last status or
error.  The receiver's failures are its own: they are recorded, never raised.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from typing import Any

import orjson
from redis.exceptions import RedisError
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from ..timeutil import format_ms
from .context import AlertContext

log = logging.getLogger("ezdash.alerts")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256(secret, timestamp + "." + body): the timestamp is
    signed too, so a receiver can refuse old replays."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def deliver_later(svc: AlertContext, rule: dict[str, Any], doc: dict[str, Any], event: str) -> None:
    hook = rule.get("webhook")
    if not hook:
        return
    task = asyncio.create_task(deliver(svc, hook, doc, event))
    svc.deliveries.add(task)
    task.add_done_callback(svc.deliveries.discard)


async def deliver(svc: AlertContext, hook: dict[str, Any], doc: dict[str, Any], event: str) -> None:
    s = svc.settings
    body = orjson.dumps({"event": f"alert.{event}", "alert": doc})
    status: int | None = None
    error: str | None = None
    attempts = 0
    for attempt in range(1, s.webhook_attempts + 1):
        attempts = attempt
        stamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-EzDash-Timestamp": stamp}
        if hook.get("secret"):
            headers["X-EzDash-Signature"] = sign(hook["secret"], stamp, body)
        request = HTTPRequest(
            hook["url"],
            method="POST",
            body=body,
            headers=headers,
            request_timeout=s.webhook_timeout,
            follow_redirects=False,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except Exception as e:  # refused, unresolvable, reset: the receiver's failure
            status, error = None, f"{type(e).__name__}: {e}"
        else:
            status = response.code if response.code != 599 else None
            error = None if status and 200 <= status < 300 else str(response.error or status)
        if error is None:
            break
        if attempt < s.webhook_attempts:
            await asyncio.sleep(s.webhook_backoff * 2 ** (attempt - 1))
    record = {
        "event": event,
        "attempts": attempts,
        "status": status,
        "error": error,
        "at": format_ms(int(time.time() * 1000)),
    }
    try:
        await svc.alerts.record_delivery(doc["id"], record)
    except RedisError as e:
        log.warning("webhook delivery of %s not recorded: %s", doc["id"], e)
    if error is not None:
        log.warning("webhook for alert %s failed after %d attempts: %s", doc["id"], attempts, error)
