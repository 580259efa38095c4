"""Offline evaluation: genre quality of the spectrum, and what it is worth to a recommender beside collaborative
filtering under three protocols (warm, cold items, long tail); see docs/evaluation.md.

One module per job: `data` (the evaluated movies, streamed from Lance), `protocols` (ratings join and splits),
`methods` (baselines, content, CF, hybrids), `rank` (scoring a split), `recommendation` (the protocols and their
tuning), `genres` (classification and coherence), `serving` (the served ranking as served), `run` (the stage).
"""

from genre_ray.evaluate.run import compute_metrics, evaluate

__all__ = ["compute_metrics", "evaluate"]
