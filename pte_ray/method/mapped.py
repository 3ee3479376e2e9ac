"""The input embedding read from the checkpoint file where it lies, for engines that only look
rows up in it.

A packed engine (``Transformer.pack``) multiplies the output head from its oneDNN copy, so the
embedding table serves lookups alone: one row per token. With tied embeddings (Qwen2.5-0.5B:
151,936 x 896, 272 MB in bf16) the dense table is a second copy of the head kept for those
lookups; untied, it is a table the step never reads but a few rows of. Mapped from the
safetensors file (copy-on-write, nothing written back), only the pages of rows looked up become
resident, and they are the file's page cache, which the kernel may drop and read again. Only
where the file stores the table in the model's dtype (no conversion) and on CPU. Measured
limit: the kernel maps up to 16 cached pages around each fault (fault-around, not switched off
by MADV_RANDOM), so a rollout of uniformly random tokens (the random-weight benchmark model)
has most of the table resident within a few hundred steps; a real model's skewed tokens touch
far fewer rows.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

import numpy as np
import torch

from pte_ray.method.checkpoint import weight_files
from pte_ray.method.model import Transformer

NAME = "model.embed_tokens.weight"
# safetensors dtype -> (numpy storage of the same width, the torch dtype it is viewed as)
STORED = {
    "BF16": (np.uint16, torch.bfloat16),
    "F16": (np.float16, torch.float16),
    "F32": (np.float32, torch.float32),
}


def _entry(files: list[Path], name: str) -> tuple[Path, int, dict] | None:
    """The file holding ``name``, where its data starts and its header entry."""
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        if name in header:
            return f, 8 + n, header[name]
    return None


def map_embedding(model: Transformer, path: str | Path) -> bool:
    """Point ``model.embed`` at its rows in the checkpoint at ``path``; False (nothing changed)
    where it cannot be mapped as it is: another dtype, another shape, not on CPU, or a model
    whose head multiplies the table itself (not packed, tied)."""
    if model.device.type != "cpu" or (model.lm_head is None and not model.packed):
        return False
    found = _entry(weight_files(Path(path)), NAME)
    if found is None or found[2]["dtype"] not in STORED:
        return False
    f, base, e = found
    np_dtype, dtype = STORED[e["dtype"]]
    shape = tuple(e["shape"])
    if dtype != model.dtype or shape != tuple(model.embed.shape):
        return False
    start = base + e["data_offsets"][0]
    arr = np.memmap(f, dtype=np_dtype, mode="c", offset=start, shape=shape)
    if hasattr(mmap, "MADV_RANDOM"):  # no read-ahead from disk around a looked-up row
        arr._mmap.madvise(mmap.MADV_RANDOM)
    table = torch.from_numpy(arr)
    model.embed.data = table.view(dtype) if np_dtype is np.uint16 else table
    return True
