"""Process environment defaults, in one place: no telemetry, no usage stats.

Applied by the CLI and the test suite before anything imports Ray, transformers or vLLM (they
read these at import). ``setdefault``: a user's own setting always wins. The model hub stays
reachable (a hub id in ``model.path`` is fetched where it runs); the tests set
``HF_HUB_OFFLINE=1`` themselves.
``launch/local.sh`` exports the same for the processes it starts.
"""

from __future__ import annotations

import os

DEFAULTS = {
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "VLLM_NO_USAGE_STATS": "1",
}


def apply_defaults() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
