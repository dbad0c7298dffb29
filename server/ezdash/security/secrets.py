"""Server secrets: from the environment, else generated once into the data directory.

Several instances on one host share the data directory and so the secrets; on
several hosts, set ``EZ_KEY_SECRET`` and ``EZ_JWT_SECRET`` everywhere.  A
fingerprint of the key-hash secret is kept in Redis so an instance with a
different secret refuses to start instead of rejecting every key.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..settings import Settings


@dataclass(frozen=True)
class ServerSecrets:
    key_secret: bytes
    jwt_secret: bytes

    def fingerprint(self) -> str:
        return hmac.new(self.key_secret, b"ezdash-fingerprint", hashlib.sha256).hexdigest()[:16]


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read or write (0600), atomically: a reader never
    sees half of it, and it is never readable by others, not even for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # a stale .tmp keeps its mode through O_CREAT
        f.write(text)
    os.replace(tmp, path)


def load_secrets(settings: Settings) -> ServerSecrets:
    stored: dict[str, str] = {}
    path = Path(settings.data_dir) / "secrets.json"
    need = settings.key_secret is None or settings.jwt_secret is None
    if need:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            stored = json.loads(path.read_text())
        if "key_secret" not in stored or "jwt_secret" not in stored:
            stored.setdefault("key_secret", secrets.token_urlsafe(48))
            stored.setdefault("jwt_secret", secrets.token_urlsafe(48))
            write_private(path, json.dumps(stored))
        with contextlib.suppress(OSError):
            os.chmod(path, 0o600)
    key = settings.key_secret.get_secret_value() if settings.key_secret else stored["key_secret"]
    jwt = settings.jwt_secret.get_secret_value() if settings.jwt_secret else stored["jwt_secret"]
    return ServerSecrets(key.encode(), jwt.encode())
