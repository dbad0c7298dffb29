"""Alert rules, evaluated by the server, with signed webhook deliveries.

An engine beside the HTTP layer, not in it: the evaluation loop and the webhook
deliveries serve no request, and the analyst page reads alerts too, so none of it
may depend on ``ezdash.api`` (whose handlers are thin adapters over this package).

One instance at a time evaluates (the per-tick lease of :mod:`ezdash.leader`, as for
maintenance) every ``EZ_ALERT_INTERVAL``. Each rule yields findings per subject (the
fleet, an agent, a queue); a subject that starts breaking its rule fires an alert,
one that stops resolves it. Both transitions are atomic scripts that also write
``alert.fired`` / ``alert.resolved`` to the events stream, so every instance's
WebSocket clients hear of them whichever instance evaluated. Webhooks are POSTed
with an HMAC-SHA256 signature over ``timestamp.body``, retried with exponential
back-off, and every attempt's outcome is kept with the alert.

- :mod:`.store`: the alert keys in Redis (rules, active and recent alerts, deliveries).
- :mod:`.rules`: the rule set as stored and as shown.
- :mod:`.evaluate`: findings per rule kind, firing and resolving, the loop.
- :mod:`.delivery`: signed, retried webhooks.
"""
