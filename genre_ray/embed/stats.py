"""Token and timing accounting of the embed stage, kept light: the meter actor's process imports this module only.

The meter is a Ray actor; Ray imports the module that defines it in the actor's process. Defined next to the stage
(torch, transformers, Lance) it cost ~7 CPU-s of imports per run, taken from the encoder actors on a small node.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import ray


@dataclass
class EncodeStats:
    """Token accounting of one encode call: padding_fraction = share of the model's input that was padding."""

    docs: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    # time inside the model (CUDA events on a GPU): against the wall time, how busy the accelerator was
    model_seconds: float = 0.0

    def add(self, other: EncodeStats) -> None:
        self.docs += other.docs
        self.tokens += other.tokens
        self.padded_tokens += other.padded_tokens
        self.model_seconds += other.model_seconds

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0


@ray.remote(num_cpus=0)
class EmbedMeter:
    """Collects token counts and timings from every actor: the figures a Dataset cannot return next to its rows."""

    def __init__(self) -> None:
        self.stats = EncodeStats()
        self.load_seconds: list[float] = []
        self.nodes: set[str] = set()  # Ray node of every encoder actor
        self.first_start = math.inf
        self.last_end = 0.0

    def loaded(self, seconds: float, node: str = "") -> None:
        self.load_seconds.append(seconds)
        if node:
            self.nodes.add(node)

    def add(
        self, docs: int, tokens: int, padded_tokens: int, start: float, end: float, model_seconds: float = 0.0
    ) -> None:
        self.stats.add(EncodeStats(docs, tokens, padded_tokens, model_seconds))
        self.first_start = min(self.first_start, start)
        self.last_end = max(self.last_end, end)

    def totals(self) -> dict[str, Any]:
        steady = max(0.0, self.last_end - self.first_start) if self.stats.docs else 0.0
        actors = max(1, len(self.load_seconds))
        return {
            **asdict(self.stats),
            "padding_fraction": self.stats.padding_fraction,
            "model_load_seconds": max(self.load_seconds, default=0.0),
            # steady state: first window start -> last window end, as timed inside the actors
            "steady_seconds": steady,
            # share of the actors' steady state their model ran: a GPU actor far below 1 waits on its feed
            "model_busy": self.stats.model_seconds / (actors * steady) if steady else 0.0,
            "nodes": sorted(self.nodes),
        }
