"""The built-in engine: the method layer's model + adapter, for rollout and reference roles."""

from __future__ import annotations

from pathlib import Path

import torch

from pte_ray.allocator import keep_freed_memory
from pte_ray.method.adapter import Adapter
from pte_ray.method.checkpoint import load_adapter, load_adapter_tensors, load_base
from pte_ray.method.config import AdapterConfig, CacheConfig, SamplingParams
from pte_ray.method.decode import generate
from pte_ray.method.mapped import embedding_from_file
from pte_ray.method.outputs import Generation
from pte_ray.method.packed import can_pack
from pte_ray.method.replay import replay
from pte_ray.method.requests import DecodeHooks, DecodeRequest, ReplaySpec


def pick_device(num_gpus: float) -> str:
    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str, device: str) -> torch.dtype | None:
    """'auto': the checkpoint's dtype on GPU, fp32 on CPU (bf16 matmuls are slow there)."""
    if name == "auto":
        return None if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


class TorchEngine:
    """Bounded-cache generation with a swappable adapter; full-context teacher-forced log-probs."""

    def __init__(
        self,
        model_path: str,
        adapter_cfg: AdapterConfig | None,
        cache_cfg: CacheConfig,
        dtype: str = "auto",
        device: str = "cpu",
        compile_step: bool = False,
        pack: bool = False,
        batch_rows: int = 0,
    ) -> None:
        """``batch_rows``: rows decoded at once (0: every prompt of a call; fewer: a row that
        ends takes the next queued prompt)."""
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = load_base(model_path, dtype=resolve_dtype(dtype, device), device=device)
        if pack and not compile_step and can_pack(self.model.dtype, device):
            self.model.pack()  # no grad ever runs here: oneDNN's layout (packed.py)
            embedding_from_file(self.model, model_path)  # lookups only now: rows from the file
        if device == "cpu":  # once loaded: a step's big tensors stay paged in (allocator.py)
            keep_freed_memory()
        self.adapter = None
        if adapter_cfg is not None and adapter_cfg.has_adapter:
            self.adapter = Adapter(self.model.args, adapter_cfg, self.model.dtype, device)
            self.adapter.requires_grad_(False)
        self.cache_cfg = cache_cfg
        self.batch_rows = batch_rows
        self.tag = ""
        tok = self.tokenizer
        self.eos_ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        # Static shapes: each batch size the decode meets (rows leave as they finish) compiles
        # once per process, so it pays on long generations, not on short CPU rollouts.
        self.step_fn = torch.compile(self.model.forward, dynamic=False) if compile_step else None

    def load_state(self, tensors: dict[str, torch.Tensor], tag: str = "") -> None:
        """Swap in published weights (``tag``, the version's name, matters to vLLM only)."""
        if self.adapter is None:
            return
        load_adapter_tensors(self.adapter, tensors, "published weights")
        self.tag = tag

    def load_dir(self, path: str) -> None:
        """An adapter checkpoint from disk (a stage's output, or the teacher's)."""
        if self.adapter is not None:
            load_adapter(self.adapter, path)
            self.tag = Path(path).name

    def loaded_versions(self) -> list[str]:
        return [self.tag] if self.adapter is not None and self.tag else []

    def adapter_state(self) -> dict[str, torch.Tensor]:
        a = self.adapter
        return {} if a is None else {k: v.clone() for k, v in a.state_dict().items()}

    def sample(self, prompts: list[list[int]], sp: SamplingParams) -> Generation:
        """Completions of ``prompts`` under the engine's cache, with its adapter."""
        req = DecodeRequest(prompts, self.cache_cfg, self.pad_id, batch_rows=self.batch_rows)
        hooks = DecodeHooks(self.eos_ids, self.tokenizer.decode, self.step_fn)
        return generate(self.model, self.adapter, req, sp, hooks)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def full_context_topk(
        self,
        prompts: list[list[int]],
        completions: list[list[int]],
        temperature: float,
        micro_batch: int,
        k: int,
    ) -> tuple[list[list[float]], list[list[list[int]]], list[list[list[float]]]]:
        """Log-probs of the completions' tokens, and (``k`` > 0) the ``k`` likeliest tokens at
        every completion position with their log-probs: what top-k distillation pulls toward."""
        full = CacheConfig(budget=None)
        lps: list[list[float]] = []
        ids: list[list[list[int]]] = []
        tops: list[list[list[float]]] = []
        for i in range(0, len(prompts), micro_batch):
            p, c = prompts[i : i + micro_batch], completions[i : i + micro_batch]
            spec = ReplaySpec(temperature=temperature, topk=k)
            res = replay(self.model, self.adapter, DecodeRequest(p, full, self.pad_id), c, spec)
            for j in range(len(c)):
                n = len(c[j])
                lps.append(res.logprobs[j, :n].tolist())
                if k:
                    ids.append(res.topk_ids[j, :n].tolist())
                    tops.append(res.topk_logprobs[j, :n].tolist())
        return lps, ids, tops

    name = "torch"

    @property
    def device(self) -> str:
        return str(self.model.device)
