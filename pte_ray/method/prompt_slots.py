"""The prompt region's layout: prompts left-padded to end at slot P_max, what a prefill sees.

Shared by the bounded cache (its prompt region), the prefill of refilled rows (own buffers of
the prompt slots only) and replay's segments.
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence

from pte_ray.method.model import Placement


def left_pad(prompts: list[list[int]], pad_id: int) -> torch.Tensor:
    """[B, P_max] ids, each prompt ending at the last column (the prompt region's layout)."""
    rows = [torch.tensor(p, dtype=torch.long) for p in prompts]
    return pad_sequence(rows, batch_first=True, padding_value=pad_id, padding_side="left")


def prompt_valid(plen: torch.Tensor, p_max: int, n_slots: int) -> torch.Tensor:
    """[b, n_slots]: the slots rows with prompt lengths ``plen`` hold (their prompt, no pad)."""
    slot = torch.arange(n_slots, device=plen.device)
    return (slot[None] >= p_max - plen[:, None]) & (slot[None] < p_max)


def prompt_place(plen: torch.Tensor, p_max: int, n_slots: int) -> Placement:
    """Positions, write slots [0, P_max) and the causal mask of a prompt forward of rows with
    prompt lengths ``plen`` [b] over ``n_slots`` slots."""
    col = torch.arange(p_max, device=plen.device)
    pos = (col[None] - (p_max - plen[:, None])).clamp(min=0)
    slots = col[None].expand(len(plen), -1)
    key = torch.arange(n_slots, device=plen.device)
    causal = key[None, :] <= col[:, None]  # [P, S]
    mask = causal[None] & prompt_valid(plen, p_max, n_slots)[:, None, :]
    mask = mask | (key[None, None, :] == col[None, :, None])  # padding attends to itself
    return Placement(pos, slots, mask)
