"""The README and docs name only what exists: commands, settings, files, results.

A renamed setting or a removed command must fail here, not on a user's first try.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from pte_ray.cli import build_parser
from pte_ray.config import Config

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _subcommands(parser) -> dict[str, object]:
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


def _setting_exists(dotted: str) -> bool:
    node: type[BaseModel] | None = Config
    for part in dotted.split("."):
        if node is None or part not in node.model_fields:
            return False
        ann = node.model_fields[part].annotation
        node = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return True


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_every_command_named_exists(doc):
    commands = _subcommands(build_parser())
    bench = _subcommands(commands["bench"])
    text = doc.read_text()
    for cmd, sub in re.findall(r"pte-ray ([a-z][a-z-]*)(?: ([a-z]+))?", text):
        assert cmd in commands, f"{doc.name}: `pte-ray {cmd}` is not a command"
        if cmd == "bench" and sub:
            assert sub in bench, f"{doc.name}: `pte-ray bench {sub}` is not a benchmark"


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_every_setting_named_exists(doc):
    sections = set(Config.model_fields)
    text = doc.read_text()
    # the settings map's first three columns are verl's, TRL's and OpenRLHF's names, not ours
    if "| verl | TRL" in text:
        text = re.sub(r"^\| [^|]*\| [^|]*\| [^|]*\| `", "| `", text, flags=re.M)
    found = set(re.findall(r"(?<![\w./-])([a-z_]+(?:\.[a-z_0-9]+)+)(?==|`|\b)", text))
    named = {f for f in found if f.split(".")[0] in sections and not f.endswith((".py", ".md"))}
    assert named or doc.name != "README.md"
    bad = sorted(f for f in named if not _setting_exists(f))
    assert not bad, f"{doc.name} names settings that do not exist: {bad}"


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_every_file_named_exists(doc):
    text = doc.read_text()
    paths = set(re.findall(r"\b((?:docs|launch|cluster|pte_ray|tests)/[\w./+-]+\.\w+)", text))
    missing = sorted(p for p in paths if not (ROOT / p).exists() and "*" not in p)
    assert not missing, f"{doc.name} names files that do not exist: {missing}"


def test_readme_is_a_front_page_not_a_notebook():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 260
    assert not re.search(r"\bissue \d+|\bsession \d+", text, re.I)
    # every figure in the results table links to its JSON
    table = text.split("## Results", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in table.splitlines() if r.startswith("| ") and "---" not in r][1:]
    assert rows and all("docs/results/" in r for r in rows), rows


def test_the_gpu_table_is_what_the_configs_ask_for():
    from pte_ray.config import load_config

    rows = re.findall(
        r"^\| `(launch/configs/[\w.-]+\.yaml)` \| (\d+) \| (\d+) \|$",
        (ROOT / "README.md").read_text(),
        re.M,
    )
    assert len(rows) == 3
    for path, lo, hi in rows:
        cfg = load_config(ROOT / path)
        fixed = cfg.learner.num_learners * cfg.learner.num_gpus
        fixed += cfg.reference.num_workers * cfg.reference.num_gpus if cfg.reference_pool else 0
        per = cfg.rollout.num_gpus
        assert (int(lo), int(hi)) == (
            fixed + per * (cfg.rollout.min_workers or cfg.rollout.num_workers),
            fixed + per * (cfg.rollout.max_workers or cfg.rollout.num_workers),
        ), path
