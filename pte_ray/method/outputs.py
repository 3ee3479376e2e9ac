"""What a rollout records while it decodes, and the ``Generation`` it is read
back into at the end.

The decode loop writes every token, log-prob and end into preallocated device tensors
(``Outputs``) and only reads them back once, here, where each row is cut at its end (EOS, stop
string or length) and the R-KV record of the evictions that fed a kept token is assembled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from pte_ray.method.config import SamplingParams


@dataclass
class Live:
    """The rows still decoding, in cache order, and what each carries into the next step."""

    idx: torch.Tensor  # [b] original row of each live row
    rows: list[int]  # the same, on the host
    tok: torch.Tensor  # [b] the token just sampled
    lp: torch.Tensor  # [b] its log-prob
    state: torch.Tensor | None  # [L, b, G, r] thought state

    def keep(self, k: torch.Tensor, keep: list[int]) -> Live:
        """Only the live rows ``keep`` (the same indices as ``k`` on the device)."""
        state = self.state[:, k] if self.state is not None else None
        return Live(self.idx[k], [self.rows[i] for i in keep], self.tok[k], self.lp[k], state)


@dataclass
class Generation:
    """What one generate call produced, per row (original order)."""

    prompts: list[list[int]]
    tokens: list[list[int]]
    logprobs: list[list[float]]
    eviction_steps: list[list[int]]  # thought-token index t before whose write a row evicted
    finish_reasons: list[str]  # "stop" (EOS / stop string) or "length"
    stats: dict[str, float] = field(default_factory=dict)
    # per row, per eviction: the ring offsets it freed, sorted (rkv; [] under window), for replay
    evicted_slots: list[list[list[int]]] = field(default_factory=list)

    @property
    def evictions(self) -> list[int]:
        return [len(e) for e in self.eviction_steps]


@dataclass
class Outputs:
    """Everything recorded per original row: preallocated on the device, read back at the end."""

    tok: torch.Tensor  # [B, n_new], pad past each row's end
    lp: torch.Tensor  # [B, n_new]
    done_at: torch.Tensor  # [B] length including EOS; n_new while still running
    cap: torch.Tensor  # [B] each row's length limit (n_new unless the call gave its own)
    evictions: list[list[int]]  # per row, the steps t it evicted before
    stop_len: list[int]  # per row, its length cut at a stop string (0: none found yet)
    n_steps: int = 0
    row_steps: int = 0  # rows actually computed, summed over steps
    refills: int = 0  # requests that took a row another one had finished in
    prompt_copies: int = 0  # copies of prompt keys/values the cache held (shared: one a group)
    # rkv: (rows that evicted, their chosen offsets [n, E]) read at the end; scoring times
    chosen: list[tuple[list[int], torch.Tensor]] = field(default_factory=list)
    score_time: list = field(default_factory=list)
    on_evict: Callable | None = None  # diagnostics: (cache, due rows, chosen [B, E]) per choice

    @classmethod
    def empty(
        cls,
        b: int,
        n_new: int,
        pad_id: int,
        dev: torch.device,
        caps: Sequence[int] = (),
        slack: int = 0,
    ) -> Outputs:
        """``slack`` spare columns: a refilled row may run that many steps past its limit
        before a check sees it finished (read back cuts them off)."""
        w = n_new + slack
        return cls(
            torch.full((b, w), pad_id, dtype=torch.long, device=dev),
            torch.zeros(b, w, dtype=torch.float32, device=dev),
            torch.full((b,), w, dtype=torch.long, device=dev),
            torch.tensor(list(caps) or [n_new] * b, dtype=torch.long, device=dev),
            [[] for _ in range(b)],
            [0] * b,
        )

    def record(
        self,
        idx: torch.Tensor,
        tok: torch.Tensor,
        lp: torch.Tensor,
        t: int | torch.Tensor,
        eos: torch.Tensor,
    ) -> None:
        """Token ``t`` (one index, or each row's own [b]) of requests ``idx``; a request that
        emits EOS, or reaches its own length limit, is done at length t + 1."""
        self.tok[idx, t] = tok
        self.lp[idx, t] = lp
        hit = torch.isin(tok, eos) | (self.cap[idx] <= t + 1)
        running = self.done_at[idx] == self.tok.shape[1]
        self.done_at[idx] = torch.where(hit & running, t + 1, self.done_at[idx])


def stop_cut(
    tokens: list[int], stops: Sequence[str], detokenize: Callable[[list[int]], str]
) -> int:
    """Length of the shortest prefix whose text contains a stop string (0 = none)."""
    if not any(s in detokenize(tokens) for s in stops):
        return 0
    lo, hi = 1, len(tokens)
    while lo < hi:
        mid = (lo + hi) // 2
        if any(s in detokenize(tokens[:mid]) for s in stops):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _score_seconds(out: Outputs) -> float:
    """Time spent choosing evictions (after the final sync, so no eviction waited for it)."""
    return sum(x if isinstance(x, float) else x[0].elapsed_time(x[1]) / 1e3 for x in out.score_time)


def _records(out: Outputs, n_rows: int, keep: list[list[int]]) -> list[list[list[int]]]:
    """Per row, the chosen offsets of the evictions it kept (``keep``: its eviction steps)."""
    rec: list[list[list[int]]] = [[] for _ in range(n_rows)]
    for rows, chosen in out.chosen:
        for r, offsets in zip(rows, chosen.tolist(), strict=True):
            rec[r].append(offsets)
    return [r[: len(k)] if r else [] for r, k in zip(rec, keep, strict=True)]


def read_back(
    prompts: list[list[int]],
    out: Outputs,
    eos: torch.Tensor,
    sp: SamplingParams,
    detokenize: Callable[[list[int]], str] | None,
) -> Generation:
    """Cut every row at its end (EOS, stop string or length) and read the outputs back."""
    lengths, eos_host = out.done_at.tolist(), set(eos.tolist())
    all_tok, all_lp = out.tok.tolist(), out.lp.tolist()
    res_tok, res_lp, res_ev, reasons = [], [], [], []
    for i in range(len(prompts)):
        n = lengths[i]
        reason = "stop" if all_tok[i][n - 1] in eos_host else "length"
        if sp.stop_strings and detokenize is not None:
            cut = out.stop_len[i] or stop_cut(all_tok[i][:n], sp.stop_strings, detokenize)
            if cut:
                n, reason = min(n, cut), "stop"
        res_tok.append(all_tok[i][:n])
        res_lp.append(all_lp[i][:n])
        res_ev.append([s for s in out.evictions[i] if s < n - 1])  # steps that fed a kept token
        reasons.append(reason)
    stats = {"decode_steps": float(out.n_steps), "row_steps": float(out.row_steps)}
    stats["refills"] = float(out.refills)
    stats["prompt_copies"] = float(out.prompt_copies)
    stats["tokens"] = float(sum(len(x) for x in res_tok))
    if out.score_time:
        stats |= {"evict_score_s": _score_seconds(out), "evictions_scored": len(out.score_time)}
    rec = _records(out, len(prompts), res_ev)
    return Generation(prompts, res_tok, res_lp, res_ev, reasons, stats, rec)
