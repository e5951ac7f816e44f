"""No import circles in ``killswitch``: read statically (``ast``), every import counts,
at the top of a module or inside a function, so a cycle cannot hide behind a lazy
import. Also: the engine depends on the core's ports and its own settings, not on the
adapters."""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "killswitch"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``from ... import`` names (relative ones resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


# "module:function" strings: commands imported by name when run (``killswitch.cli``).
_ENTRY_POINT = re.compile(rf"({PACKAGE}(?:\.\w+)*):\w+")


def imported(module: str, path: Path, known: set[str]) -> Iterator[str]:
    """The package's modules ``module`` imports, anywhere in its source: import
    statements at any depth, and modules named in ``"module:function"`` strings."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, is_package, node)
            # ``from pkg import mod`` imports the submodule when there is one.
            names = [f"{source}.{alias.name}" for alias in node.names] + [source]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = _ENTRY_POINT.fullmatch(node.value)
            names = [match.group(1)] if match else []
        else:
            continue
        for name in names:
            target = _known_prefix(name, known)
            if target is not None and target != module:
                yield target


def _known_prefix(name: str, known: set[str]) -> str | None:
    """The longest module of the package that ``name`` is or is inside of."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


@functools.cache
def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: set(imported(name, path, known)) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected group of
    two or more modules (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group: set[str] = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(group, graph) for group in groups]


def _cycle_in(group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path from the group's first module back to itself, within the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for target in sorted(graph[node] & group):
                if target == start:
                    return [*paths[node], start]
                if target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle in {sorted(group)}")


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert graph["killswitch.__main__"] == {"killswitch.cli", "killswitch.exitcodes"}
    cli = graph["killswitch.cli"]
    assert "killswitch.keyfiles" in cli  # inside a function
    assert "killswitch.daemon" in cli  # a command imported by name when run


def test_cycles_are_found_and_named() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_the_engine_imports_neither_the_settings_tree_nor_the_adapters() -> None:
    """The engine depends on the pure core (its ports and errors), its own settings type
    and the asyncio helpers of ``killswitch.tasks`` (its task scope), which import nothing
    of the package; the pydantic settings and the exchange client's errors stay at the
    edge."""
    graph = import_graph()
    assert graph[f"{PACKAGE}.tasks"] == set()
    engine = {name for name in graph if name.startswith(f"{PACKAGE}.engine")}
    allowed = (f"{PACKAGE}.core.", f"{PACKAGE}.engine.", f"{PACKAGE}.engine", f"{PACKAGE}.tasks")
    for name in sorted(engine):
        outside = sorted(t for t in graph[name] if not t.startswith(allowed))
        assert not outside, f"{name} imports {outside}"


TESTS = ROOT.parent / "tests"


def _test_imports(path: Path) -> Iterator[str]:
    """The modules a file under tests/ imports (relative imports as ``.name``)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield "." * node.level + (node.module or "")


def test_tests_share_helpers_through_tests_support_only() -> None:
    """No test module imports from another test module or from a conftest: what tests
    share is in tests/support (fixtures through its pytest plugin)."""
    offending = [
        f"{path.relative_to(TESTS.parent)}: {name}"
        for path in sorted(TESTS.rglob("*.py"))
        for name in _test_imports(path)
        if name.startswith(".")
        or name.split(".")[0] == "conftest"
        or (name.split(".")[0] == "tests" and not name.startswith("tests.support"))
    ]
    assert not offending, offending
