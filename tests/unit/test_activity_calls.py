"""The workflow calls its activities through the stubs in workflows/calls.py (it may not import the
implementations, which load the drivers). A stub is only as good as its match with the activity the
worker registers: same name (it is in recorded histories), same request type, same result type (the
SDK decodes the result into it). These tests hold that, so a stub cannot drift from its activity."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from temporalio import activity

from activities.catalog import CatalogActivities
from activities.host import HostActivities
from activities.notify import NotifyActivities
from activities.presence import PresenceActivities
from activities.registry import RegistryActivities
from perseus.models import ResolveRequest, StandbyQuery
from workflows import calls

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
#: The classes worker.py builds its activities from.
ACTIVITY_CLASSES = (
    CatalogActivities,
    PresenceActivities,
    RegistryActivities,
    NotifyActivities,
    HostActivities,
)
CALLS = ("execute_activity", "start_activity", "execute_local_activity")


def definition(fn: Callable[..., Any]) -> activity._Definition:
    return activity._Definition.must_from_callable(fn)


def implementations() -> dict[str, activity._Definition]:
    """Every ``@activity.defn`` method of the activity classes, by registered name."""
    found: dict[str, activity._Definition] = {}
    for cls in ACTIVITY_CLASSES:
        for attr in vars(cls).values():
            defn = activity._Definition.from_callable(attr) if callable(attr) else None
            if defn is not None:
                assert defn.name is not None and defn.name not in found, defn.name
                found[defn.name] = defn
    return found


def stubs() -> dict[str, activity._Definition]:
    found: dict[str, activity._Definition] = {}
    for value in vars(calls).values():
        defn = activity._Definition.from_callable(value) if inspect.isfunction(value) else None
        if defn is not None:
            assert defn.name is not None and defn.name not in found, defn.name
            found[defn.name] = defn
    return found


def mismatch(stub: activity._Definition, impl: activity._Definition) -> list[str]:
    """How a stub differs from its implementation (empty: it matches)."""
    problems = []
    if stub.name != impl.name:
        problems.append(f"name {stub.name!r} != {impl.name!r}")
    if stub.arg_types is None or stub.arg_types != impl.arg_types:
        problems.append(f"parameters {stub.arg_types} != {impl.arg_types}")
    if stub.ret_type is None or stub.ret_type != impl.ret_type:
        problems.append(f"result {stub.ret_type} != {impl.ret_type}")
    if stub.is_async != impl.is_async:
        problems.append("async differs")
    return problems


def registered_by_worker() -> set[str]:
    """What worker.py registers: the host class's and the registry's ``all()``, and one method of
    each other class (built here without drivers: their ``__init__`` only stores them)."""
    none = cast(Any, None)
    host = HostActivities(
        hostname="h",
        store=none,
        catalog=none,
        http=none,
        ip_services=[],
        ip_timeout_s=1.0,
        connectors=none,
        keeper=none,
    )
    methods: list[Callable[..., Any]] = [
        *host.all(),
        *RegistryActivities(none, none, notifications=False).all(),
        CatalogActivities(none).resolve_instance,
        PresenceActivities(none).host_polled,
        NotifyActivities(None).notify_event,
    ]
    return {cast(str, definition(m).name) for m in methods}


def test_every_stub_matches_its_registered_implementation() -> None:
    impls = implementations()
    found = stubs()
    assert found, "no stubs found in workflows/calls.py"
    for name, stub in found.items():
        assert name in impls, f"stub {name!r} names no activity the worker has"
        assert not mismatch(stub, impls[name]), f"{name}: {mismatch(stub, impls[name])}"
        # The workflow's step summaries use the function's name: it is the activity's name too.
        assert stub.fn.__name__ == name


def test_every_registered_activity_has_a_stub() -> None:
    """Each activity the worker registers is one the instance workflow calls (it is the only
    workflow): each needs its stub, and each of those registered methods is one of the classes'."""
    registered = registered_by_worker()
    assert registered == set(implementations())
    assert set(stubs()) == registered


def test_a_drifted_stub_is_caught() -> None:
    """The comparison itself: a stub whose request or result type changed does not match."""

    @activity.defn(name="resolve_instance")
    async def wrong_result(req: ResolveRequest) -> str:
        raise NotImplementedError

    @activity.defn(name="resolve_instance")
    async def wrong_request(req: StandbyQuery) -> Any:
        raise NotImplementedError

    impl = implementations()["resolve_instance"]
    assert mismatch(definition(wrong_result), impl) == [f"result {str} != {impl.ret_type}"]
    assert any(p.startswith("parameters") for p in mismatch(definition(wrong_request), impl))


def activity_calls(tree: ast.AST) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in CALLS
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "workflow"
    ]


def test_the_workflow_calls_activities_only_through_the_stubs() -> None:
    """No activity named by a string, no result type passed by hand: the workflow runs what the core
    names through ``STUBS`` (the notifier directly), and the core names every stub."""
    from perseus.core.actions import ACTIVITIES
    from workflows.instance import STUBS

    tree = ast.parse((ROOT / "workflows" / "instance.py").read_text())
    found = activity_calls(tree)
    assert len(found) >= 4
    for call in found:
        where = f"line {call.lineno}"
        assert all(k.arg != "result_type" for k in call.keywords), where
        first = call.args[0]
        direct = (
            isinstance(first, ast.Attribute)
            and isinstance(first.value, ast.Name)
            and first.value.id == "calls"
        )
        via_stubs = (
            isinstance(first, ast.Call) and isinstance(first.func, ast.Name) and first.func.id == "stub"
        )
        assert direct or via_stubs, where
    assert {a.value for a in ACTIVITIES} == set(stubs()), (
        "a stub the core never names, or a name without a stub"
    )
    for name, stub in STUBS.items():
        assert definition(stub).name == name


def test_the_core_knows_each_activity_by_its_stubs_types() -> None:
    """A Call's answer is typed by its ActivityRef: the ref's request and result types must be the
    stub's (and so the implementation's), or the type checker would be told a story."""
    from perseus.core.actions import ACTIVITIES

    found = stubs()
    for ref in ACTIVITIES:
        defn = found[ref.value]
        assert defn.arg_types == [ref.request], ref.value
        assert (defn.ret_type or type(None)) is ref.result, ref.value
