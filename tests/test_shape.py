"""The house rules hold: no module over ~300 lines, no function over ~50 (tools/shape.py)."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "shape", Path(__file__).resolve().parent.parent / "tools" / "shape.py"
)
shape = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shape)


def test_modules_and_functions_are_short() -> None:
    bad = shape.offenders()
    assert not bad, "too long (split it):\n" + "\n".join(bad)
