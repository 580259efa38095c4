"""`ray job submit` entry points: `python -m jobs.<name> --config ...`. Thin wrappers over genre_ray.pipeline."""
