"""The ``random`` data source's iterator, for any family: endless well-formed random batches.

A family supplies ``make_batch(rng) -> dict`` (its batch format with random content); this
class adds what the trainer asks of a source: ``bucket_specs()``, and a resumable position.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np


class RandomBatches(Iterator[dict]):
    """Endless random batches; ``num_distinct`` > 0 cycles a fixed set (learnable by memorising).

    Batch ``i`` is drawn from ``np.random.default_rng([seed, i])``, so the state
    (``get_state``/``set_state``) is the number of batches already produced and a resumed
    iterator continues with exactly the batch the interrupted one would have given.
    """

    def __init__(self, spec: Any, make_batch: Callable[[np.random.Generator], dict], seed: int, *,
                 num_distinct: int = 0):
        self.spec, self.make_batch, self.seed = spec, make_batch, int(seed)
        self.num_distinct = int(num_distinct)
        self.position = 0

    def _batch_at(self, index: int) -> dict[str, np.ndarray]:
        if self.num_distinct > 0:
            index %= self.num_distinct
        return self.make_batch(np.random.default_rng([self.seed, index]))

    def bucket_specs(self) -> list:
        """The one shape of every batch (as the records pipeline lists one per bucket)."""
        return [self.spec]

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self._batch_at(self.position)
        self.position += 1
        return batch

    def get_state(self) -> dict:
        return {"kind": "random_batches", "position": self.position, "seed": self.seed}

    def set_state(self, state: dict) -> None:
        if state.get("kind") != "random_batches" or int(state.get("seed", -1)) != self.seed:
            raise ValueError(f"data iterator state {state} was not written by RandomBatches(seed={self.seed})")
        self.position = int(state["position"])
