"""The docs' error table is generated from the error classes, and the classes document every code the API sends.

A code raised somewhere in gateway/ that no class documents, or an error class defined outside gateway/errors.py,
fails here: the table cannot drift from the code again (it missed two 503 codes when it was written by hand).
"""

from __future__ import annotations

import ast
import html
import re
from pathlib import Path

import pytest

from gateway import errors
from gateway.errors import GatewayError, catalog
from tests.support.portal import ensure_site_and_plans, make_team, portal_settings  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
PRODUCT_DIRS = ("accounts", "apikeys", "billing", "gateway", "portal_project", "responsestore", "routerpools", "usage")


def _error_classes() -> dict[str, type[GatewayError]]:
    found: dict[str, type[GatewayError]] = {}
    pending = [GatewayError]
    while pending:
        for sub in pending.pop().__subclasses__():
            found[sub.__name__] = sub
            pending.append(sub)
    return found


def _product_modules() -> list[tuple[Path, ast.Module]]:
    modules = []
    for top in PRODUCT_DIRS:
        for path in sorted((ROOT / top).rglob("*.py")):
            if "migrations" not in path.parts:
                modules.append((path, ast.parse(path.read_text(), filename=str(path))))
    return modules


def _documented(cls: type[GatewayError]) -> set[str]:
    return ({cls.openai_code} if cls.openai_code and cls.doc else set()) | set(cls.codes)


def test_every_error_class_lives_in_errors_py_and_is_documented() -> None:
    classes = _error_classes()
    assert {"UpstreamUnavailable", "UsageBacklogFull", "LimitsUnavailable", "AuthUnavailable"} <= set(classes)
    for path, module in _product_modules():
        for node in ast.walk(module):
            if isinstance(node, ast.ClassDef):
                bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                if bases & (set(classes) | {"GatewayError"}):
                    assert path == ROOT / "gateway" / "errors.py", f"{node.name} ({path}) belongs in gateway/errors.py"
    for name, cls in classes.items():
        assert cls.__module__ == errors.__name__, name
        assert cls.doc or cls.codes, f"{name} says nothing for the docs page"


def test_every_code_a_raise_site_passes_is_documented_by_its_class() -> None:
    classes = _error_classes()
    seen = 0
    for path, module in _product_modules():
        if path.parts[len(ROOT.parts)] != "gateway":
            continue  # the API's errors; the portal's playground has two codes of its own
        for node in ast.walk(module):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in classes):
                continue
            for keyword in node.keywords:
                if keyword.arg == "code" and isinstance(keyword.value, ast.Constant):
                    seen += 1
                    cls = classes[node.func.id]
                    assert keyword.value.value in _documented(cls), (
                        f"{path.relative_to(ROOT)}:{node.lineno} raises {cls.__name__} with code "
                        f"{keyword.value.value!r}, which {cls.__name__}.codes does not document"
                    )
    assert seen >= 8  # the scan found the raise sites (account_suspended, the field codes, previous_response_not_found…)


def test_the_catalog_holds_every_class_code_once() -> None:
    rows = catalog()
    # A code means one thing at one status. insufficient_quota is the one code at two: OpenAI's code for "no
    # credit", which the SDKs and clients key on, is sent for a plan's allowance used up (429) and for a prepaid
    # balance that cannot pay (402).
    codes = [(row.status, row.code) for row in rows if row.code != "—"]
    assert len(codes) == len(set(codes)), "a code documented twice"
    assert sorted(s for s, code in codes if code == "insufficient_quota") == [402, 429]
    assert len({code for _, code in codes}) == len(codes) - 1
    for cls in _error_classes().values():
        for code in _documented(cls):
            (row,) = [r for r in rows if r.code == code and r.status == cls.status]
            assert (row.status, row.openai_type) == (cls.status, cls.openai_type)
    statuses = [row.status for row in rows]
    assert statuses == sorted(statuses)
    (upstream,) = [r for r in rows if r.code == "upstream_unavailable"]
    assert upstream.anthropic_type == "overloaded_error (529)"


@pytest.mark.django_db
def test_the_docs_page_shows_the_generated_table(portal_settings) -> None:  # noqa: ANN001, F811
    from routerpools.models import ModelAlias, RouterPool

    ensure_site_and_plans()
    ModelAlias.objects.create(alias="oss-20b", pool=RouterPool.objects.create(name="pool-a"))
    team = make_team()
    page = team.client(team.member).get("/portal/docs").content.decode()
    table = page[page.index('id="error-codes"') : page.index("</table>", page.index('id="error-codes"'))]
    shown = [
        html.unescape(code) for code in re.findall(r'data-label="OpenAI code"><code class="mono small">([^<]*)</code>', table)
    ]
    assert shown == [row.code for row in catalog()]
    for row in catalog():
        assert html.escape(row.meaning, quote=False) in table or html.escape(row.meaning) in table
