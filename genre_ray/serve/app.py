"""The HTTP API over one Recommender: routes, error mapping, the request-body limit. No endpoint writes anything.

Every answer names the publish that produced it (run id, publish number, model version): a handler takes one view
of the store and runs its whole query on it, so a publish that lands mid-request cannot mix two publishes.
Parameters travel as text and go through genre_ray.query, so a bad value gets the CLI's message (422); an unknown
title gets 404 with close matches; a body over MAX_BODY_BYTES gets 413 before it is parsed.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.concurrency import run_in_threadpool

from genre_ray import query
from genre_ray.recommend import BadQuery, MovieNotFound, Recommender, spectrum
from genre_ray.store import StoreError

log = logging.getLogger(__name__)

# what /movies/{id} returns besides the spectrum
MOVIE_COLUMNS = ["movie_id", "title", "year", "language", "genres", "popularity", "votes", "genre_probs"]


class ForUserBody(BaseModel):
    """POST /for-user. Ids as a list (or comma-separated text); the limits are genre_ray.query's."""

    model_config = ConfigDict(extra="forbid")

    history: list[str | int] | str
    weights: list[float] | str | None = None
    negative: list[str | int] | str | None = None
    k: int | str | None = None
    language: str | None = None
    years: str | None = None
    exclude: list[str | int] | str | None = None
    mmr: float | str | None = None
    popularity_weight: float | str | None = None


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def build_app(rec: Recommender) -> FastAPI:
    app = FastAPI(
        title="genre_ray",
        description="Movies like a title, or like a viewer's history, from the published genre-spectrum store.",
        version="1",
    )

    @app.exception_handler(query.QueryError)
    async def bad_query(_: Request, err: query.QueryError) -> JSONResponse:
        return error(422, err.message, param=err.param)

    @app.exception_handler(MovieNotFound)
    async def not_found(_: Request, err: MovieNotFound) -> JSONResponse:
        return error(404, str(err), close_matches=err.close)

    @app.exception_handler(BadQuery)
    async def unanswerable(_: Request, err: BadQuery) -> JSONResponse:
        # a language the store has no movie in, history weights that cancel out: the caller's input, not a bug
        return error(422, str(err))

    @app.exception_handler(StoreError)
    async def no_store(_: Request, err: StoreError) -> JSONResponse:
        return error(503, str(err))

    @app.get("/similar")
    def similar(
        title: str | None = None,
        id: str | None = None,
        k: str | None = None,
        language: str | None = None,
        years: str | None = None,
        exclude: str | None = None,
        mmr: str | None = None,
        popularity_weight: str | None = None,
    ) -> dict[str, Any]:
        """Movies like one title (case-insensitive) or movie id."""
        if (title is None) == (id is None):
            raise query.QueryError("title", "give exactly one of title= or id=")
        q = query.similar(
            title if id is None else id, query.ranking(k, language, years, exclude, popularity_weight, mmr)
        )
        return query.response(*query.run_similar(rec, q))

    body_schema = {"application/json": {"schema": ForUserBody.model_json_schema()}}

    @app.post("/for-user", openapi_extra={"requestBody": {"required": True, "content": body_schema}})
    async def for_user(request: Request) -> Any:
        """Movies like a viewer's history (ids, optional weights), moved away from `negative` ids."""
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > query.MAX_BODY_BYTES:
                return error(413, f"request body over {query.MAX_BODY_BYTES} bytes (MAX_BODY_BYTES)")
        try:
            data = ForUserBody.model_validate(json.loads(body or b"null"))
        except json.JSONDecodeError as err:
            return error(422, f"the body is not JSON: {err.msg} at character {err.pos}")
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return error(422, f"{where}: {first['msg']}", param=where)
        rank = query.ranking(data.k, data.language, data.years, data.exclude, data.popularity_weight, data.mmr)
        q = query.for_user(data.history, data.weights, data.negative, rank)
        return await run_in_threadpool(lambda: query.response(*query.run_for_user(rec, q)))

    @app.get("/movies/{movie_id}")
    def movie(movie_id: str) -> Any:
        """A movie's metadata and its readable genre spectrum (every genre, most likely first)."""
        movie_id = query.check_title(movie_id, "movie_id")
        view = rec.view()
        rows = view.get([movie_id], MOVIE_COLUMNS).to_pylist()
        if not rows:
            return error(404, f"no movie with id {movie_id!r}")
        row = rows[0]
        probs = row.pop("genre_probs")
        row["spectrum"] = [{"genre": g, "p": round(p, 4)} for g, p in spectrum(view, probs, top=len(view.vocab))]
        return {"publish": query.publish_json(view), "movie": row}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """The process answers (says nothing about the store)."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> Any:
        """Ready when a publish is open: which one this replica serves."""
        try:
            view = rec.view()
        except StoreError as err:
            return error(503, str(err))
        return {"status": "ready", "publish": query.publish_json(view), "tables": len(view.tables)}

    return app
