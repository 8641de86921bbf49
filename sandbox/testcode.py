"""The unittest methods a test-code item defines, found without running it (judge side).

Each method is a test of its own (one run each), so the judge must know them before any
run: they are read from the code's syntax tree as unittest's loader would find them, for
the classes the code defines at its top level.
"""

from __future__ import annotations

import ast
import functools

TEST_CASE_BASES = frozenset({"TestCase", "IsolatedAsyncioTestCase"})
"""Base class names (``unittest.TestCase`` or ``TestCase``) that make a unittest class."""
METHOD_PREFIX = "test"
"""unittest's default ``testMethodPrefix``."""


@functools.lru_cache(maxsize=4096)  # RL sends the same suite with every sample
def unittest_methods(code: str) -> tuple[str, ...]:
    """``Class.method`` for every test method of every top-level unittest class, classes in
    source order and methods sorted by name (unittest's order); empty when the code
    defines no unittest class. A class counts when one of its bases is named ``TestCase``
    (``unittest.TestCase``, ``TestCase``, the async variant) or is such a class defined
    earlier in the code; its methods include those of its bases defined in the code.

    Raises ``SyntaxError`` for code that does not parse, ``ValueError`` for unittest
    classes without a single test method (a test that could never fail).
    """
    tree = ast.parse(code)
    classes: dict[str, ast.ClassDef] = {}
    cases: dict[str, bool] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            classes[node.name] = node
            cases[node.name] = any(_is_case_base(b, cases) for b in node.bases)
    methods = tuple(
        f"{name}.{method}"
        for name, node in classes.items()
        if cases[name]
        for method in sorted(_test_methods(node, classes, set()))
    )
    if not methods and any(cases.values()):
        raise ValueError("unittest classes without a single test method")
    return methods


def _is_case_base(base: ast.expr, cases: dict[str, bool]) -> bool:
    if isinstance(base, ast.Attribute):
        return base.attr in TEST_CASE_BASES
    if isinstance(base, ast.Name):
        return base.id in TEST_CASE_BASES or cases.get(base.id, False)
    return False


def _test_methods(node: ast.ClassDef, classes: dict[str, ast.ClassDef], seen: set[str]) -> set[str]:
    seen.add(node.name)
    names = {
        item.name
        for item in node.body
        if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
        and item.name.startswith(METHOD_PREFIX)
    }
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id in classes and base.id not in seen:
            names |= _test_methods(classes[base.id], classes, seen)
    return names
