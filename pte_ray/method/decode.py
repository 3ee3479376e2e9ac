"""Rollout: batched generation under the bounded cache with thought-state updates.

gpt-fast shaped: ``prefill`` once, then one ``decode_step`` per token for every live row (evict
what is due, fold it into the thought state, forward, sample), dropping finished rows now and
then, and the result built at the end. Per step the host only decides what it already knows
(which rows evict: the schedule depends on prompt lengths alone); it reads from the device every
``check_every`` steps to find finished rows (so they stop costing compute) and to match stop
strings. Outputs stay in preallocated device tensors until the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from pte_ray.method.adapter import Adapter
from pte_ray.method.cache import BoundedCache, left_pad
from pte_ray.method.config import CacheConfig, SamplingParams
from pte_ray.method.model import Transformer
from pte_ray.method.sampling import Noise, sample

# The 1/8 rule: finished rows leave the batch once they are at least 1/8 of it. Dropping rows
# copies every layer's cache buffers and the state (index_select), so doing it for every row
# that finishes would cost more than the compute it saves; waiting for 1/8 bounds the compute
# spent on finished rows to 1/8 of a step while paying for a copy only a few times a rollout.
COMPACT_FRACTION = 8


def compact_due(n_done: int, n_rows: int) -> bool:
    """The 1/8 rule: whether ``n_done`` finished rows out of ``n_rows`` are worth dropping."""
    return n_done > 0 and n_done * COMPACT_FRACTION >= n_rows


@dataclass
class Rollout:
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
class Outputs:
    """Everything recorded per original row: preallocated on the device, read back at the end."""

    tok: torch.Tensor  # [B, n_new], pad past each row's end
    lp: torch.Tensor  # [B, n_new]
    done_at: torch.Tensor  # [B] length including EOS; n_new while still running
    evictions: list[list[int]]  # per row, the steps t it evicted before
    stop_len: list[int]  # per row, its length cut at a stop string (0: none found yet)
    n_steps: int = 0
    row_steps: int = 0  # rows actually computed, summed over steps
    # rkv: (rows that evicted, their chosen offsets [n, E]) read at the end; scoring times
    chosen: list[tuple[list[int], torch.Tensor]] = field(default_factory=list)
    score_time: list = field(default_factory=list)
    on_evict: Callable | None = None  # diagnostics: (cache, due rows, chosen [B, E]) per choice

    @classmethod
    def empty(cls, b: int, n_new: int, pad_id: int, dev: torch.device) -> Outputs:
        return cls(
            torch.full((b, n_new), pad_id, dtype=torch.long, device=dev),
            torch.zeros(b, n_new, dtype=torch.float32, device=dev),
            torch.full((b,), n_new, dtype=torch.long, device=dev),
            [[] for _ in range(b)],
            [0] * b,
        )

    def record(self, live: Live, t: int, eos: torch.Tensor) -> None:
        """Token t of every live row; a row that emits EOS is done at length t + 1."""
        n_new = self.tok.shape[1]
        self.tok[live.idx, t] = live.tok
        self.lp[live.idx, t] = live.lp
        hit = torch.isin(live.tok, eos)
        running = self.done_at[live.idx] == n_new
        self.done_at[live.idx] = torch.where(hit & running, t + 1, self.done_at[live.idx])


def _stop_cut(tokens: list[int], stops: Sequence[str], decode: Callable[[list[int]], str]) -> int:
    """Length of the shortest prefix whose text contains a stop string (0 = none)."""
    if not any(s in decode(tokens) for s in stops):
        return 0
    lo, hi = 1, len(tokens)
    while lo < hi:
        mid = (lo + hi) // 2
        if any(s in decode(tokens[:mid]) for s in stops):
            hi = mid
        else:
            lo = mid + 1
    return lo


def prefill(
    model: Transformer,
    adapter: Adapter | None,
    cache: BoundedCache,
    prompts: list[list[int]],
    pad_id: int,
    sp: SamplingParams,
    noise: Noise,
) -> Live:
    """The prompt forward (RoPE sized once for the whole run first) and the first token."""
    state = adapter.initial_state(len(prompts)) if adapter is not None else None
    state = state.contiguous() if state is not None else None
    ids, at = left_pad(prompts, pad_id).to(model.device), cache.prompt_placement()
    model.reserve_positions(cache.p_max + sp.max_new_tokens + 1)
    logits, _ = model(ids, at, cache.kv, adapter, state, True)
    idx = torch.arange(len(prompts), device=model.device)
    tok, lp = sample(logits[:, -1], sp, noise.draw(idx, 0))
    return Live(idx, list(range(len(prompts))), tok, lp, state)


def decode_step(
    step: Callable[..., tuple[torch.Tensor, list]],
    adapter: Adapter | None,
    cache: BoundedCache,
    live: Live,
    out: Outputs,
    t: int,
    sp: SamplingParams,
    noise: Noise,
) -> Live:
    """The next token of every live row: evict what is due and fold it into S, forward, sample."""
    state, due = live.state, cache.due()
    if due:
        chosen = _choose(cache, due, out) if cache.cfg.rkv_on else None
        ev = cache.evict(due, chosen)
        if chosen is not None:
            out.chosen.append(([live.rows[i] for i in due], chosen[due]))
        for i in due:
            out.evictions[live.rows[i]].append(t)
        if adapter is not None and state is not None:
            state = adapter.fold(state, ev.keys, ev.values, ev.valid, ev.rows)
    obs = cache.observer()
    at = cache.step_inputs(1)
    logits, _ = step(live.tok[:, None], at, cache.kv, adapter, state, True, obs)
    tok, lp = sample(logits[:, -1], sp, noise.draw(live.idx, t + 1))
    out.n_steps += 1
    out.row_steps += len(live.rows)
    return Live(live.idx, live.rows, tok, lp, state)


def _choose(cache: BoundedCache, due: list[int], out: Outputs) -> torch.Tensor:
    """R-KV's choice for every row [B, E] (only ``due`` rows' are used), timed."""
    cuda = cache.model.device.type == "cuda"
    t0 = torch.cuda.Event(enable_timing=True) if cuda else time.perf_counter()
    if cuda:
        t0.record()
    chosen = cache.rkv_choice(due)
    if cuda:
        t1 = torch.cuda.Event(enable_timing=True)
        t1.record()
        out.score_time.append((t0, t1))
    else:
        out.score_time.append(time.perf_counter() - t0)
    if out.on_evict is not None:
        out.on_evict(cache, due, chosen)
    return chosen


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


def _still_running(
    out: Outputs, live: Live, t: int, sp: SamplingParams, decode: Callable | None
) -> list[bool]:
    """Per live row: no EOS and no stop string yet (one read from the device)."""
    running = (out.done_at[live.idx] == out.tok.shape[1]).tolist()
    if sp.stop_strings:
        assert decode is not None
        rows = [i for i, ok in enumerate(running) if ok]
        toks = out.tok[live.idx[rows], : t + 1].tolist() if rows else []
        for i, seq in zip(rows, toks):
            cut = _stop_cut(seq, sp.stop_strings, decode)
            if cut:
                out.stop_len[live.rows[i]] = cut
                running[i] = False
    return running


def drop_finished(cache: BoundedCache, live: Live, running: list[bool]) -> Live:
    """Finished rows leave the batch (cache, state, tokens) when the 1/8 rule says so."""
    if not compact_due(len(running) - sum(running), len(running)):
        return live
    keep = [i for i, ok in enumerate(running) if ok]
    k = torch.tensor(keep, device=live.tok.device)
    cache.select(k, keep)
    return live.keep(k, keep)


def _result(
    prompts: list[list[int]],
    out: Outputs,
    eos: torch.Tensor,
    sp: SamplingParams,
    decode: Callable[[list[int]], str] | None,
) -> Rollout:
    """Cut every row at its end (EOS, stop string or length) and read the outputs back."""
    lengths, eos_host = out.done_at.tolist(), set(eos.tolist())
    all_tok, all_lp = out.tok.tolist(), out.lp.tolist()
    res_tok, res_lp, res_ev, reasons = [], [], [], []
    for i in range(len(prompts)):
        n = lengths[i]
        reason = "stop" if all_tok[i][n - 1] in eos_host else "length"
        if sp.stop_strings and decode is not None:
            cut = out.stop_len[i] or _stop_cut(all_tok[i][:n], sp.stop_strings, decode)
            if cut:
                n, reason = min(n, cut), "stop"
        res_tok.append(all_tok[i][:n])
        res_lp.append(all_lp[i][:n])
        res_ev.append([s for s in out.evictions[i] if s < n - 1])  # steps that fed a kept token
        reasons.append(reason)
    stats = {"decode_steps": float(out.n_steps), "row_steps": float(out.row_steps)}
    stats["tokens"] = float(sum(len(x) for x in res_tok))
    if out.score_time:
        stats |= {"evict_score_s": _score_seconds(out), "evictions_scored": len(out.score_time)}
    rec = _records(out, len(prompts), res_ev)
    return Rollout(prompts, res_tok, res_lp, res_ev, reasons, stats, rec)


@torch.no_grad()
def generate(
    model: Transformer,
    adapter: Adapter | None,
    prompts: list[list[int]],
    sp: SamplingParams,
    cache_cfg: CacheConfig,
    eos_ids: Sequence[int] = (),
    pad_id: int = 0,
    decode: Callable[[list[int]], str] | None = None,
    step_fn: Callable[..., tuple[torch.Tensor, list]] | None = None,
    on_evict: Callable | None = None,
) -> Rollout:
    """Sample completions for ``prompts`` (token ids). ``decode`` is needed for stop strings.

    ``step_fn`` replaces ``model.forward`` for decode steps (e.g. a ``torch.compile`` of it);
    ``on_evict(cache, due, chosen)`` sees every R-KV choice before it is applied (diagnostics).
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: every prompt needs at least one token")
    if sp.stop_strings and decode is None:
        raise ValueError("stop_strings need a decode function (the tokenizer's decode)")
    dev, n_new = model.device, sp.max_new_tokens
    cache = BoundedCache(model, [len(p) for p in prompts], cache_cfg, n_new)
    noise = Noise(len(prompts), sp, dev)
    eos = torch.tensor(sorted(set(eos_ids) | set(sp.stop_token_ids)) or [-1], device=dev)
    live = prefill(model, adapter, cache, prompts, pad_id, sp, noise)
    out = Outputs.empty(len(prompts), n_new, pad_id, dev)
    out.on_evict = on_evict
    for t in range(n_new):
        out.record(live, t, eos)
        if t == n_new - 1:
            break
        if (t + 1) % sp.check_every == 0:
            running = _still_running(out, live, t, sp, decode)
            if not any(running):
                break
            live = drop_finished(cache, live, running)
        live = decode_step(step_fn or model.forward, adapter, cache, live, out, t, sp, noise)
    return _result(prompts, out, eos, sp, decode)
