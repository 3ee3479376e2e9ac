"""The controller: prompts -> rollouts -> rewards (+ reference) -> GRPO step -> publish.

It runs in the job's entrypoint process (``pte-ray train``, locally or under ``ray job
submit``) and owns the config, the data cursor, the run directory and the progress bar; the
roles do the work (pte_ray.actors). Everything it writes is either appended a line at a time
(metrics.jsonl) or renamed into place when complete (rollouts, checkpoints), so a crash never
leaves anything half-written that ``--resume auto`` would trip over.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from pte_ray.config import Config, dump_config, load_config
from pte_ray.prepare import prepare
from pte_ray.progress import progress, say
from pte_ray.rl.grpo import group_advantages
from pte_ray.run_dir import RunDir


def _split(n_groups: int, parts: int) -> list[range]:
    """Contiguous, near-equal ranges of whole groups (a group is never split)."""
    parts = max(1, min(parts, n_groups))
    base, extra = divmod(n_groups, parts)
    out, lo = [], 0
    for i in range(parts):
        hi = lo + base + (1 if i < extra else 0)
        out.append(range(lo, hi))
        lo = hi
    return out


class Controller:
    def __init__(self, cfg: Config, run: RunDir, started_ray: bool) -> None:
        from pte_ray.actors.roles import start_roles

        self.cfg, self.run, self.started_ray = cfg, run, started_ray
        self.data = prepare(cfg)  # validates model path and every data row before any compute
        say(
            f"starting roles: {cfg.rollout.num_workers} rollout, {cfg.reward.num_workers} reward, "
            f"{cfg.learner.num_learners} learner (a first start compiles DeepSpeed's Adam op, "
            "~1 min)"
        )
        t0 = time.perf_counter()
        self.roles = start_roles(cfg, self.data.model_path)
        say(f"roles ready in {time.perf_counter() - t0:.0f} s")
        self.step = 0
        self.weights: tuple[int, list[Any]] | None = None
        self.cursor = self.data.stream.cursor()  # after the last batch that was learned from

    # ------------------------------------------------------------------ one step
    def _rollout(
        self, step: int, prompt_ids: list[list[int]], weights: tuple[int, list[Any]] | None
    ) -> dict[str, list[Any]]:
        g = self.cfg.grpo.group_size
        n_groups = len(prompt_ids) // g
        ranges = _split(n_groups, self.roles.rollout.size)
        shards = [
            (
                [prompt_ids[i] for i in range(r.start * g, r.stop * g)],
                hash((self.cfg.train.seed, step, r.start)) & 0x7FFFFFFF,
                self.weights,
            )
            for r in ranges
        ]
        results = self.roles.rollout.map("generate", shards)
        merged: dict[str, list[Any]] = {}
        for res in results:
            n = len(res["tokens"])
            for k, v in res.items():
                merged.setdefault(k, []).extend(v if isinstance(v, list) else [v] * n)
        return merged

    def _score(self, texts: list[str], answers: list[str]) -> dict[str, Any]:
        pool = self.roles.reward
        ranges = _split(len(texts), pool.size)
        res = pool.map("score", [([texts[i] for i in r], [answers[i] for i in r]) for r in ranges])
        counts: dict[str, int] = {}
        for r in res:
            for k, v in r["counts"].items():
                counts[k] = counts.get(k, 0) + v
        return {
            "rewards": [x for r in res for x in r["rewards"]],
            "statuses": [x for r in res for x in r["statuses"]],
            "counts": counts,
        }

    def _reference(self, prompts: list[list[int]], comps: list[list[int]]) -> list | None:
        pool = self.roles.reference
        if pool is None:
            return None
        ranges = _split(len(prompts), pool.size)
        res = pool.map(
            "logprobs", [([prompts[i] for i in r], [comps[i] for i in r]) for r in ranges]
        )
        return [x for r in res for x in r]

    def collect(self, step: int, weights: tuple[int, list[Any]] | None) -> dict[str, Any]:
        """Draw step ``step``'s prompts and generate their groups with ``weights``."""
        g = self.cfg.grpo.group_size
        t0 = time.perf_counter()
        examples = self.data.stream.next_batch(self.cfg.train.prompts_per_step)
        cursor = self.data.stream.cursor()
        prompt_ids = [self.data.prompt_ids[ex.index] for ex in examples for _ in range(g)]
        answers = [ex.answer for ex in examples for _ in range(g)]
        ro = self._rollout(step, prompt_ids, weights)
        return {
            "examples": examples,
            "prompt_ids": prompt_ids,
            "answers": answers,
            "ro": ro,
            "cursor": cursor,
            "rollout_s": time.perf_counter() - t0,
        }

    def train_step(self, step: int, batch: dict[str, Any] | None = None) -> dict[str, Any]:
        cfg, g = self.cfg, self.cfg.grpo.group_size
        if batch is None:
            batch = self.collect(step, self.weights)
        examples, prompt_ids, answers, ro = (
            batch["examples"],
            batch["prompt_ids"],
            batch["answers"],
            batch["ro"],
        )
        self.cursor = batch["cursor"]
        t0 = time.perf_counter() - batch["rollout_s"]
        t1 = time.perf_counter()
        with ThreadPoolExecutor(2) as ex:  # rewards and reference log-probs in parallel
            f_rew = ex.submit(self._score, ro["texts"], answers)
            f_ref = ex.submit(self._reference, prompt_ids, ro["tokens"])
            scored, ref = f_rew.result(), f_ref.result()
        t2 = time.perf_counter()
        rewards = torch.tensor(scored["rewards"], dtype=torch.float32)
        gc = cfg.grpo_config()
        adv = group_advantages(rewards, g, gc.use_std, gc.eps).tolist()
        n_groups = len(examples)
        per_rank = []
        global_tokens = sum(len(t) for t in ro["tokens"])
        for r in _split(n_groups, len(self.roles.learners.actors)):
            idx = range(r.start * g, r.stop * g)
            shard = {
                "prompts": [prompt_ids[i] for i in idx],
                "completions": [ro["tokens"][i] for i in idx],
                "logprobs": [ro["logprobs"][i] for i in idx],
                "eviction_steps": [ro["eviction_steps"][i] for i in idx],
                "advantages": [adv[i] for i in idx],
                "ref_logprobs": [ref[i] for i in idx] if ref is not None else None,
                "pad_id": self.data.pad_id,
            }
            per_rank.append((shard,))
        learned = self.roles.learners.each("train_step", per_rank)
        t3 = time.perf_counter()
        self.weights = self.roles.learners.publish()
        t4 = time.perf_counter()
        rollout_wall = max(ro["wall_s"]) if ro["wall_s"] else 0.0
        n = len(prompt_ids)
        metrics = {
            "step": step + 1,
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std()) if n > 1 else 0.0,
            "kl": sum(m["kl"] for m in learned) / len(learned),
            "loss": sum(m["loss"] for m in learned),
            "entropy": sum(m["entropy"] for m in learned) / len(learned),
            "clip_frac": sum(m["clip_frac"] for m in learned) / len(learned),
            "grad_norm": learned[0]["grad_norm"],
            "learner_peak_mb": max(m["peak_mb"] for m in learned),
            "tokens_per_s": global_tokens / max(rollout_wall, 1e-9),
            "completion_tokens_mean": global_tokens / n,
            "evictions_per_seq": sum(len(e) for e in ro["eviction_steps"]) / n,
            "weight_version": self.weights[0],
            "rollout_version_min": min(ro["version"]),
            "logprob_replay_diff": max(m["logprob_replay_diff"] for m in learned),
            "statuses": scored["counts"],
            "rollout_workers": self.roles.rollout.size,
            "rollout_s": t1 - t0,
            "reward_ref_s": t2 - t1,
            "learn_s": t3 - t2,
            "publish_s": t4 - t3,
            "step_s": t4 - t0,
        }
        rows = [
            {
                "step": step + 1,
                "prompt": self.data.prompt_text[examples[i // g].index],
                "completion": ro["texts"][i],
                "answer": answers[i],
                "reward": scored["rewards"][i],
                "status": scored["statuses"][i],
                "version": ro["version"][i],
                "evictions": len(ro["eviction_steps"][i]),
                "num_tokens": len(ro["tokens"][i]),
                "group": i // g,
                "prompt_index": examples[i // g].index,
                "advantage": adv[i],
            }
            for i in range(n)
        ]
        self.run.write_rollouts(step + 1, rows)
        return metrics

    # ------------------------------------------------------------------ the loop
    def resume(self, ckpt: Path) -> None:
        state = json.loads((ckpt / "controller.json").read_text())
        self.roles.learners.all("load", str(ckpt))
        self.data.stream.restore(state["cursor"])
        self.cursor = state["cursor"]
        self.step = int(state["step"])
        self.run.truncate_metrics(self.step)

    def checkpoint(self) -> None:
        cfg = self.cfg
        meta = {
            "step": self.step,
            "adapter": cfg.adapter_config().__dict__ | {"targets": list(cfg.adapter.targets)},
            "cache": cfg.cache_config().__dict__,
            "model": self.data.model_path,
        }
        with self.run.checkpoint_dir(self.step) as tmp:
            self.roles.learners.all("save", str(tmp), meta)
            state = {"step": self.step, "cursor": self.cursor}
            (tmp / "controller.json").write_text(json.dumps(state))

    def fit(self) -> dict[str, Any]:
        from pte_ray.actors import metrics as dash

        cfg = self.cfg
        self.weights = self.roles.learners.publish()  # every worker starts on the same version
        bar = progress(cfg.train.steps, "train", "step", initial=self.step)
        first = last = None
        lag = cfg.train.max_staleness
        ahead = ThreadPoolExecutor(1) if lag > 0 else None
        pending = None
        while self.step < cfg.train.steps:
            batch = pending.result() if pending is not None else None
            pending = None
            if batch is not None and self.weights[0] - min(batch["ro"]["version"]) > lag:
                batch = None  # older than max_staleness: drop it, generate afresh
                self.data.stream.restore(self.cursor)
            if batch is None:
                batch = self.collect(self.step, self.weights)
            if ahead is not None and self.step + 1 < cfg.train.steps:
                # rollouts for the next step run while the learners train on this one
                pending = ahead.submit(self.collect, self.step + 1, self.weights)
            m = self.train_step(self.step, batch)
            self.step += 1
            self.run.append_metrics(m)
            for k in ("reward_mean", "tokens_per_s", "step_s"):
                dash.gauge(k, m[k], "controller")
            dash.gauge(
                "weight_version_lag",
                m["weight_version"] - m["rollout_version_min"] - 1,
                "controller",
            )
            first = first or m
            last = m
            bar.set_postfix(
                reward=f"{m['reward_mean']:.3f}",
                tok_s=f"{m['tokens_per_s']:.0f}",
                evict=f"{m['evictions_per_seq']:.1f}",
            )
            bar.update(1)
            if self.step % cfg.train.save_every == 0 or self.step == cfg.train.steps:
                self.checkpoint()
        bar.close()
        if ahead is not None:
            ahead.shutdown()
        return {"first": first, "last": last, "run_dir": str(self.run.path)}

    def shutdown(self) -> None:
        self.roles.shutdown()


def main(config: str | None, overrides: list[str], resume: str | None = None) -> int:
    """`pte-ray train`: returns a process exit code; errors name their cause."""
    import ray

    cfg = load_config(config, overrides)
    run = RunDir.open(cfg, resume)
    dump_config(cfg, run.path / "config.yaml")
    address = cfg.train.ray_address or os.environ.get("RAY_ADDRESS")
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, log_to_driver=True, include_dashboard=None)
    controller = None
    try:
        controller = Controller(cfg, run, started)
        ckpt = run.latest_checkpoint() if resume else None
        if ckpt is not None:
            controller.resume(ckpt)
            print(f"resumed from {ckpt} at step {controller.step}", file=sys.stderr)
        summary = controller.fit()
        f, l_ = summary["first"], summary["last"]
        if f and l_:
            print(f"reward {f['reward_mean']:.3f} -> {l_['reward_mean']:.3f}; run dir {run.path}")
        return 0
    finally:
        if controller is not None:
            controller.shutdown()
        if started:
            ray.shutdown()
