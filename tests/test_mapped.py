"""The embedding table mapped from the checkpoint file (``mapped.py``): the same values, the same
rollout, only the rows looked up resident, and left alone where it cannot be mapped as it is."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pte_ray.method.checkpoint import load_base
from pte_ray.method.config import CacheConfig, SamplingParams
from pte_ray.method.decode import generate
from pte_ray.method.mapped import map_embedding
from pte_ray.method.packed import can_pack
from pte_ray.method.requests import DecodeRequest

needs_pack = pytest.mark.skipif(
    not can_pack(torch.float32, "cpu"), reason="oneDNN packing not available in this torch"
)


def _resident_kb(t: torch.Tensor) -> tuple[str, int]:
    """The file behind the mapping that holds ``t``'s data, and that mapping's resident kB."""
    ptr, name, rss, inside = t.data_ptr(), "", 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            inside = lo <= ptr < hi
            name = head[-1] if inside and len(head) > 5 else name
        elif inside and line.startswith("Rss:"):
            rss = int(head[1])
    return name, rss


@needs_pack
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mapped_embedding_gives_the_same_rollout(tmp_path, dtype):
    from pte_ray.tiny import random_checkpoint

    path = random_checkpoint(tmp_path / "m", seed=0, dtype=dtype)
    dense, mapped = load_base(path), load_base(path)
    for m in (dense, mapped):
        m.pack(4)
    assert map_embedding(mapped, path)
    assert torch.equal(mapped.embed, load_base(path).embed)
    prompts = [[3, 4, 5], [6, 7], [3, 4, 5], [9] * 5]
    sp = SamplingParams(max_new_tokens=24, seed=1)
    a, b = (
        generate(m, None, DecodeRequest(prompts, CacheConfig(budget=8)), sp)
        for m in (dense, mapped)
    )
    assert a.tokens == b.tokens and a.logprobs == b.logprobs
    name, rss = _resident_kb(mapped.embed)
    assert name == str(path / "model.safetensors")  # the file's pages, not a copy
    assert 0 < rss <= mapped.embed.numel() * mapped.embed.element_size() // 1024 + 8


@needs_pack
def test_the_table_is_left_in_memory_where_it_cannot_be_mapped_as_it_is(tmp_path):
    from pte_ray.tiny import random_checkpoint

    path = random_checkpoint(tmp_path / "m", seed=0, dtype=torch.float32)
    unpacked = load_base(path)
    assert unpacked.lm_head is None  # tied: the dense head reads the whole table every step
    assert not map_embedding(unpacked, path)
    other = load_base(path, dtype=torch.bfloat16)  # the file holds fp32: no conversion here
    other.pack(4)
    assert not map_embedding(other, path)
    assert _resident_kb(other.embed)[0] != str(path / "model.safetensors")
