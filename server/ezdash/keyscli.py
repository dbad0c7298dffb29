"""``ezdash keys``: API key administration from a shell, straight against Redis."""

from __future__ import annotations

import argparse
import sys

from .cliutil import redis_for
from .keys import Keys
from .security.apikeys import SCOPES, AgentBinding, KeyStore
from .security.secrets import load_secrets
from .settings import Settings
from .store.connect import make_redis


async def run_keys(settings: Settings, args: argparse.Namespace) -> int:
    if args.keys_command == "create":
        scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
        bad = [s for s in scopes if s not in SCOPES]
        if not scopes or bad:
            print(f"ezdash keys: scopes must be some of {', '.join(SCOPES)}", file=sys.stderr)
            return 2
        binding: AgentBinding | None = None
        if "agent" in scopes or args.agent_ids or args.queues:
            if scopes != ["agent"] or not args.agent_ids or not args.queues:
                print(
                    "ezdash keys: an agent key is --scopes agent with --agent-ids and --queues",
                    file=sys.stderr,
                )
                return 2
            try:
                queues = [q.strip() for q in args.queues.split(",") if q.strip()]
                binding = AgentBinding.parse(args.agent_ids, queues)
            except ValueError as e:
                print(f"ezdash keys: {e}", file=sys.stderr)
                return 2
    async with redis_for(settings) as url:
        client = make_redis(url, 4)
        try:
            store = KeyStore(client, Keys(settings.redis_prefix), load_secrets(settings).key_secret)
            if args.keys_command == "create":
                key, doc = await store.create(args.name, scopes, created_by="cli", agent=binding)
                bound = (
                    f"  agents={binding.ids} queues={','.join(binding.queues)}" if binding else ""
                )
                print(f"{doc['id']}  {doc['name']}  scopes={','.join(doc['scopes'])}{bound}")
                print(f"key (shown once): {key}")
            elif args.keys_command == "list":
                for doc in await store.all():
                    state = f"revoked {doc['revoked_at']}" if doc["revoked_at"] else "active"
                    print(
                        f"{doc['id']}  {doc['name']!r}  scopes={','.join(doc['scopes'])}  "
                        f"created {doc['created_at']}  last used {doc['last_used_at']}  "
                        f"{state}"
                    )
            else:
                gone = await store.revoke(args.id)
                if gone is None:
                    print(f"ezdash keys: no key {args.id!r}", file=sys.stderr)
                    return 1
                print(f"revoked {gone['id']} at {gone['revoked_at']}")
        finally:
            await client.aclose()
    return 0
