"""One place for every Redis key name (issue 11): ``ezdash.keys.Keys``.

The Lua scripts build key names again from the hash tag (``k('tasks', 's', old)``)
and ``docs/agent-protocol.md`` lists them for people writing agents in other
languages. These tests tie both to ``Keys``: every key a script builds is one that
``Keys`` makes, and the protocol document's key tables list exactly the keys
``Keys`` makes, no more and no fewer."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from pathlib import Path

from ezdash.keys import Keys, MetricKeys

from .conftest import REPO

LUA = REPO / "server" / "ezdash" / "lua"
PROTOCOL = REPO / "docs" / "agent-protocol.md"
HOLE = "\x00"  # stands for one variable part of a name
SENTINEL_INT = 987_654_321


def _patterns(obj: object) -> Iterator[tuple[str, str]]:
    """(member name, key pattern) for every key an object's members make; each
    argument becomes a hole."""
    for name, member in inspect.getmembers(type(obj)):
        if name.startswith("_") or name == "base":
            continue
        if isinstance(member, property):
            value = getattr(obj, name)
            if isinstance(value, str):
                yield name, value
            continue
        if not callable(member):
            continue
        params = list(inspect.signature(member).parameters.values())[1:]
        args = [SENTINEL_INT if p.annotation in (int, "int") else HOLE for p in params]
        key = getattr(obj, name)(*args)
        if isinstance(key, str):
            yield name, key.replace(str(SENTINEL_INT), HOLE)


def keys_patterns() -> dict[str, str]:
    keys = Keys("ez")
    found = dict(_patterns(keys))
    found.update({f"metrics.{n}": p for n, p in _patterns(MetricKeys(keys.base))})
    return found


def _regex(pattern: str) -> re.Pattern[str]:
    """A Keys pattern as a regex: a hole is one or more characters (ids may hold ':')."""
    return re.compile("".join(".+" if c == HOLE else re.escape(c) for c in pattern) + r"\Z")


def _split_args(text: str) -> list[str]:
    """Top-level comma-separated arguments of a Lua call."""
    args, depth, current = [], 0, ""
    for c in text:
        if c == "," and depth == 0:
            args.append(current.strip())
            current = ""
            continue
        depth += int(c in "({[")
        depth -= int(c in ")}]")
        current += c
    if current.strip():
        args.append(current.strip())
    return args


def lua_key_names() -> Iterator[tuple[str, int, str]]:
    """(script, line, name) for every ``k(...)`` call: literal parts as written, any
    expression a hole (``'p' .. level`` keeps its literal ``p``)."""
    for path in sorted(LUA.glob("*.lua")):
        text = path.read_text()
        for m in re.finditer(r"(?<![\w.:])k\(", text):
            if text[m.start() :].startswith("k(...)"):
                continue  # the definition in _lib.lua
            depth, i = 1, m.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            parts = []
            for arg in _split_args(text[m.end() : i - 1]):
                literal = re.fullmatch(r"'([^']*)'", arg)
                prefixed = re.fullmatch(r"'([^']*)'\s*\.\..*", arg)
                parts.append(
                    literal.group(1)
                    if literal
                    else (prefixed.group(1) + HOLE if prefixed else HOLE)
                )
            line = text.count("\n", 0, m.start()) + 1
            yield path.name, line, "{ez}:" + ":".join(parts)


def test_every_key_a_script_builds_is_one_keys_makes() -> None:
    known = [_regex(p) for p in keys_patterns().values()]
    names = list(lua_key_names())
    assert len(names) > 50  # the scan found the scripts' keys
    unknown = [
        (script, line, name.replace(HOLE, "<x>"))
        for script, line, name in names
        if not any(r.match(name.replace(HOLE, "X")) for r in known)
    ]
    assert unknown == []


def protocol_keys() -> set[str]:
    """Key patterns in the protocol document's tables: `{p}:agent:<agent>:cmd`."""
    found = set()
    for row in PROTOCOL.read_text().splitlines():
        m = re.match(r"\|\s*`(\{p\}:[^`]+)`", row)
        if m:
            found.add(re.sub(r"<[^>]+>", HOLE, m.group(1)).replace("{p}", "{ez}"))
    return found


def _covers(general: str, specific: str) -> bool:
    """Whether every name ``specific`` describes is one ``general`` describes."""
    return bool(_regex(general).match(specific.replace(HOLE, "X")))


def test_the_protocol_document_lists_exactly_the_keys() -> None:
    documented = protocol_keys()
    made = set(keys_patterns().values())
    undocumented = [k for k in made if not any(_covers(k, d) for d in documented)]
    unmade = [d for d in documented if not any(_covers(k, d) for k in made)]
    assert sorted(p.replace(HOLE, "<x>") for p in undocumented) == []
    assert sorted(p.replace(HOLE, "<x>") for p in unmade) == []


def test_the_scan_sees_holes_and_literals(tmp_path: Path) -> None:
    """The scanner itself: what it makes of a few calls."""
    names = {n for _, _, n in lua_key_names()}
    assert "{ez}:tasks:s:" + HOLE in names  # k('tasks', 's', old)
    assert "{ez}:q:" + HOLE + ":p" + HOLE in names  # k('q', queue, 'p' .. prio)
    assert _split_args("'q', math.floor(now / 60000), 'x'") == [
        "'q'",
        "math.floor(now / 60000)",
        "'x'",
    ]
