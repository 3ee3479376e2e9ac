"""Supervised warm-start of the tiny model on its task, so that GRPO starts above zero reward.

A randomly initialised model never writes a right answer, so reinforcement learning would have
no signal. Teacher-forced training on worked solutions makes it mostly right with the whole
context and mostly wrong under a bounded cache: the gap that GRPO with PTE climbs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import torch

from pte_ray.progress import progress
from pte_ray.tiny.model import seeded
from pte_ray.tiny.recipe import TinyRecipe
from pte_ray.tiny.task import make_task

Item = tuple[list[int], int]  # (prompt + solution + eos ids, prompt length)


def _encode(tok, rows: list[dict[str, str]], eos_id: int) -> list[Item]:
    """(prompt + solution + eos ids, prompt length); prompt and solution encode separately,
    which the task's format makes identical to encoding the concatenation."""
    prompts = tok.encode_batch([r["prompt"] for r in rows])
    sols = tok.encode_batch([r["solution"] for r in rows])
    return [(p.ids + s.ids + [eos_id], len(p.ids)) for p, s in zip(prompts, sols, strict=True)]


def _batch(items: list[Item], pad_id: int) -> tuple[torch.Tensor, ...]:
    width = max(len(ids) for ids, _ in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    target = torch.zeros_like(ids, dtype=torch.bool)  # loss only on solution + eos
    for i, (seq, n_prompt) in enumerate(items):
        ids[i, : len(seq)] = torch.tensor(seq)
        attn[i, : len(seq)] = 1
        target[i, n_prompt : len(seq)] = True
    return ids, attn, target


def _answer_id(tok) -> int:
    """The id of "####": the answer follows it."""
    return tok.get_vocab().get("####", -1)


def _weighted_loss(logits, ids, mask, answer_id: int, weight: float):
    """Mean next-token loss with ``weight`` on "####" and the answer after it."""
    target = ids[:, 1:]
    w = torch.ones_like(target, dtype=torch.float32)
    after = (target == answer_id).long().cumsum(1) > 0
    w[after] = weight
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
    w = w * mask
    return (ce * w).sum() / w.sum()


def _optimizer(model, recipe: TinyRecipe) -> torch.optim.AdamW:
    """AdamW with no weight decay on norms, biases and embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embed" in name else decay).append(p)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": recipe.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=recipe.lr,
        betas=(0.9, 0.98),
    )


def _set_lr(opt: torch.optim.Optimizer, recipe: TinyRecipe, step: int) -> None:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    warm = min(1.0, (step + 1) / max(1, recipe.warmup_steps))
    cosine = 0.1 + 0.45 * (1 + math.cos(math.pi * step / max(1, recipe.warm_steps)))
    for group in opt.param_groups:
        group["lr"] = recipe.lr * warm * cosine


def _batches(pool: list[Item], recipe: TinyRecipe) -> Iterator[list[Item]]:
    """Endless batches over ``pool``, a fresh seeded shuffle each epoch, carried across epochs."""
    order_rng = random.Random(recipe.seed)
    order: list[int] = []
    while True:
        if len(order) < recipe.batch_size:
            epoch = list(range(len(pool)))
            order_rng.shuffle(epoch)
            order += epoch
        items = [pool[i] for i in order[: recipe.batch_size]]
        del order[: recipe.batch_size]
        yield items


def _loss(model, items: list[Item], eos_id: int, answer_id: int, weight: float) -> torch.Tensor:
    """Teacher-forced next-token loss on the solution and eos of each item."""
    ids, attn, target = _batch(items, eos_id)
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
    mask = target[:, 1:]
    if weight == 1.0:
        return torch.nn.functional.cross_entropy(logits[mask], ids[:, 1:][mask])
    return _weighted_loss(logits, ids, mask, answer_id, weight)


def warm_start(model, tok, recipe: TinyRecipe, eos_id: int) -> list[float]:
    """Teacher-forced next-token loss on the solution part; AdamW with warmup + cosine decay.

    Long enough that the full-cache model is mostly right (~75%), which makes it lean on the
    whole solution so far: under a bounded cache it loses count of the lines and is mostly
    wrong (~20% at a 64-token thought budget). That gap is what GRPO with PTE climbs.
    """
    pool = _encode(tok, make_task(recipe.train_pool, recipe.seed + 1, "train", recipe.task), eos_id)
    batches = _batches(pool, recipe)
    opt = _optimizer(model, recipe)
    losses: list[float] = []
    weight = float(getattr(recipe.task, "answer_weight", 1.0))
    answer_id = _answer_id(tok)
    model.train()
    bar = progress(recipe.warm_steps, "tiny model warm-start", "step")
    with seeded(recipe.seed):
        for step in range(recipe.warm_steps):
            _set_lr(opt, recipe, step)
            loss = _loss(model, next(batches), eos_id, answer_id, weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.update(1)
    bar.close()
    model.eval()
    return losses
