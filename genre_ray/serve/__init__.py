"""The online service: a Ray Serve application (FastAPI ingress) over the published store.

`app` builds the FastAPI routes over one `Recommender` (JSON in and out, the shared checks of genre_ray.query);
`deployment` wraps it in a Serve deployment, starts it on a local node or a cluster, and is what `serve run`
and the Serve config file import.
"""
