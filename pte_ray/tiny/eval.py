"""Accuracy of a tiny checkpoint on its task: recorded beside the weights when it is built.

Full-cache accuracy (HF ``generate``) is the ceiling; the bounded-cache accuracy (our rollout
engine at the default thought budget) is where the default GRPO run starts.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pte_ray.rl.answers import extract_answer


def _correct(text: str, answer: str) -> bool:
    """Same extraction as the reward (``#### x``), without the last-number fallback."""
    return extract_answer(text, last_number_fallback=False) == answer


@torch.no_grad()
def full_cache_accuracy(
    model, tok, rows: list[dict[str, str]], eos_id: int, sample: bool, seed: int
):
    """Fraction of rows whose generated ``#### x`` equals the answer (HF generate, left-padded)."""
    prompts = [p.ids for p in tok.encode_batch([r["prompt"] for r in rows])]
    max_new = max(len(s.ids) for s in tok.encode_batch([r["solution"] for r in rows])) + 16
    width = max(map(len, prompts))
    ids = torch.full((len(rows), width), eos_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        attn[i, width - len(p) :] = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=ids,
            attention_mask=attn,
            max_new_tokens=max_new,
            do_sample=sample,
            temperature=1.0 if sample else None,
            top_p=1.0 if sample else None,
            top_k=0 if sample else None,
            eos_token_id=eos_id,
            pad_token_id=eos_id,
        )
    correct = 0
    for row, seq in zip(rows, out[:, width:].tolist(), strict=True):
        seq = seq[: seq.index(eos_id)] if eos_id in seq else seq
        correct += _correct(tok.decode(seq), row["answer"])
    return correct / len(rows)


def bounded_accuracy(
    path: Path, tok, rows: list[dict[str, str]], eos_id: int, budget: int, seed: int
):
    """Sampled (T=1) accuracy of the saved checkpoint under the bounded cache, as in rollouts."""
    from pte_ray.method.checkpoint import load_base
    from pte_ray.method.config import CacheConfig, SamplingParams
    from pte_ray.method.decode import generate
    from pte_ray.method.requests import DecodeHooks, DecodeRequest

    model = load_base(path)
    prompts = [p.ids for p in tok.encode_batch([r["prompt"] for r in rows])]
    max_new = max(len(s.ids) for s in tok.encode_batch([r["solution"] for r in rows])) + 16
    sp = SamplingParams(max_new_tokens=max_new, seed=seed, stop_token_ids=(eos_id,))
    req = DecodeRequest(prompts, CacheConfig(budget=budget))
    out = generate(model, None, req, sp, DecodeHooks(eos_ids=(eos_id,)))
    correct = 0
    for row, seq in zip(rows, out.tokens, strict=True):
        correct += _correct(tok.decode([t for t in seq if t != eos_id]), row["answer"])
    return correct / len(rows)
