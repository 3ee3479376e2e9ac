"""The input embedding left in the checkpoint file, its rows read as tokens need them, for
engines that only look rows up in it.

A packed engine (``Transformer.pack``) multiplies the output head from its oneDNN copy, so the
embedding table serves lookups alone: one row per token. With tied embeddings (Qwen2.5-0.5B:
151,936 x 896, 272 MB in bf16) the dense table is a second copy of the head kept for those
lookups; untied, it is a table the step never reads but a few rows of. Each forward reads the
rows of its tokens from the safetensors file (``pread``, served from the page cache the load
filled, which the kernel may drop and read again): a decode step's 32 rows cost tens of
microseconds. A memory map did not do: the kernel maps 64 KB around each faulting row
(fault-around), and a rollout of the random benchmark model's uniform tokens had most of the
table resident within a few hundred steps. Only where the file stores the table in the model's
dtype (no conversion) and on CPU.
"""

from __future__ import annotations

import json
import os
import struct
import weakref
from pathlib import Path

import torch

from pte_ray.method.checkpoint import weight_files
from pte_ray.method.model import Transformer

NAME = "model.embed_tokens.weight"
STORED = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def _entry(files: list[Path], name: str) -> tuple[Path, int, dict] | None:
    """The file holding ``name``, where its data starts and its header entry."""
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        if name in header:
            return f, 8 + n, header[name]
    return None


class FileRows:
    """``F.embedding(ids, table)`` for a [V, D] table at byte ``start`` of file ``path``."""

    def __init__(self, path: Path, start: int, shape: tuple[int, int], dtype: torch.dtype):
        self.fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self.fd)
        self.path, self.start, (self.n, self.dim), self.dtype = path, start, shape, dtype
        self.row_bytes = self.dim * torch.empty(0, dtype=dtype).element_size()

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1).tolist()
        uniq = sorted(set(flat))
        if not uniq:
            return torch.empty(*ids.shape, self.dim, dtype=self.dtype)
        if not (0 <= uniq[0] and uniq[-1] < self.n):
            bad = uniq[0] if uniq[0] < 0 else uniq[-1]
            raise IndexError(f"token id {bad} is outside the embedding table of {self.n} rows")
        buf = bytearray(len(uniq) * self.row_bytes)
        view = memoryview(buf)
        for j, i in enumerate(uniq):
            at = j * self.row_bytes
            got = os.preadv(
                self.fd, [view[at : at + self.row_bytes]], self.start + i * self.row_bytes
            )
            if got != self.row_bytes:
                raise OSError(f"{self.path}: short read of embedding row {i} ({got} bytes)")
        rows = torch.frombuffer(buf, dtype=self.dtype).view(len(uniq), self.dim)
        pos = {i: j for j, i in enumerate(uniq)}
        return rows[torch.tensor([pos[i] for i in flat], dtype=torch.long)].view(*ids.shape, -1)


def embedding_from_file(model: Transformer, path: str | Path) -> bool:
    """Let ``model`` read its embedding rows from the checkpoint at ``path`` and drop its copy
    of the table; False (nothing changed) where that cannot be done as it is: another dtype,
    another shape, not on CPU, or a model whose head multiplies the table (not packed, tied)."""
    if model.device.type != "cpu" or (model.lm_head is None and not model.packed):
        return False
    found = _entry(weight_files(Path(path)), NAME)
    if found is None or found[2]["dtype"] not in STORED:
        return False
    f, base, e = found
    dtype, shape = STORED[e["dtype"]], tuple(e["shape"])
    if dtype != model.dtype or shape != tuple(model.embed.shape):
        return False
    model.rows = FileRows(f, base + e["data_offsets"][0], shape, dtype)
    model.embed.data = torch.empty(0, shape[1], dtype=dtype)  # dtype and device stay readable
    return True
