"""Flat, bucketed adapter snapshots: what learner rank 0 puts in the object store.

One contiguous buffer per dtype (plus names/shapes) travels as a few large objects instead of
hundreds of small tensors, and unpacks into views with no per-tensor copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Snapshot:
    version: int
    names: list[str]
    shapes: list[tuple[int, ...]]
    dtypes: list[str]
    buckets: dict[str, torch.Tensor]  # dtype name -> flat buffer


def pack(state: dict[str, torch.Tensor], version: int) -> Snapshot:
    names = sorted(state)
    groups: dict[str, list[torch.Tensor]] = {}
    for n in names:
        t = state[n].detach()
        groups.setdefault(str(t.dtype), []).append(t.reshape(-1).cpu())
    buckets = {d: torch.cat(ts) for d, ts in groups.items()}
    return Snapshot(
        version,
        names,
        [tuple(state[n].shape) for n in names],
        [str(state[n].dtype) for n in names],
        buckets,
    )


def unpack(snap: Snapshot) -> dict[str, torch.Tensor]:
    offsets = dict.fromkeys(snap.buckets, 0)
    out: dict[str, torch.Tensor] = {}
    for name, shape, dt in zip(snap.names, snap.shapes, snap.dtypes):
        n = 1
        for s in shape:
            n *= s
        out[name] = snap.buckets[dt][offsets[dt] : offsets[dt] + n].view(shape)
        offsets[dt] += n
    return out
