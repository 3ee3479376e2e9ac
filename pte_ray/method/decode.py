"""Batched generation under the bounded cache with thought-state updates.

gpt-fast shaped: ``prefill`` once, then one ``decode_step`` per token for every live row (evict
what is due, fold it into the thought state, forward, sample), dropping finished rows now and
then, and the result built at the end. Per step the host only decides what it already knows
(which rows evict: the schedule depends on prompt lengths alone); it reads from the device every
``check_every`` steps to find finished rows (so they stop costing compute) and to match stop
strings. Outputs stay in preallocated device tensors until the end (``outputs.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from contextlib import AbstractContextManager, nullcontext

import torch

from pte_ray.method.adapter import Adapter
from pte_ray.method.cache import BoundedCache
from pte_ray.method.config import SamplingParams
from pte_ray.method.model import Transformer
from pte_ray.method.outputs import Generation, Live, Outputs, read_back, stop_cut
from pte_ray.method.prefill import Run, admit, prefill
from pte_ray.method.requests import DecodeHooks, DecodeRequest
from pte_ray.method.sampling import Noise, sample

# The 1/8 rule: finished rows leave the batch once they are at least 1/8 of it. Dropping rows
# copies every layer's cache buffers and the state (index_select), so doing it for every row
# that finishes would cost more than the compute it saves; waiting for 1/8 bounds the compute
# spent on finished rows to 1/8 of a step while paying for a copy only a few times a rollout.
COMPACT_FRACTION = 8


def phase(name: str) -> AbstractContextManager:
    """A named range for ``pte-ray bench rollout --profile``; nothing when no profiler runs."""
    on = torch._C._autograd._profiler_enabled()
    return torch.profiler.record_function(name) if on else nullcontext()


def compact_due(n_done: int, n_rows: int) -> bool:
    """The 1/8 rule: whether ``n_done`` finished rows out of ``n_rows`` are worth dropping."""
    return n_done > 0 and n_done * COMPACT_FRACTION >= n_rows


def decode_step(
    step: Callable[..., tuple[torch.Tensor, list]],
    adapter: Adapter | None,
    cache: BoundedCache,
    live: Live,
    out: Outputs,
    sp: SamplingParams,
    noise: Noise,
) -> Live:
    """The next token of every live row: evict what is due and fold it into S, forward, sample."""
    state, due = live.state, cache.due()
    lt = cache.local() if cache.refilled else cache.t  # each row's own token index
    if due:
        with phase("evict"):
            chosen = _choose(cache, due, out) if cache.cfg.rkv_on else None
            ev = cache.evict(due, chosen)
        if chosen is not None:
            out.chosen.append(([live.rows[i] for i in due], chosen[due]))
        for i in due:
            out.evictions[live.rows[i]].append(cache.t - cache.start[i])
        if adapter is not None and state is not None:
            with phase("fold"):
                state = adapter.fold(state, ev.keys, ev.values, ev.valid, ev.rows)
    with phase("forward"):
        obs = cache.observer()
        at = cache.step_inputs(1)
        logits, _ = step(live.tok[:, None], at, cache.kv, adapter, state, True, obs)
    with phase("sample"):
        tok, lp = sample(logits[:, -1], sp, noise.draw(live.idx, lt + 1))
    out.n_steps += 1
    out.row_steps += len(live.rows)
    return Live(live.idx, live.rows, tok, lp, state)


def _choose(cache: BoundedCache, due: list[int], out: Outputs) -> torch.Tensor:
    """R-KV's choice for every row [B, E] (only ``due`` rows' are used), timed."""
    cuda = cache.model.device.type == "cuda"
    t0 = torch.cuda.Event(enable_timing=True) if cuda else time.perf_counter()
    if cuda:
        t0.record()
    with phase("rkv_score"):
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


def _still_running(
    out: Outputs, live: Live, cache: BoundedCache, sp: SamplingParams, detokenize: Callable | None
) -> list[bool]:
    """Per live row: no EOS and no stop string yet (one read from the device)."""
    running = (out.done_at[live.idx] == out.tok.shape[1]).tolist()
    if sp.stop_strings:
        assert detokenize is not None
        rows = [i for i, ok in enumerate(running) if ok]
        longest = cache.t - min(cache.start) + 1  # no row has written past this column
        toks = out.tok[live.idx[rows], :longest].tolist() if rows else []
        for i, seq in zip(rows, toks):
            cut = stop_cut(seq[: cache.t - cache.start[i] + 1], sp.stop_strings, detokenize)
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


def refill(run: Run, live: Live, running: list[bool], queued: list[int]) -> Live:
    """Finished rows take the next ``queued`` requests (popped), as long as there are any;
    once there are none, finished rows leave the batch by the 1/8 rule."""
    free = [i for i, ok in enumerate(running) if not ok][: len(queued)]
    if free:
        reqs = [queued.pop(0) for _ in free]
        live = admit(run, live, free, reqs)
        running = [ok or i in free for i, ok in enumerate(running)]
        run.out.refills += len(free)
    return drop_finished(run.cache, live, running)


@torch.no_grad()
def rollout_steps(
    model: Transformer,
    adapter: Adapter | None,
    req: DecodeRequest,
    sp: SamplingParams,
    hooks: DecodeHooks = DecodeHooks(),
) -> Generator[int, None, Generation]:
    """``generate`` one step at a time: yields the step index after the prefill and after
    every decode step, returns the ``Generation``. Lets a benchmark interleave two rollouts
    step by step, so both run under the same machine load (``bench/ab.py``)."""
    run = _setup(model, adapter, req, sp, hooks)
    cache, out, n_new = run.cache, run.out, sp.max_new_tokens
    rows = cache.batch
    queued = list(range(rows, len(req.prompts)))  # requests waiting for a row
    with phase("prefill"):
        live = prefill(run, cache.batch, n_new + sp.check_every)
    step = hooks.step_fn or model.forward
    t = 0
    while True:
        yield t
        out.record(live.idx, live.tok, live.lp, cache.local() if cache.refilled else t, run.eos)
        if not queued and t - max(cache.start) >= n_new - 1:
            break  # every row holds its last token
        if (t + 1) % sp.check_every == 0:
            with phase("check"):
                running = _still_running(out, live, cache, sp, hooks.detokenize)
            if not any(running) and not queued:
                break
            with phase("compact"):
                live = refill(run, live, running, queued)
        live = decode_step(step, adapter, cache, live, out, sp, run.noise)
        t += 1
    out.prompt_copies = len(cache.pool.held) if cache.pool is not None else rows
    return read_back(req.prompts, out, run.eos, sp, hooks.detokenize)


def _setup(
    model: Transformer,
    adapter: Adapter | None,
    req: DecodeRequest,
    sp: SamplingParams,
    hooks: DecodeHooks,
) -> Run:
    """The call's cache (sized for every prompt it will hold), noise, EOS ids and outputs."""
    prompts = req.prompts
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: every prompt needs at least one token")
    if sp.stop_strings and hooks.detokenize is None:
        raise ValueError("stop_strings need a detokenize function (the tokenizer's decode)")
    dev, n_new, lens = model.device, sp.max_new_tokens, [len(p) for p in prompts]
    width = min(req.batch_rows or len(prompts), len(prompts))
    slack = sp.check_every if width < len(prompts) else 0
    share = _share_storage(req, width, hooks)
    cache = BoundedCache(
        model, lens[:width], req.cache, n_new, queued=lens[width:], slack=slack, share=share
    )
    noise = Noise(len(prompts), sp, dev)
    eos = torch.tensor(sorted(set(hooks.eos_ids) | set(sp.stop_token_ids)) or [-1], device=dev)
    caps = _row_caps(sp, len(prompts))
    out = Outputs.empty(len(prompts), n_new, req.pad_id, dev, caps, slack)
    out.on_evict = hooks.on_evict
    return Run(model, adapter, cache, out, sp, noise, eos, prompts, req.pad_id, req.share_prompts)


def _share_storage(req: DecodeRequest, width: int, hooks: DecodeHooks) -> bool:
    """One copy of each group's prompt keys/values (``shared_kv.py``) where prompts repeat
    (at most half as many distinct as rows) and the step runs eagerly."""
    distinct = len({tuple(p) for p in req.prompts[:width]})
    return req.share_prompts and hooks.step_fn is None and 2 * distinct <= width


def _row_caps(sp: SamplingParams, n_rows: int) -> tuple[int, ...]:
    """Each row's own length limit, checked: one per prompt, each in [1, max_new_tokens]."""
    caps = sp.row_max_new_tokens
    if caps and len(caps) != n_rows:
        raise ValueError(f"{len(caps)} row_max_new_tokens for {n_rows} prompts")
    bad = [(i, c) for i, c in enumerate(caps) if not 1 <= c <= sp.max_new_tokens]
    if bad:
        i, c = bad[0]
        raise ValueError(
            f"row {i}: row_max_new_tokens={c} is outside [1, max_new_tokens={sp.max_new_tokens}]"
        )
    return caps


def finish(steps: Generator[int, None, Generation]) -> Generation:
    """Run a ``rollout_steps`` generator to its end."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def generate(
    model: Transformer,
    adapter: Adapter | None,
    req: DecodeRequest,
    sp: SamplingParams,
    hooks: DecodeHooks = DecodeHooks(),
) -> Generation:
    """Sample completions of ``req.prompts`` under ``req.cache`` (``hooks.detokenize`` is
    needed for stop strings)."""
    return finish(rollout_steps(model, adapter, req, sp, hooks))
