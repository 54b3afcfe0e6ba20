"""The layering, read from the source: the domain knows no transport, pynvml stays in one
module, and modules stay small. Imports are found with `ast`, wherever they sit in a file."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("accounting", "api", "workers")
TRANSPORT = {"fastapi", "starlette", "celery", "kombu", "uvicorn", "api", "workers"}
NVML_MODULE = Path("accounting/gpu/nvml.py")
MAX_LINES = 400


def python_files(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def _absolute(module: str | None, level: int, importer: str) -> str:
    """`from ..x import y` inside package a.b.c → 'a.x'."""
    if not level:
        return module or ""
    base = importer.split(".")[: -level]
    return ".".join(base + ([module] if module else []))


def _callee(call: ast.Call) -> str | None:
    return getattr(call.func, "attr", getattr(call.func, "id", None))


def imported_modules(source: str, importer: str) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every import in the source, at any depth, dynamic ones included."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, importer)
            yield node.lineno, base
            for alias in node.names:  # `from . import api` names a module too
                yield node.lineno, f"{base}.{alias.name}" if base else alias.name
        elif isinstance(node, ast.Call) and _callee(node) in {"import_module", "__import__"}:
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield node.lineno, first.value


def imports_of(path: Path) -> Iterator[tuple[int, str]]:
    # a.b.__init__ for a package, so that level 1 resolves to the package itself
    importer = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    yield from imported_modules(path.read_text(encoding="utf-8"), importer)


def offenders(paths: list[Path], roots: set[str]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in paths
        for line, name in imports_of(path)
        if name.split(".")[0] in roots
    ]


def test_the_import_finder_sees_nested_relative_and_dynamic_imports():
    source = (
        "import os\n"
        "def f():\n    from fastapi import FastAPI\n"
        "class C:\n    def g(self):\n        import celery.app\n"
        "from ..api import deps\n"
        "importlib.import_module('uvicorn')\n"
    )
    found = {name for _, name in imported_modules(source, "accounting.ledger.service")}
    assert {"os", "fastapi", "celery.app", "accounting.api", "uvicorn"} <= found
    relative = [name for _, name in imported_modules("from . import api", "pkg.mod")]
    assert relative == ["pkg", "pkg.api"]
    assert offenders([ROOT / "api" / "main.py"], {"fastapi"}), "the check must be able to fail"


def test_the_domain_imports_no_web_or_task_code():
    domain = python_files("accounting")
    assert len(domain) > 10
    assert offenders(domain, TRANSPORT) == []


def test_only_the_nvml_backend_imports_pynvml():
    others = [p for p in python_files(*PACKAGES) if p != ROOT / NVML_MODULE]
    assert offenders(others, {"pynvml"}) == []
    assert offenders([ROOT / NVML_MODULE], {"pynvml"}), f"{NVML_MODULE} no longer imports pynvml"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_is_under_the_line_limit(package):
    files = python_files(package)
    assert files
    too_long = {
        str(path.relative_to(ROOT)): n
        for path in files
        if (n := len(path.read_text(encoding="utf-8").splitlines())) >= MAX_LINES
    }
    assert too_long == {}, f"modules of {MAX_LINES} lines or more: {too_long}"
