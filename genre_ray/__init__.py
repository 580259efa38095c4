"""genre_ray: genre-spectrum embeddings for a film catalog on Ray."""

__version__ = "0.1.0"
