"""The thought encoder: what turns evicted keys/values into the thought state S.

Design section 1. G learned global tokens attend over a layer's evicted keys/values,
``Enc(K, V) = softmax((Qg Wq)(K Wk)^T / sqrt(r)) (V Wv)`` in R^{G x r}; the state starts at
``S_0 = Norm(Enc(Kg, Vg))`` and every eviction folds in ``S <- Norm(S + Enc(K_e, V_e))``. The
LoRA of ``adapter.py`` reads S. The encoders of all layers are stacked on dim 0, so one eviction
updates every layer's state in a handful of batched ops.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pte_ray.method.config import AdapterConfig
from pte_ray.method.layout import ModelArgs


def rms_normalise(x: torch.Tensor) -> torch.Tensor:
    """Norm(X) = X / sqrt(mean(X^2) + 1e-6) over the whole G x r matrix."""
    return x * torch.rsqrt(x.pow(2).mean(dim=(-2, -1), keepdim=True) + 1e-6)


class ThoughtEncoder(nn.Module):
    """Enc(K, V) = softmax((Qg Wq)(K Wk)^T / sqrt(r)) (V Wv), one per layer, stacked on dim 0."""

    def __init__(
        self,
        a: ModelArgs,
        cfg: AdapterConfig,
        gen: torch.Generator,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        super().__init__()
        n_l, g, d, r = a.n_layers, cfg.global_tokens, a.kv_dim, cfg.rank
        self.attention = cfg.attention
        self.rank = r

        def p(*shape: int, std: float) -> nn.Parameter:
            w = torch.randn(*shape, generator=gen) * std
            return nn.Parameter(w.to(dtype=dtype, device=device))

        self.Qg, self.Kg, self.Vg = (p(n_l, g, d, std=1.0) for _ in range(3))
        self.Wq, self.Wk, self.Wv = (p(n_l, d, r, std=d**-0.5) for _ in range(3))

    def encode(self, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """k, v [L, B, N, d_kv], valid [B, N] -> [L, B, G, r]."""
        q = torch.matmul(self.Qg, self.Wq)[:, None]  # [L, 1, G, r]
        kk = torch.matmul(k, self.Wk[:, None])  # [L, B, N, r]
        vv = torch.matmul(v, self.Wv[:, None])
        scores = torch.matmul(q, kk.transpose(-1, -2)) / math.sqrt(self.rank)  # [L, B, G, N]
        keep = valid[None, :, None, :]
        if self.attention == "linear":
            weights = scores * keep
        else:
            weights = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
            weights = torch.nan_to_num(weights, nan=0.0)  # a row with nothing evicted
        return torch.matmul(weights, vv)

    def initial_state(self) -> torch.Tensor:
        """S_0 = Norm(Enc(Kg, Vg)): [L, G, r]."""
        n_l, g, _ = self.Kg.shape
        valid = torch.ones(1, g, dtype=torch.bool, device=self.Kg.device)
        return rms_normalise(self.encode(self.Kg[:, None], self.Vg[:, None], valid)[:, 0])

    def fold(
        self, state: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """S <- Norm(S + Enc(K_e, V_e)) for every row: state [L, B, G, r]."""
        return rms_normalise(state + self.encode(k, v, valid))
