"""The import graph of the product code: one-way dependencies in the order docs/ARCHITECTURE.md draws, no circles.

Read from the source with `ast`, not by importing it, `if TYPE_CHECKING:` blocks aside (only the type checker runs
them). The direction rules count every import, at module level or inside a function: a lazy import is still a
dependency. The circle rule counts the imports that run when a module is imported (module level, class bodies): a
function's import of its own package to look a name up late (gateway.limits.read) is no circle at import time.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The apps, lowest first: a module may import its own app and the apps before it, never one after it. The same order
# as docs/ARCHITECTURE.md ("The order of the apps").
APP_ORDER = ["accounts", "routerpools", "billing", "apikeys", "usage", "responsestore", "gateway", "portal"]

# Small infrastructure modules that import no app: anything may import them, below the lowest app.
LEAVES = {
    "portal_project.bulk",
    "portal_project.env",
    "portal_project.patches",
    "portal_project.proxies",
    "portal_project.redact",
    "portal_project.security",
}
# Named exceptions to the direction rules, each with its reason.
UPWARD_ALLOWED = {
    # The list of patched library internals runs every patch's shape check, the server layer's too; that check is
    # twisted_tuning's own (it knows what it overrides) and is imported only when the checks run (tests/test_patches.py).
    ("portal_project.patches", "portal_project.twisted_tuning"),
}
# The rest of portal_project (settings, urls, asgi, the server tuning, the dev server) wires the apps together: on
# top of them all, and nothing imports it.
PROJECT = "portal_project"
# Top-level packages that are not product code, or stand alone and import none of it (the router simulator, the
# row-level security app): ranked with the leaves; an import of product code from them fails below.
NOT_PRODUCT = {"tests", "bench", "docs", "deploy", "static", "templates", "artifacts"}
STAND_ALONE = {"simulator", "dbsecurity"}  # dbsecurity: row-level security at migrate time; imports only Django

# What belongs to the portal, by module name: a domain app holding one of these is holding a piece of the portal.
# The domain apps are the ones below the gateway; the gateway is the public API's own web surface (its /v1 views).
PORTAL_PIECES = {"views", "urls", "forms", "serializers", "consumers", "adapter", "templatetags"}
DOMAIN_APPS = APP_ORDER[: APP_ORDER.index("gateway")]


def product_packages() -> list[str]:
    return sorted(p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name not in NOT_PRODUCT)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def product_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in product_packages():
        for path in (ROOT / package).rglob("*.py"):
            modules[module_name(path)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST, *, lazy: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _import_nodes_of(other, lazy=lazy)
            continue
        if not lazy and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        yield from _import_nodes_of(child, lazy=lazy)


def _import_nodes_of(node: ast.AST, *, lazy: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    yield from _import_nodes(node, lazy=lazy)


def imports_of(name: str, path: Path, modules: dict[str, Path], *, lazy: bool = True) -> set[str]:
    """The product modules `name` imports (with `lazy`, those inside functions too): `from a.b import c` is a.b.c
    when that is a module, else a.b."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), filename=str(path)), lazy=lazy):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a name inside a.b: the module a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(*, lazy: bool = True) -> dict[str, set[str]]:
    modules = product_modules()
    return {name: imports_of(name, path, modules, lazy=lazy) for name, path in modules.items()}


def rank(module: str) -> int:
    """The module's place in the order: leaves 0, the apps 1..n, the project's wiring n+1."""
    if module in LEAVES or module.split(".")[0] in STAND_ALONE:
        return 0
    top = module.split(".")[0]
    if top == PROJECT:
        return len(APP_ORDER) + 1
    return APP_ORDER.index(top) + 1


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
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


def test_every_product_package_has_a_place_in_the_order() -> None:
    unplaced = [p for p in product_packages() if p not in APP_ORDER and p != PROJECT and p not in STAND_ALONE]
    assert unplaced == [], "add the new app to APP_ORDER here and to docs/ARCHITECTURE.md"


def test_the_order_here_is_the_order_docs_architecture_draws() -> None:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    assert " ← ".join(APP_ORDER) in text


def test_no_import_circle_between_product_modules() -> None:
    assert circles(import_graph(lazy=False)) == []


def test_no_app_imports_an_app_above_it() -> None:
    graph = import_graph()
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if module.split(".")[0] != target.split(".")[0] and rank(target) > rank(module) and (module, target) not in UPWARD_ALLOWED
    )
    assert upward == []


def test_leaves_import_no_app() -> None:
    graph = import_graph()
    leaf_imports = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if rank(module) == 0
        for target in targets
        if rank(target) != 0 and (module, target) not in UPWARD_ALLOWED
    )
    assert leaf_imports == []


def test_portal_pieces_live_in_the_portal() -> None:
    misplaced = sorted(
        name for name in product_modules() if name.split(".")[0] in DOMAIN_APPS and PORTAL_PIECES & set(name.split(".")[1:])
    )
    assert misplaced == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from accounts.models import User", {"accounts.models"}),
        ("from accounts import models", {"accounts.models"}),
        ("import billing.services", {"billing.services"}),
        ("def f():\n    from usage.live import publish_usage_events", {"usage.live"}),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gateway.errors import GatewayError", set()),
        ("from . import selectors", {"usage.selectors"}),
    ],
)
def test_the_reader_sees_each_kind_of_import(tmp_path: Path, source: str, expected: set[str]) -> None:
    module = tmp_path / "probe.py"
    module.write_text(source)
    modules = {"accounts.models": module, "billing.services": module, "usage.live": module, "usage.selectors": module}
    modules.update({"accounts": module, "billing": module, "usage": module, "gateway.errors": module})
    assert imports_of("usage.probe", module, modules) - {"usage"} == expected


def test_the_circle_rule_reads_only_the_imports_that_run_at_import_time(tmp_path: Path) -> None:
    module = tmp_path / "probe.py"
    module.write_text("from usage.live import event_payload\n\ndef f():\n    from billing import services\n")
    modules = {"usage.live": module, "billing.services": module}
    assert imports_of("usage.probe", module, modules, lazy=False) == {"usage.live"}
    assert imports_of("usage.probe", module, modules) == {"usage.live", "billing.services"}


def test_test_helpers_live_in_tests_support_not_in_conftest() -> None:
    """Test modules import helpers from tests/support/; a conftest.py holds fixtures only, imported by nobody."""
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and (
                    node.module.endswith("conftest") or (node.module == "tests" and any(a.name == "conftest" for a in node.names))
                )
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
