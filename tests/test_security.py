"""Security: a table of attacks with the exact answers expected, rate limits shared by
instances, CORS, and the audit trail of control actions and denied attempts."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ezdash.security.apikeys import digest
from ezdash.settings import Settings

from .conftest import ADMIN_KEY, FAST, Api, Fleet, start_api, stop_api, wait_for

AUDIENCE = "ezdash-tests"


@pytest.fixture(scope="module")
def rsa_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path_factory.mktemp("idp") / "public.pem"
    path.write_bytes(pem)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return private_pem, path


@pytest.fixture
def settings(
    redis_url: str, tmp_path: Path, rsa_pair: tuple[bytes, Path], settings_overrides: dict[str, Any]
) -> Settings:
    return Settings(
        redis_url=redis_url,
        port=0,
        demo_agents=0,
        data_dir=tmp_path / "data",
        admin_key=ADMIN_KEY,
        jwt_algorithms=["HS256", "RS256"],
        jwt_public_key=rsa_pair[1],
        jwt_audience=AUDIENCE,
        cors_origins=["https://dash.example"],
        **{**FAST, "rate_control": "5/1m", **settings_overrides},
    )


@pytest.fixture
async def second(settings: Settings) -> AsyncIterator[Api]:
    """Another server instance on the same Redis and data directory."""
    other = await start_api(settings)
    yield other
    await stop_api(other)


async def make_key(api: Api, *scopes: str) -> str:
    r = await api.post("/api/auth/keys", json={"name": f"test {scopes}", "scopes": list(scopes)})
    assert r.status == 201, r.json
    assert r.json["key"].startswith("ezk_") and r.headers["Cache-Control"] == "no-store"
    key: str = r.json["key"]
    return key


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def hs(secret: bytes, **claims: Any) -> str:
    now = int(time.time())
    base = {
        "sub": "key:x",
        "scope": "read",
        "iat": now,
        "exp": now + 300,
        "iss": "ezdash",
        "aud": AUDIENCE,
    }
    return jwt.encode({**base, **claims}, secret, algorithm="HS256")


def rs(private_pem: bytes, **claims: Any) -> str:
    now = int(time.time())
    base = {
        "sub": "alice@idp",
        "scope": "read control",
        "iat": now,
        "exp": now + 300,
        "aud": AUDIENCE,
    }
    return jwt.encode({**base, **claims}, private_pem, algorithm="RS256")


def unsigned(**claims: Any) -> str:
    now = int(time.time())
    return jwt.encode(
        {
            "sub": "key:x",
            "scope": "admin",
            "exp": now + 300,
            "iss": "ezdash",
            "aud": AUDIENCE,
            **claims,
        },
        key=None,  # type: ignore[arg-type]
        algorithm="none",
    )


async def test_attacks(api: Api, second: Api, fleet: Fleet, rsa_pair: tuple[bytes, Path]) -> None:
    private_pem, public_path = rsa_pair
    secret = api.services.secrets.jwt_secret
    now = int(time.time())
    read_key = await make_key(api, "read")
    revoked_key = await make_key(api, "read", "control")
    assert (
        await api.fetch(
            "DELETE", "/api/auth/keys/" + (await api.get("/api/auth/keys")).json["items"][0]["id"]
        )
    ).status == 200  # revoke it on instance A
    fleet.start("target")

    async def registered() -> bool:
        return (await api.get("/api/agents/target")).status == 200

    await wait_for(registered, 10)
    no_auth = {"Authorization": ""}
    cases: list[tuple[str, str, str, dict[str, str], int, str]] = [
        ("no credentials", "GET", "/api/agents", {}, 401, "credentials"),
        ("garbage token", "GET", "/api/agents", bearer("not-a-key-or-token"), 401, "unknown"),
        ("garbage JWT", "GET", "/api/agents", bearer("eyJhbGciOi.x.y"), 401, "malformed"),
        ("wrong scheme", "GET", "/api/agents", {"Authorization": "Basic abc"}, 401, "Bearer"),
        (
            "wrong signature",
            "GET",
            "/api/agents",
            bearer(hs(b"not-the-secret" * 3)),
            401,
            "InvalidSignatureError",
        ),
        (
            "expired",
            "GET",
            "/api/agents",
            bearer(hs(secret, exp=now - 120, iat=now - 600)),
            401,
            "expired",
        ),
        (
            "not yet valid",
            "GET",
            "/api/agents",
            bearer(hs(secret, nbf=now + 600)),
            401,
            "not yet valid",
        ),
        (
            "no exp",
            "GET",
            "/api/agents",
            bearer(
                jwt.encode(
                    {"sub": "key:x", "scope": "read", "iss": "ezdash", "aud": AUDIENCE},
                    secret,
                    algorithm="HS256",
                )
            ),
            401,
            "MissingRequiredClaimError",
        ),
        ("alg none", "GET", "/api/agents", bearer(unsigned()), 401, "not accepted"),
        (
            "HS256 signed with the RSA public key",
            "GET",
            "/api/agents",
            bearer(
                jwt.encode(
                    {"sub": "x", "scope": "admin", "exp": now + 300, "aud": AUDIENCE},
                    public_path.read_bytes().decode().replace("\n", "").encode()[:64],
                    algorithm="HS256",
                )
            ),
            401,
            "InvalidSignatureError",
        ),
        (
            "RS256 from another key",
            "GET",
            "/api/agents",
            bearer(
                rs(
                    rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    )
                )
            ),
            401,
            "InvalidSignatureError",
        ),
        (
            "wrong audience",
            "GET",
            "/api/agents",
            bearer(hs(secret, aud="someone-else")),
            401,
            "audience",
        ),
        ("wrong issuer", "GET", "/api/agents", bearer(hs(secret, iss="evil")), 401, "issuer"),
        ("revoked key on instance B", "GET", "/api/agents", bearer(revoked_key), 401, "revoked"),
        (
            "read key restarts an agent",
            "POST",
            "/api/agents/target/restart",
            bearer(read_key),
            403,
            "control",
        ),
        (
            "read key stops an agent",
            "DELETE",
            "/api/agents/target",
            bearer(read_key),
            403,
            "control",
        ),
        ("read key creates a task", "POST", "/api/tasks", bearer(read_key), 403, "write"),
        ("read key creates a key", "POST", "/api/auth/keys", bearer(read_key), 403, "admin"),
        ("read key reads the audit", "GET", "/api/audit", bearer(read_key), 403, "admin"),
        ("external token lacks write", "POST", "/api/tasks", bearer(rs(private_pem)), 403, "write"),
        (
            "token in the query string",
            "GET",
            f"/api/agents?access_token={hs(secret)}",
            no_auth,
            401,
            "query string",
        ),
        (
            "key in the query string",
            "GET",
            f"/api/agents?access_token={read_key}",
            no_auth,
            401,
            "query string",
        ),
    ]
    for name, method, path, headers, status, needle in cases:
        hdrs = {**headers}
        target = second if "instance B" in name else api
        if not hdrs.get("Authorization", "x"):
            hdrs = {}
            target.default_headers = {}
        elif "Authorization" not in hdrs:
            target.default_headers = {}
        kwargs: dict[str, Any] = {"headers": hdrs}
        if method in ("POST", "PUT"):
            kwargs["json"] = {"type": "x"} if "task" in path else {"name": "n", "scopes": ["read"]}
            if "restart" in path:
                kwargs = {"headers": hdrs}
        r = await target.fetch(method, path, **kwargs)
        target.default_headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        assert r.status == status, (name, r.status, r.json)
        assert r.headers["Content-Type"] == "application/problem+json", name
        assert r.json["status"] == status and needle in r.json["detail"], (name, r.json)
        if status == 401:
            assert r.headers["WWW-Authenticate"].startswith("Bearer"), name
        assert "Traceback" not in r.body.decode()

    # and the legitimate ways in work
    assert (await api.get("/api/agents", headers=bearer(read_key))).status == 200
    assert (await api.get("/api/agents", headers={"X-API-Key": read_key})).status == 200
    ext = await api.post("/api/agents/target/restart?dry_run=true", headers=bearer(rs(private_pem)))
    assert ext.status == 200, ext.json
    tok = await api.post("/api/auth/token", headers=bearer(read_key))
    assert tok.status == 200 and tok.json["token_type"] == "Bearer"
    assert tok.json["expires_in"] == 900 and tok.headers["Cache-Control"] == "no-store"
    via_jwt = await second.get("/api/agents", headers=bearer(tok.json["access_token"]))
    assert via_jwt.status == 200
    assert (
        await api.post("/api/auth/token", headers=bearer(tok.json["access_token"]))
    ).status == 400
    # health and the OpenAPI document are open
    for path in ("/api/health", "/api/openapi.json", "/api/ready"):
        assert (await api.get(path, headers={"Authorization": ""})).status == 200


async def test_token_of_revoked_key_is_refused_everywhere(api: Api, second: Api) -> None:
    key = await make_key(api, "read")
    token = (await api.post("/api/auth/token", headers=bearer(key))).json["access_token"]
    assert (await second.get("/api/tasks", headers=bearer(token))).status == 200
    kid = next(
        k["id"]
        for k in (await api.get("/api/auth/keys")).json["items"]
        if k["name"] == "test ('read',)"
    )
    listed = (await api.get("/api/auth/keys")).json["items"]
    assert all("key" not in k and "digest" not in k for k in listed)
    assert (await api.fetch("DELETE", f"/api/auth/keys/{kid}")).status == 200
    for instance in (api, second):
        r = await instance.get("/api/tasks", headers=bearer(token))
        assert r.status == 401 and "revoked" in r.json["detail"]
        assert (await instance.get("/api/tasks", headers=bearer(key))).status == 401
    assert (await api.fetch("DELETE", "/api/auth/keys/key_nope")).status == 404


async def test_rate_limit_burst_across_two_instances(api: Api, second: Api, fleet: Fleet) -> None:
    """rate_control is 5/1m: six restarts split over two instances give one 429."""
    fleet.start("target")

    async def registered() -> bool:
        return (await api.get("/api/agents/target")).status == 200

    await wait_for(registered, 10)
    results = await asyncio.gather(
        *(
            (api if i % 2 else second).post("/api/agents/target/restart?dry_run=true")
            for i in range(6)
        )
    )
    statuses = sorted(r.status for r in results)
    assert statuses == [200] * 5 + [429]
    limited = next(r for r in results if r.status == 429)
    assert limited.headers["Content-Type"] == "application/problem+json"
    retry = int(limited.headers["Retry-After"])
    assert 1 <= retry <= 12  # one slot frees every 60/5 = 12 s
    assert limited.headers["RateLimit-Policy"] == '"control";q=5;w=60'
    assert limited.headers["RateLimit"].startswith('"control";r=0;t=')
    ok = next(r for r in results if r.status == 200)
    assert ok.headers["RateLimit-Policy"] == '"control";q=5;w=60'
    # reads have their own budget and are unaffected
    read = await api.get("/api/agents")
    assert read.status == 200 and read.headers["RateLimit-Policy"].startswith('"read";')
    audit = (await api.get("/api/audit?result=denied")).json["items"]
    assert any(e["status"] == 429 and e["action"] == "agents.restart" for e in audit)


@pytest.mark.parametrize("settings_overrides", [{"rate_public": "3/1m"}])
async def test_unauthenticated_calls_limited_per_ip(api: Api) -> None:
    api.default_headers = {}
    statuses = [(await api.get("/api/health")).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


async def test_cors(api: Api) -> None:
    pre = await api.fetch(
        "OPTIONS",
        "/api/tasks",
        headers={
            "Origin": "https://dash.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
            "Authorization": "",
        },
    )
    assert pre.status == 204
    assert pre.headers["Access-Control-Allow-Origin"] == "https://dash.example"
    assert pre.headers["Access-Control-Allow-Credentials"] == "true"
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in pre.headers["Access-Control-Allow-Headers"]
    assert "Origin" in pre.headers["Vary"]
    bad = await api.fetch(
        "OPTIONS",
        "/api/tasks",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert bad.status == 403 and "Access-Control-Allow-Origin" not in bad.headers
    simple = await api.get("/api/agents", headers={"Origin": "https://dash.example"})
    assert simple.headers["Access-Control-Allow-Origin"] == "https://dash.example"
    assert "RateLimit" in simple.headers["Access-Control-Expose-Headers"]
    denied = await api.get(
        "/api/agents", headers={"Origin": "https://dash.example", "Authorization": ""}
    )
    assert denied.status == 401  # CORS headers survive an error, so the browser can read it
    assert denied.headers["Access-Control-Allow-Origin"] == "https://dash.example"
    other = await api.get("/api/agents", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


async def test_audit_of_control_actions_and_denials(api: Api, fleet: Fleet) -> None:
    fleet.start("target")

    async def registered() -> bool:
        return (await api.get("/api/agents/target")).status == 200

    await wait_for(registered, 10)
    read_key = await make_key(api, "read")
    cmd = (await api.post("/api/agents/target/restart")).json["command"]
    await api.fetch("DELETE", "/api/agents/target?force=true")
    await api.post("/api/agents/target/restart", headers=bearer(read_key))
    await api.get("/api/agents", headers={"Authorization": "Bearer wrong"})
    await api.post("/api/tasks", json={"type": "x"})

    async def entries() -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = (await api.get("/api/audit?limit=500")).json["items"]
        return items if len(items) >= 6 else None

    items = await wait_for(entries, 10)
    by = {(e["action"], e["status"]) for e in items}
    assert ("agents.restart", 202) in by and ("agents.stop", 202) in by
    assert ("agents.restart", 403) in by and ("tasks.create", 201) in by
    assert ("auth.keys.create", 201) in by
    assert any(e["status"] == 401 and e["action"] == "GET /api/agents" for e in items)
    restart = next(e for e in items if e["action"] == "agents.restart" and e["status"] == 202)
    assert restart["principal"] == "key:key_admin_env" and restart["target"] == "target"
    assert restart["client"] == "127.0.0.1" and cmd["id"] in restart["detail"]
    denied = next(e for e in items if e["status"] == 403)
    assert denied["result"] == "denied" and denied["principal"].startswith("key:")
    only = (await api.get("/api/audit?result=denied")).json["items"]
    assert only and all(e["result"] == "denied" for e in only)
    page = (await api.get("/api/audit?limit=2")).json
    rest = (await api.get(f"/api/audit?limit=500&cursor={page['next_cursor']}")).json["items"]
    assert [e["id"] for e in page["items"] + rest][: len(items)] == [e["id"] for e in items]
    assert (await api.get("/api/audit?cursor=nope")).status == 404
    assert (await api.get("/api/audit?cursor=no%20pe")).status == 400
    keys = await api.get("/api/auth/keys")
    assert read_key not in keys.body.decode()


async def test_secrets_never_logged(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="tornado.access")
    token = hs(api.services.secrets.jwt_secret)
    await api.get(f"/api/agents?access_token={token}", headers={"Authorization": ""})
    key = await make_key(api, "read")
    await api.get("/api/agents", headers=bearer(key))
    text = caplog.text
    assert token not in text and key not in text and ADMIN_KEY not in text
    assert "access_token=[redacted]" in text


async def test_key_validation(api: Api) -> None:
    for body, field in (
        ({"name": "x", "scopes": ["root"]}, "scopes.0"),
        ({"name": "", "scopes": ["read"]}, "name"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x"}, "scopes"),
    ):
        r = await api.post("/api/auth/keys", json=body)
        assert r.status == 422 and field in [e["field"] for e in r.json["errors"]], r.json


async def test_keys_cli(api: Api, settings: Settings) -> None:
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url or "",
        "EZ_DATA_DIR": str(settings.data_dir),
    }

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ezdash.cli",
            "keys",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        return proc.returncode or 0, out.decode(), err.decode()

    code, out, _ = await cli("create", "--name", "ops", "--scopes", "read,control")
    assert code == 0
    key = out.split("key (shown once): ")[1].strip()
    kid = out.split()[0]
    r = await api.get("/api/agents", headers=bearer(key))
    assert r.status == 200
    code, out, _ = await cli("list")
    assert code == 0 and kid in out and key not in out and "active" in out
    assert (await cli("create", "--name", "x", "--scopes", "root"))[0] == 2
    assert (await cli("revoke", "key_missing"))[0] == 1
    code, out, _ = await cli("revoke", kid)
    assert code == 0 and "revoked" in out
    assert (await api.get("/api/agents", headers=bearer(key))).status == 401


async def test_speculative_reads_never_leak(api: Api, second: Api) -> None:
    """GETs with a recently accepted key run while the key is re-checked; a key revoked
    meanwhile still gets 401, before any 404 or data, and scopes still apply."""
    key = await make_key(api, "read")
    assert (await api.get("/api/agents", headers=bearer(key))).status == 200  # remembered
    assert api.services.recent_keys.seen(digest(api.services.secrets.key_secret, key))
    assert (await api.get("/api/audit", headers=bearer(key))).status == 403
    kid = next(
        k["id"]
        for k in (await api.get("/api/auth/keys")).json["items"]
        if k["name"] == "test ('read',)"
    )
    assert (await second.fetch("DELETE", f"/api/auth/keys/{kid}")).status == 200
    for path in ("/api/agents", "/api/agents/nobody", "/api/tasks?limit=0"):
        r = await api.get(path, headers=bearer(key))
        assert r.status == 401, (path, r.json)
        assert "items" not in r.json
