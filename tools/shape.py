"""The size rules a reader relies on, where a linter does not already hold them.

Arguments, statements, branches and returns per function are ruff's (``PLR0913``, ``PLR0915``,
``PLR0912``, ``PLR0911``) and complexity mccabe's (``C901``), configured in pyproject.toml. A
module longer than ~300 lines is allowed when it says why: a ``# size: <reason>`` line among
its first 30 lines. ``python tools/shape.py`` lists modules over the size without one;
``tests/test_shape.py`` fails on any.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

MAX_MODULE_LINES = 300
ROOT = Path(__file__).resolve().parent.parent
REASON = re.compile(r"^# size: \S.{10,}", re.M)  # a reason, not a word


def offenders(root: Path = ROOT) -> list[str]:
    out = []
    for path in sorted((root / "pte_ray").rglob("*.py")):
        text = path.read_text()
        n = len(text.splitlines())
        head = "\n".join(text.splitlines()[:30])
        if n > MAX_MODULE_LINES and not REASON.search(head):
            out.append(
                f"{path.relative_to(root)}: {n} lines (over {MAX_MODULE_LINES}: split it, or "
                "say why it is one module in a '# size: <reason>' line near the top)"
            )
    return out


if __name__ == "__main__":
    bad = offenders()
    print("\n".join(bad) or "ok")
    sys.exit(1 if bad else 0)
