"""The metric catalog is the one place a dimension is named: what derives from it
(stored dimensions, query slices, the API's parameters and OpenAPI enums, the
analyst page's widgets) says exactly what the catalog says."""

from __future__ import annotations

import itertools

import pytest

from ezdash.analyst import page
from ezdash.api.openapi import openapi_document
from ezdash.metrics import catalog
from ezdash.metrics.catalog import QueryError, labels, slice_for, supported


def test_labels_follow_the_catalog_and_refuse_an_unknown_dimension() -> None:
    values = labels(agent="a1", provider="openai", queue="q")
    assert dict(zip(catalog.NAMES, values, strict=True)) == {
        "agent": "a1",
        "model": "",
        "provider": "openai",
        "kind": "",
        "queue": "q",
    }
    with pytest.raises(ValueError, match="colour"):
        labels(agent="a1", colour="red")
    # unknown parts add to no stored dimension that needs them
    assert dict(catalog.groups(values)) == {
        "all": catalog.ALL,
        "agent": "a1",
        "provider": "openai",
        "queue": "q",
    }


def test_every_slice_the_catalog_keeps_is_answered_and_nothing_else() -> None:
    pairs = {frozenset(s.parts) for s in catalog.COMBINED}
    names = catalog.NAMES
    for a, b in itertools.permutations(names, 2):
        kept = frozenset((a, b)) in pairs
        assert supported(a, {b: "x"}) is kept, (a, b)
        assert supported("none", {a: "x", b: "y"}) is kept, (a, b)
        if not kept:
            with pytest.raises(QueryError) as e:
                slice_for(a, {b: "x"})
            assert e.value.field == b
    for name in names:
        assert slice_for(name, {}).groups is None
        assert slice_for(name, {name: "v"}).groups == ("v",)
        assert slice_for("none", {name: "v"}) == catalog.Slice(name, ("v",), None)
    # the stored group of a pair is its parts in the catalog's order
    agent_model = slice_for("none", {"model": "m", "agent": "a"})
    assert agent_model.dim == "am" and agent_model.groups == ("a|m",)
    by_kind = slice_for("kind", {"agent": "a"})
    assert (by_kind.dim, by_kind.label_part, by_kind.prefix) == ("ka", 0, "a")


def _accepted(op: dict[str, object]) -> tuple[set[str], set[str]]:
    """The query names an operation documents and the group_by values it allows
    (a slice parameter is an object whose ``anyOf`` lists the kept combinations)."""
    names: set[str] = set()
    group_by: set[str] = set()
    for p in op.get("parameters", []):  # type: ignore[attr-defined]
        names.add(p["name"])
        for alt in p["schema"].get("anyOf", []):
            props = alt.get("properties", {})
            names |= set(props)
            if "group_by" in props:
                group_by.add(props["group_by"]["const"])
    return names, group_by


def test_the_openapi_document_and_the_page_offer_every_dimension() -> None:
    doc = openapi_document()
    grouped = filtered = 0
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            names, group_by = _accepted(op)
            if group_by:
                grouped += 1
                assert group_by == {"none", *catalog.NAMES}, (method, path)
            if "model" in names:
                filtered += 1
                assert set(catalog.NAMES) <= names, (method, path)
    assert grouped >= 5 and filtered >= 8, (grouped, filtered)
    assert ("none", *catalog.NAMES) == page.GROUPS
    assert page.FILTER_DIMS == catalog.NAMES
