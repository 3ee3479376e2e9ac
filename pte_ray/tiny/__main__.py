"""``python -m pte_ray.tiny``: build (or find) the default tiny model and task files."""

from __future__ import annotations

import time

from pte_ray.tiny.build import build_tiny, build_tiny_task

if __name__ == "__main__":
    start = time.perf_counter()
    model_dir = build_tiny()
    files = build_tiny_task()
    print(f"model: {model_dir}  ({time.perf_counter() - start:.1f} s)")
    print(f"train: {files['train']}\ntest:  {files['test']}")
    print((model_dir / "pte_ray_tiny.json").read_text())
