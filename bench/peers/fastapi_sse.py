"""The FastAPI peer of bench/fanout.py: its built-in SSE (fastapi.sse, 0.135+) on uvicorn.

The idiomatic broadcast of asyncio: an asyncio.Queue per listener, one ticker task
putting each message into every queue; the path operation yields ServerSentEvents.
    uvicorn --app-dir bench/peers fastapi_sse:app --port PORT
"""
import asyncio
import contextlib
import time
from collections.abc import AsyncIterable

from fastapi import FastAPI
from fastapi.sse import EventSourceResponse, ServerSentEvent

listeners = set()


async def ticker():
    n = 0
    while True:
        await asyncio.sleep(1)
        n += 1
        event = ServerSentEvent(data={"id": n, "ts": time.time(), "text": f"tick {n}"}, id=str(n))
        for queue in listeners:
            queue.put_nowait(event)


@contextlib.asynccontextmanager
async def lifespan(app):
    task = asyncio.create_task(ticker())
    yield
    task.cancel()


app = FastAPI(lifespan=lifespan)


@app.get("/events", response_class=EventSourceResponse)
async def events() -> AsyncIterable[ServerSentEvent]:
    queue = asyncio.Queue()
    listeners.add(queue)
    try:
        while True:
            yield await queue.get()
    finally:
        listeners.discard(queue)


@app.get("/healthz")
async def healthz():
    return "ok"
