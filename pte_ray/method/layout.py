"""The shape of the decoder, defined once: its dimensions and which linears are fused.

The base model stores the linears of a layer that read the same input as one weight (q|k|v,
gate|up), gpt-fast style; the adapter puts one LoRA on each such group and splits its output the
same way. Both read the groups, their input width and the order and widths of their parts from
here, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

# The fused groups of a layer, in forward order, and the linears (targets) each one fuses, in the
# order of its output. The adapter's target names are these parts (``config.TARGETS``).
FUSED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("qkv", ("q", "k", "v")),
    ("o", ("o",)),
    ("gate_up", ("gate", "up")),
    ("down", ("down",)),
)
TARGETS: tuple[str, ...] = tuple(t for _, parts in FUSED for t in parts)


@dataclass(frozen=True)
class FusedLinear:
    """Linears of one layer that read the same input, stored as one weight [d_out, d_in]."""

    name: str  # the group's key, also the adapter's state-dict key (``layers.0.B.qkv``)
    d_in: int
    parts: tuple[tuple[str, int], ...]  # (target, its d_out) in the order of the fused output

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(t for t, _ in self.parts)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(w for _, w in self.parts)

    @property
    def d_out(self) -> int:
        return sum(self.widths)


@dataclass(frozen=True)
class Layout:
    """The fused linears of one decoder layer (fields named and ordered as ``FUSED``)."""

    qkv: FusedLinear  # attention input: q | k | v
    o: FusedLinear  # attention output
    gate_up: FusedLinear  # MLP input: gate | up
    down: FusedLinear  # MLP output

    @property
    def groups(self) -> tuple[FusedLinear, ...]:
        """In forward order (the adapter draws its init in this order: keep it)."""
        return (self.qkv, self.o, self.gate_up, self.down)


@dataclass(frozen=True)
class ModelArgs:
    model_type: str
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int
    norm_eps: float
    qkv_bias: bool
    qk_norm: bool
    tie_embeddings: bool

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def layout(self) -> Layout:
        d_in = {"qkv": self.dim, "o": self.q_dim, "gate_up": self.dim, "down": self.intermediate}
        d_out = {"q": self.q_dim, "k": self.kv_dim, "v": self.kv_dim, "o": self.dim}
        d_out |= {"gate": self.intermediate, "up": self.intermediate, "down": self.dim}
        groups = {
            name: FusedLinear(name, d_in[name], tuple((t, d_out[t]) for t in parts))
            for name, parts in FUSED
        }
        return Layout(**groups)
