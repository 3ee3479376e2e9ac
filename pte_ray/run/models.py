"""Where a run's model comes from: ``model.path`` (or ``reference.model``) to a local directory.

A spec is a local checkpoint directory, a hub id (``Qwen/Qwen2.5-7B-Instruct``), a tiny task's
name (``tiny``, ``tiny-recall``: built by the project and cached) or a real model's shape with
random weights (``qwen2.5-0.5b-shape``). Every actor resolves the *spec* on its own node: a hub
id is downloaded into that node's cache and a tiny model built into that node's
``$PTE_RAY_CACHE``, so no node is handed a path that exists only on the head; a local directory
must be on storage every node sees (the error says so, naming the node). The controller
resolves it too, before Ray starts, but for a hub id fetches only the tokenizer and config.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
HEAD_FILES = ["*.json", "*.txt", "*.model", "tokenizer*", "*.jinja"]  # no weights


def _builtin(spec: str) -> bool:
    from pte_ray.tiny import RECIPES
    from pte_ray.tiny.shapes import SHAPES

    return spec in RECIPES or spec in SHAPES


def check_spec(spec: str) -> None:
    """The spec's form, before anything starts: a directory with ``config.json``, a built-in
    name, or a hub id (reachable unless ``HF_HUB_OFFLINE``, then it must be cached)."""
    if _builtin(spec):
        return
    local = Path(spec)
    if local.exists() or local.is_absolute() or spec.startswith("."):
        if not (local / "config.json").is_file():
            raise FileNotFoundError(
                f"model path {spec!r}: {'no config.json in it' if local.is_dir() else 'does not exist'}"  # noqa: E501
                " (a Hugging Face checkpoint directory, a hub id such as Qwen/Qwen2.5-7B-Instruct, "
                "or tiny / tiny-recall)"
            )
        return
    if not HUB_ID.match(spec):
        raise ValueError(
            f"model path {spec!r} is neither a directory nor a hub id (org/name) nor a built-in "
            "name (tiny, tiny-recall, qwen2.5-0.5b-shape, qwen2.5-1.5b-shape)"
        )


def resolve_model(spec: str, weights: bool = True) -> str:
    """The local checkpoint directory of ``spec`` on this node (built or fetched if needed);
    ``weights=False``: for a hub id, only what the tokenizer and the config need."""
    from pte_ray.method.checkpoint import _hf_config
    from pte_ray.tiny import RECIPES

    if spec in RECIPES:  # 'tiny', 'tiny-recall': built and cached by the project
        from pte_ray.tiny import build_tiny

        return str(build_tiny(recipe=RECIPES[spec]))
    from pte_ray.tiny.shapes import SHAPES, shape_checkpoint

    if spec in SHAPES:  # a real model's shape with random weights, built locally
        return str(shape_checkpoint(spec))
    check_spec(spec)
    local = Path(spec)
    if not local.exists() and HUB_ID.match(spec):
        local = _download(spec, None if weights else HEAD_FILES)
    elif not local.exists():
        raise FileNotFoundError(
            f"model path {spec!r} does not exist on node {socket.gethostname()}: a local "
            "directory must be on storage every node mounts (or use a hub id)"
        )
    _hf_config(local)  # has config.json, a supported architecture
    return str(local)


def _download(repo_id: str, patterns: list[str] | None) -> Path:
    """A hub checkpoint into this node's cache (from the cache alone under HF_HUB_OFFLINE)."""
    from huggingface_hub import snapshot_download

    patterns = patterns or [*HEAD_FILES, "*.safetensors"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # offline, unknown repo, no auth: one clear message
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false")
        why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else str(e)
        raise FileNotFoundError(
            f"model.path {repo_id!r}: not a local directory and not fetched from the hub on "
            f"node {socket.gethostname()} ({type(e).__name__}: {why})"
        ) from e
