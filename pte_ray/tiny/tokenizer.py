"""The tiny model's byte-level BPE tokenizer, trained here because no model hub is reachable.

It is trained with Qwen2's own pre-tokenizer: ``AutoTokenizer`` swaps in Qwen2's pipeline for a
qwen2 folder, so ids round-trip only if training used the same one. Training takes seconds, so it
runs once per process and recipe (random checkpoints in tests reuse it).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from pte_ray.tiny.recipe import TINY_DIMS, TinyRecipe
from pte_ray.tiny.task import make_task

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
