"""The house rules a reader relies on: modules under ~300 lines, functions under ~50.

``python tools/shape.py`` lists every offender; ``tests/test_shape.py`` fails on any.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 50
ROOT = Path(__file__).resolve().parent.parent


def offenders(root: Path = ROOT) -> list[str]:
    out = []
    for path in sorted((root / "pte_ray").rglob("*.py")):
        text = path.read_text()
        rel = path.relative_to(root)
        n = len(text.splitlines())
        if n > MAX_MODULE_LINES:
            out.append(f"{rel}: {n} lines (max {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(
                        f"{rel}:{node.lineno} {node.name}: {length} lines "
                        f"(max {MAX_FUNCTION_LINES})"
                    )
    return out


if __name__ == "__main__":
    bad = offenders()
    print("\n".join(bad) or "ok")
    sys.exit(1 if bad else 0)
