"""Prompts in a seeded order that a resumed run continues exactly where it stopped.

Each epoch is a fresh permutation drawn from (seed, epoch), so the whole state of the stream is
its cursor (epoch, index): a checkpoint stores two integers, not the order.
"""

from __future__ import annotations

import numpy as np

from pte_ray.rl.data.schema import Example


class PromptStream:
    """Endless stream over ``examples`` in a fresh seeded permutation each epoch.

    ``cursor()`` is the whole state needed to resume (with the same examples and seed).
    Typical use: ``PromptStream(load_prompts(cfg), seed=cfg.train.seed)``.
    """

    def __init__(self, examples: list[Example], seed: int = 0) -> None:
        if not examples:
            raise ValueError("no examples to stream")
        self.examples = examples
        self.seed = seed
        self._epoch = 0
        self._index = 0
        self._order: tuple[int, list[int]] | None = None

    def epoch_order(self, epoch: int) -> list[int]:
        """The permutation of example positions for ``epoch`` (the last one is kept)."""
        if self._order is None or self._order[0] != epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))
            self._order = (epoch, perm.tolist())
        return self._order[1]

    @property
    def epoch_size(self) -> int:
        return len(self.examples)

    def next_batch(self, n: int) -> list[Example]:
        """The next ``n`` examples, running on into the next epoch's order when one ends."""
        out: list[Example] = []
        while len(out) < n:
            order = self.epoch_order(self._epoch)
            take = order[self._index : self._index + n - len(out)]
            out.extend(self.examples[i] for i in take)
            self._index += len(take)
            if self._index >= len(order):
                self._epoch, self._index = self._epoch + 1, 0
        return out

    def cursor(self) -> dict[str, int]:
        return {"epoch": self._epoch, "index": self._index}

    def restore(self, cursor: dict[str, int]) -> None:
        """Continue from a ``cursor()`` taken on a stream of the same examples and seed."""
        epoch, index = int(cursor["epoch"]), int(cursor["index"])
        if epoch < 0 or not 0 <= index <= self.epoch_size:
            raise ValueError(f"cursor {cursor} out of range for an epoch of {self.epoch_size}")
        self._epoch, self._index = epoch, index
