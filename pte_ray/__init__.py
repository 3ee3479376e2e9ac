"""pte-ray: GRPO under a bounded KV cache with Progressive Thought Encoding, on Ray."""

__version__ = "0.1.0"
