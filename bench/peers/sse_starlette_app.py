"""The sse-starlette peer of bench/fanout.py: EventSourceResponse on Starlette, uvicorn.

The idiomatic broadcast of asyncio: an asyncio.Queue per listener, one ticker task
putting each message into every queue; the generator yields dicts.
    uvicorn --app-dir bench/peers sse_starlette_app:app --port PORT
"""
import asyncio
import contextlib
import json
import time

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

listeners = set()


async def ticker():
    n = 0
    while True:
        await asyncio.sleep(1)
        n += 1
        event = {"id": str(n), "data": json.dumps({"id": n, "ts": time.time(), "text": f"tick {n}"})}
        for queue in listeners:
            queue.put_nowait(event)


async def events(request):
    async def stream():
        queue = asyncio.Queue()
        listeners.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            listeners.discard(queue)
    return EventSourceResponse(stream())


async def healthz(request):
    return PlainTextResponse("ok")


@contextlib.asynccontextmanager
async def lifespan(app):
    task = asyncio.create_task(ticker())
    yield
    task.cancel()


app = Starlette(routes=[Route("/events", events), Route("/healthz", healthz)], lifespan=lifespan)
