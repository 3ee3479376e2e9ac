"""A tiny model, tokenizer and task built by the project itself, for tests and the default run.

No model hub is reachable, so everything is made here: a byte-level BPE tokenizer trained with
Qwen2's own pre-tokenizer (``AutoTokenizer`` swaps in Qwen2's pipeline for a qwen2 folder, so ids
round-trip only if training used the same one), a Qwen2-style model, and a short supervised
warm-start on the synthetic task of :mod:`pte_ray.tiny_task`, so that GRPO starts above zero
reward with room to climb. Results are cached on disk under a hash of the recipe.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from pte_ray.disk_cache import cache_root, cached
from pte_ray.progress import progress, say
from pte_ray.tiny_eval import bounded_accuracy, full_cache_accuracy
from pte_ray.tiny_task import (
    DEFAULT_SPEC,
    RecallSpec,
    TaskSpec,
    make_task,
    recall_distance,
    write_rows,
    write_task,
)

__all__ = [
    "TINY_DIMS",
    "TaskSpec",
    "TinyRecipe",
    "build_tiny",
    "build_tiny_task",
    "build_tokenizer",
    "cache_root",
    "make_task",
    "random_checkpoint",
    "raw_tokenizer",
    "write_task",
]

# Bump when the build code changes what a recipe produces, so stale caches are not reused.
RECIPE_VERSION = 3  # 3: metadata records the build environment

TINY_DIMS: dict[str, Any] = {
    "hidden_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # GQA, head_dim 32
    "head_dim": 32,
    "num_hidden_layers": 4,
    "intermediate_size": 384,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
}

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOS_TOKEN = "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Generic text so the vocabulary covers prose and answer formats, not only the task's strings.
GENERIC_TEXT = [
    "The answer is 42.",
    "So the final answer is \\boxed{7}.",
    "Therefore, the result is \\boxed{\\frac{3}{4}}.",
    "Let me think step by step.",
    "First, we add the numbers. Then we check the result.",
    "We subtract 5 from 12 and get 7, so the total is 7.",
    "If x = 3 and y = 4, then x + y = 7 and x * y = 12.",
    "The question asks for the sum of the values in the list.",
    "Each step uses only the previous line and the question.",
    "A reasoning model writes its thoughts before the final answer.",
    "The cache keeps the prompt and the most recent thought tokens.",
    "Count the apples: there are three apples and four oranges.",
    "What is 15% of 80? It is 12.",
    "The price went from $1,200 to $1,500, an increase of 25%.",
    "Question: how many minutes are in 3 hours? Answer: 180 minutes.",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
]


@dataclass(frozen=True)
class TinyRecipe:
    """Everything that determines the tiny model; its hash names the cache directory."""

    seed: int = 0
    vocab_size: int = 512  # BPE target; the trained vocabulary may be smaller
    dims: tuple[tuple[str, Any], ...] = tuple(TINY_DIMS.items())
    task: TaskSpec | RecallSpec = DEFAULT_SPEC
    tokenizer_corpus: int = 2000  # task problems in the tokenizer's training corpus
    warm_steps: int = 1000
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    train_pool: int = 3000  # distinct train problems the warm-start cycles through
    eval_n: int = 128  # held-out problems for the recorded accuracy
    train_file_n: int = 2000
    test_file_n: int = 200
    eval_budget: int = 64  # thought budget of the recorded bounded-cache accuracy

    def digest(self) -> str:
        blob = json.dumps({"v": RECIPE_VERSION, **asdict(self)}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------- tokenizer


# Tasks by name (``model.path`` / ``data.train`` / ``eval --bench``): the counting task of the
# default run, and the recall task whose answer must survive eviction (tiny_task.RecallSpec).
RECIPES: dict[str, TinyRecipe] = {
    "tiny": TinyRecipe(),
    "tiny-recall": TinyRecipe(task=RecallSpec(), warm_steps=2000),
}


def _tokenizer_corpus(recipe: TinyRecipe) -> list[str]:
    rows = make_task(recipe.tokenizer_corpus, seed=recipe.seed, split="train", spec=recipe.task)
    return [r["prompt"] + r["solution"] for r in rows] + GENERIC_TEXT


@functools.lru_cache(maxsize=4)
def _train_tokenizer_json(recipe: TinyRecipe) -> str:
    """Trains the BPE once per process and recipe; random checkpoints reuse it for speed."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(
        BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    )
    # Exactly Qwen2Tokenizer's pipeline (transformers/models/qwen2/tokenization_qwen2.py).
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: any text encodes
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus(recipe), trainer=trainer)
    return tok.to_str()


def raw_tokenizer(recipe: TinyRecipe | None = None):  # -> tokenizers.Tokenizer
    """The trained ``tokenizers.Tokenizer`` (what ``AutoTokenizer`` must agree with)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(_train_tokenizer_json(recipe or TinyRecipe()))


def build_tokenizer(path: str | Path, recipe: TinyRecipe | None = None):
    """Trains (or reuses) the tiny BPE and saves it as a Qwen2 tokenizer loadable from ``path``.

    Saved through ``Qwen2Tokenizer`` so ``tokenizer_class`` is Qwen2's for every arch (a llama
    folder would otherwise get a different pre-tokenizer on load).
    """
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    model = json.loads(_train_tokenizer_json(recipe or TinyRecipe()))["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=merges,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        unk_token=None,
        extra_special_tokens=SPECIAL_TOKENS[1:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=TINY_DIMS["max_position_embeddings"],
    )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(path))
    return tok


# ----------------------------------------------------------------------------- models


def _config(arch: str, vocab_size: int, eos_id: int, dims: dict[str, Any]):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    dims = dict(dims)
    rope = {"rope_type": "default", "rope_theta": float(dims.pop("rope_theta", 10000.0))}
    head_dim = dims.pop("head_dim", dims["hidden_size"] // dims["num_attention_heads"])
    if head_dim < 32:
        raise ValueError(f"head_dim must be >= 32 (kernels and tests assume it), got {head_dim}")
    common = dict(
        vocab_size=vocab_size,
        rope_parameters=rope,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        bos_token_id=None,
        rms_norm_eps=1e-6,
        **dims,
    )
    if arch == "qwen2":  # q/k/v projections carry a bias in Qwen2; head_dim is implicit
        if head_dim * dims["num_attention_heads"] != dims["hidden_size"]:
            raise ValueError("qwen2 needs hidden_size == num_attention_heads * head_dim")
        return Qwen2Config(**common)
    if arch == "qwen3":  # q_norm/k_norm, no bias, explicit head_dim
        return Qwen3Config(head_dim=head_dim, attention_bias=False, **common)
    if arch == "llama":  # no bias anywhere, no q/k norms
        return LlamaConfig(head_dim=head_dim, attention_bias=False, mlp_bias=False, **common)
    raise ValueError(f"arch must be qwen2, qwen3 or llama, got {arch!r}")


def _new_model(arch: str, seed: int, dims: dict[str, Any], tok, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    config = _config(arch, len(tok), tok.convert_tokens_to_ids(EOS_TOKEN), dims)
    with _seeded(seed):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model.to(dtype)


@contextmanager
def _seeded(seed: int):
    """Seeds torch without leaking the change into the caller's global RNG stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def random_checkpoint(
    path: str | Path,
    arch: str = "qwen2",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **overrides: Any,
) -> Path:
    """Saves a randomly initialised tiny HF checkpoint (+ tokenizer) for forward-parity tests."""
    path = Path(path)
    dims = {**TINY_DIMS, **overrides}
    tok = build_tokenizer(path)
    model = _new_model(arch, seed, dims, tok, dtype)
    model.save_pretrained(str(path), safe_serialization=True)
    return path


# ----------------------------------------------------------------------------- warm-start


def _encode(tok, rows: list[dict[str, str]], eos_id: int) -> list[tuple[list[int], int]]:
    """(prompt + solution + eos ids, prompt length); prompt and solution encode separately,
    which the task's format makes identical to encoding the concatenation."""
    prompts = tok.encode_batch([r["prompt"] for r in rows])
    sols = tok.encode_batch([r["solution"] for r in rows])
    return [(p.ids + s.ids + [eos_id], len(p.ids)) for p, s in zip(prompts, sols, strict=True)]


def _batch(items: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    width = max(len(ids) for ids, _ in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    target = torch.zeros_like(ids, dtype=torch.bool)  # loss only on solution + eos
    for i, (seq, n_prompt) in enumerate(items):
        ids[i, : len(seq)] = torch.tensor(seq)
        attn[i, : len(seq)] = 1
        target[i, n_prompt : len(seq)] = True
    return ids, attn, target


def _answer_id(tok) -> int:
    """The id of "####": the answer follows it."""
    return tok.get_vocab().get("####", -1)


def _weighted_loss(logits, ids, mask, answer_id: int, weight: float):
    """Mean next-token loss with ``weight`` on "####" and the answer after it."""
    target = ids[:, 1:]
    w = torch.ones_like(target, dtype=torch.float32)
    after = (target == answer_id).long().cumsum(1) > 0
    w[after] = weight
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
    w = w * mask
    return (ce * w).sum() / w.sum()


def _warm_start(model, tok, recipe: TinyRecipe, eos_id: int) -> list[float]:
    """Teacher-forced next-token loss on the solution part; AdamW with warmup + cosine decay.

    Long enough that the full-cache model is mostly right (~75%), which makes it lean on the
    whole solution so far: under a bounded cache it loses count of the lines and is mostly
    wrong (~20% at a 64-token thought budget). That gap is what GRPO with PTE climbs.
    """
    pool = _encode(tok, make_task(recipe.train_pool, recipe.seed + 1, "train", recipe.task), eos_id)
    order_rng = random.Random(recipe.seed)
    order: list[int] = []
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embed" in name else decay).append(p)
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": recipe.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=recipe.lr,
        betas=(0.9, 0.98),
    )
    losses: list[float] = []
    weight = float(getattr(recipe.task, "answer_weight", 1.0))
    answer_id = _answer_id(tok)
    model.train()
    bar = progress(recipe.warm_steps, "tiny model warm-start", "step")
    with _seeded(recipe.seed):
        for step in range(recipe.warm_steps):
            warm = min(1.0, (step + 1) / max(1, recipe.warmup_steps))
            cosine = 0.1 + 0.45 * (1 + math.cos(math.pi * step / max(1, recipe.warm_steps)))
            for group in opt.param_groups:
                group["lr"] = recipe.lr * warm * cosine
            if len(order) < recipe.batch_size:
                epoch = list(range(len(pool)))
                order_rng.shuffle(epoch)
                order += epoch
            items = [pool[i] for i in order[: recipe.batch_size]]
            del order[: recipe.batch_size]
            ids, attn, target = _batch(items, eos_id)
            logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
            mask = target[:, 1:]
            if weight == 1.0:
                loss = torch.nn.functional.cross_entropy(logits[mask], ids[:, 1:][mask])
            else:
                loss = _weighted_loss(logits, ids, mask, answer_id, weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.update(1)
    bar.close()
    model.eval()
    return losses


def build_environment() -> dict[str, Any]:
    """What a build's numbers depend on besides the recipe.

    Training 1000 fp32 steps is chaotic: a different GEMM kernel (CPU model and vector ISA,
    MKL's code path), thread count (reduction order) or library version (tokenizer merges,
    initialisation) gives a different, equally valid model. Recorded so builds can be compared.
    """
    import tokenizers
    import transformers

    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in _cpuinfo() if ln.startswith("model name")),
        platform.processor() or platform.machine(),
    )
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def build_tiny(
    cache_dir: str | Path | None = None, force: bool = False, recipe: TinyRecipe | None = None
) -> Path:
    """The warm-started tiny Qwen2 checkpoint (tokenizer included), built once and cached.

    ``pte_ray_tiny.json`` beside the weights records the recipe, its hash, the warm-start loss and
    the measured held-out accuracy (greedy, and sampled at temperature 1 as GRPO rollouts are).
    """
    recipe = recipe or TinyRecipe()

    def build(out: Path) -> None:
        say(
            f"building the tiny model once (3-6 min on 2 CPU cores; torch threads "
            f"{torch.get_num_threads()}) -> {out.parent}"
        )
        t0 = time.perf_counter()
        hf_tok = build_tokenizer(out, recipe)
        tok = raw_tokenizer(recipe)
        eos_id = tok.token_to_id(EOS_TOKEN)
        model = _new_model("qwen2", recipe.seed, dict(recipe.dims), hf_tok, torch.float32)
        t_train = time.perf_counter()
        losses = _warm_start(model, tok, recipe, eos_id)
        t_eval = time.perf_counter()
        test = make_task(recipe.eval_n, recipe.seed, "test", recipe.task)
        say(f"tiny model: measuring held-out accuracy on {len(test)} problems (~1 min)")
        greedy = full_cache_accuracy(model, tok, test, eos_id, sample=False, seed=recipe.seed)
        sampled = full_cache_accuracy(model, tok, test, eos_id, sample=True, seed=recipe.seed)
        model.save_pretrained(str(out), safe_serialization=True)
        bounded = bounded_accuracy(out, tok, test, eos_id, recipe.eval_budget, recipe.seed)
        sol_lens = [len(tok.encode(r["solution"]).ids) for r in test]
        tail = losses[-20:] or [float("nan")]
        meta = {
            "recipe_hash": recipe.digest(),
            "recipe": asdict(recipe),
            "recipe_version": RECIPE_VERSION,
            "vocab_size": len(hf_tok),
            "warm_start_loss": sum(tail) / len(tail),
            "loss_curve": losses[:: max(1, len(losses) // 40)],
            "eval_n": len(test),
            "greedy_accuracy": greedy,
            "sampled_accuracy": sampled,
            "eval_budget": recipe.eval_budget,
            "bounded_sampled_accuracy": bounded,
            "solution_tokens": {
                "min": min(sol_lens),
                "mean": sum(sol_lens) / len(sol_lens),
                "max": max(sol_lens),
            },
            "seconds": {
                "train": t_eval - t_train,
                "eval": time.perf_counter() - t_eval,
                "total": time.perf_counter() - t0,
            },
            "environment": build_environment(),
            "build_pid": os.getpid(),
        }
        (out / "pte_ray_tiny.json").write_text(json.dumps(meta, indent=2) + "\n")
        say(
            f"tiny model built in {meta['seconds']['total']:.0f} s: greedy accuracy {greedy:.2f}, "
            f"sampled {sampled:.2f}, sampled under a {recipe.eval_budget}-token thought budget "
            f"{bounded:.2f}"
        )

    return cached(
        cache_root(cache_dir), f"tiny-{recipe.digest()}", "pte_ray_tiny.json", force, build
    )


def build_tiny_task(
    cache_dir: str | Path | None = None, recipe: TinyRecipe | None = None
) -> dict[str, Path]:
    """Train/test JSONL task files in the cache root (independent of the model build)."""
    recipe = recipe or TinyRecipe()
    key = json.dumps(
        [RECIPE_VERSION, recipe.seed, asdict(recipe.task), recipe.train_file_n, recipe.test_file_n]
    )
    name = f"task-{hashlib.sha256(key.encode()).hexdigest()[:12]}"

    def encode(text: str) -> list[int]:
        return raw_tokenizer(recipe).encode(text).ids  # trained once per process (lru_cache)

    def build(out: Path) -> None:
        for split, n in (("train", recipe.train_file_n), ("test", recipe.test_file_n)):
            rows = make_task(n, recipe.seed, split, recipe.task)
            if isinstance(recipe.task, RecallSpec):  # accuracy per distance needs it
                for row in rows:
                    row["distance"] = recall_distance(encode, row)
            write_rows(out / f"{split}.jsonl", rows)

    folder = cached(cache_root(cache_dir), name, "test.jsonl", False, build)
    return {"train": folder / "train.jsonl", "test": folder / "test.jsonl"}


if __name__ == "__main__":
    start = time.perf_counter()
    model_dir = build_tiny()
    files = build_tiny_task()
    print(f"model: {model_dir}  ({time.perf_counter() - start:.1f} s)")
    print(f"train: {files['train']}\ntest:  {files['test']}")
    print((model_dir / "pte_ray_tiny.json").read_text())
