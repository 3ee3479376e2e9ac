"""The PTE adapter: per-layer thought encoders and the dynamic LoRA they modulate.

Design section 1. Per layer l and target linear W: ``y = W x + (alpha/r) A (S_l (B x))`` with
B in R^{r x d_in} (Kaiming), A in R^{d_out x G} (zero, so training starts at the base model) and
S_l in R^{G x r} the thought state of the sequence. The plain-LoRA baselines (``lora``,
``lora_c``) drop S: ``y = W x + (alpha/r) A (B x)`` with A in R^{d_out x r}, and no encoder.
Targets that share an input (q/k/v, gate/up) share one B matmul. The encoders of all layers are
stacked so an eviction folds every layer's evicted keys/values into the state in a handful of
batched ops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pte_ray.method.config import AdapterConfig
from pte_ray.method.layout import FusedLinear, ModelArgs


def rms_normalise(x: torch.Tensor) -> torch.Tensor:
    """Norm(X) = X / sqrt(mean(X^2) + 1e-6) over the whole G x r matrix."""
    return x * torch.rsqrt(x.pow(2).mean(dim=(-2, -1), keepdim=True) + 1e-6)


class LayerAdapter(nn.Module):
    """The LoRA factors of one layer."""

    def __init__(
        self,
        a: ModelArgs,
        cfg: AdapterConfig,
        gen: torch.Generator,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        super().__init__()
        self.rank, self.scale = cfg.rank, cfg.alpha / cfg.rank
        self.plain = not cfg.uses_state  # plain LoRA: A is d_out x r and there is no S
        self.g = cfg.rank if self.plain else cfg.global_tokens
        self.B = nn.ParameterDict()
        self.A = nn.ParameterDict()
        for group in a.layout.groups:
            hit = [(t, d_out) for t, d_out in group.parts if t in cfg.targets]
            if not hit:
                continue
            bound = 1.0 / math.sqrt(group.d_in)  # nn.Linear's Kaiming-uniform default
            b = (torch.rand(len(hit) * cfg.rank, group.d_in, generator=gen) * 2 - 1) * bound
            self.B[group.name] = nn.Parameter(b.to(dtype=dtype, device=device))
            for t, d_out in hit:
                self.A[t] = nn.Parameter(torch.zeros(d_out, self.g, dtype=dtype, device=device))

    def add_delta(
        self, group: FusedLinear, y: torch.Tensor, x: torch.Tensor, s: torch.Tensor | None
    ) -> torch.Tensor:
        """y + (alpha/r) A (S (B x)) for the fused output ``y`` of ``group``; S is [B, G, r]
        (plain LoRA: y + (alpha/r) A (B x), no S). A is block-diagonal over the group's parts,
        zero for a part that is not a target."""
        if group.name not in self.B:
            return y
        bsz, t, _ = x.shape
        h = F.linear(x, self.B[group.name])  # [B, T, n*r]
        n = h.shape[-1] // self.rank
        if self.plain:
            z = h  # [B, T, n*r]
        else:
            assert s is not None, "a thought-state adapter needs a state"
            z = torch.matmul(h.view(bsz, t * n, self.rank), s.transpose(1, 2))  # [B, T*n, G]
        blocks = [
            self.A[name] if name in self.A else y.new_zeros(width, 0) for name, width in group.parts
        ]
        a_full = blocks[0] if len(blocks) == 1 else torch.block_diag(*blocks)
        return y + self.scale * F.linear(z.view(bsz, t, n * self.g), a_full)


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


class Adapter(nn.Module):
    """Everything that trains: LoRA factors of every layer plus the thought encoders."""

    def __init__(
        self,
        args: ModelArgs,
        cfg: AdapterConfig,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        if not cfg.has_adapter:
            raise ValueError("method 'base' has no adapter")
        self.cfg = cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        self.layers = nn.ModuleList(
            LayerAdapter(args, cfg, gen, dtype, device) for _ in range(args.n_layers)
        )
        self.encoder = ThoughtEncoder(args, cfg, gen, dtype, device) if cfg.uses_state else None

    def initial_state(self, batch: int) -> torch.Tensor | None:
        """S_0 for every row: [L, B, G, r] (None for plain LoRA). Reset for every rollout."""
        if self.encoder is None:
            return None
        s0 = self.encoder.initial_state()
        return s0[:, None].expand(-1, batch, -1, -1)

    def fold(
        self,
        state: torch.Tensor | None,
        k_evicted: torch.Tensor,
        v_evicted: torch.Tensor,
        valid: torch.Tensor,
        rows: torch.Tensor,
    ) -> torch.Tensor | None:
        """S <- Norm(S + Enc(K_e, V_e)) for the evicting ``rows`` [B] bool; others unchanged.

        Every other method keeps its state (S_0, or none), so it returns ``state`` as is.
        """
        if not self.cfg.dynamic or self.encoder is None or state is None:
            return state
        new = rms_normalise(state + self.encoder.encode(k_evicted, v_evicted, valid))
        return torch.where(rows[None, :, None, None], new, state)
