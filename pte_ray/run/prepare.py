"""Everything the controller checks and tokenizes before any actor starts.

A bad model path, an unsupported architecture, a dataset without the configured columns or with
a bad row, or prompts that cannot fit the cache all fail here, naming the file and row, before
a single GPU-second is spent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pte_ray.config import Config
from pte_ray.progress import say
from pte_ray.rl.data import Example, PromptStream, filter_by_length, load_dataset
from pte_ray.rl.data import render_prompt as render
from pte_ray.rl.data.read import resolve_files
from pte_ray.rl.data.targets import Target, solution_targets
from pte_ray.run.models import check_spec, resolve_model
from pte_ray.run.teacher import check_init_adapter, check_vocabulary, teacher_adapter

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    model_path: str  # on this node (a hub model: its tokenizer and config only)
    tokenizer: Any
    examples: list[Example]
    prompt_ids: dict[int, list[int]]  # by Example.index
    prompt_text: dict[int, str]
    stream: PromptStream
    pad_id: int
    eos_id: int | None = None
    teacher_path: str | None = None  # the reference's model here (None: no reference pool)
    targets: list[Target] | None = None  # SFT from solutions: one per example
    model_spec: str = ""  # model.path as written: what each actor resolves on its own node
    teacher_spec: str | None = None  # reference.model (or model.path) when a teacher runs


def resolve_data(path: str) -> str:
    from pte_ray.tiny import RECIPES

    if path in RECIPES:
        from pte_ray.tiny import build_tiny_task

        return str(build_tiny_task(recipe=RECIPES[path])["train"])
    if not Path(path).exists():
        raise FileNotFoundError(f"data.train {path!r} does not exist")
    return path


def _check_solutions(cfg: Config, path: str) -> bool:
    """Whether this run trains on the data's solutions; their column must be there."""
    if cfg.train.stage != "sft" or cfg.sft.source != "solutions":
        return False
    from pte_ray.evalsets import first_row

    key = cfg.data.solution_key
    for f in resolve_files(path):
        found = sorted(first_row(f))
        if key not in found:
            raise ValueError(
                f"train.stage=sft trains on the data's solutions, but {f} has no "
                f"{key!r} column (columns: {found}); set data.solution_key, or sample targets "
                "from the full-cache teacher with sft.source=teacher"
            )
    return True


def _needs_teacher(cfg: Config) -> bool:
    return cfg.reference_pool or (cfg.train.stage == "sft" and cfg.sft.source == "teacher")


def _teacher(cfg: Config, model_path: str) -> str | None:
    """The reference/teacher model's path here when a role needs it, its vocabulary checked."""
    if not _needs_teacher(cfg):
        return None
    spec = cfg.reference.model
    path = resolve_model(spec, weights=False) if spec else model_path
    check_vocabulary(model_path, path)
    teacher_adapter(cfg)  # the teacher's checkpoint is readable
    return path


def prepare(cfg: Config) -> Prepared:
    from transformers import AutoTokenizer

    check_spec(cfg.model.path)
    check_init_adapter(cfg)
    d = cfg.data
    dcfg = d.loader(resolve_data(d.train))
    with_solutions = _check_solutions(cfg, dcfg.path)
    examples, report = load_dataset(dcfg, solutions=with_solutions)  # before any model work
    model_path = resolve_model(cfg.model.path, weights=False)
    teacher_path = _teacher(cfg, model_path)
    if report.skipped:
        log.warning("skipped %d bad rows: %s", report.skipped, report)
    if report.unverifiable:
        say(
            f"{len(report.unverifiable)} prompt(s) skipped: their gold answers cannot be verified "
            f"safely (first: {report.unverifiable[0]})"
        )
    tok = AutoTokenizer.from_pretrained(model_path)
    limit = d.max_prompt_tokens
    cache = cfg.cache_config()
    if cache.bounded and cache.budget_mode == "total":
        room = cache.budget - 1  # total mode keeps the prompt and needs one thought slot
        limit = min(limit, room) if limit else room
    if limit:
        examples, lrep = filter_by_length(examples, tok, limit, dcfg)
        if not examples:
            raise ValueError(f"no prompt fits: {lrep}")
    texts = {ex.index: render(ex, dcfg, tok) for ex in examples}
    special = not dcfg.apply_chat_template
    ids = {i: tok(t, add_special_tokens=special).input_ids for i, t in texts.items()}
    empty = [ex.source for ex in examples if not ids[ex.index]]
    if empty:
        raise ValueError(f"prompts that tokenize to nothing: {empty[:5]}")
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos = tok.eos_token_id
    targets = solution_targets(examples, tok, cfg.sft, eos) if with_solutions else None
    stream = PromptStream(targets or examples, seed=cfg.train.seed)
    teacher_spec = (cfg.reference.model or cfg.model.path) if teacher_path else None
    return Prepared(
        model_path,
        tok,
        examples,
        ids,
        texts,
        stream,
        pad,
        eos,
        teacher_path,
        targets,
        cfg.model.path,
        teacher_spec,
    )
