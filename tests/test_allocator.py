"""The allocator keeps freed memory: a decode step's [batch, vocab] tensors stop page-faulting.

Run in a fresh process (glibc's thresholds start at their defaults there, and setting them is
for the whole process): the page faults of 20 softmax + cumsum passes over a [32, 151936] fp32
tensor (a batch-32 step's sampling at Qwen2.5's vocabulary), before and after.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, resource, torch
from pte_ray.allocator import keep_freed_memory
x = torch.randn(32, 151936)
def faults(n=20):
    torch.softmax(x, -1).cumsum(-1)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        y = torch.softmax(x, -1)
        z = y.cumsum(-1)
        del y, z
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
before = faults()
kept = keep_freed_memory()
faults()  # what malloc_trim handed back at the call is paged in again once
print(json.dumps({"before": before, "kept": kept, "after": faults()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_memory_is_kept() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if not res["kept"]:
        pytest.skip("the C library has no mallopt (not glibc)")
    if res["before"] < 1000:
        pytest.skip(f"this C library already kept the memory ({res['before']} page faults)")
    assert res["after"] < res["before"] / 20, res  # 20 x 2 buffers of 19 MB: ~0 faults left
