"""Token sampling that never leaves the device.

Exact categorical sampling with one uniform per row against the CDF (``torch.multinomial``
draws B x V numbers). The recorded log-prob is that of softmax(logits / temperature) over the
full vocabulary: the distribution the learner recomputes, whatever top-k/top-p did.
"""

from __future__ import annotations

import torch

from pte_ray.method.config import SamplingParams


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / T) at ``tokens``; logits [..., V], tokens [...]."""
    logp = torch.log_softmax(_scaled(logits, temperature), dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / T; at T = 1 the logits themselves (the same values: x / 1 is x exactly), which
    saves a pass over [batch, vocab] and its buffer."""
    return logits if temperature == 1.0 else logits / temperature


def entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


class Noise:
    """The uniforms that pick sampled tokens: per row from ``sp.row_seeds``, else per call.

    With row seeds, row i's draw for token t is fixed by its seed alone: the same prompt and
    seed give the same tokens whichever batch, chunk or worker it runs in (so a group retried
    on another worker, or cut into different chunks, samples as it would have). The [B, T]
    table is drawn once (B x T floats) and never per step.
    """

    def __init__(self, n_rows: int, sp: SamplingParams, device: torch.device) -> None:
        self.table: torch.Tensor | None = None
        self.gen: torch.Generator | None = None
        if sp.row_seeds:
            if len(sp.row_seeds) != n_rows:
                raise ValueError(f"{len(sp.row_seeds)} row_seeds for {n_rows} prompts")
            rows = [
                torch.rand(sp.max_new_tokens, generator=torch.Generator().manual_seed(s))
                for s in sp.row_seeds
            ]
            self.table = torch.stack(rows).to(device)
        elif sp.seed is not None:
            self.gen = torch.Generator(device=device).manual_seed(sp.seed)

    def draw(self, rows: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """[len(rows), 1] uniforms for token ``t`` (or each row's own [b]) of the original rows
        ``rows`` (a row past its last token draws its last: those tokens are cut off)."""
        if self.table is not None:
            if isinstance(t, torch.Tensor):
                t = t.clamp(max=self.table.shape[1] - 1)
            return self.table[rows, t].unsqueeze(1)
        return torch.rand(len(rows), 1, device=rows.device, generator=self.gen)


def sample(
    logits: torch.Tensor, sp: SamplingParams, u: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, V] (fp32), u [B, 1] uniforms (None: fresh) -> (token [B], log-prob [B])."""
    temp = sp.logprob_temperature
    if sp.greedy:
        tok = logits.argmax(dim=-1)
        return tok, token_logprobs(logits, tok, temp)
    scaled = _scaled(logits, temp)
    if sp.top_k > 0 and sp.top_k < scaled.shape[-1]:
        kth = scaled.topk(sp.top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if sp.top_p < 1.0:
        sorted_logits, order = scaled.sort(dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(-1) - probs > sp.top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        scaled = torch.full_like(scaled, float("-inf")).scatter(-1, order, sorted_logits)
    cdf = torch.softmax(scaled, dim=-1).cumsum_(dim=-1)  # in place: one [batch, vocab] buffer
    if u is None:
        u = torch.rand(logits.shape[0], 1, device=logits.device)
    u = u * cdf[:, -1:]
    tok = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=logits.shape[-1] - 1)
    return tok, token_logprobs(logits, tok, temp)
