"""The PTE adapter: the dynamic LoRA of every layer and the thought encoder that drives it.

Design section 1. Per layer l and target linear W: ``y = W x + (alpha/r) A (S_l (B x))`` with
B in R^{r x d_in} (Kaiming), A in R^{d_out x G} (zero, so training starts at the base model) and
S_l in R^{G x r} the thought state of the sequence, which ``thought_encoder.py`` makes and folds
evictions into. The plain-LoRA baselines (``lora``, ``lora_c``) drop S:
``y = W x + (alpha/r) A (B x)`` with A in R^{d_out x r}, and no encoder. Targets that share an
input (q/k/v, gate/up: the fused groups of ``layout.py``) share one B matmul.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pte_ray.method.config import AdapterConfig
from pte_ray.method.layout import FusedLinear, ModelArgs
from pte_ray.method.thought_encoder import ThoughtEncoder

ABLATIONS = ("fold", "state")


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


class Adapter(nn.Module):
    """Everything that trains: LoRA factors of every layer plus the thought encoder.

    State-dict keys are what checkpoints on disk hold: ``layers.{l}.B.{group}``,
    ``layers.{l}.A.{target}`` and ``encoder.*``; keep them.
    """

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
        self.ablate: str | None = None  # an eval-time ablation (``set_ablation``); never trained

    def set_ablation(self, what: str | None) -> None:
        """``fold``: S is never updated from evicted tokens (the adapter runs as global_only);
        ``state``: S is zero throughout (the LoRA adds nothing). Shows what the state carries."""
        if what not in (None, *ABLATIONS):
            raise ValueError(f"ablation must be one of {ABLATIONS}, got {what!r}")
        if what is not None and self.encoder is None:
            raise ValueError(
                f"--ablate {what}: adapter.method={self.cfg.method} has no thought state"
            )
        self.ablate = what

    def initial_state(self, batch: int) -> torch.Tensor | None:
        """S_0 for every row: [L, B, G, r] (None for plain LoRA). Reset for every rollout."""
        if self.encoder is None:
            return None
        s0 = self.encoder.initial_state()
        if self.ablate == "state":
            s0 = torch.zeros_like(s0)
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
        if not self.cfg.dynamic or self.encoder is None or state is None or self.ablate:
            return state  # an ablation keeps S as it is: S_0, or zero
        new = self.encoder.fold(state, k_evicted, v_evicted, valid)
        return torch.where(rows[None, :, None, None], new, state)
