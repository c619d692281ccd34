"""The module floors of the house style: lower floors never import higher ones, and no
modules import each other in a circle (type-checking imports included)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "proxy"

# cli -> app -> forward -> tee/api -> access/store -> tokens/pricing/plan -> sse/usage/tags
FLOORS = {
    "proxy.cli": 7,
    "proxy.commands": 7,
    "proxy.app": 6,
    "proxy.forward": 5,
    "proxy.tee": 4,
    "proxy.api": 4,
    "proxy.jobs": 4,
    "proxy.access": 3,
    "proxy.store": 3,
    "proxy.digest": 3,
    "proxy.anomalies": 3,
    "proxy.tokens": 2,
    "proxy.tokenization": 2,
    "proxy.pricing": 2,
    "proxy.plan": 2,
    "proxy.spend": 2,
    "proxy.sse": 1,
    "proxy.usage": 1,
    "proxy.tags": 1,
    "proxy.signing": 1,
    "proxy.webhooks": 1,
    "proxy.periodic": 1,
}


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts).removesuffix(".__init__")] = path
    return names


MODULES = module_names()


def imports(path: Path) -> Iterator[str]:
    """The proxy modules ``path`` imports (``from proxy.x import y`` names ``proxy.x.y`` when
    that is a module)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                yield name if name in MODULES else node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def graph() -> dict[str, set[str]]:
    return {
        name: {t for t in imports(path) if t in MODULES and t != name}
        for name, path in MODULES.items()
    }


def floor(module: str) -> int | None:
    found = None
    for prefix, number in FLOORS.items():
        if module == prefix or module.startswith(prefix + "."):
            found = number
    return found


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_module_imports_a_higher_floor() -> None:
    upward = [
        f"{module} (floor {floor(module)}) imports {target} (floor {floor(target)})"
        for module, targets in graph().items()
        for target in sorted(targets)
        if floor(module) is not None and floor(target) is not None and floor(target) > floor(module)  # type: ignore[operator]
    ]
    assert upward == []


def test_no_modules_import_each_other_in_a_circle() -> None:
    assert circles(graph()) == []


@pytest.mark.parametrize(
    ("edges", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ],
)
def test_circles_finds_what_it_should(
    edges: dict[str, set[str]], expected: list[list[str]]
) -> None:
    assert circles(edges) == expected
