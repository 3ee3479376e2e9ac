"""Shared fixtures: real tiny HF checkpoints on disk, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")


@pytest.fixture(scope="session")
def random_ckpt(tmp_path_factory: pytest.TempPathFactory):
    """``random_ckpt(arch)`` -> path of a random tiny checkpoint of that architecture."""
    from pte_ray.tiny import random_checkpoint

    made: dict[str, Path] = {}

    def get(arch: str = "qwen2") -> Path:
        if arch not in made:
            made[arch] = random_checkpoint(tmp_path_factory.mktemp(arch), arch=arch, seed=0)
        return made[arch]

    return get
