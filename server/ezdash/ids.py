"""Server-made identifiers: a kind prefix and a time-sortable, unguessable body.

Ids sort by creation time (48-bit milliseconds, then 80 random bits in
Crockford base32, as in ULID), which keeps Redis sorted sets and logs readable.
"""

from __future__ import annotations

import re
import secrets
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
AGENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
SERVER_ID = re.compile(r"^[a-z]{3}_[0-9A-HJKMNP-TV-Z]{26}$")


def new_id(kind: str) -> str:
    value = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    chars = []
    for _ in range(26):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return f"{kind}_{''.join(reversed(chars))}"
