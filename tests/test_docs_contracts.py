"""The contract pages in docs/ agree with the code they summarize (no database, no server)."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.errors import GatewayError

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def error_classes() -> list[type[GatewayError]]:
    found: list[type[GatewayError]] = []
    todo = [GatewayError]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.append(sub)
            todo.append(sub)
    return found


def surfaces_error_rows() -> dict[str, list[str]]:
    """The rows of docs/surfaces.md's error table, by class name: [status, openai, anthropic, envelope]."""
    text = (DOCS / "surfaces.md").read_text()
    section = text.split("## Errors", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        found = re.match(r"\| `(\w+)`[^|]*\|(.*)\|\s*$", line)
        if found:
            rows[found.group(1)] = [cell.strip() for cell in found.group(2).split("|")]
    return rows


def test_surfaces_error_table_lists_every_error_class_with_its_status_types_and_codes() -> None:
    rows = surfaces_error_rows()
    classes = {cls.__name__: cls for cls in error_classes()}
    assert sorted(rows) == sorted(classes)
    for name, cls in classes.items():
        status, openai, anthropic, envelope = rows[name]
        assert status == str(cls.status), name
        assert openai.startswith(f"`{cls.openai_type}` / "), name
        assert (f"`{cls.openai_code}`" in openai) if cls.openai_code else ("null" in openai), name
        assert anthropic.replace("*", "") == f"{cls.anthropic_status or cls.status} `{cls.anthropic_type}`", name
        assert envelope == f"`{cls.envelope_code}`", name


def test_docs_and_code_cite_no_file_outside_the_repository() -> None:
    outside = re.compile(r"shared/spec|\b(ROUTER|SURFACES|CONFIG)\.md\b")
    offenders = [
        str(path.relative_to(ROOT))
        for pattern in ("*.md", "*.py", "*.html", "*.js", "*.yml", "*.toml", "Makefile", "Dockerfile")
        for path in ROOT.rglob(pattern)
        if not {".venv", ".git", "node_modules"} & set(path.relative_to(ROOT).parts)
        and path.name != Path(__file__).name
        and outside.search(path.read_text(errors="replace"))
    ]
    assert offenders == []
