"""Import contracts between the project's packages (issue 11), read from the source.

- ``analytics`` imports nothing from ``ezdash``: the core is pure and standalone.
- ``ezdash.api`` (the HTTP layer) is imported only by what starts a server.
- No cycles between the packages of ``ezdash``.

``KNOWN`` lists the imports that still break a contract, each with what removes it.
It may only shrink: a new violation fails, and so does a listed one that is gone
(then delete its line)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from .conftest import REPO

SERVER = REPO / "server"
ANALYTICS = REPO / "analytics"
API_USERS = {"ezdash.serve", "ezdash.cli"}
"""What may import the HTTP layer: the processes that run it."""

KNOWN: dict[tuple[str, str], str] = {}


def _module(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path) -> dict[str, set[str]]:
    """Module -> the modules (and imported names) it imports, type-only ones too."""
    found: dict[str, set[str]] = defaultdict(set)
    for path in sorted(root.rglob("*.py")):
        if ".venv" in path.parts:
            continue
        mod = _module(path, root.parent if root.name == "analytics" else root)
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                found[mod].add(target)
                found[mod].update(f"{target}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found[mod].update(a.name for a in node.names)
    return found


def _package(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and _is_package(parts[1])) else ""


def _is_package(name: str) -> bool:
    return (SERVER / "ezdash" / name / "__init__.py").exists()


def violations() -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    for mod, targets in imports(ANALYTICS).items():
        for t in targets:
            if t == "ezdash" or t.startswith("ezdash."):
                out[(mod, "ezdash")] = "analytics imports ezdash"
    server = imports(SERVER)
    for mod, targets in server.items():
        if mod in API_USERS or mod.startswith("ezdash.api"):
            continue
        if any(t == "ezdash.api" or t.startswith("ezdash.api.") for t in targets):
            out[(mod, "ezdash.api")] = "imports the HTTP layer"
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, targets in server.items():
        a = _package(mod)
        for t in targets:
            b = _package(t) if t.startswith("ezdash.") else ""
            if a and b and a != b:
                graph[a].add(b)
    for a in sorted(graph):
        for b in sorted(graph[a]):
            if a in graph.get(b, set()) and a < b:
                out[(a, b)] = "packages import each other"
    return out


def test_import_contracts_hold_but_for_the_known_exceptions() -> None:
    found = violations()
    new = {k: v for k, v in found.items() if k not in KNOWN and k[::-1] not in KNOWN}
    gone = [k for k in KNOWN if k not in found and k[::-1] not in found]
    assert new == {}, "new import-contract violations"
    assert gone == [], "fixed: delete these from KNOWN"


def test_the_scanner_sees_imports() -> None:
    server = imports(SERVER)
    assert "ezdash.api.app" in server["ezdash.serve"] or any(
        t.startswith("ezdash.api") for t in server["ezdash.serve"]
    )
    assert "ezdash.store.blocking" in server["ezdash.store.tail"]  # a relative import
    assert imports(ANALYTICS)["analytics"], "analytics/__init__ imports its modules"
