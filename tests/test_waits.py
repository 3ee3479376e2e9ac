"""No unbounded wait: every ``ray.get`` in the package has a timeout, or says on its line why
it cannot block (``# bounded: <why>``, e.g. ``ray.wait`` returned the ref)."""

import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "pte_ray"


def test_every_ray_get_is_bounded():
    bad = []
    for f in PKG.rglob("*.py"):
        lines = f.read_text().splitlines()
        for i, line in enumerate(lines):
            if "ray.get(" not in line or line.lstrip().startswith("#"):
                continue
            call = " ".join(lines[i : i + 3])  # a call may wrap its arguments
            if "timeout=" not in call and not re.search(r"# bounded: \w", line):
                bad.append(f"{f.relative_to(PKG.parent)}:{i + 1}: {line.strip()}")
    assert not bad, "ray.get without a timeout or a '# bounded:' reason:\n" + "\n".join(bad)
