"""The embedding table left in the checkpoint file (``mapped.py``): rows read as tokens need
them give the same rollout bit for bit, the model holds no copy of the table, a bad id is an
error naming it, and the table stays in memory where it cannot be read as it is stored."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pte_ray.method.checkpoint import load_base
from pte_ray.method.config import CacheConfig, SamplingParams
from pte_ray.method.decode import generate
from pte_ray.method.mapped import embedding_from_file
from pte_ray.method.packed import can_pack
from pte_ray.method.requests import DecodeRequest

needs_pack = pytest.mark.skipif(
    not can_pack(torch.float32, "cpu"), reason="oneDNN packing not available in this torch"
)


@needs_pack
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_from_the_file_give_the_same_rollout(tmp_path, dtype):
    from pte_ray.tiny import random_checkpoint

    path = random_checkpoint(tmp_path / "m", seed=0, dtype=dtype)
    dense, filed = load_base(path), load_base(path)
    for m in (dense, filed):
        m.pack(4)
    table = dense.embed.detach().clone()
    assert embedding_from_file(filed, path)
    assert filed.embed.numel() == 0 and filed.dtype == dtype  # no copy held
    ids = torch.tensor([[3, 4, 3], [table.shape[0] - 1, 0, 7]])
    assert torch.equal(filed.rows(ids), F.embedding(ids, table))
    prompts = [[3, 4, 5], [6, 7], [3, 4, 5], [9] * 5]
    sp = SamplingParams(max_new_tokens=24, seed=1)
    req = DecodeRequest(prompts, CacheConfig(budget=8))
    a, b = (generate(m, None, req, sp) for m in (dense, filed))
    assert a.tokens == b.tokens and a.logprobs == b.logprobs
    with pytest.raises(IndexError, match=f"token id {table.shape[0]} is outside"):
        filed.rows(torch.tensor([[1, table.shape[0]]]))


@needs_pack
def test_the_table_stays_in_memory_where_it_cannot_be_read_as_stored(tmp_path):
    from pte_ray.tiny import random_checkpoint

    path = random_checkpoint(tmp_path / "m", seed=0, dtype=torch.float32)
    unpacked = load_base(path)
    assert unpacked.lm_head is None  # tied: the dense head reads the whole table every step
    assert not embedding_from_file(unpacked, path)
    other = load_base(path, dtype=torch.bfloat16)  # the file holds fp32: no conversion here
    other.pack(4)
    assert not embedding_from_file(other, path)
    assert other.rows is None and other.embed.numel() > 0
