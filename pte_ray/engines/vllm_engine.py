"""The vLLM engine: full-cache rollouts (``base``, ``lora``) and reference log-probs.

Same surface as ``TorchEngine`` (sample, full_context_topk, load_state, decode), so a
worker picks its engine by config. Two things vLLM does differently, handled here:

* **Temperature.** Our log-probs are those of softmax(logits / T) over the whole vocabulary,
  which the learner recomputes; vLLM's prompt log-probs ignore temperature and its sampled
  "processed" log-probs come after top-k/top-p. So the engine is built for one T: the model's
  logits processor scales by 1/T, vLLM samples at temperature 1 (top-k/top-p then act on
  logits / T, as ours do) and its raw log-probs are ours.
* **Versioned adapters.** Each published version is a PEFT adapter under its own name and id:
  a request runs on the adapter it started with and the prefix cache (keyed by adapter) never
  mixes versions; versions beyond ``keep_versions`` are unloaded.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

import torch

from pte_ray.allocator import keep_freed_memory
from pte_ray.config_sections import EXTRA_HINT, VllmConfig
from pte_ray.method.config import AdapterConfig, SamplingParams
from pte_ray.method.outputs import Generation
from pte_ray.method.peft import write_peft


def import_vllm() -> Any:
    """vLLM, or an error that names the extra to install."""
    try:
        import vllm
    except Exception as e:  # ImportError, or a broken install failing at import
        msg = f"the vLLM engine needs vLLM ({type(e).__name__}: {e}); {EXTRA_HINT}"
        raise ImportError(msg) from e
    return vllm


def _scale_logits(scale: float, model: torch.nn.Module) -> float:
    """Runs inside vLLM's worker: the logits processor multiplies by ``scale`` (= 1/T)."""
    model.logits_processor.scale = scale
    return scale


class VllmEngine:
    def __init__(
        self,
        model_path: str,
        adapter_cfg: AdapterConfig | None,
        temperature: float,
        settings: VllmConfig,
        dtype: str = "auto",
        device: str = "cpu",
        seed: int = 0,
        keep_versions: int = 2,
    ) -> None:
        cpu = not device.startswith("cuda")
        if cpu:  # one process (no engine-core child) and a bounded KV pool on a CPU machine
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{settings.cpu_kvcache_gib:g}")
        vllm = import_vllm()
        self.adapter_cfg = adapter_cfg if adapter_cfg and adapter_cfg.has_adapter else None
        lora = {}
        if self.adapter_cfg is not None:
            lora = {
                "enable_lora": True,
                "max_lora_rank": max(8, self.adapter_cfg.rank),
                "max_loras": keep_versions,
            }
        try:
            self.llm = vllm.LLM(
                model=model_path,
                dtype=("float32" if cpu else "auto") if dtype == "auto" else dtype,
                seed=seed,
                max_model_len=settings.max_model_len,
                enforce_eager=settings.enforce_eager,
                enable_prefix_caching=settings.prefix_caching,
                **({"max_num_seqs": settings.max_num_seqs} if settings.max_num_seqs else {}),
                **({} if cpu else {"gpu_memory_utilization": settings.gpu_memory_utilization}),
                **lora,
            )
        except Exception as e:
            raise RuntimeError(
                f"vLLM failed to start on {model_path} ({type(e).__name__}: {e}); the torch "
                "engine (rollout.engine=torch, reference.engine=torch) does not need it"
            ) from e
        if cpu:  # as the torch engine does, once loaded (allocator.py); vLLM's CPU docs ask
            keep_freed_memory()  # for a tcmalloc preload for the same reason
        self.tokenizer = self.llm.get_tokenizer()
        self.temperature = float(temperature)
        if self.temperature != 1.0:
            self.llm.apply_model(functools.partial(_scale_logits, 1.0 / self.temperature))
        self.model_path, self.keep_versions = model_path, keep_versions
        self.versions: deque[Any] = deque()  # LoRARequests, oldest first
        self.next_id = 1
        self.state: dict[str, torch.Tensor] = {}
        self.tmp = tempfile.mkdtemp(prefix="pte-ray-vllm-lora-")

    def load_dir(self, path: str) -> None:
        """An adapter checkpoint from disk (the teacher's), served from the next request on."""
        from safetensors.torch import load_file

        self.load_state(load_file(str(Path(path) / "adapter.safetensors")), tag=Path(path).name)

    def load_state(self, tensors: dict[str, torch.Tensor], tag: str = "0") -> None:
        """Serve ``tensors`` as adapter version ``tag`` from the next request on."""
        if self.adapter_cfg is None:
            return
        from vllm.lora.request import LoRARequest

        path = write_peft(f"{self.tmp}/{self.next_id}", tensors, self.adapter_cfg, self.model_path)
        req = LoRARequest(f"pte-ray-v{tag}", self.next_id, str(path))
        self.next_id += 1
        self.llm.llm_engine.add_lora(req)
        self.versions.append(req)
        self.state = {k: v.detach().cpu().clone() for k, v in tensors.items()}
        while len(self.versions) > self.keep_versions:
            old = self.versions.popleft()
            self.llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)

    def loaded_versions(self) -> list[str]:
        return [r.lora_name for r in self.versions]

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The newest version's tensors as published (what vLLM serves, before the export)."""
        return {k: v.clone() for k, v in self.state.items()}

    def _check_temperature(self, t: float) -> None:
        if t != self.temperature:
            raise ValueError(
                f"this vLLM engine computes log-probs at temperature {self.temperature} (fixed "
                f"at start); asked for {t}"
            )

    def _params(self, sp: SamplingParams, n_rows: int) -> list[Any]:
        from vllm import SamplingParams as VSP

        self._check_temperature(sp.logprob_temperature)
        seeds: list[int | None] = list(sp.row_seeds) or [
            None if sp.seed is None else sp.seed * 1_000_003 + i for i in range(n_rows)
        ]
        if len(seeds) != n_rows:
            raise ValueError(f"{len(seeds)} row_seeds for {n_rows} prompts")
        return [
            VSP(
                max_tokens=sp.max_new_tokens,
                temperature=0.0 if sp.greedy else 1.0,
                top_p=sp.top_p,
                top_k=sp.top_k if sp.top_k > 0 else -1,
                seed=s,
                logprobs=0,
                stop=list(sp.stop_strings) or None,
                stop_token_ids=list(sp.stop_token_ids),
            )
            for s in seeds
        ]

    def sample(self, prompts: list[list[int]], sp: SamplingParams) -> Generation:
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt: every prompt needs at least one token")
        lora = self.versions[-1] if self.versions else None
        outs = self.llm.generate(
            [{"prompt_token_ids": p} for p in prompts],
            self._params(sp, len(prompts)),
            lora_request=lora,
            use_tqdm=False,
        )
        tokens, logprobs, reasons = [], [], []
        for o in (r.outputs[0] for r in outs):
            ids = list(o.token_ids)
            tokens.append(ids)
            logprobs.append([o.logprobs[i][t].logprob for i, t in enumerate(ids)])
            reasons.append("stop" if o.finish_reason == "stop" else "length")
        stats = {"tokens": float(sum(map(len, tokens)))}
        return Generation(prompts, tokens, logprobs, [[] for _ in prompts], reasons, stats)

    def full_context_topk(
        self,
        prompts: list[list[int]],
        completions: list[list[int]],
        temperature: float,
        micro_batch: int,
        k: int,
    ) -> tuple[list[list[float]], list[list[list[int]]], list[list[list[float]]]]:
        """As ``TorchEngine.full_context_topk``: vLLM's prompt log-probs with its top ``k``."""
        from vllm import SamplingParams as VSP

        self._check_temperature(temperature)
        sp = VSP(max_tokens=1, temperature=1.0, prompt_logprobs=k, detokenize=False)
        joined = [{"prompt_token_ids": p + c} for p, c in zip(prompts, completions, strict=True)]
        lora = self.versions[-1] if self.versions else None  # a teacher's adapter, if any
        outs = self.llm.generate(joined, sp, lora_request=lora, use_tqdm=False)
        res, ids, tops = [], [], []
        for p, c, o in zip(prompts, completions, outs, strict=True):
            pl = o.prompt_logprobs  # [None, {id: Logprob}, ...] per prompt position
            res.append([pl[len(p) + i][t].logprob for i, t in enumerate(c)])
            if k:  # each position's dict: the k likeliest (ranked 1..k) plus the actual token
                top = [
                    sorted(
                        ((x.rank, t, x.logprob) for t, x in pl[len(p) + i].items() if x.rank <= k)
                    )[:k]
                    for i in range(len(c))
                ]
                ids.append([[t for _, t, _ in row] for row in top])
                tops.append([[lp for _, _, lp in row] for row in top])
        return res, ids, tops

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    name = "vllm"
    device = "vllm"  # vLLM places itself

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
