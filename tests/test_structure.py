"""The shape of the code, checked: sizes, one route per run-config key, tests apart from benchmarks
(the core's independence from Flower: test_framework_free.py)."""

from __future__ import annotations

import ast
from dataclasses import fields
from pathlib import Path

import pytest

from msfusion_app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("msfusion", "msfusion_core", "msfusion_app", "server_app", "client_app")
PRODUCT_FILES = sorted(p for pkg in PRODUCT for p in (ROOT / pkg).rglob("*.py"))
MAX_FILE_LINES, MAX_STRATEGY_LINES, MAX_FUNCTION_LINES = 400, 250, 60


def test_no_product_file_is_too_long():
    lengths = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PRODUCT_FILES}
    assert lengths["server_app/strategy.py"] <= MAX_STRATEGY_LINES
    assert {p: n for p, n in lengths.items() if n > MAX_FILE_LINES} == {}


def test_no_product_function_is_too_long():
    long = {}
    for path in PRODUCT_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                long[f"{path.relative_to(ROOT)}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert long == {}


def string_constants(path: Path) -> set[str]:
    """Every string literal of a module but its docstrings (an example in a docstring reads nothing)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings}


@pytest.mark.parametrize("key", [f.name.replace("_", "-") for f in fields(Settings)])
def test_each_run_config_key_is_parsed_in_one_place(key):
    """``Settings`` derives every key from its field names and parses them all in ``from_mapping``,
    validated in ``validate``: no other product module spells a key to read it from a mapping."""
    elsewhere = [str(p.relative_to(ROOT)) for p in PRODUCT_FILES if p.name != "settings.py" and key in string_constants(p)]
    assert elsewhere == []


def test_no_test_imports_benchmarks():
    importers = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "benchmarks" or n.startswith("benchmarks.") for n in names):
                importers.append(path.name)
    assert sorted(set(importers)) == []

