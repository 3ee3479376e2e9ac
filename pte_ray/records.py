"""Typed records: everything that crosses a role boundary, one record per hop.

One training step moves data along one path, and each hop carries exactly one of these:

    controller --RolloutRequest--> rollout worker --Rollouts--> controller
    controller --ScoreRequest--> reward worker --Scores--> controller
    controller --ReferenceRequest--> reference worker --ReferenceLogprobs--> controller
    controller --LearnerShard--> learner rank --LearnStats--> controller   (GRPO stage)
    controller --SFTShard--> learner rank --LearnStats--> controller       (SFT stage)
    learner rank 0 --PublishedWeights--> controller --(in the next RolloutRequest)--> rollout

Shapes: n rows (samples) per record, P_i prompt tokens and T_i completion tokens of row i,
k_i evictions of row i; ragged rows are lists, not padded tensors, so a record pickles small
and means the same on every device. Records are frozen: a role never edits what it was sent.
This module imports neither Ray nor torch: the method layer and tests can build records too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from math import isnan
from typing import Any, Self

TokenRows = list[list[int]]  # [n][P_i] or [n][T_i] token ids
FloatRows = list[list[float]]  # [n][T_i] per-token values


class Rows:
    """A row-aligned record: its list fields hold one entry per row, the rest are shared.

    Pools cut a step into requests of whole groups and may send several in one call:
    ``concat`` joins records (shared fields must agree, or ``_merge`` says how to combine
    them), ``rows`` cuts one back out.
    """

    def __len__(self) -> int:
        return len(getattr(self, fields(self)[0].name))  # type: ignore[arg-type]

    @classmethod
    def concat(cls, parts: Sequence[Self]) -> Self:
        out: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            vals = [getattr(p, f.name) for p in parts]
            if vals and isinstance(vals[0], list):
                out[f.name] = [x for v in vals for x in v]
            else:
                out[f.name] = cls._merge(f.name, vals)
        return cls(**out)

    @classmethod
    def _merge(cls, name: str, vals: list[Any]) -> Any:
        if any(v != vals[0] for v in vals[1:]):
            raise ValueError(f"{cls.__name__}.{name} differs between the parts joined")
        return vals[0] if vals else None

    def rows(self, lo: int, hi: int) -> Self:
        """Rows ``lo:hi`` (shared fields as they are)."""
        cut = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        return replace(self, **{k: v[lo:hi] for k, v in cut.items() if isinstance(v, list)})


@dataclass(frozen=True)
class WorkerInfo:
    """What an actor of a role says once it is ready: who and where it is, what it loaded."""

    role: str  # rollout / reward / reference / learner
    worker: str  # the pool's id, or the learner's rank
    pid: int
    node: str  # hostname
    device: str = "cpu"
    model_path: str | None = None  # the model as resolved on this node
    engine: str | None = None  # torch / vllm (rollout, reference)
    node_id: str | None = None  # Ray's node id (hosts can hold several nodes; the dashboard's)

    @classmethod
    def here(cls, role: str, worker: str, **loaded: Any) -> WorkerInfo:
        """This process's info (pid, host, Ray node) with what it ``loaded`` (device, model,
        engine)."""
        import os
        import socket

        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        return cls(role, worker, os.getpid(), socket.gethostname(), node_id=node, **loaded)


@dataclass(frozen=True)
class PublishedWeights:
    """A versioned adapter snapshot in Ray's object store, put there by the controller (it
    outlives any learner: a version stays loadable after the rank that made it dies).

    ``ref`` travels *inside* this record on purpose: Ray resolves an ``ObjectRef`` passed as a
    top-level call argument before the call starts, but not one nested in another object, so
    a worker that already holds ``version`` never downloads the snapshot again (the first
    design passed ``(version, [ref])``, where the list did the same silently).
    """

    version: int  # learner optimizer steps taken; rollouts record the version they used
    ref: Any  # ObjectRef -> weights.Snapshot; fetched with ray.get only when newer
    # Learner groups started so far: a restarted group resumes at an older version, which
    # workers holding the lost newer one must load too (they compare (epoch, version)).
    epoch: int = 0


@dataclass(frozen=True)
class RolloutRequest(Rows):
    """Whole GRPO groups to generate, in order: rows g*i .. g*i+g-1 are one prompt's group."""

    prompts: TokenRows  # [n][P_i]
    seeds: list[int]  # [n] each row's sampling seed: its tokens do not depend on the batch
    weights: PublishedWeights | None  # the version to generate with (None: as initialised)
    profile: str | None = None  # directory for a torch-profiler trace of the call (None: none)
    greedy: bool = False  # argmax decoding (held-out evaluation), else the run's sampling


@dataclass(frozen=True)
class Rollouts(Rows):
    """What rollout workers generated, row-aligned with the request's prompts."""

    tokens: TokenRows  # [n][T_i] completion token ids (no prompt)
    logprobs: FloatRows  # [n][T_i] log-probs of ``tokens`` under the sampling policy
    eviction_steps: list[list[int]]  # [n][k_i] thought index t before whose write row evicted
    evicted_slots: list[list[list[int]]]  # [n][k_i][E] ring offsets freed (rkv; [] if window)
    finish_reasons: list[str]  # [n] "stop" or "length"
    texts: list[str]  # [n] decoded completions
    versions: list[int]  # [n] adapter version that generated each row
    wall_s: float  # generation wall time (of the slowest call, once concatenated)

    @classmethod
    def _merge(cls, name: str, vals: list[Any]) -> Any:
        return max(vals, default=0.0)  # wall_s


@dataclass(frozen=True)
class ScoreRequest(Rows):
    completions: list[str]  # [n] model output: hostile input, parsed, never evaluated
    answers: list[str]  # [n] gold answers


@dataclass(frozen=True)
class Scores(Rows):
    rewards: list[float]  # [n]
    statuses: list[str]  # [n] ok / no_answer / parse_error / timeout / mismatch

    @property
    def counts(self) -> dict[str, int]:
        """status -> rows with it."""
        out: dict[str, int] = {}
        for s in self.statuses:
            out[s] = out.get(s, 0) + 1
        return out


@dataclass(frozen=True)
class ReferenceRequest(Rows):
    prompts: TokenRows  # [n][P_i]
    completions: TokenRows  # [n][T_i]
    topk: int = 0  # also the k likeliest tokens per position (top-k distillation)


@dataclass(frozen=True)
class ReferenceLogprobs(Rows):
    logprobs: FloatRows  # [n][T_i] the teacher (frozen), whole context, sampling temperature
    topk_ids: list[TokenRows] = field(default_factory=list)  # [n][T_i][k] when asked for
    topk_logprobs: list[FloatRows] = field(default_factory=list)  # [n][T_i][k]


@dataclass(frozen=True)
class LearnerShard:
    """One learner rank's whole GRPO groups for one RL step."""

    prompts: TokenRows  # [n][P_i]
    completions: TokenRows  # [n][T_i]
    logprobs: FloatRows  # [n][T_i] behaviour policy (the rollout's), for the PPO ratio
    eviction_steps: list[list[int]]  # [n][k_i] replayed exactly as generated
    evicted_slots: list[list[list[int]]]  # [n][k_i][E] which slots went (rkv; [] if window)
    advantages: list[float]  # [n] group-normalised
    ref_logprobs: FloatRows | None  # [n][T_i] when a reference pool runs (KL, distill)
    pad_id: int  # token id used to pad prompts inside replay
    profile: str | None = None  # directory for a torch-profiler trace of the step (None: none)
    topk_ids: list[TokenRows] | None = None  # [n][T_i][k] teacher's likeliest tokens
    topk_logprobs: list[FloatRows] | None = None  # [n][T_i][k] their log-probs

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass(frozen=True)
class SFTShard:
    """One learner rank's targets for one supervised step: teacher-forced under the bounded
    cache (the eviction schedule follows from the cache config, as the rollout's would)."""

    prompts: TokenRows  # [n][P_i]
    completions: TokenRows  # [n][T_i] target solutions (+ EOS)
    weights: FloatRows  # [n][T_i] per-token loss weights (the answer's tokens weigh more)
    pad_id: int
    profile: str | None = None

    def __len__(self) -> int:
        return len(self.prompts)


NAN = float("nan")


@dataclass(frozen=True)
class LossStats:
    """What a loss saw over its rows: token-weighted means, and the loss itself (a sum of this
    rank's share). A figure the stage does not make is nan (GRPO has no target NLL, SFT no
    clip fraction)."""

    loss: float = 0.0
    entropy: float = 0.0
    clip_frac: float = NAN  # fraction of tokens where the PPO clip bit
    ratio: float = NAN  # mean importance ratio pi / pi_old
    kl: float = NAN  # k3 KL to the reference (GRPO with kl_coef)
    nll: float = NAN  # SFT: token-mean NLL of the targets
    answer_nll: float = NAN  # SFT: of the answer's tokens
    distill_kl: float = NAN  # top-k forward KL to the teacher
    tis_weight: float = NAN  # mean truncated importance weight (grpo.tis_cap)
    replay_mean_diff: float = NAN  # token-mean |replayed - rollout| log-prob

    @staticmethod
    def combine(parts: Sequence[tuple[LossStats, float]], sum_loss: bool) -> LossStats:
        """Parts into one: every figure the weight-averaged mean of the parts that have it
        (nan where none does); the loss summed (micro-batches of one step) or averaged."""
        out: dict[str, float] = {}
        for f in fields(LossStats):
            have = [(getattr(s, f.name), w) for s, w in parts if not isnan(getattr(s, f.name))]
            if f.name == "loss" and sum_loss:
                out[f.name] = sum(v for v, _ in have)
            elif have:
                out[f.name] = sum(v * w for v, w in have) / max(sum(w for _, w in have), 1e-12)
            else:
                out[f.name] = NAN
        return LossStats(**out)


@dataclass(frozen=True)
class LearnStats:
    """One rank's view of one learner step (its loss statistics, means over mini-batches)."""

    stats: LossStats
    grad_norm: float  # global, after the all-reduce (before clipping)
    logprob_replay_diff: float  # max |replayed - rollout| log-prob, first mini-batch
    samples: int  # rows in this rank's shard
    version: int  # adapter version after the step
    peak_mb: float  # this rank's peak memory so far
