"""A FastAPI app that tracks one event per request, under uvicorn or gunicorn.

``init()`` runs in each worker process at startup (the lifespan) and finds the host's ONE
sender, starting it if none runs; ``track()`` in an ``async def`` endpoint appends to the
worker's own file and never awaits anything. At shutdown ``await mpsender.ashutdown(...)``
waits for the endpoint without blocking the event loop (``flush()`` would hold it).

    export MPSENDER_WRITE_KEY=...  MPSENDER_ENDPOINT=https://api.segment.io
    uvicorn app:app --workers 2
    gunicorn -k uvicorn.workers.UvicornWorker -w 4 app:app
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import mpsender


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    mpsender.init()  # MPSENDER_* from the environment; cheap and idempotent in every worker
    yield
    await mpsender.ashutdown(1.0)  # the loop keeps serving other tasks while this waits


app = FastAPI(lifespan=lifespan)


@app.get("/health")
async def health() -> str:
    return "ok"  # load balancer checks are not analytics


@app.get("/page")
async def page(id: str, visitor: str = "anonymous") -> dict[str, bool]:  # noqa: A002 (the query's name)
    mpsender.track("Page Viewed", anonymous_id=visitor, properties={"path": "/page", "request_id": id})
    return {"tracked": True}
